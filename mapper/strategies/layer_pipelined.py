"""Layer-pipelined, weight-resident: every layer in its own region; weights stay in SRAM;
activations stream from region to region (see `tp2d` for the layout inside a region).

The mesh (or a grid x grid corner) is cut into equal slots: one per layer plus enough for the
embedding table / LM head, placed along a serpentine so consecutive layers are neighbours.
Training runs the forward pass through the regions, the loss on the LM-head regions, the
backward pass back through them, and the Adam update on the cores that hold each weight.
Several parts can be in flight: a prefill's chunks (of the prompt's positions) and a training
step's micro-batches (of its sequences, GPipe style) pipeline through the layer regions.
"""

from __future__ import annotations

import dataclasses
import math

from mapper.placement import (
    MappingError,
    layer_graph,
    place_chain,
    place_ring,
    slot_grid,
    slot_grids,
)
from mapper.strategies.common import (
    MicroBatch,
    Run,
    alloc_group,
    check_buffers,
    check_total_weights,
    chunked,
    emit_lm_head,
    handoff,
    head_tree_recv,
    kv_context_limit,
    make_run,
    mapping_meta,
    part_bufs,
    resolve_attention,
    shared_tiles,
    stage_table_params,
)
from mapper.strategies.functional_layout import (
    dataop,
    head_recv_tiles,
    layer_recv_tiles,
    make_layout,
)
from mapper.strategies.moe_layer import (
    MoEFFN,
    check_moe_strategy,
    functional_tiles,
    moe_layer_buffers,
    stage_model,
    stage_routing,
)
from mapper.strategies.parts import part_spans
from mapper.strategies.tp2d import TP2D, Layout, layer_buffers
from workloads.models import GPTConfig
from wse_sim.hardware import HardwareConfig
from wse_sim.precision import Precision
from wse_sim.program import Dep, IoTransfer, Program, ProgramBuilder, Region
from wse_sim.sparsity import Sparsity


def _table_fits(run: Run, sg, k: int) -> tuple[bool, int]:
    """Whether k slots of `sg` hold the table (and the LM head's activations); and the k that
    would."""
    cores = sg.cols * sg.rows
    act = 2 * run.lm_chunk_tokens * math.ceil(run.cfg.d_model / sg.cols) * run.bytes \
        + head_tree_recv(run, Region(0, 0, sg.cols, sg.rows), k)
    adam = 7 if run.phase == "train" else 1  # fp16 weight + grad + fp32 master and moments
    per_core = math.ceil(run.table_bytes * adam / (k * cores)) + act
    need = math.ceil(run.table_bytes * adam / (max(1, run.hw.sram_bytes - act) * cores))
    return per_core <= run.hw.sram_bytes, need


def choose_slots(run: Run, rank: int = 0):
    """The slot grid (L layer slots + k table slots) with the most cores per slot in which a
    layer's buffers and the table fit (`rank` > 0: the rank-th next best shape that fits, for
    the search; the last one that fits when there are fewer); the fewest table slots first.
    When nothing fits, the largest slots (so the caller reports the numbers that do not fit)."""
    L = run.cfg.n_layers
    fallback = None
    fitting: list = []
    k = 1
    while L + k <= run.cols * run.rows and k <= 4096:
        grids = slot_grids(run.cols, run.rows, L + k)
        if not grids:
            break
        next_k = None
        for sg in grids:
            ok, need = _table_fits(run, sg, k)
            if fallback is None and ok:
                fallback = (sg, k)
            if not ok:
                next_k = need if next_k is None else min(next_k, need)
                continue
            lay = _layout(run, Region(0, 0, sg.cols, sg.rows))
            if sum(pipelined_buffers(run, lay).values()) <= run.hw.sram_bytes:
                fitting.append((sg, k, True))
                if len(fitting) > rank:
                    return fitting[rank]
        if fitting:
            return fitting[-1]
        if next_k is None or next_k <= k:
            break
        k = next_k
    if fallback is not None:
        return fallback + (False,)
    raise MappingError(f"model {run.cfg.name} does not fit: {L} layers and the embedding table "
                       f"({run.table_bytes} bytes) need more than the {run.cols * run.rows} cores "
                       f"of the {run.cols} x {run.rows} mesh")


