"""Prefill with the activations tiled 2-D over a P x P region (`layout="2d"`, issue 18).

The top-row layout (`tp2d`) keeps a layer's activations on one row of cores: right for decode
(GEMVs), wrong for thousands of tokens. Here tokens x features are tiled over the whole
region and every projection is a 2-D GEMM of the GEMM library (`mapper.gemm.gemm_fragment`):

- Core (x, y) holds token block y (`tm = ceil(T / P)` tokens) and feature block x of every
  activation (on MeshGEMM's interleaved rings when the GEMMs are MeshGEMM: C comes out
  there): the residual stream, Q|K|V, the attention output, the FFN hidden state.
- Weights are resident (layer-sequential) or streamed in per layer (weight-streaming): core
  (x, y) holds block (y, x) of every weight matrix, stored pre-aligned for Cannon / MeshGEMM
  (aligned once when loaded), so each GEMM aligns only its activation operand. The QKV and
  FFN up|gate projections are one GEMM each (their weights side by side; SwiGLU's up and gate
  columns of the same features on the same core, so the act is local).
- A GEMM algorithm per projection (`gemm_algo`: summa, cannon, meshgemm for all, or auto:
  `choose_algos`, by `gemm_estimate_cycles`; MeshGEMM runs all or none, since its C stays on
  its rings, while Cannon and SUMMA mix).
- Norms: per-row statistics all-reduced along each row (a reduce and a broadcast stream).
- Attention, per K/V head (a loop over the K/V heads): each row gathers the head's features
  at column 0 (every core puts its slice in a zero tile, a reduce along the row sums the
  disjoint slices), RoPE rotates them there, a broadcast gives them to the row. K|V of token
  block x then goes down column x from core (x, x), so core (x, y) holds the queries of block
  y and the keys of block x (the transposition Q K^T needs on a mesh). Per query head: Q
  gathered the same way, S = Q K^T (masked: causal, per sequence), the core's softmax and
  P V as a partial [o, m, l], merged along the row into column 0 by the online-softmax
  reduce, broadcast back and placed in the attention output of the cores that hold the
  head's features. Every stream waits for the one before (the fast engine's step path needs
  the rows claimed in task order) and the column multicasts end in a barrier.
- Each layer keeps its keys and values (a local copy out of the QKV GEMM's C tile, which the
  next layer reuses); the LM head takes the tile with the last token of every sequence to
  the top row and runs as in the top-row layout (`emit_lm_head`).

Executed FLOPs follow the tiles (padding included, as in `mapper.gemm`; attention computes
every key block, masked or of another sequence): `meta` gives `graph_flops`,
`executed_flops` and `padding_waste`. Functional runs (`layout2d_data`) compute the real
logits. Training, decode, MoE models, chunks, sparse weights and per-tensor dtypes are not
mapped in this layout yet (each refused in one line).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mapper.gemm import (
    fragment_algos,
    fragment_buffers,
    gemm_estimate_cycles,
    gemm_fragment,
)
from mapper.gemm import gemm_algo as gemm_algo_entry
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
from mapper.strategies.layout2d_data import block_order, last_token_row
from mapper.strategies.single_region import layer_weight_bytes
from mapper.strategies.tp2d import COLORS, TP2D
from workloads.models import GPTConfig
from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.precision import Precision
from wse_sim.program import (
    Compute,
    DataOp,
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

LAYOUTS = ("top-row", "2d")  # (experiment.build_program also takes "auto")


@dataclass(frozen=True)
class Tiles:
    """Per-core tile sizes of the 2-D layout on a P x P region for T tokens."""

    P: int
    tm: int    # tokens per row block
    d: int     # model features per column
    q: int     # attention output (n_heads x hd) features per column
    qkv: int   # Q|K|V features per column
    ffn: int   # FFN up (| gate) features per column: [up | gate] of f for SwiGLU
    f: int     # FFN features per column (the down projection's K tile)

    @classmethod
    def of(cls, cfg: GPTConfig, P: int, tokens: int) -> Tiles:
        c = math.ceil
        f = c(cfg.d_ffn / P)
        return cls(P, c(tokens / P), c(cfg.d_model / P), c(cfg.q_dim / P),
                   c((cfg.q_dim + 2 * cfg.kv_dim) / P), f * (2 if cfg.activation == "swiglu"
                                                             else 1), f)

    def weights(self) -> dict[str, tuple[int, int]]:
        """Each projection's weight tile (K block, N block) on one core."""
        return {"qkv_proj": (self.d, self.qkv), "o_proj": (self.q, self.d),
                "ffn_up": (self.d, self.ffn), "ffn_down": (self.f, self.d)}

    def weight_values(self) -> int:
        """A layer's weight values on one core (its four projections' tiles)."""
        return sum(k * n for k, n in self.weights().values())


