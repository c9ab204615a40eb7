"""Layer-pipelined training in the 2-D layout (issue 18): every layer on its own square region
of the grid, the LM head and the loss on one more, each region's activations tiled over it as
in the layer-sequential 2-D training step (`layout2d_train`), and the micro-batches in a
pipeline (docs/strategies.md, "2-D layout: layer-pipelined training").

- **Regions.** The largest side s whose s x s squares, cut from the grid, number at least
  layers + 1, laid in a snake (left to right, then right to left a row lower) so that
  consecutive regions share an edge. Layer i runs on region i, the LM head on region L.
- **Weights** stay in their layer's region, in both alignments the step reads (`.w`, `.wb`,
  as layer-sequential 2-D training keeps them); the LM head's in its region once. Nothing
  streams in but each micro-batch's embeddings (into region 0; the table stays with the host).
- **Hand-offs.** A layer's output moves to the next region as one shift: every core sends its
  tile to the core at the same place of the next region (a `Unicast` by s cores), over the
  links between them; the gradient dX moves back the same way (fp32). A hand-off waits
  until both regions have finished what they did before (the input tile is free then), and
  what either does next waits for it.
- **Schedule** (GPipe): every micro-batch's forward, beat by beat (region r does micro-batch
  b - r in beat b; the head region runs the loss and its own backward right after its
  forward), then every micro-batch's backward the same way from the last layer down. Each
  region keeps every micro-batch's saved activations until its backward (its layer input
  with `recompute`, else every tile its backward reads).
- **Gradients** accumulate in the region in fp32; after the last micro-batch's backward of a
  layer they stream out, the host runs the optimizer, and the updated weights stream back in
  (`offwafer`, as in layer-sequential 2-D training); the head's likewise.

Functional runs (one micro-batch) compute the real loss and gradients: every tile is
allocated over the squares' bounding box under the single region's names (each core holds its
own), the hand-offs carry the layer input `L{i}.x` forward and the gradient `gx` back, and
`layout2d_train_data.train_inputs` / `train_grads` place the weights and read the gradients
in their layer's square. Not mapped (one line): the on-wafer optimizer.
"""

from __future__ import annotations

import dataclasses

from mapper.placement import MappingError
from mapper.strategies import layout2d_optimizer as opt
from mapper.strategies.common import Run, alloc_group, check_buffers, make_run
from mapper.strategies.layout2d import (
    Emitter,
    Tiles,
    _refuse,
    build_2d,
    check_layout,
    layer_weight_tile_bytes,
)
from mapper.strategies.layout2d_train import (
    RING_ALGO,
    IoChain,
    Trainer,
    _all,
    check_options,
    check_train,
    step_scratch,
    train_algos,
    train_buffers,
    train_shapes,
)
from mapper.strategies.layout2d_train_data import functional_allocs
from mapper.strategies.single_region import layer_weight_bytes
from mapper.strategies.tp2d import COLORS, TP2D
from wse_sim.program import (
    Compute,
    DataOp,
    Dep,
    Multicast,
    ProgramBuilder,
    Region,
    Unicast,
    wavelets_for,
)

# buffers of the single 2-D region that only the LM head's region holds, and only a layer's
_HEAD_ONLY = ("lm_head", "logits")
_LAYER_ONLY = ("weights", "saved_activations", "weight_grads", "attention", "attention_bwd",
               "grad_accumulators")


def pipeline_regions(cols: int, rows: int, n: int) -> tuple[int, list[tuple[int, int]]]:
    """The largest side s with (cols // s) x (rows // s) >= n, and the origins of n s x s
    regions in a snake: along the first row of squares, back along the second, ... (each
    region shares an edge with the one before). (0, []) when not even 1 x 1 squares do."""
    for s in range(min(cols, rows), 0, -1):
        across, down = cols // s, rows // s
        if across * down >= n:
            out: list[tuple[int, int]] = []
            for r in range(down):
                xs = range(across) if r % 2 == 0 else range(across - 1, -1, -1)
                out += [(x * s, r * s) for x in xs]
            return s, out[:n]
    return 0, []