def map_layer_pipelined(cfg: GPTConfig, hw: HardwareConfig, *, phase: str = "prefill",
                        batch: int = 1, prompt: int = 128, context: int = 128,
                        dtype: str = "fp16", grid: int | None = None,
                        sparsity: float = 0.0, stage: tuple | None = None,
                        functional: bool = False, chunks: int = 1, micro_batches: int = 1,
                        region_shape: int = 0, reduce_algo: str = "chain",
                        attention: str = "auto", routing: str | None = None,
                        moe_layout: str | None = None, seed: int = 0,
                        precision: Precision | None = None,
                        sparse: Sparsity | None = None, check_only: bool = False) -> Program | None:
    """Map every layer of `cfg` onto its own region of the mesh (`check_only`: stop once the
    budgets and the placement are checked; None: it fits).

    `stage=(first_layer, layers, with_embed, with_head)` maps only that slice of the model, for
    one wafer of a multi-wafer pipeline: without the embedding the activations arrive over the
    wafer's I/O; without the head they leave over it. `functional`: attach DataOps and tile
    shapes so that `wse_sim.functional.run_functional` computes the forward pass (prefill, in
    chunks too, and decode) or the training step's loss and gradients (one table region; every
    layer keeps its saved activations and backward scratch in its region; the Adam updates stay
    timing-only). Inputs and outputs: `mapper.strategies.functional_model`.

    `chunks` (prefill): the prompt's positions run through the layers in at least this many
    chunks. `micro_batches` (train): the batch runs in this many equal micro-batches, GPipe
    style: their forwards pipeline through the layer regions, then each one's loss and LM head,
    then their backwards in reverse through the regions; weight gradients add up over the
    micro-batches and each region updates its weights after the last one.

    An MoE model (`moe_layer`): `routing` (`workloads.routing`: uniform, skewed:ALPHA, router,
    a file; `seed`) says which experts each token uses, `moe_layout` how the experts are
    placed in each layer region. `precision` (`wse_sim.precision`): each tensor's dtype
    (default: `dtype` for every tensor). `sparse` (`wse_sim.sparsity`): how the zero weights
    are stored and how many each layer has (default: `sparsity` uniform, stored dense).
    """
    check_moe_strategy(cfg, "layer-pipelined", functional)
    if stage is not None:
        if functional:
            raise NotImplementedError("functional: a multi-wafer stage is not mapped "
                                      "functionally; map the whole model on one wafer")
        if micro_batches > 1:
            raise NotImplementedError(f"multi-wafer: a training step in {micro_batches} "
                                      "micro-batches is not pipelined over wafers; use one "
                                      "wafer or --micro-batches 1")
        return _map_stage(cfg, hw, stage, (routing, seed), phase=phase, batch=batch,
                          prompt=prompt, context=context, dtype=dtype, grid=grid,
                          sparsity=sparsity, reduce_algo=reduce_algo, precision=precision,
                          moe_layout=moe_layout,
                          sparse=None if sparse is None else sparse.layers(stage[0], stage[1]))
    run = make_run(cfg, hw, phase=phase, batch=batch, prompt=prompt, context=context,
                   dtype=dtype, grid=grid, sparsity=sparsity, chunks=chunks,
                   micro_batches=micro_batches, reduce_algo=reduce_algo, attention=attention,
                   routing=routing, moe_layout=moe_layout, seed=seed, functional=functional,
                   precision=precision, sparse=sparse)
    check_total_weights(run)
    run = resolve_attention(run, lambda r: choose_slots(r, region_shape)[2])
    run = chunked(run, lambda r: choose_slots(r, region_shape)[2])
    ops = run.ops()
    L, n = cfg.n_layers, run.parts
    sg, k, _ = choose_slots(run, region_shape)
    lay0 = _layout(run, Region(0, 0, sg.cols, sg.rows))
    train = phase == "train"
    buffers = pipelined_buffers(run, lay0)
    check_buffers("each layer region", run, buffers, lay0.reg,
                  f" ({L + k} regions on a {run.cols} x {run.rows} mesh"
                  + (f", {n} micro-batches in flight)" if train and n > 1 else ")"))
    placed = _place(run, sg, k)
    if check_only:
        return None
    pb = ProgramBuilder(f"{cfg.name}-{phase}-layer-pipelined")
    fl = make_layout(cfg, run, sg.rows, sg.cols, k, row_groups=lay0.g > 1) \
        if functional else None
    parts = part_spans(run)
    fls = [fl] * n  # each part's functional layout
    if fl is not None and n > 1:
        fls = [fl.micro(n, p) if train else fl.chunk(s0, ns)
               for p, (_, _, _, s0, ns) in enumerate(parts)]
    tp = TP2D(pb, cfg, ops, dtype, run.sparse, run.tokens, fl, run.reduce_algo, run.precision)
    tp.moe = MoEFFN(run) if cfg.is_moe else None
    heads = [placed[f"head{j}"] for j in range(k)]
    top0 = Region(heads[0].x, heads[0].y, sg.cols, 1)
    lays = [Layout(placed[f"L{i}"], lay0.ra, lay0.g) for i in range(L)]
    bufs = [[part_bufs(i, p, parts, train, i == L - 1) for i in range(L)] for p in range(n)]
    views, extra = _alloc(pb, run, fls, parts, bufs, lays, heads, top0, buffers)

    def copy(src: str, dst: str):
        return dataop("copy", (src,), dst) if fl is not None else None

    x_vals = run.chunk_tokens * math.ceil(cfg.d_model / sg.cols)
    tp.tokens = run.chunk_tokens
    # The forward of every part, pipelined: part p + 1 runs in layer i while part p runs in
    # layer i + 1. Chunks share each layer's activation tiles, so a hand-off into a layer
    # waits until that layer has handed the previous chunk on (x_done); a micro-batch keeps
    # its own (its backward reads them).
    fwd = [None] * L   # each layer's last forward record
    x_done = [None] * L  # each layer's last reader of its input tile
    ends = []          # each part's output of the last layer

    def free(dep, done):
        return (dep, Dep(done, "all")) if done is not None and not train else dep

    # every part's embedding first: it waits for nothing (each part has its own input tile),
    # and the fast engine's window path takes in every record before a record that waits for
    # nothing (docs/hardware-model.md, "the window path")
    embeds = []
    for p in range(n):
        tp.share, tp.fl = (p, n), fls[p]
        sfx = parts[p][0]
        embeds.append(tp.compute(
            "embed", top0, None, fmac=False,
            data=fls[p].embed_data("embed.x" + sfx, sfx) if fl is not None else None))
    # then in pipeline beats (beat b: part b - i in layer i), the last layer first: program
    # order follows time, so every resource is reserved in task order and the fast engine's
    # step path runs the pipeline (chunk by chunk it could not, and the window path held
    # every chunk in flight); every record still waits only for earlier ones, the same
    # dependencies as chunk by chunk (docs/hardware-model.md, "Program order that follows time")
    into = [None] * n  # each part's hand-off into its next layer

    def embed_handoff(p: int) -> None:
        tp.share, tp.fl = (p, n), fls[p]
        into[p] = handoff(pb, "embed.handoff", top0, lays[0].row0, x_vals, dtype,
                          free(embeds[p], x_done[0]),
                          data=copy("embed.x" + parts[p][0], bufs[p][0]("x")))

    for p in range(n if train else 0):  # micro-batches: own tiles, every hand-off at once
        embed_handoff(p)
    for b in range(n + L - 1):
        if b < n and not train:  # chunk b's, once chunk b - 1 has left layer 0
            embed_handoff(b)
        for i in range(min(b, L - 1), max(0, b - n + 1) - 1, -1):
            p = b - i
            tp.share, tp.fl = (p, n), fls[p]
            dep, lay = into[p], lays[i]
            after = (dep,) + ((Dep(fwd[i], "all"),) if fwd[i] is not None else ())
            dep = fwd[i] = x_done[i] = tp.forward(i, lay, after, bufs=bufs[p][i])
            if i + 1 < L:
                dep = x_done[i] = handoff(
                    pb, f"L{i}.handoff", lay.row0, lays[i + 1].row0, x_vals, dtype,
                    free(dep, x_done[i + 1]),
                    data=copy(bufs[p][i]("xo" if train else "x"), bufs[p][i + 1]("x")))
            else:
                ends.append(dep)
            into[p] = dep
    if train:
        _train_tail(tp, run, fls, parts, bufs, lays, heads, top0, ends, fwd, x_vals, copy)
    else:
        tp.share, tp.tokens, tp.fl = (0, 1), run.tokens, fls[-1]
        emit_lm_head(tp, run, lays[-1].row0, heads, ends[-1], x_name=bufs[-1][-1]("x"),
                     dx_name=bufs[-1][-1]("dx"))
    missing = tp.missing()
    if missing:
        raise NotImplementedError(f"layer-pipelined: ops not mapped: {', '.join(missing[:6])}")
    used = sg.gx * sg.cols * sg.gy * sg.rows
    fmeta = {} if fl is None else {"views": views, "functional": fl.meta(
        list(zip(lays, bufs[0], strict=True)), heads, top0, parts if n > 1 else None)
        | {"sram_extra_bytes": extra}}
    return pb.build(dtype=dtype, tokens=run.tokens, cores_used=used, meta=fmeta | {
        "strategy": "layer-pipelined", "model": cfg.name, "phase": phase, "batch": batch,
        "prompt": prompt, "context": context, "dtype": dtype, "sparsity": sparsity,
        "region_cols": sg.cols, "region_rows": sg.rows, "regions": L + k, "table_regions": k,
        "chunks": run.chunks, "micro_batches": run.micro_batches, "region_shape": region_shape,
        "grid_cols": run.cols, "grid_rows": run.rows,
        "graph_flops": int(sum(o.flops for o in ops.values())), "offwafer_flops": 0,
        "sram_buffers_per_core": buffers,
        "attention": {"groups": lay0.ra, "rows_per_group": lay0.g},
        "kv_context_limit": kv_context_limit(cfg, hw, buffers, lay0, run, 1)}
        | run.sparse.to_meta() | mapping_meta(run, tp) | ({"moe": tp.moe.meta()} if tp.moe else {}))


