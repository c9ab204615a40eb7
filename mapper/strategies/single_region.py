"""Strategies that run every layer, one after another, on one region (the whole grid).

- layer-sequential, weight-resident: all layers' weights (and the embedding table) are spread
  over the region and stay in SRAM; the layers run one after another on it (the design used
  for on-wafer LLM inference research, e.g. WaferLLM).
- weight-streaming: activations stay on the wafer, each layer's weights stream in over the
  off-wafer I/O (double-buffered: layer i+1 streams in while layer i computes); when training,
  the backward pass streams the weights in again and the gradients out, and the optimizer
  update runs off the wafer (its FLOPs are reported as `offwafer_flops`, not simulated).

A prefill in chunks: each layer runs the chunks in order (a chunk attends to the keys of the
earlier ones), and chunks are in flight in two layers at a time (chunk c + 1 in layer i while
chunk c runs in layer i + 1); every chunk's layer input waits between the layers.
"""

from __future__ import annotations

import math

from mapper.strategies.common import (
    Run,
    alloc_group,
    check_buffers,
    check_total_weights,
    chunked,
    emit_lm_head,
    head_tree_recv,
    kv_context_limit,
    make_run,
    mapping_meta,
    part_bufs,
    resolve_attention,
    shared_tiles,
)
from mapper.strategies.functional_layout import (
    FLayout,
    LayerBufs,
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
    streamed_layer_params,
)
from mapper.strategies.parts import part_spans
from mapper.strategies.tp2d import TP2D, Layout, layer_buffers
from workloads.models import GPTConfig
from wse_sim.hardware import HardwareConfig
from wse_sim.precision import Precision
from wse_sim.program import Dep, IoTransfer, Program, ProgramBuilder, Region
from wse_sim.sparsity import Sparsity


def layer_weight_bytes(run: Run, i: int) -> int:
    """Bytes of layer i's weights that stream in (an MoE layer: its chosen experts'): the
    weight matrices in the weights dtype, compressed as the run's sparse format says
    (docs/sparsity.md), norm gains and biases in the run's dtype."""
    small = run.cfg.layer_small_params(i)
    return run.layer_matrix_bytes(i, streamed_layer_params(run, i) - small) + small * run.bytes


def map_layer_sequential(cfg: GPTConfig, hw: HardwareConfig, **kw) -> Program:
    """All weights resident on one region; layers run one after another."""
    return _map(cfg, hw, streaming=False, **kw)


def map_weight_streaming(cfg: GPTConfig, hw: HardwareConfig, **kw) -> Program:
    """Weights stream in per layer over the off-wafer I/O; activations stay on the wafer."""
    return _map(cfg, hw, streaming=True, **kw)


