"""Layer-pipelined, weight-resident: every layer in its own region; weights stay in SRAM;
activations stream from region to region (see `tp2d` for the layout inside a region).

The mesh (or a grid x grid corner) is cut into equal slots: one per layer plus enough for the
embedding table / LM head, placed along a serpentine so consecutive layers are neighbours.
Training runs the forward pass through the regions, the loss on the LM-head regions, the
backward pass back through them, and the Adam update on the cores that hold each weight.
"""

from __future__ import annotations

import math

from mapper.placement import MappingError, layer_graph, place_chain, slot_grid, slot_grids
from mapper.strategies.common import (
    Run,
    alloc_group,
    check_buffers,
    check_total_weights,
    chunked,
    emit_lm_head,
    handoff,
    kv_context_limit,
    make_run,
)
from mapper.strategies.functional_layout import LayerBufs, dataop, make_layout
from mapper.strategies.tp2d import TP2D, Layout, layer_buffers
from workloads.models import GPTConfig
from wse_sim.hardware import HardwareConfig
from wse_sim.program import Dep, IoTransfer, Program, ProgramBuilder, Region


def _table_fits(run: Run, sg, k: int) -> tuple[bool, int]:
    """Whether k slots of `sg` hold the table (and the LM head's activations); and the k that
    would."""
    cores = sg.cols * sg.rows
    act = 2 * run.lm_tokens * math.ceil(run.cfg.d_model / sg.cols) * run.bytes
    adam = 7 if run.phase == "train" else 1  # fp16 weight + grad + fp32 master and moments
    per_core = math.ceil(run.table_bytes * adam / (k * cores)) + act
    need = math.ceil(run.table_bytes * adam / (max(1, run.hw.sram_bytes - act) * cores))
    return per_core <= run.hw.sram_bytes, need