def _place(run: Run, sg, k: int) -> dict:
    """The regions of layers L0 .. and table regions head0 ..: along a ring of the slots where
    the slot grid has one, else a serpentine; either way the embedding's region (head 0) next
    to layer 0, so that no chunk's hand-off into layer 0 crosses another layer's region, and
    the other table regions after the last layer (docs/strategies.md, "layer-pipelined")."""
    layers = [f"L{i}" for i in range(run.cfg.n_layers)]
    heads = [f"head{j}" for j in range(k - 1, 0, -1)]
    placed = place_ring(layers + heads, "head0", sg)
    if placed is not None:
        return placed
    x = run.tokens * run.cfg.d_model * run.bytes  # bytes handed on
    traffic = [x] * len(layers) + [x] * min(1, k - 1) + [0] * max(0, k - 2)
    return place_chain(layer_graph(["head0"] + layers + heads, traffic), sg)


def _layout(run: Run, reg: Region) -> Layout:
    """The attention split of a layer region (`Layout.fitted`)."""
    return Layout.fitted(reg, run.cfg, run.phase == "train", run.attention,
                         lambda lay: sum(pipelined_buffers(run, lay).values())
                         <= run.hw.sram_bytes)


def pipelined_buffers(run: Run, lay: Layout) -> dict:
    """SRAM bytes per core of a layer region for one chunk or micro-batch at a time; when
    training in micro-batches, the activations saved for the backward of every one of them
    (all are in flight between the last forward and the first backward)."""
    if run.cfg.is_moe:
        return moe_layer_buffers(run, lay)
    out = layer_buffers(run.cfg, lay, run.chunk_tokens, run.keys, run.batch, run.dtype,
                        train=run.phase == "train", reduce_algo=run.reduce_algo,
                        prec=run.precision, sp=run.sparse)
    if run.phase == "train" and run.micro_batches > 1:
        out["saved_activations"] *= run.micro_batches
        # The last layer (the fullest) also keeps the dY that the LM head hands it for every
        # micro-batch after the first until that micro-batch's backward reaches it.
        out["stashed_dy"] = (run.micro_batches - 1) * run.chunk_tokens \
            * math.ceil(run.cfg.d_model / lay.reg.cols) * run.bytes
    return out