def _map(cfg: GPTConfig, hw: HardwareConfig, *, streaming: bool, phase: str = "prefill",
         batch: int = 1, prompt: int = 128, context: int = 128, dtype: str = "fp16",
         grid: int | None = None, sparsity: float = 0.0, functional: bool = False,
         chunks: int = 1, micro_batches: int = 1, reduce_algo: str = "chain",
         attention: str = "auto", routing: str | None = None, moe_layout: str | None = None,
         seed: int = 0, precision: Precision | None = None,
         sparse: Sparsity | None = None, check_only: bool = False) -> Program | None:
    """`check_only`: stop after the budget checks (None: it fits). `functional`: attach
    DataOps and tile shapes so that `wse_sim.functional.run_functional` computes the forward
    pass (prefill, in chunks too, and decode; every layer keeps its weights and KV cache in
    its own tiles, the activations share one set, `act.*`; chunks: `_tiles`) or,
    layer-sequential only, the training step's loss and gradients (every layer keeps its
    saved activations, `L{i}.*`, the backward's scratch is shared, `grad.*`; the Adam updates
    stay timing-only). Weight streaming is timed by its I/O records; functionally the weights
    are inputs in place."""
    run = make_run(cfg, hw, phase=phase, batch=batch, prompt=prompt, context=context,
                   dtype=dtype, grid=grid, sparsity=sparsity, chunks=chunks,
                   micro_batches=micro_batches, reduce_algo=reduce_algo, attention=attention,
                   routing=routing, moe_layout=moe_layout, seed=seed, functional=functional,
                   precision=precision, sparse=sparse)
    name = "weight-streaming" if streaming else "layer-sequential"
    check_moe_strategy(cfg, name, functional)
    if micro_batches > 1:
        raise NotImplementedError(f"{name}: a training step in {micro_batches} micro-batches "
                                  "is not mapped (layer-pipelined pipelines them through its "
                                  "layer regions); use micro-batches 1")
    if not streaming:
        check_total_weights(run)
    L, train = cfg.n_layers, phase == "train"
    reg = Region(0, 0, run.cols, run.rows)
    adam = 7 if (train and not streaming) else 1
    table = run.table_bytes * (2 if streaming else adam)

    def sizes(r: Run, lay: Layout) -> dict:
        if cfg.is_moe:
            b = moe_layer_buffers(r, lay, weight_layers=L, stream_weights=streaming)
        else:
            b = layer_buffers(cfg, lay, r.chunk_tokens, r.keys, r.batch, dtype, train=train,
                              weight_layers=L, stream_weights=streaming,
                              reduce_algo=r.reduce_algo, prec=r.precision, sp=r.sparse)
        layer_recv = b.pop("tree_recv", 0)
        recv = max(layer_recv, head_tree_recv(r, reg, 1))  # never live at once
        if r.chunks > 1:  # every chunk's layer input waits between layers (x_shard: one's)
            x = r.chunk_tokens * math.ceil(cfg.d_model / reg.cols) * r.bytes
            b["chunk_outputs"] = (r.chunks - 1) * x
            if L > 1:  # the scratch of a chunk in the layer before (two layers in flight)
                b["chunk_in_flight"] = x + b["partial"] + b["scores"] + layer_recv
        return b | ({"tree_recv": recv} if recv else {}) | {"table": math.ceil(table / reg.size)}

    def fits(r: Run, lay: Layout) -> bool:
        return sum(sizes(r, lay).values()) <= hw.sram_bytes

    def layout(r: Run) -> Layout:
        return Layout.fitted(reg, cfg, train, r.attention, lambda la: fits(r, la))

    run = resolve_attention(run, lambda r: fits(r, layout(r)))
    lay = layout(run)
    run = chunked(run, lambda r: fits(r, lay))
    ops = run.ops()
    buffers = sizes(run, lay)
    check_buffers("the region", run, buffers, reg)
    if check_only:
        return None
    pb = ProgramBuilder(f"{cfg.name}-{phase}-{name}")
    n, parts = run.chunks, part_spans(run)
    fl = make_layout(cfg, run, reg.rows, reg.cols, kv_layers=L, row_groups=lay.g > 1) \
        if functional else None
    fls = [fl] * n if fl is None or n == 1 else [fl.chunk(s0, ns) for *_, s0, ns in parts]
    if n == 1:
        bufs = [[LayerBufs(f"L{i}.", f"L{i}." if train else "act.", "grad.")
                 for i in range(L)]]
    else:
        bufs = [[part_bufs(i, c, parts, False, False, acts=f"act.l{i % 2}") for i in range(L)]
                for c in range(n)]
    tiles = None if fl is None else _tiles(fls, parts, bufs, lay, reg, train, run.reduce_algo)
    for i in range(L if tiles is not None else 0):
        tiles = functional_tiles(fl, run, lay, bufs[0][i], i, tiles)
    views, extra = alloc_group(pb, "", reg, buffers, tiles)
    tp = TP2D(pb, cfg, ops, dtype, run.sparse, run.chunk_tokens, fl, run.reduce_algo,
              run.precision)
    tp.moe = MoEFFN(run) if cfg.is_moe else None
    x_vals = run.chunk_tokens * math.ceil(cfg.d_model / reg.cols)
    fw = _Forward(pb, tp, run, lay, reg, streaming, fls, parts, bufs)
    dep = fw.emit(x_vals)
    tp.share, tp.tokens, tp.fl = (0, 1), run.tokens, fls[-1]
    w = fw.stream_in("lm_head.weights.in", cfg.d_model * cfg.vocab_size * run.weight_bytes,
                     Dep(dep, "all"))
    dep, head_grads = emit_lm_head(tp, run, lay.row0, [reg], dep,
                                   weight_dep=Dep(w) if w is not None else None,
                                   x_name=bufs[-1][-1]("xo" if train else "x"),
                                   dx_name=bufs[-1][-1]("dx"))
    offwafer = _backward(fw, dep, head_grads, x_vals, ops) if train else 0
    missing = tp.missing(skip_kinds=("optimizer",) if streaming else ())
    if missing:
        raise NotImplementedError(f"{name}: ops not mapped: {', '.join(missing[:6])}")
    fmeta = {} if fl is None else {"views": views, "functional": fl.meta(
        [(lay, b) for b in bufs[0]], [reg], lay.row0, parts if n > 1 else None)
        | {"sram_extra_bytes": extra}}
    return pb.build(dtype=dtype, tokens=run.tokens, cores_used=reg.size, meta=fmeta | {
        "strategy": name, "model": cfg.name, "phase": phase, "batch": batch, "prompt": prompt,
        "context": context, "dtype": dtype, "sparsity": sparsity, "region_cols": reg.cols,
        "region_rows": reg.rows, "regions": 1, "chunks": run.chunks,
        "micro_batches": run.micro_batches, "grid_cols": run.cols, "grid_rows": run.rows,
        "graph_flops": int(sum(o.flops for o in ops.values())), "offwafer_flops": offwafer,
        "sram_buffers_per_core": buffers,
        "attention": {"groups": lay.ra, "rows_per_group": lay.g},
        "kv_context_limit": kv_context_limit(cfg, hw, buffers, lay, run, L)}
        | run.sparse.to_meta() | mapping_meta(run, tp) | ({"moe": tp.moe.meta()} if tp.moe else {}))


