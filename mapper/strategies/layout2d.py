"""Prefill with the activations tiled 2-D over a P x P region (`layout="2d"`, issue 18).

The top-row layout (`tp2d`) keeps a layer's activations on one row of cores: right for decode
(GEMVs), wrong for thousands of tokens. Here tokens x features are tiled over the whole
region and every projection is a 2-D GEMM of the GEMM library (`mapper.gemm.gemm_fragment`):

- Core (x, y) holds token block y (`tm = ceil(T / P)` tokens) and feature block x of every
  activation: the residual stream, Q|K|V, the attention output, the FFN hidden state.
- Weights are resident (layer-sequential) or streamed in per layer (weight-streaming): core
  (x, y) holds block (y, x) of every weight matrix, stored pre-aligned for Cannon / MeshGEMM
  (aligned once when loaded), so each GEMM aligns only its activation operand. The QKV and
  FFN up|gate projections are one GEMM each (their weights side by side; SwiGLU's up and gate
  columns of the same features on the same core, so the act is local).
- The GEMM algorithm is chosen per projection (`gemm_algo`: summa, cannon, meshgemm, or auto:
  the least `gemm_estimate_cycles`).
- Norms: per-row statistics all-reduced along each row (a reduce and a broadcast stream).
- Attention, per K/V head (a loop over the K/V heads): the K|V block of every token block is
  broadcast along its row, then core (x, x) multicasts it down column x, so core (x, y) holds
  query block y's rows and key block x (the transposition every Q K^T needs on a mesh). Then,
  per query head of the group: Q's block broadcast along each row, S = Q K^T on every core,
  the softmax statistics all-reduced along the row, P V, and the partial outputs reduced along
  the row into column 0 and broadcast back along it to the head's feature columns.
  Simplifications (docs/strategies.md, "2-D layout"): the row broadcasts start at column 0
  (the head's columns are somewhere along the row: at most P - 1 hops more than needed), the
  column multicasts end in a barrier, and every key block is computed (the graph counts
  non-causal attention FLOPs too).
- The KV cache stays where the QKV GEMM left it; the LM head takes the last token of every
  sequence to the top row and runs as in the top-row layout (`emit_lm_head`).

Executed FLOPs follow the tiles (padding included, as in `mapper.gemm`): `meta` gives
`graph_flops`, `executed_flops` and `padding_waste`. Functional runs, training and MoE models are not mapped in
this layout yet (NotImplementedError naming them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mapper.gemm import FRAGMENT_ALGOS, choose_gemm_algo, gemm_fragment
from mapper.placement import MappingError
from mapper.strategies.common import (
    Run,
    alloc_group,
    check_buffers,
    check_total_weights,
    emit_lm_head,
    head_tree_recv,
    make_run,
    mapping_meta,
)
from mapper.strategies.tp2d import COLORS, TP2D
from workloads.models import GPTConfig
from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.precision import Precision
from wse_sim.program import (
    Compute,
    Dep,
    IoTransfer,
    LineStream,
    Multicast,
    Program,
    ProgramBuilder,
    Region,
    Unicast,
    wavelets_for,
)
from wse_sim.sparsity import Sparsity

LAYOUTS = ("top-row", "2d")
GEMM_ALGO_CHOICES = ("auto",) + FRAGMENT_ALGOS


@dataclass(frozen=True)
class Tiles:
    """Per-core tile sizes of the 2-D layout on a P x P region for T tokens."""

    P: int
    tm: int    # tokens per row block
    d: int     # model features per column
    q: int     # attention output (n_heads x hd) features per column
    qkv: int   # Q|K|V features per column
    ffn: int   # FFN hidden features per column (up|gate: twice for SwiGLU)
    f: int     # FFN features per column (the down projection's K tile)

    @classmethod
    def of(cls, cfg: GPTConfig, P: int, tokens: int) -> Tiles:
        up = cfg.d_ffn * (2 if cfg.activation == "swiglu" else 1)
        c = math.ceil
        return cls(P, c(tokens / P), c(cfg.d_model / P), c(cfg.q_dim / P),
                   c((cfg.q_dim + 2 * cfg.kv_dim) / P), c(up / P), c(cfg.d_ffn / P))


def gemm_shapes(cfg: GPTConfig, tokens: int) -> dict[str, tuple[int, int, int, tuple]]:
    """The layer's GEMMs: label -> (m, k, n, the graph ops they compute)."""
    up = cfg.d_ffn * (2 if cfg.activation == "swiglu" else 1)
    ups = ("ffn_up", "ffn_gate") if cfg.activation == "swiglu" else ("ffn_up",)
    return {"qkv_proj": (tokens, cfg.d_model, cfg.q_dim + 2 * cfg.kv_dim,
                         ("q_proj", "k_proj", "v_proj")),
            "o_proj": (tokens, cfg.q_dim, cfg.d_model, ("o_proj",)),
            "ffn_up": (tokens, cfg.d_model, up, ups),
            "ffn_down": (tokens, cfg.d_ffn, cfg.d_model, ("ffn_down",))}