def _alloc(pb: ProgramBuilder, run: Run, fls: list, parts: list, bufs: list, lays: list,
           heads: list, top0: Region, buffers: dict) -> tuple[dict, int]:
    """The SRAM of every region (`common.alloc_group`); functional (`fls`): the tiles of every
    chunk or micro-batch. Returns (views, bytes per core beyond the timing budget)."""
    cfg, train, k, L = run.cfg, run.phase == "train", len(heads), len(lays)
    f0, adam, n = fls[0], 7 if train else 1, len(parts)
    views, extra = {}, 0
    for j, hr in enumerate(heads):
        tiles = None
        if f0 is not None:
            tiles = f0.head_tiles(j, hr)
            for fp, (sfx, *_) in zip(fls, parts, strict=True):
                tiles |= fp.embed_tiles(top0, own_x=True, sfx=sfx) if j == 0 else {}
            if train:
                tiles |= f0.train_head_tiles(hr, tuple(p[0] for p in parts))
            for fp, (sfx, *_) in zip(fls, parts, strict=True):
                if train and j == 0:
                    tiles |= fp.train_embed_tiles(top0, sfx) \
                        | {"embed.dx" + sfx: (top0, (fp.T, fp.dc), run.dtype, None)}
            tiles |= head_recv_tiles(tiles, k, run.reduce_algo)
        recv = head_tree_recv(run, hr, k)
        v, e = alloc_group(pb, f"head{j}.", hr, {
            "table": math.ceil(run.table_bytes * adam / (k * hr.size)),
            "act": 2 * run.lm_chunk_tokens * math.ceil(cfg.d_model / hr.cols) * run.bytes}
            | ({"tree_recv": recv} if recv else {}), tiles)
        views, extra = views | v, max(extra, e)
    for i, lay in enumerate(lays):
        tiles = None
        if f0 is not None:
            if train:
                tiles = {}
                for p, fp in enumerate(fls):
                    tiles |= fp.train_tiles(lay, bufs[p][i], scratch=p == 0, weights=p == 0)
                    if p and "dx" in bufs[p][i].own:  # the first one's is in its scratch
                        tiles[bufs[p][i]("dx")] = (lay.row0, (fp.T, fp.dc), run.dtype, None)
            elif n == 1:
                tiles = f0.layer_tiles(lay, bufs[0][i])
            else:
                tiles = f0.layer_tiles(lay, bufs[0][i], acts=False)
                for p, fp in enumerate(fls):
                    tiles |= shared_tiles(fp.layer_tiles(lay, bufs[p][i], weights=False),
                                     bufs[p][i].a)
            tiles = functional_tiles(f0, run, lay, bufs[0][i], i, tiles)
            if i == L - 1:
                tiles |= fls[-1].lnf_tiles(lay.row0, True)
                if train:
                    tiles |= f0.train_lnf_tiles(lay.row0, True)
            tiles |= layer_recv_tiles(tiles, [b[i] for b in bufs], run.reduce_algo)
        mine = buffers if i == L - 1 else {b: v for b, v in buffers.items() if b != "stashed_dy"}
        v, e = alloc_group(pb, f"L{i}.", lay.reg, mine, tiles)
        views, extra = views | v, max(extra, e)
    return views, extra