def choose_slots(run: Run, rank: int = 0):
    """The slot grid (L layer slots + k table slots) with the most cores per slot in which a
    layer's buffers and the table fit (`rank` > 0: the rank-th next best shape that fits, for
    the search; the last one that fits when there are fewer); the fewest table slots first.
    When nothing fits, the largest slots (so the caller reports the numbers that do not fit)."""
    L, cfg = run.cfg.n_layers, run.cfg
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
            lay = Layout.of(Region(0, 0, sg.cols, sg.rows), cfg, run.phase == "train")
            buffers = layer_buffers(cfg, lay, run.chunk_tokens, run.keys, run.batch,
                                    run.dtype, train=run.phase == "train")
            if sum(buffers.values()) <= run.hw.sram_bytes:
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
                        functional: bool = False, chunks: int = 1,
                        region_shape: int = 0) -> Program:
    """Map every layer of `cfg` onto its own region of the mesh.

    `stage=(first_layer, layers, with_embed, with_head)` maps only that slice of the model, for
    one wafer of a multi-wafer pipeline: without the embedding the activations arrive over the
    wafer's I/O; without the head they leave over it. `functional`: attach DataOps and tile
    shapes so that `wse_sim.functional.run_functional` computes the forward pass (prefill and
    decode) or the training step's loss and gradients (one table region; every layer keeps
    its saved activations and backward scratch in its region; the Adam updates stay
    timing-only). Inputs and outputs: `mapper.strategies.functional_model`.
    """
    if stage is not None:
        if functional:
            raise NotImplementedError("functional: a multi-wafer stage is not mapped "
                                      "functionally; map the whole model on one wafer")
        return _map_stage(cfg, hw, stage, phase=phase, batch=batch, prompt=prompt,
                          context=context, dtype=dtype, grid=grid, sparsity=sparsity)
    run = make_run(cfg, hw, phase=phase, batch=batch, prompt=prompt, context=context,
                   dtype=dtype, grid=grid, sparsity=sparsity, chunks=chunks)
    check_total_weights(run)
    run = chunked(run, lambda r: choose_slots(r, region_shape)[2])
    if functional and run.chunks > 1:
        raise NotImplementedError(f"functional: a prefill in {run.chunks} chunks is not mapped "
                                  "functionally; use a shorter --prompt or a larger mesh")
    ops = run.ops()
    L = cfg.n_layers
    sg, k, _ = choose_slots(run, region_shape)
    lay0 = Layout.of(Region(0, 0, sg.cols, sg.rows), cfg, run.phase == "train")
    train = phase == "train"
    buffers = layer_buffers(cfg, lay0, run.chunk_tokens, run.keys, run.batch, dtype,
                            train=train)
    check_buffers("each layer region", run, buffers, lay0.reg,
                  f" ({L + k} regions on a {run.cols} x {run.rows} mesh)")
    names = [f"L{i}" for i in range(L)] + [f"head{j}" for j in range(k)]
    traffic = [run.tokens * cfg.d_model * run.bytes] * L + [0] * (k - 1)
    placed = place_chain(layer_graph(names, traffic), sg)
    pb = ProgramBuilder(f"{cfg.name}-{phase}-layer-pipelined")
    fl = make_layout(cfg, run, sg.rows, sg.cols, k) if functional else None
    tp = TP2D(pb, cfg, ops, dtype, sparsity, run.tokens, fl)
    heads = [placed[f"head{j}"] for j in range(k)]
    top0 = Region(heads[0].x, heads[0].y, sg.cols, 1)
    lays = [Layout.of(placed[f"L{i}"], cfg, train) for i in range(L)]
    bufs = [LayerBufs(f"L{i}.", f"L{i}.") for i in range(L)]
    adam = 7 if train else 1
    views: dict = {}
    extra = 0
    for j, hr in enumerate(heads):
        tiles = None if fl is None else \
            fl.head_tiles(j, hr) | (fl.embed_tiles(top0, own_x=True) if j == 0 else {})
        if fl is not None and train:
            tiles |= fl.train_head_tiles(hr) | fl.train_embed_tiles(top0) \
                | {"embed.dx": (top0, (fl.T, fl.dc), dtype, None)}
        v, e = alloc_group(pb, f"head{j}.", hr, {
            "table": math.ceil(run.table_bytes * adam / (k * hr.size)),
            "act": 2 * run.lm_tokens * math.ceil(cfg.d_model / hr.cols) * run.bytes}, tiles)
        views, extra = views | v, max(extra, e)
    for i, lay in enumerate(lays):
        tiles = None if fl is None else \
            (fl.train_tiles(lay, bufs[i]) if train else fl.layer_tiles(lay, bufs[i])) \
            | (fl.lnf_tiles(lay.row0, True) if i == L - 1 else {})
        if fl is not None and train and i == L - 1:
            tiles |= fl.train_lnf_tiles(lay.row0, True)
        v, e = alloc_group(pb, f"L{i}.", lay.reg, buffers, tiles)
        views, extra = views | v, max(extra, e)

    def copy(src: str, dst: str):
        return dataop("copy", (src,), dst) if fl is not None else None

    x_vals = run.chunk_tokens * math.ceil(cfg.d_model / sg.cols)
    tp.tokens = run.chunk_tokens
    ends: list = [None] * L  # each layer's last record of the previous chunk
    for c in range(run.chunks):  # chunks pipeline through the layers
        tp.share = (c, run.chunks)
        e = tp.compute("embed", top0, None, fmac=False,
                       data=fl.embed_data("embed.x") if fl is not None else None)
        dep = handoff(pb, "embed.handoff", top0, lays[0].row0, x_vals, dtype, e,
                      data=copy("embed.x", bufs[0]("x")))
        for i, lay in enumerate(lays):
            after = (dep,) + ((Dep(ends[i], "all"),) if ends[i] is not None else ())
            dep = ends[i] = tp.forward(i, lay, after, bufs=bufs[i])
            if i + 1 < L:
                dep = handoff(pb, f"L{i}.handoff", lay.row0, lays[i + 1].row0, x_vals, dtype,
                              dep, data=copy(bufs[i]("xo" if train else "x"), bufs[i + 1]("x")))
    tp.share, tp.tokens = (0, 1), run.tokens
    dep, head_grads = emit_lm_head(tp, run, lays[-1].row0, heads, dep,
                                   x_name=bufs[-1]("xo" if train else "x"),
                                   dx_name=bufs[-1]("dx"))
    if train:
        updates = []
        for i in range(L - 1, -1, -1):
            dep, grads = tp.backward(i, lays[i], dep, bufs=bufs[i])
            updates.append(tp.optimizer([f"L{i}.{w}.adam" for w in
                                         list(cfg.layer_weight_shapes()) + ["small"]],
                                        lays[i].reg, tuple(grads)))
            if i > 0:
                dep = handoff(pb, f"L{i}.bwd.handoff", lays[i].row0, lays[i - 1].row0, x_vals,
                              dtype, dep, color="back", data=copy(bufs[i]("dx"),
                                                                  bufs[i - 1]("dx")))
        dep = handoff(pb, "embed.bwd.handoff", lays[0].row0, top0, x_vals, dtype, dep,
                      color="back", data=copy(bufs[0]("dx"), "embed.dx"))
        dep = tp.compute("embed.bwd", top0, dep, fmac=False, data=copy("embed.dx", "embed.grad"))
        tp.optimizer(["embed.adam", "lm_head.adam"], heads[0], (dep,) + tuple(head_grads))
        tp.optimizer(["ln_f.adam"], lays[-1].row0, tuple(updates[:1]))
    missing = tp.missing()
    if missing:
        raise NotImplementedError(f"layer-pipelined: ops not mapped: {', '.join(missing[:6])}")
    used = sg.gx * sg.cols * sg.gy * sg.rows
    fmeta = {} if fl is None else {"views": views, "functional": fl.meta(
        list(zip(lays, bufs, strict=True)), heads, top0) | {"sram_extra_bytes": extra}}
    return pb.build(dtype=dtype, tokens=run.tokens, cores_used=used, meta=fmeta | {
        "strategy": "layer-pipelined", "model": cfg.name, "phase": phase, "batch": batch,
        "prompt": prompt, "context": context, "dtype": dtype, "sparsity": sparsity,
        "region_cols": sg.cols, "region_rows": sg.rows, "regions": L + k, "table_regions": k,
        "chunks": run.chunks, "region_shape": region_shape,
        "grid_cols": run.cols, "grid_rows": run.rows,
        "graph_flops": int(sum(o.flops for o in ops.values())), "offwafer_flops": 0,
        "sram_buffers_per_core": buffers,
        "attention": {"groups": lay0.ra, "rows_per_group": lay0.g},
        "kv_context_limit": kv_context_limit(cfg, hw, buffers, lay0, run, 1)})