def check_layout(layout: str, gemm_algo: str) -> None:
    if layout not in LAYOUTS:
        raise MappingError(f"layout: got {layout!r}, must be one of {', '.join(LAYOUTS)}")
    if gemm_algo not in GEMM_ALGO_CHOICES:
        raise MappingError(f"gemm_algo: got {gemm_algo!r}, must be one of "
                           f"{', '.join(GEMM_ALGO_CHOICES)}")


def _refuse(run: Run, functional: bool) -> None:
    """What this layout does not map yet: one line naming it."""
    cfg = run.cfg
    if run.phase != "prefill":
        raise NotImplementedError(f"layout 2d: maps prefill only, not {run.phase} (decode "
                                  "runs GEMVs: the top-row layout; training in the 2-D "
                                  "layout is issue 18 item 2)")
    if functional:
        raise NotImplementedError("layout 2d: functional runs are not mapped yet (no DataOps "
                                  "for its tiles); time it without --functional")
    if cfg.is_moe:
        raise NotImplementedError(f"layout 2d: MoE models ({cfg.name}) are not mapped")
    if run.chunks > 1:
        raise NotImplementedError(f"layout 2d: a prefill in chunks ({run.chunks}) is not "
                                  "mapped; the tiles hold the whole prompt")
    if run.sparse != Sparsity("dense", 0.0) or run.sparsity:
        raise NotImplementedError("layout 2d: sparse weights are not mapped (the GEMM "
                                  "fragments multiply dense tiles)")
    if run.precision != Precision.of(run.dtype):
        raise NotImplementedError("layout 2d: per-tensor dtypes are not mapped (the GEMM "
                                  f"fragments run in one dtype, {run.dtype})")
    if run.attention != "auto":
        raise MappingError(f"attention: got {run.attention!r}; the 2-D layout has its own "
                           "attention split (keys over columns, queries over rows)")
    P = min(run.cols, run.rows)
    if P < 2:
        raise MappingError(f"layout 2d: needs a grid of at least 2 x 2 cores, got {P} x {P}")


def algos_for(run: Run, P: int, gemm_algo: str) -> dict[str, str]:
    """The algorithm of each of the layer's GEMMs (`auto`: the least estimate)."""
    out = {}
    for label, (m, k, n, _) in gemm_shapes(run.cfg, run.tokens).items():
        out[label] = gemm_algo if gemm_algo != "auto" else choose_gemm_algo(
            run.hw, grid=P, m=m, k=k, n=n, dtype=run.dtype)
    return out


def buffers_2d(run: Run, t: Tiles, algos: dict, streaming: bool) -> dict[str, int]:
    """SRAM bytes per buffer class on the fullest core."""
    from mapper.gemm_common import Plan
    cfg, b, P = run.cfg, run.bytes, t.P
    acc = DTYPE_BYTES[run.precision.accum]
    L = cfg.n_layers
    per_layer = (t.d * t.qkv + t.q * t.d + t.d * t.ffn + t.f * t.d) * run.weight_bytes \
        + math.ceil(cfg.layer_small_params() / (P * P)) * b
    scratch = max(Plan("gemm", algos[label], P, m, k, n, run.dtype).sram_bytes()
                  for label, (m, k, n, _) in gemm_shapes(cfg, run.tokens).items())
    hd = cfg.hd
    out = {
        "weights": per_layer * (2 if streaming else L),
        "activations": t.tm * (2 * t.d + t.qkv + t.q + t.ffn) * b,
        "gemm_scratch": scratch,
        "attention": t.tm * 3 * hd * b + t.tm * t.tm * acc + t.tm * hd * acc + 2 * t.tm * 4,
        "kv_cache": L * t.tm * t.qkv * DTYPE_BYTES[run.precision.kv],
        "table": math.ceil(run.table_bytes * (2 if streaming else 1) / (P * P)),
    }
    recv = head_tree_recv(run, Region(0, 0, P, P), 1)
    return out | ({"tree_recv": recv} if recv else {})