def _train_tail(tp: TP2D, run: Run, fls: list, parts: list, bufs: list, lays: list,
                heads: list, top0: Region, ends: list, fwd: list, x_vals: int, copy) -> None:
    """After the forwards: per micro-batch, the loss and LM head (after the previous one's),
    then its backward through the layers in reverse (each layer after its previous work);
    then the Adam updates. A layer's dX tile is shared by the micro-batches (but the last
    layer keeps each one's, which the head writes early), so a hand-off into it waits until
    the previous micro-batch's gradient has left (dx_done)."""
    pb, cfg, dtype = tp.pb, run.cfg, run.dtype
    L, n = len(lays), len(parts)
    last = list(fwd)           # each layer's last record
    dx_done = [None] * L       # each layer's last reader of its dX tile
    grads: list = [[] for _ in range(L)]
    head_end, head_grads, embed_ends, updates = None, [], [], []
    for m in range(n):
        tp.share, tp.fl = (m, n), fls[m]
        sfx = parts[m][0]
        micro = None
        start = ends[m]
        if n > 1:  # the head's tiles are shared: one micro-batch at a time
            micro = MicroBatch(n, sfx)
            start = (ends[m],) + ((Dep(head_end, "all"),) if head_end is not None else ())
        dep, hg = emit_lm_head(tp, run, lays[-1].row0, heads, start,
                               x_name=bufs[m][-1]("xo"), dx_name=bufs[m][-1]("dx"), micro=micro)
        head_end, head_grads = dep, head_grads + hg
        for i in range(L - 1, -1, -1):
            after = dep if n == 1 else (dep, Dep(last[i], "all"))
            dep, g = tp.backward(i, lays[i], after, bufs=bufs[m][i])
            last[i], grads[i] = dep, grads[i] + g
            if m == n - 1:  # the update after the last micro-batch: all of its FLOPs
                tp.share = (0, 1)
                updates.append(tp.optimizer([f"L{i}.{w}.adam" for w in
                                             list(cfg.layer_weight_shapes()) + ["small"]],
                                            lays[i].reg, tuple(grads[i])))
                tp.share = (m, n)
            if i > 0:
                after = (dep, Dep(dx_done[i - 1], "all")) if m else dep
                dep = dx_done[i] = handoff(pb, f"L{i}.bwd.handoff", lays[i].row0,
                                           lays[i - 1].row0, x_vals, dtype, after, color="back",
                                           data=copy(bufs[m][i]("dx"), bufs[m][i - 1]("dx")))
        dep = dx_done[0] = handoff(pb, "embed.bwd.handoff", lays[0].row0, top0, x_vals, dtype,
                                   dep, color="back",
                                   data=copy(bufs[m][0]("dx"), "embed.dx" + sfx))
        embed_ends.append(tp.compute("embed.bwd", top0, dep, fmac=False,
                                     data=copy("embed.dx" + sfx, "embed.grad" + sfx)))
    tp.share = (0, 1)
    tp.optimizer(["embed.adam", "lm_head.adam"], heads[0], tuple(embed_ends) + tuple(head_grads))
    tp.optimizer(["ln_f.adam"], lays[-1].row0, tuple(updates[:1]))