def gemm_shapes(cfg: GPTConfig, tokens: int, P: int) -> dict[str, tuple[int, int, int, tuple]]:
    """The layer's GEMMs: label -> (m, k, n, the graph ops they compute). FFN up | gate is
    one GEMM whose column block x is [up | gate] of the same f / P features (n padded to
    whole blocks), so that SwiGLU is local."""
    f_t = math.ceil(cfg.d_ffn / P)
    swiglu = cfg.activation == "swiglu"
    ups = ("ffn_up", "ffn_gate") if swiglu else ("ffn_up",)
    return {"qkv_proj": (tokens, cfg.d_model, cfg.q_dim + 2 * cfg.kv_dim,
                         ("q_proj", "k_proj", "v_proj")),
            "o_proj": (tokens, cfg.q_dim, cfg.d_model, ("o_proj",)),
            "ffn_up": (tokens, cfg.d_model, 2 * f_t * P if swiglu else cfg.d_ffn, ups),
            "ffn_down": (tokens, cfg.d_ffn, cfg.d_model, ("ffn_down",))}


def check_layout(layout: str, algo: str) -> None:
    if layout not in LAYOUTS:
        raise MappingError(f"layout: got {layout!r}, must be one of {', '.join(LAYOUTS)}")
    if algo != "auto" and algo not in fragment_algos():
        raise MappingError(f"gemm_algo: got {algo!r}, must be one of auto, "
                           f"{', '.join(fragment_algos())}")


def _refuse(run: Run, functional: bool) -> None:
    """What this layout does not map yet: one line naming it."""
    cfg = run.cfg
    if run.phase == "decode":
        raise NotImplementedError("layout 2d: maps prefill and training, not decode (decode "
                                  "runs GEMVs: the top-row layout)")
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
    if functional and run.prompt < 2:
        raise NotImplementedError("layout 2d: a functional prefill of 1 token is not mapped "
                                  "(the LM head selects the last token of each sequence)")
    if run.attention != "auto":
        raise MappingError(f"attention: got {run.attention!r}; the 2-D layout has its own "
                           "attention split (keys over columns, queries over rows)")
    P = min(run.cols, run.rows)
    if P < 2:
        raise MappingError(f"layout 2d: needs a grid of at least 2 x 2 cores, got {P} x {P}")


def choose_algos(run: Run, P: int, gemm_algo: str, tokens: int,
                 natural: bool = False) -> dict[str, str]:
    """Each projection's GEMM algorithm (docs/strategies.md): the one given for all, or
    (`auto`) by the contention-free estimates (`gemm_estimate_cycles`, ties to the registry's
    order). Algorithms that leave C natural mix freely; one that leaves it on its rings
    (MeshGEMM) must run every projection, since the activations stay where the GEMMs leave
    them; so `auto` takes the least of each ring algorithm for all and each projection's least
    natural one. `natural`: every algorithm runs on natural data (a training step): each
    projection its least of all."""
    shapes = gemm_shapes(run.cfg, tokens, P)
    if gemm_algo != "auto":
        return {label: gemm_algo for label in shapes}
    algos = fragment_algos()
    est = {label: {a: gemm_estimate_cycles(a, run.hw, grid=P, m=m, k=k, n=n, dtype=run.dtype)
                   for a in algos} for label, (m, k, n, _) in shapes.items()}

    def least(label: str, among: list[str]) -> str:
        return min(among, key=lambda a: (est[label][a], algos.index(a)))

    flat = [a for a in algos if natural or not gemm_algo_entry(a).ring]
    options = [{label: least(label, flat) for label in shapes}] if flat else []
    options += [{label: a for label in shapes} for a in algos if a not in flat]
    return min(options, key=lambda o: (sum(est[k][v] for k, v in o.items()),
                                       [algos.index(v) for v in o.values()]))