def _map_stage(cfg: GPTConfig, hw: HardwareConfig, stage: tuple, **kw) -> Program:
    """One wafer's slice of a multi-wafer pipeline. Training: the forward hands its output to
    the next wafer, the backward receives the gradient from it and hands its own back; each
    wafer updates the weights it holds."""
    first, layers, with_embed, with_head = stage
    sub = cfg.with_overrides(n_layers=layers)
    run = make_run(sub, hw, **kw)
    ops = run.ops()
    L = layers
    sg, k = choose_slots(run)[:2] if with_head or with_embed else (slot_grid(run.cols, run.rows, L), 0)
    lay0 = Layout.of(Region(0, 0, sg.cols, sg.rows), sub, run.phase == "train")
    train = run.phase == "train"
    buffers = layer_buffers(sub, lay0, run.tokens, run.keys, run.batch, run.dtype,
                            train=train)
    check_buffers(f"each layer region of the wafer with layers {first}..{first + L - 1}", run,
                  buffers, lay0.reg)
    names = [f"L{i}" for i in range(L)] + [f"head{j}" for j in range(k)]
    placed = place_chain(layer_graph(names, [1] * (L + k - 1)), sg)
    pb = ProgramBuilder(f"{cfg.name}-{run.phase}-wafer-layers{first}-{first + L - 1}")
    tp = TP2D(pb, sub, ops, run.dtype, run.sparsity, run.tokens)
    lays = [Layout.of(placed[f"L{i}"], sub, train) for i in range(L)]
    for i, lay in enumerate(lays):
        for name, v in buffers.items():
            pb.alloc(f"L{i}.{name}", lay.reg, v)
    heads = [placed[f"head{j}"] for j in range(k)]
    for j, hr in enumerate(heads):
        pb.alloc(f"head{j}.table", hr,
                 math.ceil(run.table_bytes * (7 if train else 1) / (k * hr.size)))
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
                          "sram_buffers_per_core": buffers})