def _map_stage(cfg: GPTConfig, hw: HardwareConfig, stage: tuple, routing: tuple,
               **kw) -> Program:
    """One wafer's slice of a multi-wafer pipeline. Training: the forward hands its output to
    the next wafer, the backward receives the gradient from it and hands its own back; each
    wafer updates the weights it holds. An MoE model: the slice's layers keep the experts
    each token takes in the whole model (`routing`: its spec and seed)."""
    first, layers, with_embed, with_head = stage
    sub = stage_model(cfg, first, layers)
    run = dataclasses.replace(make_run(sub, hw, **kw),
                              table_params=stage_table_params(cfg, with_embed, with_head))
    if cfg.is_moe:
        run = stage_routing(run, cfg, first, *routing)
    ops = run.ops()
    L = layers
    sg, k = choose_slots(run)[:2] if with_head or with_embed else (slot_grid(run.cols, run.rows, L), 0)
    train = run.phase == "train"

    def stage_buffers(lay: Layout) -> dict:
        if sub.is_moe:
            return moe_layer_buffers(run, lay)
        return layer_buffers(sub, lay, run.tokens, run.keys, run.batch, run.dtype,
                             train=train, reduce_algo=run.reduce_algo, prec=run.precision,
                             sp=run.sparse)

    lay0 = Layout.fitted(Region(0, 0, sg.cols, sg.rows), sub, train, run.attention,
                         lambda lay: sum(stage_buffers(lay).values()) <= hw.sram_bytes)
    buffers = stage_buffers(lay0)
    check_buffers(f"each layer region of the wafer with layers {first}..{first + L - 1}", run,
                  buffers, lay0.reg)
    names = [f"L{i}" for i in range(L)] + [f"head{j}" for j in range(k)]
    placed = place_chain(layer_graph(names, [1] * (L + k - 1)), sg)
    pb = ProgramBuilder(f"{cfg.name}-{run.phase}-wafer-layers{first}-{first + L - 1}")
    tp = TP2D(pb, sub, ops, run.dtype, run.sparse, run.tokens, reduce_algo=run.reduce_algo,
              prec=run.precision)
    tp.moe = MoEFFN(run) if sub.is_moe else None
    lays = [Layout(placed[f"L{i}"], lay0.ra, lay0.g) for i in range(L)]
    for i, lay in enumerate(lays):
        for name, v in buffers.items():
            pb.alloc(f"L{i}.{name}", lay.reg, v)
    heads = [placed[f"head{j}"] for j in range(k)]
    for j, hr in enumerate(heads):
        pb.alloc(f"head{j}.table", hr,
                 math.ceil(run.table_bytes * (7 if train else 1) / (k * hr.size)))
        if head_tree_recv(run, hr, k):
            pb.alloc(f"head{j}.tree_recv", hr, head_tree_recv(run, hr, k))
    x_vals = run.tokens * math.ceil(sub.d_model / sg.cols)
    x_bytes = run.tokens * sub.d_model * run.bytes
    if with_embed:
        top0 = Region(heads[0].x, heads[0].y, sg.cols, 1)
        e = tp.compute("embed", top0, None, fmac=False)
        dep = handoff(pb, "embed.handoff", top0, lays[0].row0, x_vals, run.dtype, e)
    else:
        dep = pb.add(IoTransfer("activations.in", lays[0].row0, x_bytes, "in"))
        tp.emitted.add("embed")
    for i, lay in enumerate(lays):
        dep = tp.forward(i, lay, dep)
        if i + 1 < L:
            dep = handoff(pb, f"L{i}.handoff", lay.row0, lays[i + 1].row0, x_vals, run.dtype, dep)
    head_names = {n for n, o in ops.items() if o.layer is None and not n.startswith("embed")}
    embed_names = {n for n, o in ops.items() if o.layer is None and n.startswith("embed")}
    head_grads: list = []
    if with_head:
        dep, head_grads = emit_lm_head(tp, run, lays[-1].row0, heads, dep)
    else:
        tp.emitted.update(head_names)
        # The hand-off to the next wafer is timed there (its `activations.in`).
        if train:  # the next wafers run on; their gradient comes back over this wafer's I/O
            dep = pb.add(IoTransfer("grads.in", lays[-1].row0, x_bytes, "in",
                                    deps=(Dep(dep, "all"),)))
    if train:
        for i in range(L - 1, -1, -1):
            dep, grads = tp.backward(i, lays[i], dep)
            tp.optimizer([f"L{i}.{w}.adam" for w in list(sub.layer_weight_shapes()) + ["small"]],
                         lays[i].reg, tuple(grads))
            if i > 0:
                dep = handoff(pb, f"L{i}.bwd.handoff", lays[i].row0, lays[i - 1].row0, x_vals,
                              run.dtype, dep, color="back")
        if with_embed:
            top0 = Region(heads[0].x, heads[0].y, sg.cols, 1)
            dep = handoff(pb, "embed.bwd.handoff", lays[0].row0, top0, x_vals, run.dtype, dep,
                          color="back")
            dep = tp.compute("embed.bwd", top0, dep, fmac=False)
            tp.optimizer(sorted(embed_names & {"embed.adam"}), heads[0], (dep,))
        if with_head:
            tp.optimizer(sorted(head_names & {"lm_head.adam", "ln_f.adam"}), heads[-1],
                         tuple(head_grads) or (dep,))
    if not with_embed:
        tp.emitted.update(embed_names)
    missing = tp.missing()
    if missing:
        raise NotImplementedError(f"multi-wafer stage: ops not mapped: {', '.join(missing[:6])}")
    flops = sum(int(o.flops) for n, o in ops.items()
                if (with_embed or n not in embed_names) and (with_head or n not in head_names))
    return pb.build(dtype=run.dtype, tokens=run.tokens,
                    cores_used=sg.gx * sg.cols * sg.gy * sg.rows,
                    meta={"strategy": "multi-wafer", "model": cfg.name, "phase": run.phase,
                          "first_layer": first, "layers": L, "with_embed": with_embed,
                          "with_head": with_head, "graph_flops": flops, "offwafer_flops": 0,
                          "region_cols": sg.cols, "region_rows": sg.rows,
                          "sram_buffers_per_core": buffers} | mapping_meta(run, tp)
                    | ({"moe": tp.moe.meta()} if tp.moe else {}))