def pipelined_buffers(run: Run, t: Tiles, recompute: bool,
                      gemm_algo: str = "auto") -> tuple[dict[str, int], dict[str, int]]:
    """SRAM bytes per buffer class on the fullest core of a layer's region and of the LM
    head's region. A layer's region: one layer's weights in both alignments, the saved
    activations of every micro-batch in flight (GPipe: all of them), the layer's weight
    gradients (fp32, accumulated over the micro-batches), the step's GEMM and backward
    scratch. The head's region: the LM head's weights and gradient, the logits, the scratch."""
    one = train_buffers(run, t, recompute, gemm_algo, streaming=False)
    keep_per_layer = one["saved_activations"] // run.cfg.n_layers
    algos = train_algos(run, t.P, gemm_algo)
    shapes = train_shapes(run, t.P)
    head_shape = {"lm_head": shapes.pop("lm_head")}
    layer = {k: v for k, v in one.items() if k not in _HEAD_ONLY}
    layer |= step_scratch(run, t.P, algos, recompute, shapes) | {
        "weights": layer_weight_tile_bytes(run, t, copies=2),
        "saved_activations": run.micro_batches * keep_per_layer}
    layer.pop("grad_accumulators", None)  # `weight_grads` accumulates the region's one layer
    head = {k: v for k, v in one.items() if k not in _LAYER_ONLY}
    head |= step_scratch(run, t.P, algos, recompute, head_shape)
    return layer, head


class Shifted:
    """A ProgramBuilder seen from `origin`: every record and buffer added through it is moved
    by that many cores (its regions, fixed destinations and sources, `at` dependencies), so
    that the 2-D layout's emitters, which build on a region at the mesh origin, build on any
    region. Everything else is the builder's (loops name tasks by index: nothing to move)."""

    def __init__(self, pb):
        self.pb = pb
        self.origin = (0, 0)

    def __getattr__(self, name):
        return getattr(self.pb, name)

    def add(self, task) -> int:
        return self.pb.add(moved(task, *self.origin))

    def alloc(self, name: str, region: Region, bytes_per_core: int, shape: tuple = (),
              dtype: str = "fp32") -> None:
        self.pb.alloc(name, _region(region, *self.origin), bytes_per_core, shape, dtype)


def _region(r: Region, ox: int, oy: int) -> Region:
    return Region(r.x + ox, r.y + oy, r.cols, r.rows)


def moved(task, ox: int, oy: int):
    """`task` moved by (ox, oy) cores: its region, a Unicast's fixed `to`, a Multicast's
    `src` and its `at` dependencies (offsets and rings are relative: unchanged); a Compute's
    DataOp learns the square's `origin` (`layout2d_data.local_cores`)."""
    if ox == 0 and oy == 0:
        return task
    change: dict = {"region": _region(task.region, ox, oy)}
    if isinstance(task, Unicast) and task.to is not None:
        change["to"] = (task.to[0] + ox, task.to[1] + oy)
    if isinstance(task, Multicast):
        change["src"] = (task.src[0] + ox, task.src[1] + oy)
    if isinstance(task, Compute) and task.data is not None:  # kernels that place by core
        change["data"] = dataclasses.replace(task.data, params=task.data.params + (
            ("origin", (ox, oy)),))
    if any(d.rule == "at" for d in task.deps):
        change["deps"] = tuple(dataclasses.replace(d, dx=d.dx + ox, dy=d.dy + oy)
                               if d.rule == "at" else d for d in task.deps)
    return dataclasses.replace(task, **change)