def algo_name(algos: dict[str, str]) -> str:
    """The meta's `gemm_algo`: the one algorithm, or `per-projection`."""
    one = set(algos.values())
    return one.pop() if len(one) == 1 else "per-projection"


def gemm_plans(run: Run, P: int, algos: dict[str, str], tokens: int | None = None) -> dict:
    """Each projection's plan (`tokens`: a micro-batch's; default the run's)."""
    from mapper.gemm_common import Plan
    return {label: Plan("gemm", algos[label], P, m, k, n, run.dtype) for label, (m, k, n, _)
            in gemm_shapes(run.cfg, tokens or run.tokens, P).items()}


def scratch_bytes(plan) -> int:
    """SRAM bytes of a GEMM fragment's scratch buffers (its algorithm's `scratch` roles)."""
    roles = fragment_buffers(plan.algo)["scratch"]
    return sum(v[2] for k, v in plan.buffers().items() if k in roles)


def scratch_tiles(plans: dict) -> dict[str, dict]:
    """Each projection's scratch tiles (name: shape) from the plans it runs with (label ->
    plans): a functional run's."""
    out: dict[str, dict] = {}
    for label, group in plans.items():
        out[label] = {}
        for plan in group:
            roles = fragment_buffers(plan.algo)["scratch"]
            for name, v in plan.buffers().items():
                if name in roles and out[label].setdefault(name, v[0]) != v[0]:
                    raise ValueError(f"layout 2d: scratch tile {label}.{name} has two shapes")
    return out


def layer_weight_tile_bytes(run: Run, t: Tiles, copies: int = 1) -> int:
    """One layer's weights on the fullest core: `copies` of its matrices' tiles (in the
    weights' dtype) and its two norms' gains (and biases) once."""
    norms = (1 if run.cfg.norm == "rmsnorm" else 2) * t.d * run.bytes
    return copies * t.weight_values() * run.weight_bytes + 2 * norms


def buffers_2d(run: Run, t: Tiles, algos: dict[str, str], streaming: bool) -> dict[str, int]:
    """SRAM bytes per buffer class on the fullest core (the tiles of layout2d_data)."""
    cfg, b, P, hd, tm = run.cfg, run.bytes, t.P, run.cfg.hd, t.tm
    acc = DTYPE_BYTES[run.precision.accum]
    L = cfg.n_layers
    scratch = sum(scratch_bytes(plan) for plan in gemm_plans(run, P, algos).values())
    out = {
        "weights": layer_weight_tile_bytes(run, t) * (2 if streaming else L),
        "activations": tm * (2 * t.d + t.q + t.f) * b + tm * 2 * 4,
        "gemm_c": tm * (t.qkv + 2 * t.d + t.ffn) * acc,
        "gemm_scratch": scratch,
        # K|V gathered (then the partial [o, m, l]), K|V of the column's key block, Q (then
        # the head's output), the scores
        "attention": tm * (2 * hd + 2 * hd + hd) * b + tm * (tm + 2) * acc,
        "kv_cache": L * tm * t.qkv * DTYPE_BYTES[run.precision.kv],
        "table": math.ceil(run.table_bytes * (2 if streaming else 1) / (P * P)),
    }
    recv = head_tree_recv(run, Region(0, 0, P, P), 1)
    return out | ({"tree_recv": recv} if recv else {})