def _stage_error(cfg: GPTConfig, hw: HardwareConfig, first: int, layers: int, embed: bool,
                 head: bool, **kw) -> str | None:
    """None when the slice maps (not simulated), else its one-line reason. `kw`: as
    `map_layer_pipelined` takes them."""
    try:
        map_layer_pipelined(cfg, hw, stage=(first, layers, embed, head), **kw)
    except MappingError as e:
        return str(e).splitlines()[0]
    return None


def _capacity(cfg: GPTConfig, hw: HardwareConfig, embed: bool, head: bool, most: int,
              **kw) -> int:
    """The most layers (up to `most`) a wafer holds with the embedding and / or the LM head
    (layers 0.. for the embedding's wafer, the last ones for the head's, else layer 0..)."""
    lo, hi = 0, most
    while lo < hi:  # the largest n in [0, most] that fits (fitting shrinks with n)
        n = (lo + hi + 1) // 2
        first = cfg.n_layers - n if head and not embed else 0
        if _stage_error(cfg, hw, first, n, embed, head, **kw) is None:
            lo = n
        else:
            hi = n - 1
    return lo


def even_split_error(cfg: GPTConfig, hw: HardwareConfig, wafers: int, **kw) -> str | None:
    """None when every slice of the even split fits, else the first one's reason (the
    slices that can differ are mapped: the first, the last, one with the most layers)."""
    from wse_sim.timing import split_evenly
    L = cfg.n_layers
    even = [split_evenly(L, wafers, w) for w in range(wafers)]
    if wafers == 1:
        return _stage_error(cfg, hw, 0, L, True, True, **kw)
    return (_stage_error(cfg, hw, 0, even[0], True, False, **kw)
            or _stage_error(cfg, hw, L - even[-1], even[-1], False, True, **kw)
            or (None if wafers == 2 else _stage_error(cfg, hw, 0, even[1], False, False, **kw)))