class _Forward:
    """Emits the embedding and every layer's forward of a single-region mapping, chunk by
    chunk: layer i's weights stream in before its first chunk (weight streaming; double
    buffer: once layer i - 2 has finished), chunk c of layer i waits for chunk c of layer
    i - 1, for chunk c - 1 of layer i and, its first, for the last of layer i - 2 (two layers
    in flight: two scratch sets)."""

    def __init__(self, pb, tp, run: Run, lay: Layout, reg: Region, streaming: bool, fls, parts,
                 bufs):
        self.pb, self.tp, self.run, self.lay, self.reg = pb, tp, run, lay, reg
        self.streaming, self.fls, self.parts, self.bufs = streaming, fls, parts, bufs
        self.L, self.n = run.cfg.n_layers, run.chunks
        self.out = [[0] * self.n for _ in range(self.L)]  # [i][c]: what the next ones wait for
        self.io = None  # the I/O channel's last transfer
        self.wts: dict[int, int | None] = {}
        self.embeds: list[int] = []

    def stream_in(self, label: str, nbytes: int, after=(), region: Region | None = None
                  ) -> int | None:
        """An input transfer over the off-wafer I/O (weight streaming only; None otherwise),
        after `after` and after the channel's previous transfer: one channel, in order."""
        if not self.streaming:
            return None
        deps = after if isinstance(after, tuple) else (after,)
        if self.io is not None:
            deps = (Dep(self.io, "all"),) + deps
        self.io = self.pb.add(IoTransfer(label, region or self.reg, int(nbytes), "in",
                                         deps=deps))
        return self.io

    def emit(self, x_vals: int) -> int:
        """Every record of the forward; returns the last layer's last record. A dense model
        with one sparsity for all layers repeats its layers: one loop, which the fast engine
        can fast-forward (docs/hardware-model.md, "Loops"). Layer by layer (every chunk in
        each), layers 2 .. L - 1 the loop (layer 0 waits for the embedding, layer 1 for no
        layer two back): the order in time under weight streaming, whose layers wait for
        their weights. Resident weights with chunks: in pipeline beats (`beat_order`), two
        layers a loop iteration."""
        pb, tp, run, lay, fls, n, L = self.pb, self.tp, self.run, self.lay, self.fls, self.n, \
            self.L
        for c in range(n):
            tp.share, tp.fl, sfx = (c, n), fls[c], self.parts[c][0]
            # token embeddings are gathered off the wafer and stream in
            io = self.stream_in("embed.in", x_vals * self.reg.cols * run.bytes,
                                region=lay.row0)
            self.embeds.append(tp.compute(
                "embed", lay.row0, io, fmac=False, data=None if tp.fl is None else
                fls[c].embed_data(self.bufs[c][0]("x"), sfx)))
        looped = not run.cfg.is_moe and L >= 4 and len(set(run.sparse.per_layer)) <= 1
        if n == 1 or self.streaming:
            for i in range(2 if looped else L):
                for c in range(n):
                    self.block(i, c)
            if looped:
                pb.repeat("layers", L - 2, lambda k: [self.block(k + 2, c) for c in range(n)])
        else:
            pre, its, post = beat_order(L, n, looped)
            for b in pre:
                self.block(*b)
            pb.repeat("layer-pairs", len(its), lambda k: [self.block(*b) for b in its[k]])
            for b in post:
                self.block(*b)
        return self.out[L - 1][n - 1]

    def block(self, i: int, c: int) -> None:
        """Chunk c through layer i (its weights streamed in first when c is 0)."""
        out, n, L, tp = self.out, self.n, self.L, self.tp
        if c == 0:
            self.wts[i] = self.stream_in(f"L{i}.weights.in", layer_weight_bytes(self.run, i),
                                         (Dep(out[i - 2][n - 1], "all"),) if i >= 2 else ())
        tp.share, tp.fl = (c, n), self.fls[c]
        prev = (Dep(out[i][c - 1], "all"),) if c > 0 else \
            ((Dep(out[i - 2][n - 1], "all"),) if i >= 2 and n > 1 else ())
        w, bufs = self.wts[i], self.bufs[c]
        out[i][c] = tp.forward(i, self.lay, (out[i - 1][c] if i else self.embeds[c],) + prev,
                               weight_dep=Dep(w, "same") if w is not None else None,
                               bufs=bufs[i], xo=bufs[i + 1]("x") if i + 1 < L else None)