class Emitter:
    """Emits the 2-D layout's records; tracks the graph ops covered and the FLOPs executed."""

    def __init__(self, pb: ProgramBuilder, tp: TP2D, run: Run, t: Tiles, algos: dict):
        self.pb, self.tp, self.run, self.t, self.algos = pb, tp, run, t, algos
        self.reg = Region(0, 0, t.P, t.P)

    def sync(self, name: str, deps) -> int:
        """A zero-cycle join on core (0, 0) after every one of `deps` everywhere."""
        return self.pb.add(Compute(name, Region(0, 0, 1, 1), 0, self.run.dtype, "vector",
                                   deps=tuple(Dep(int(d), "all") for d in deps)))

    def gemm(self, i: int, label: str, start: tuple) -> tuple:
        m, k, n, ops = gemm_shapes(self.run.cfg, self.run.tokens)[label]
        plan, end = gemm_fragment(self.pb, self.algos[label], self.run.hw, grid=self.t.P, m=m,
                                  k=k, n=n, dtype=self.run.dtype, label=f"L{i}.{label}",
                                  start=start)
        self.tp.emitted.update(f"L{i}.{o}" for o in ops)
        return end

    def tile_compute(self, name: str, flops_per_core: int, deps, *, fmac: bool,
                     read: int = 0, write: int = 0, label: str | None = None) -> int:
        """A per-head attention record on every core (its share of graph op `name`)."""
        self.tp.emitted.add(name)
        n = self.reg.size
        dt = self.tp.prec.attention if fmac else self.tp.prec.vector
        return self.pb.add(Compute(label or name, self.reg, flops_per_core * n, dt,
                                   "fmac" if fmac else "vector", sram_read_bytes=read * n,
                                   sram_write_bytes=write * n, deps=tuple(deps)))

    def row(self, name: str, values: int, deps, *, reduce: bool, color: str,
            dtype: str | None = None) -> int:
        """A stream along every row: a broadcast from column 0 (+1) or a reduce into it."""
        dt = dtype or (self.tp.prec.vector if reduce else self.run.dtype)
        return self.pb.add(LineStream(name, self.reg, "x", -1 if reduce else 1,
                                      wavelets_for(values, dt), reduce=reduce, dtype=dt,
                                      color=COLORS[color], deps=tuple(deps)))

    # ---- attention ---------------------------------------------------------------------------
    def attention(self, i: int, ready: int) -> list[int]:
        """Every head's attention after `ready` (Q|K|V on every core); returns the records
        that leave each head's output in place (what the O projection waits for)."""
        cfg = self.run.cfg
        outs: list[int] = []
        last = []  # the previous group's last record (its scratch and rows are free after it)

        def group(_g: int) -> None:
            last[:] = [self.kv_group(i, ready, last[0] if last else None, outs)]

        group(0)
        if cfg.n_kv_heads > 1:
            self.pb.repeat(f"L{i}.kv_heads", cfg.n_kv_heads - 1, lambda g: group(g + 1))
        return outs

    def kv_group(self, i: int, ready: int, prev: int | None, outs: list) -> int:
        """One K/V head: its K|V blocks to where the keys are needed, then its query heads."""
        cfg, t, p, P = self.run.cfg, self.t, f"L{i}.", self.t.P
        hd, tm = cfg.hd, t.tm
        start = self.sync(p + "attn.start", [ready] + ([prev] if prev is not None else []))
        # The first query head's Q goes first: it is ready as early as K|V, and every stream
        # keeps the order in which it may claim the rows' links and ramps.
        q = self.row(p + "attn.q_row", tm * hd, (Dep(start, "all"),), reduce=False,
                     color="row_bcast")
        kv = self.row(p + "attn.kv_row", 2 * tm * hd, (Dep(start, "all"),), reduce=False,
                      color="row_bcast")
        w_kv = wavelets_for(2 * tm * hd, self.run.dtype)
        cols = [self.pb.add(Multicast(p + "attn.kv_col", (x, x), Region(x, 0, 1, P), w_kv,
                                      color=COLORS["col_bcast"], deps=(Dep(kv),)))
                for x in range(P)]
        keys = self.sync(p + "attn.kv_ready", cols)
        b, acc = self.run.bytes, DTYPE_BYTES[self.run.precision.accum]
        sm = self.tp.ops[p + "softmax"].flops // max(1, self.run.tokens ** 2 * cfg.n_heads)
        out = None
        for j in range(cfg.n_heads // cfg.n_kv_heads):
            if j:  # after the previous head's output has left this core's row
                q = self.row(p + "attn.q_row", tm * hd, (Dep(out),), reduce=False,
                             color="row_bcast")
            qk = self.tile_compute(p + "attn_qk", 2 * tm * tm * hd,
                                   (Dep(q), Dep(keys, "all")), fmac=True,
                                   read=2 * tm * hd * b, write=tm * tm * acc)
            s1 = self.tile_compute(p + "softmax", (sm * tm * tm) // 2, (Dep(qk),), fmac=False,
                                   read=tm * tm * acc, label=p + "softmax.stats")
            s1 = self.row(p + "softmax.allreduce", 2 * tm, (Dep(s1),), reduce=True,
                          color="stats", dtype="fp32")
            s1 = self.row(p + "softmax.bcast", 2 * tm, (Dep(s1),), reduce=False,
                          color="stats_bcast", dtype="fp32")
            s2 = self.tile_compute(p + "softmax", sm * tm * tm - (sm * tm * tm) // 2,
                                   (Dep(s1),), fmac=False, read=tm * tm * acc,
                                   write=tm * tm * acc)
            av = self.tile_compute(p + "attn_av", 2 * tm * tm * hd, (Dep(s2),), fmac=True,
                                   read=tm * tm * acc + tm * hd * b, write=tm * hd * acc)
            o = self.row(p + "attn.o_reduce", tm * hd, (Dep(av),), reduce=True,
                         color="row_reduce")
            out = self.row(p + "attn.o_bcast", tm * hd, (Dep(o),), reduce=False,
                           color="row_bcast")
            outs.append(out)
        return out

    # ---- a layer -----------------------------------------------------------------------------
    def layer(self, i: int, dep: tuple, weight_dep: tuple = ()) -> tuple:
        """Layer i's forward pass after `dep`; returns what its output waits for."""
        tp, reg, p, tm = self.tp, self.reg, f"L{i}.", self.t.tm
        n1 = tp.norm(p + "norm1", reg, dep, tm)
        qkv = self.gemm(i, "qkv_proj", (Dep(n1),) + weight_dep)
        ready = tp.maybe(p + "rope", reg, qkv, fmac=False)
        if not isinstance(ready, int):  # no rope: wait for the QKV GEMM's last records
            ready = self.sync(p + "qkv.done", [d.task for d in ready])
        outs = self.attention(i, ready)
        o = self.gemm(i, "o_proj", tuple(Dep(t) for t in outs) + weight_dep)
        r1 = tp.compute(p + "residual1", reg, o, fmac=False)
        n2 = tp.norm(p + "norm2", reg, r1, tm)
        up = self.gemm(i, "ffn_up", (Dep(n2),) + weight_dep)
        act = tp.compute(p + "act", reg, up, fmac=False)
        down = self.gemm(i, "ffn_down", (Dep(act),) + weight_dep)
        return (Dep(tp.compute(p + "residual2", reg, down, fmac=False)),)


def map_2d(cfg: GPTConfig, hw: HardwareConfig, *, streaming: bool, gemm_algo: str = "auto",
           functional: bool = False, **kw) -> Program:
    """Layer-sequential (`streaming=False`) or weight-streaming prefill in the 2-D layout on
    the largest square of the grid (module docstring). `kw`: the run's parameters, as
    `common.make_run` takes them."""
    check_layout("2d", gemm_algo)
    run = make_run(cfg, hw, functional=functional, **kw)
    name = "weight-streaming" if streaming else "layer-sequential"
    _refuse(run, functional)
    P = min(run.cols, run.rows)
    t = Tiles.of(cfg, P, run.tokens)
    algos = algos_for(run, P, gemm_algo)
    if not streaming:
        check_total_weights(run)
    buffers = buffers_2d(run, t, algos, streaming)
    reg = Region(0, 0, P, P)
    check_buffers("the 2-D region", run, buffers, reg)
    pb = ProgramBuilder(f"{cfg.name}-{run.phase}-{name}-2d")
    alloc_group(pb, "", reg, buffers)
    ops = run.ops()
    tp = TP2D(pb, cfg, ops, run.dtype, run.sparse, run.tokens, None, run.reduce_algo,
              run.precision)
    em = Emitter(pb, tp, run, t, algos)
    dep = _embed(em, streaming)
    io: list = [None]
    ends: list[int] = []
    for i in range(cfg.n_layers):
        wd = ()
        if streaming:
            after = ((Dep(io[0], "all"),) if io[0] is not None else ()) + \
                ((Dep(ends[i - 2], "all"),) if i >= 2 else ())
            io[0] = pb.add(IoTransfer(f"L{i}.weights.in", reg, _layer_bytes(run), "in",
                                      deps=after))
            wd = (Dep(io[0]),)
        dep = em.layer(i, dep, wd)
        ends.append(dep[0].task)
    dep = _lm_head(em, dep, streaming, io[0])
    missing = tp.missing()
    if missing:
        raise NotImplementedError(f"layout 2d: ops not mapped: {', '.join(missing[:6])}")
    graph = int(sum(o.flops for o in ops.values()))
    executed = sum(int(getattr(x, "flops", 0)) for x in pb.tasks if isinstance(x, Compute))
    return pb.build(dtype=run.dtype, tokens=run.tokens, cores_used=reg.size, meta={
        "strategy": name, "layout": "2d", "model": cfg.name, "phase": run.phase,
        "batch": run.batch, "prompt": run.prompt, "context": run.context, "dtype": run.dtype,
        "sparsity": run.sparsity,
        "region_cols": P, "region_rows": P, "regions": 1, "chunks": 1, "micro_batches": 1,
        "grid_cols": run.cols, "grid_rows": run.rows, "graph_flops": graph,
        "offwafer_flops": 0, "executed_flops": executed,
        "padding_waste": 1.0 - graph / executed if executed else 0.0, "gemm_algos": algos,
        "tiles": {"tokens": t.tm, "d_model": t.d, "qkv": t.qkv, "ffn": t.ffn},
        "sram_buffers_per_core": buffers} | run.sparse.to_meta() | mapping_meta(run, tp))


def _layer_bytes(run: Run) -> int:
    """Bytes of one layer's weights streamed in (matrices and small parameters)."""
    cfg = run.cfg
    return cfg.layer_matmul_params() * run.weight_bytes + cfg.layer_small_params() * run.bytes


def _embed(em: Emitter, streaming: bool) -> tuple:
    """The token embeddings into the tiles (weight streaming: gathered off the wafer and
    streamed in)."""
    run, reg = em.run, em.reg
    io = None
    if streaming:
        io = em.pb.add(IoTransfer("embed.in", reg, run.tokens * run.cfg.d_model * run.bytes,
                                  "in"))
    return (Dep(em.tp.compute("embed", reg, io, fmac=False)),)


def _lm_head(em: Emitter, dep: tuple, streaming: bool, io_prev) -> int:
    """The last token of every sequence to the top row, then the top-row LM head."""
    run, pb, P, tm = em.run, em.pb, em.t.P, em.t.tm
    top = Region(0, 0, P, 1)
    moves = []
    for s in range(run.batch):
        r = (s * run.prompt + run.prompt - 1) // tm
        if r:
            moves.append(pb.add(Unicast("lm_head.gather", Region(0, r, P, 1),
                                        wavelets_for(em.t.d, run.dtype), dy=-r,
                                        color=COLORS["handoff"], deps=dep)))
    if moves:
        dep = (Dep(em.sync("lm_head.gathered", moves), "all"),)
    wd = None
    if streaming:
        cfg = run.cfg
        after = ((Dep(io_prev, "all"),) if io_prev is not None else ()) + dep
        wd = Dep(pb.add(IoTransfer("lm_head.weights.in", em.reg,
                                   cfg.d_model * cfg.vocab_size * run.weight_bytes, "in",
                                   deps=tuple(d if d.rule == "all" else Dep(d.task, "all")
                                              for d in after))))
    end, _ = emit_lm_head(em.tp, run, top, [em.reg], dep, weight_dep=wd)
    return end