def stage_split(cfg: GPTConfig, hw: HardwareConfig, wafers: int, **kw) -> list[int] | None:
    """Layers per wafer of a `wafers`-wafer pipeline: an even split when every slice fits,
    else the first and last wafers (which also hold the embedding and the LM head) take as
    many as they hold and the others the rest, evenly; None when nothing fits. Slices are
    mapped, not simulated. `kw`: as `map_layer_pipelined` takes them."""
    from wse_sim.timing import split_evenly
    L = cfg.n_layers
    if even_split_error(cfg, hw, wafers, **kw) is None:
        return [split_evenly(L, wafers, w) for w in range(wafers)]
    if wafers == 1:
        return None
    mid = _capacity(cfg, hw, False, False, L, **kw) if wafers > 2 else 0
    first = _capacity(cfg, hw, True, False, L, **kw)
    last = _capacity(cfg, hw, False, True, L, **kw)
    if (wafers > 2 and mid == 0) or first == 0 or last == 0:
        return None
    rest = L - first - last
    if rest < wafers - 2:  # the ends take fewer, so that every wafer has a layer
        first -= (wafers - 2 - rest) // 2
        last -= (wafers - 2 - rest + 1) // 2
        rest = wafers - 2
    if rest > mid * (wafers - 2) or first < 1 or last < 1:
        return None
    return [first] + [split_evenly(rest, wafers - 2, w) for w in range(wafers - 2)] + [last]


def fewest_wafers(cfg: GPTConfig, hw: HardwareConfig, at_least: int = 1, **kw) -> int | None:
    """The fewest wafers from `at_least` on (and no fewer than the wafers' SRAM holding the
    weights at all) for which `stage_split` finds slices that fit; None when none does."""
    from mapper.strategies.common import total_weight_bytes
    defaults = dict(phase="prefill", batch=1, prompt=128, context=128, dtype="fp16",
                    grid=None, sparsity=0.0)
    run_kw = {k: kw.get(k, v) for k, v in defaults.items()} | {
        k: kw[k] for k in ("precision", "sparse") if kw.get(k) is not None}
    run = make_run(cfg, hw, **run_kw)
    wafer_bytes = hw.mesh_cols * hw.mesh_rows * hw.sram_bytes
    w = max(at_least, math.ceil(total_weight_bytes(run) / wafer_bytes))
    while w <= cfg.n_layers:
        if stage_split(cfg, hw, w, **kw) is not None:
            return w
        w += 1
    return None