class Pipeline:
    """Emits the step's micro-batches over the regions (module docstring) through a `Trainer`
    whose builder is a `Shifted` one."""

    def __init__(self, tr, sb: Shifted, origins: list[tuple[int, int]]):
        self.tr, self.sb, self.origins = tr, sb, origins
        self.pb, self.run, self.P = sb.pb, tr.run, tr.P
        self.L = self.run.cfg.n_layers
        self.busy: list[tuple] = [()] * (self.L + 1)  # what a region's next work waits for
        self.io = IoChain(self.pb)
        self.out: dict = {}  # (region, micro-batch, "fwd"|"bwd") -> what its result waits for

    def region(self, r: int) -> Region:
        return Region(*self.origins[r], self.P, self.P)

    def at(self, r: int, m: int) -> None:
        """Region r's micro-batch m is emitted next."""
        self.sb.origin = self.origins[r]
        self.tr.tp.share = (m, self.run.micro_batches)

    def xfer(self, label: str, r: int, nbytes: int, direction: str, after) -> tuple:
        return self.io(label, self.region(r), nbytes, direction, after)

    def hand(self, label: str, src: int, dst: int, dep: tuple, values: int,
             dtype: str, tile: str) -> tuple:
        """Every core of region `src` sends its tile to the same place in region `dst`,
        once `dep` holds and both regions have finished what they did before; what either
        does next waits for it (it crosses both regions' links: each region's streams then
        run in the order they are emitted, which the fast engine's step path needs)."""
        (x0, y0), (x1, y1) = self.origins[src], self.origins[dst]
        h = self.pb.add(Unicast(label, self.region(src), wavelets_for(values, dtype),
                                dx=x1 - x0, dy=y1 - y0, color=COLORS["handoff"],
                                deps=tuple(dep) + self.busy[src] + self.busy[dst],
                                data=DataOp("copy", (tile,), tile) if self.tr.fd else None))
        for r in (src, dst):
            self.busy[r] = (Dep(h, "all"),)
        return (Dep(h),)

    def forward(self, r: int, m: int) -> None:
        """Region r's forward of micro-batch m (the head's: loss and its backward too)."""
        tr, run, t = self.tr, self.run, self.tr.t
        cfg, M = run.cfg, run.micro_batches
        if r == 0:
            self.at(0, m)
            x = self.xfer("embed.in", 0, tr.em.tokens * cfg.d_model * run.bytes, "in", ())
            start = (Dep(tr.tp.compute("embed", tr.reg, x + self.busy[0], fmac=False)),)
        else:
            start = self.hand(f"L{r - 1}.act_out", r - 1, r, self.out[(r - 1, m, "fwd")],
                              t.tm * t.d, run.dtype, f"L{r}.x")
        self.at(r, m)
        if r < self.L:
            end = tr.forward(r, start + self.busy[r], ())
            self.busy[r] = _all(end)
            self.out[(r, m, "fwd")] = end
            return
        dx, grads = tr.head(start + self.busy[r], ())
        self.busy[r] = _all(dx)
        self.out[(r, m, "bwd")] = dx
        if m == M - 1:  # the head's gradient out, its updated weights in
            head_bytes = cfg.d_model * cfg.vocab_size * run.weight_bytes
            g = self.xfer("lm_head.grads.out", r, cfg.d_model * cfg.vocab_size * run.bytes,
                          "out", grads)
            self.xfer("lm_head.weights.update.in", r, head_bytes, "in", g)

    def backward(self, r: int, m: int, w_bytes: int) -> None:
        """Layer r's backward of micro-batch m (after its recompute), the gradient handed to
        region r - 1; after the last micro-batch the layer's gradients out and its updated
        weights in."""
        tr, run, t = self.tr, self.run, self.tr.t
        label = "lm_head" if r + 1 == self.L else f"L{r + 1}"
        dy = self.hand(f"{label}.grad_out", r + 1, r, self.out[(r + 1, m, "bwd")],
                       t.tm * t.d, "fp32", "gx")
        self.at(r, m)
        ready = dy + self.busy[r]
        fwd = tr.recomputed(r, ready, ()) if tr.recompute else ()
        dx, grads = tr.layer_bwd(r, ready, (), fwd)
        self.busy[r] = _all(dx)
        self.out[(r, m, "bwd")] = dx
        if m == run.micro_batches - 1:
            g = self.xfer(f"L{r}.grads.out", r, w_bytes, "out", grads)
            small = run.cfg.layer_small_params(r) * run.bytes
            self.xfer(f"L{r}.weights.update.in", r, 2 * w_bytes - small, "in", g)
        if r == 0:
            self.at(0, m)
            e = tr.tp.compute("embed.bwd", tr.reg, dx, fmac=False,
                              data=tr.data(tr.head_data, "embed.bwd"))
            self.busy[0] = (Dep(e, "all"),)  # it reads gx, which the next hand-off writes
            self.xfer("embed.grads.out", 0, tr.em.tokens * run.cfg.d_model * run.bytes,
                      "out", (e,))

    def emit(self) -> None:
        """GPipe: the forward beats (region r, micro-batch b - r), then the backward beats
        (layer r, micro-batch c - (L - 1 - r))."""
        L, M = self.L, self.run.micro_batches
        for b in range(M + L):
            for r in range(min(b, L), -1, -1):
                if 0 <= b - r < M:
                    self.forward(r, b - r)
        w_bytes = [layer_weight_bytes(self.run, i) for i in range(L)]
        for c in range(M + L - 1):
            for r in range(L):
                m = c - (L - 1 - r)
                if 0 <= m < M:
                    self.backward(r, m, w_bytes[r])
        self.sb.origin = (0, 0)