def _backward(fw: _Forward, dep: int, head_grads, x_vals: int, ops: dict) -> int:
    """A training step's backward after the LM head's, from the last layer down: weight
    streaming streams each layer's weights in again and its gradients out (the update runs
    off the wafer: returns its FLOPs), layer-sequential runs Adam on the wafer (returns 0)."""
    pb, tp, run, lay, reg, bufs = fw.pb, fw.tp, fw.run, fw.lay, fw.reg, fw.bufs
    cfg, streaming, functional = run.cfg, fw.streaming, fw.fls[0] is not None
    if streaming:
        pb.add(IoTransfer("lm_head.grads.out", reg, cfg.d_model * cfg.vocab_size * run.bytes,
                          "out", deps=tuple(Dep(g, "all") for g in head_grads)))
    for i in range(cfg.n_layers - 1, -1, -1):
        w = fw.stream_in(f"L{i}.weights.bwd.in", layer_weight_bytes(run, i), Dep(dep, "all"))
        dep, grads = tp.backward(i, lay, dep, weight_dep=Dep(w) if w is not None else None,
                                 bufs=bufs[0][i] if functional else None)
        if streaming:
            pb.add(IoTransfer(f"L{i}.grads.out", reg, layer_weight_bytes(run, i), "out",
                              deps=tuple(Dep(g, "all") for g in grads)))
        else:
            tp.optimizer([f"L{i}.{n}.adam" for n in list(cfg.layer_weight_shapes()) + ["small"]],
                         reg, tuple(grads))
    dep = tp.compute("embed.bwd", lay.row0, dep, fmac=False, data=None if not functional else
                     dataop("copy", (bufs[0][0]("dx"),), "embed.grad"))
    if not streaming:
        tp.optimizer(["embed.adam", "lm_head.adam", "ln_f.adam"], reg, (dep,) + tuple(head_grads))
        return 0
    pb.add(IoTransfer("embed.grads.out", lay.row0, x_vals * reg.cols * run.bytes, "out",
                      deps=(Dep(dep),)))
    return sum(int(o.flops) for o in ops.values() if o.kind == "optimizer")