class Emitter:
    """Emits the 2-D layout's records (with their DataOps when `fd`, a layout2d_data.Data2D,
    is given); tracks the graph ops covered."""

    def __init__(self, pb: ProgramBuilder, tp: TP2D, run: Run, t: Tiles, algo: str, fd=None):
        self.pb, self.tp, self.run, self.t, self.algo, self.fd = pb, tp, run, t, algo, fd
        self.reg = Region(0, 0, t.P, t.P)
        self.col0 = Region(0, 0, 1, t.P)
        self.kv_bytes = DTYPE_BYTES[run.precision.kv]
        self.tokens = run.tokens  # a training step's micro-batch: its share
        self.training = False  # no KV cache; each GEMM's input kept for the backward
        self.algos: dict[str, str] = {}  # a projection's own algorithm (training), else algo

    def sync(self, name: str, deps) -> int:
        """A zero-cycle join on core (0, 0) after every one of `deps` everywhere."""
        return self.pb.add(Compute(name, Region(0, 0, 1, 1), 0, self.run.dtype, "vector",
                                   deps=tuple(Dep(int(d), "all") for d in deps)))

    def gemm(self, i: int, label: str, start: tuple) -> tuple:
        m, k, n, ops = gemm_shapes(self.run.cfg, self.tokens, self.t.P)[label]
        algo = self.algos.get(label, self.algo)
        names = None if self.fd is None else self.fd.gemm_names(i, label, algo)
        _, end = gemm_fragment(self.pb, algo, self.run.hw, grid=self.t.P, m=m, k=k, n=n,
                               dtype=self.run.dtype, label=f"L{i}.{label}", start=start,
                               names=names)
        self.tp.emitted.update(f"L{i}.{o}" for o in ops)
        return end

    def tile_compute(self, name: str, region: Region, flops_per_core: int, deps, *,
                     fmac: bool, read: int = 0, write: int = 0, label: str | None = None,
                     data=None) -> int:
        """A per-head attention record on every core of `region` (graph op `name`)."""
        self.tp.emitted.add(name)
        n = region.size
        dt = self.tp.prec.attention if fmac else self.tp.prec.vector
        return self.pb.add(Compute(label or name, region, flops_per_core * n, dt,
                                   "fmac" if fmac else "vector", sram_read_bytes=read * n,
                                   sram_write_bytes=write * n, deps=tuple(deps), data=data))

    def row(self, name: str, values: int, deps, *, reduce: bool, color: str,
            dtype: str | None = None, data=None) -> int:
        """A stream along every row: a broadcast from column 0 (+1) or a reduce into it."""
        dt = dtype or self.run.dtype
        return self.pb.add(LineStream(name, self.reg, "x", -1 if reduce else 1,
                                      wavelets_for(values, dt), reduce=reduce, dtype=dt,
                                      color=COLORS[color], deps=tuple(deps), data=data))

    def keep(self, i: int, label: str, dep: tuple, d: dict) -> tuple:
        """Training: a copy of GEMM `label`'s input, which the GEMM consumes (its alignment
        and shifts overwrite it) and the backward reads; else nothing."""
        if not self.training:
            return dep
        m, k, _, _ = gemm_shapes(self.run.cfg, self.tokens, self.t.P)[label]
        nbytes = math.ceil(m / self.t.P) * math.ceil(k / self.t.P) * self.run.bytes
        return (Dep(self.tile_compute(f"L{i}.{label}.keep", self.reg, 0, dep, fmac=False,
                                      read=nbytes, write=nbytes,
                                      data=d.get(f"{label}.keep"))),)

    # ---- attention ---------------------------------------------------------------------------
    def attention(self, i: int, ready: tuple) -> list[int]:
        """Every head's attention after `ready` (Q|K|V on every core); returns the records
        that leave each head's output in place (what the O projection waits for)."""
        cfg = self.run.cfg
        outs: list[int] = []
        start = self.sync(f"L{i}.attn.start", [d.task for d in ready])
        last = [start]  # the previous group's last record (its scratch and rows are free)

        def group(g: int) -> None:
            last[:] = [self.kv_group(i, g, last[0], outs)]

        group(0)
        if cfg.n_kv_heads > 1:
            self.pb.repeat(f"L{i}.kv_heads", cfg.n_kv_heads - 1, lambda g: group(g + 1))
        return outs

    def gather(self, i: int, what: str, values: int, dep: Dep, d: dict) -> int:
        """A head's features gathered at column 0 (slice, reduce; RoPE there), then
        broadcast along every row."""
        p, tm, hd = f"L{i}.", self.t.tm, self.run.cfg.hd
        b = self.run.bytes
        s = self.tile_compute(p + f"attn.{what}_slice", self.reg, 0, (dep,), fmac=False,
                              read=tm * self.t.qkv * 4, write=values * b,
                              data=d[f"{what}_slice"])
        s = self.row(p + f"attn.{what}_gather", values, (Dep(s),), reduce=True,
                     color="row_reduce", data=d[f"{what}_gather"])
        if p + "rope" in self.tp.ops:  # RoPE on the gathered head (K only of K|V)
            s = self.tile_compute(p + "rope", self.col0, 3 * tm * hd, (Dep(s),), fmac=False,
                                  read=tm * hd * b, write=tm * hd * b, label=p + f"rope.{what}",
                                  data=d[f"{what}_rope"])
        return self.row(p + f"attn.{what}_bcast", values, (Dep(s),), reduce=False,
                        color="row_bcast", data=d[f"{what}_bcast"])

    def kv_to_columns(self, i: int, g: int, prev: int, d: dict, part: str = "attn") -> int:
        """K/V head g gathered at column 0 (RoPE there) and broadcast along the rows, then
        sent down column x from core (x, x), after the previous group `prev` (its K|V tiles
        are free then); returns the join every core's scores wait for."""
        p, P, hd, tm = f"L{i}.", self.t.P, self.run.cfg.hd, self.t.tm
        free = Dep(prev, "all")
        kv = self.gather(i, "kv", 2 * tm * hd, Dep(prev) if g else free, d)
        w_kv = wavelets_for(2 * tm * hd, self.run.dtype)
        cols = [self.pb.add(Multicast(p + f"{part}.kv_col", (x, x), Region(x, 0, 1, P), w_kv,
                                      color=COLORS["col_bcast"], deps=(Dep(kv), free),
                                      data=d["kv_col"])) for x in range(P)]
        return self.sync(p + f"{part}.kv_ready", cols)

    def softmax_flops(self, i: int) -> int:
        """The softmax's FLOPs per score (the graph's count over its scores)."""
        cfg = self.run.cfg
        return self.tp.ops[f"L{i}.softmax"].flops // max(1, self.run.tokens ** 2 * cfg.n_heads)

    def kv_group(self, i: int, g: int, prev: int, outs: list) -> int:
        """One K/V head: its K|V blocks to where the keys are needed, then its query heads,
        each stream after the previous one (the step path needs the rows claimed in order)."""
        cfg, t, p = self.run.cfg, self.t, f"L{i}."
        hd, tm, b = cfg.hd, t.tm, self.run.bytes
        acc = DTYPE_BYTES[self.run.precision.accum]
        fd = self.fd.attention if self.fd is not None else (lambda g, j: {})
        d = _get(fd(g, 0))
        # the previous group (or the start, on core (0, 0)) done: its K|V tiles are free
        keys = self.kv_to_columns(i, g, prev, d)
        sm = self.softmax_flops(i)
        after = Dep(keys, "all")
        for j in range(cfg.n_heads // cfg.n_kv_heads):
            d = _get(fd(g, j))
            q = self.gather(i, "q", tm * hd, after, d)
            qk = self.tile_compute(p + "attn_qk", self.reg, 2 * tm * tm * hd,
                                   (Dep(q), Dep(keys, "all")), fmac=True,
                                   read=2 * tm * hd * b, write=tm * tm * acc, data=d["scores"])
            s = self.tile_compute(p + "softmax", self.reg, sm * tm * tm, (Dep(qk),),
                                  fmac=False, read=tm * tm * acc, write=tm * (tm + 2) * acc,
                                  data=d["softmax"])
            av = self.tile_compute(p + "attn_av", self.reg, 2 * tm * tm * hd, (Dep(s),),
                                   fmac=True, read=tm * tm * acc + tm * hd * b,
                                   write=tm * (hd + 2) * b, data=d["av"])
            o = self.row(p + "attn.o_reduce", tm * (hd + 2), (Dep(av),), reduce=True,
                         color="row_reduce", data=d["o_reduce"])
            o = self.row(p + "attn.o_bcast", tm * hd, (Dep(o),), reduce=False,
                         color="row_bcast", data=d["o_bcast"])
            out = self.tile_compute(p + "attn.o_place", self.reg, 0, (Dep(o),), fmac=False,
                                    read=tm * hd * b, write=tm * t.q * b, data=d["o_place"])
            outs.append(out)
            after = Dep(out)
        return out

    # ---- a layer -----------------------------------------------------------------------------
    def layer(self, i: int, dep: tuple, weight_dep: tuple = ()) -> tuple:
        """Layer i's forward pass after `dep`; returns what its output waits for."""
        tp, reg, p, tm = self.tp, self.reg, f"L{i}.", self.t.tm
        d = {} if self.fd is None else self.fd.layer(i)
        n1 = tp.norm(p + "norm1", reg, dep, tm, d, "norm1")
        qkv = self.gemm(i, "qkv_proj", self.keep(i, "qkv_proj", (Dep(n1),), d) + weight_dep)
        t = self.t
        if not self.training:  # the layer's keys and values stay (the KV cache)
            qkv = (Dep(self.tile_compute(p + "kv_cache.store", reg, 0, qkv, fmac=False,
                                         read=tm * t.qkv * 4,
                                         write=tm * t.qkv * self.kv_bytes,
                                         data=d.get("kv_store"))),)
        outs = self.attention(i, qkv)
        o = self.gemm(i, "o_proj", self.keep(i, "o_proj", tuple(Dep(t) for t in outs), d)
                      + weight_dep)
        r1 = tp.compute(p + "residual1", reg, o, fmac=False, data=d.get("residual1"))
        n2 = tp.norm(p + "norm2", reg, r1, tm, d, "norm2")
        up = self.gemm(i, "ffn_up", self.keep(i, "ffn_up", (Dep(n2),), d) + weight_dep)
        act = tp.compute(p + "act", reg, up, fmac=False, data=d.get("act"))
        down = self.gemm(i, "ffn_down", self.keep(i, "ffn_down", (Dep(act),), d)
                         + weight_dep)
        return (Dep(tp.compute(p + "residual2", reg, down, fmac=False,
                               data=d.get("residual2"))),)


def _get(d: dict):
    """DataOps by key, None for a key not there (a timing-only run)."""
    from collections import defaultdict
    return defaultdict(lambda: None, d)


def map_2d(cfg: GPTConfig, hw: HardwareConfig, *, streaming: bool, gemm_algo: str = "auto",
           functional: bool = False, check_only: bool = False, **kw) -> Program | None:
    """Layer-sequential (`streaming=False`) or weight-streaming prefill in the 2-D layout on
    the largest square of the grid (module docstring; a training step: `layout2d_train`).
    `kw`: the run's parameters, as `common.make_run` takes them. `check_only`: stop after
    the checks (None: it fits; a MappingError when not), building nothing."""
    check_layout("2d", gemm_algo)
    run = make_run(cfg, hw, functional=functional, **kw)
    name = "weight-streaming" if streaming else "layer-sequential"
    _refuse(run, functional)
    if run.phase == "train":
        raise NotImplementedError("layout 2d: a training step maps through "
                                  "mapper.strategies.layout2d_train.map_train_2d")
    P = min(run.cols, run.rows)
    t = Tiles.of(cfg, P, run.tokens)
    algos = choose_algos(run, P, gemm_algo, run.tokens)
    algo = next(iter(algos.values()))  # its block order is every projection's
    if not streaming:
        check_total_weights(run)
    buffers = buffers_2d(run, t, algos, streaming)
    reg = Region(0, 0, P, P)
    check_buffers("the 2-D region", run, buffers, reg)
    if check_only:
        return None
    pb = ProgramBuilder(f"{cfg.name}-{run.phase}-{name}-2d")
    fd = None
    if functional:
        from mapper.strategies import layout2d_data
        layout2d_data.register_kernels()
        fd = layout2d_data.Data2D(run, t, algos)
        plans = {label: (plan,) for label, plan in gemm_plans(run, P, algos).items()}
        views, extra = alloc_group(pb, "", reg, buffers, fd.tiles(scratch_tiles(plans)))
    else:
        views, extra = alloc_group(pb, "", reg, buffers)
    ops = run.ops()
    tp = TP2D(pb, cfg, ops, run.dtype, run.sparse, run.tokens, fd, run.reduce_algo,
              run.precision)
    em = Emitter(pb, tp, run, t, algo, fd)
    em.algos = dict(algos)
    io: list = [None]
    ends: list[int] = []
    deps = [_embed(em, streaming)]

    def layer(i: int) -> None:
        wd = ()
        if streaming:  # double buffer: layer i's weights after layer i - 2 has finished
            after = ((Dep(io[0], "all"),) if io[0] is not None else ()) + \
                ((Dep(ends[i - 2], "all"),) if i >= 2 else ())
            io[0] = pb.add(IoTransfer(f"L{i}.weights.in", reg, layer_weight_bytes(run, i), "in",
                                      deps=after))
            wd = (Dep(io[0]),)
        deps[0] = em.layer(i, deps[0], wd)
        ends.append(deps[0][0].task)

    # Layers 1 .. L - 1 repeat layer 0 moved (layer 0 waits for the embedding; streamed
    # weights also wait for the layer two back, which layer 1 does not have: then 2 ..
    # L - 1): one loop around the layers' own loops (GEMM steps, K/V heads), which the fast
    # engine fast-forwards at both levels (docs/hardware-model.md, "Loops").
    emit_layers(pb, cfg.n_layers, layer, "layers", peel=2 if streaming else 1)
    _lm_head(em, deps[0], streaming, io[0])
    fmeta = {} if fd is None else {"views": views, "functional_2d": fd.meta(),
                                   "sram_extra_bytes": extra}
    return build_2d(pb, run, tp, name, algos, t, buffers, fmeta)


def build_2d(pb: ProgramBuilder, run: Run, tp: TP2D, name: str, algos: dict, t: Tiles,
             buffers: dict, extra: dict, offwafer_flops: int = 0, regions: int = 1) -> Program:
    """The program and its meta; every op of the graph must have been emitted (optimizer
    updates, which run off the wafer, excepted when `offwafer_flops`). `regions`: how many
    P x P regions the step uses (layer-pipelined: one a layer and the LM head's)."""
    cfg, ops, P = run.cfg, tp.ops, t.P
    missing = tp.missing(skip_kinds=("optimizer",) if offwafer_flops else ())
    if missing:
        raise NotImplementedError(f"layout 2d: ops not mapped: {', '.join(missing[:6])}")
    graph = int(sum(o.flops for o in ops.values()))
    executed = sum(int(getattr(x, "flops", 0)) for x in pb.tasks if isinstance(x, Compute))
    done = graph - offwafer_flops
    return pb.build(dtype=run.dtype, tokens=run.tokens, cores_used=regions * P * P, meta=extra | {
        "strategy": name, "layout": "2d", "model": cfg.name, "phase": run.phase,
        "batch": run.batch, "prompt": run.prompt, "context": run.context, "dtype": run.dtype,
        "sparsity": run.sparsity, "vocab_size": cfg.vocab_size,
        "region_cols": P, "region_rows": P, "regions": regions, "chunks": 1,
        "micro_batches": run.micro_batches,
        "grid_cols": run.cols, "grid_rows": run.rows, "graph_flops": graph,
        "offwafer_flops": offwafer_flops, "executed_flops": executed,
        "padding_waste": 1.0 - done / executed if executed else 0.0, "gemm_algo": algo_name(algos),
        "gemm_algos": dict(algos),
        "tiles": {"tokens": t.tm, "d_model": t.d, "qkv": t.qkv, "ffn": t.ffn, "ffn_k": t.f},
        "sram_buffers_per_core": buffers} | run.sparse.to_meta() | mapping_meta(run, tp))


def emit_layers(pb: ProgramBuilder, L: int, body, name: str, last_apart: bool = False,
                peel: int = 2) -> None:
    """`body(i)` for every layer: the first `peel` apart, then the rest as one loop `name`
    when there are at least 2 more (layer 0 waits for what comes before; with weights double-
    buffered layer i also waits for layer i - 2, which layer 1 does not have: peel 2); the last
    layer apart when `last_apart` (it differs). Every layer peeled is one more simulated in
    full; the fast engine compares the loop from its iteration 0 when the peeled layers stand
    for the iterations before it (`fast_loops._peeled`), else from iteration 1."""
    end = L - 1 if last_apart else L
    if end - peel < 2:
        for i in range(L):
            body(i)
        return
    for i in range(peel):
        body(i)
    pb.repeat(name, end - peel, lambda k: body(k + peel))
    for i in range(end, L):
        body(i)


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
    """The tile with the last token of every sequence to the top row, then the top-row LM
    head (`common.emit_lm_head`)."""
    run, pb, P, tm = em.run, em.pb, em.t.P, em.t.tm
    top = Region(0, 0, P, 1)
    order = block_order(em.algo, P)
    moves = []
    for s in range(run.batch):
        r = last_token_row(run, tm, order, s)
        if r:
            moves.append(pb.add(Unicast("lm_head.gather", Region(0, r, P, 1),
                                        wavelets_for(tm * em.t.d, run.dtype), dy=-r,
                                        color=COLORS["handoff"], deps=dep,
                                        data=None if em.fd is None else
                                        DataOp("copy", ("x",), f"last{s}"))))
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