def map_pipelined_train_2d(cfg, hw, *, gemm_algo: str = "auto", functional: bool = False,
                           recompute: bool = True, check_only: bool = False,
                           optimizer: str = "offwafer", **kw):
    """A layer-pipelined training step in the 2-D layout (module docstring): budgets checked
    before anything is built. `kw`: the run's parameters, as `common.make_run` takes them.
    `check_only`: stop after the checks (None: it fits)."""
    check_layout("2d", gemm_algo)
    run = make_run(cfg, hw, functional=functional, **kw)
    _refuse(run, functional)
    if run.phase != "train":
        raise NotImplementedError(f"layout 2d with layer-pipelined: maps training steps, not "
                                  f"{run.phase} (a layer-pipelined {run.phase} runs in the "
                                  "top-row layout)")
    check_options(recompute, optimizer)
    if optimizer != "offwafer":
        raise NotImplementedError(f"layout 2d with layer-pipelined: optimizer {optimizer} is "
                                  "not mapped (the on-wafer update leaves the weights in the "
                                  "gradients' rotated layout); optimizer offwafer is")
    check_train(run, False, functional, optimizer)
    L = run.cfg.n_layers
    P, origins = pipeline_regions(run.cols, run.rows, L + 1)
    where = f" ({L + 1} regions of {P} x {P}: {L} layers and the LM head, on the " \
        f"{run.cols} x {run.rows} grid)"
    if P < 2:
        raise MappingError(f"model {cfg.name} does not fit layer-pipelined training in the "
                           f"2-D layout: {L + 1} regions (its {L} layers and the LM head) of at "
                           f"least 2 x 2 cores need more than the {run.cols} x {run.rows} grid")
    t = Tiles.of(run.cfg, P, run.chunk_tokens)
    algos = train_algos(run, P, gemm_algo)
    layer_buf, head_buf = pipelined_buffers(run, t, recompute, gemm_algo)
    reg = Region(0, 0, P, P)
    check_buffers("each layer's region", run, layer_buf, reg, where)
    check_buffers("the LM head's region", run, head_buf, reg, where)
    if check_only:
        return None
    pb = ProgramBuilder(f"{run.cfg.name}-train-layer-pipelined-2d")
    sb = Shifted(pb)
    fd, fmeta = None, {}
    if functional:  # one arena over the squares' bounding box, each region kind's bytes
        box = Region(0, 0, max(x for x, _ in origins) + P, max(y for _, y in origins) + P)
        both = {k: max(layer_buf.get(k, 0), head_buf.get(k, 0)) for k in layer_buf | head_buf}
        fd, fmeta = functional_allocs(pb, run, t, algos, recompute, optimizer, box, both)
        fmeta["functional_2d_train"]["origins"] = [list(o) for o in origins]
    else:
        for r, o in enumerate(origins):
            sb.origin = o
            alloc_group(sb, "", reg, layer_buf if r < L else head_buf)
    ops = run.ops()
    tp = TP2D(sb, run.cfg, ops, run.dtype, run.sparse, run.chunk_tokens, None,
              run.reduce_algo, run.precision)
    em = Emitter(sb, tp, run, t, RING_ALGO, fd)
    em.tokens, em.training, em.algos = run.chunk_tokens, True, dict(algos)
    tr = Trainer(em, recompute)
    Pipeline(tr, sb, origins).emit()
    # the fullest core's buffers; the other region kind's beside them
    fuller, other = sorted((layer_buf, head_buf), key=lambda b: -sum(b.values()))
    extra = {"head_sram_buffers_per_core" if other is head_buf
             else "layer_sram_buffers_per_core": other,
             "recompute": "on" if recompute else "off", "recompute_flops": tr.recompute_flops,
             "optimizer": optimizer, "region_origins": [list(o) for o in origins],
             "schedule": "gpipe"} | fmeta
    return build_2d(pb, run, tp, "layer-pipelined", algos, t, fuller, extra,
                    offwafer_flops=opt.offwafer_flops(ops, optimizer), regions=L + 1)