def beat_order(layers: int, chunks: int, looped: bool) -> tuple[list, list, list]:
    """A chunked prefill's (layer, chunk) blocks in the order they run. Chunk c of layer i
    waits for chunk c of layer i - 1, chunk c - 1 of layer i and (c = 0) the last chunk of
    layer i - 2, so without contention it starts at beat (i // 2) chunks + i % 2 + c: the
    layers run in pairs, the second one chunk behind the first. Sorted by beat, the lower
    layer first. Returns the blocks before the loop, its iterations (beats [j chunks,
    (j + 1) chunks) for j = 1 .. (layers - 2) // 2: layer 2j - 1's last chunk, layer 2j's
    chunks and layer 2j + 1's but its last; each the one before moved by two layers) and the
    blocks after it. Emitted in this order, the window path's window spans a beat or two, not
    a whole layer (`looped` False: every block before)."""
    def beat(b: tuple[int, int]) -> int:
        return (b[0] // 2) * chunks + b[0] % 2 + b[1]

    order = sorted(((i, c) for i in range(layers) for c in range(chunks)),
                   key=lambda b: (beat(b), b[0]))
    pairs = max(0, (layers - 2) // 2) if looped else 0
    if not pairs:
        return order, [], []
    its = [[b for b in order if j * chunks <= beat(b) < (j + 1) * chunks]
           for j in range(1, pairs + 1)]
    return ([b for b in order if beat(b) < chunks], its,
            [b for b in order if beat(b) >= (pairs + 1) * chunks])


def _tiles(fls: list[FLayout], parts: list, bufs: list, lay: Layout, reg: Region, train: bool,
           algo: str) -> dict:
    """Every tile of a functional run on the region: the layers' weights and KV caches, one
    set of activations for every layer (training: each layer keeps its own) and the table's.
    A prefill in chunks: each chunk's layer input `x` is its own (every chunk's waits between
    layers; the gathered embedding rows arrive in it; every layer's view of it is the same
    bytes), its other activations share bytes with the other chunks' of the layers of the same
    parity (one chunk at a time in a layer; two layers in flight: two scratch sets)."""
    f0, L, n = fls[0], len(bufs[0]), len(parts)
    tiles = f0.embed_tiles(lay.row0, own_x=False, scratch=True) if n == 1 else {}
    tiles |= fls[-1].lnf_tiles(lay.row0, False) | f0.head_tiles(0, reg)
    if n == 1:
        for i in range(L):
            tiles |= f0.train_tiles(lay, bufs[0][i], scratch=i == 0) if train else \
                f0.layer_tiles(lay, bufs[0][i], acts=i == 0)
    else:
        for i in range(L):
            tiles |= f0.layer_tiles(lay, bufs[0][i], acts=False)
        for par in range(min(L, 2)):  # layers of either parity: a set of scratch slots
            acts = {}
            for fc, b, (sfx, *_) in zip(fls, bufs, parts, strict=True):
                a = shared_tiles(fc.layer_tiles(lay, b[par], weights=False), b[par].a,
                                 own=("x",), tag=f".l{par}")
                x = b[par]("x")
                acts[x] = a.pop(x)[:3] + ("x" + sfx,)  # every layer's view of the chunk's x
                acts |= a
                if par == 0:
                    rows = fc.embed_tiles(lay.row0, own_x=False, sfx=sfx)
                    rows["embed.rows" + sfx] = rows["embed.rows" + sfx][:3] + ("x" + sfx,)
                    tiles |= rows
            recv = layer_recv_tiles(acts, [b[par] for b in bufs], algo)
            tiles |= acts | {k: v[:3] + (v[3] + f".l{par}",) for k, v in recv.items()}
        return tiles | _train_tiles(f0, lay, reg, train) | head_recv_tiles(tiles, 1, algo)
    tiles |= _train_tiles(f0, lay, reg, train)
    return tiles | layer_recv_tiles(tiles, bufs[0], algo) | head_recv_tiles(tiles, 1, algo)


def _train_tiles(f0: FLayout, lay: Layout, reg: Region, train: bool) -> dict:
    if not train:
        return {}
    return f0.train_head_tiles(reg) | f0.train_lnf_tiles(lay.row0, False) \
        | f0.train_embed_tiles(lay.row0)
