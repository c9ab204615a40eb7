"""An MoE layer on its region: attention as in `tp2d`, the experts on blocks of the region,
tokens routed to them and back as fabric traffic (docs/moe.md, "On the wafer").

Placement (`expert_blocks`): the region's R x C cores are cut into blocks, one per expert
(routed ones first, then the shared ones), by `moe_layout`:

- ``blocks``: the slot grid of `mapper.placement.slot_grids` with the most cores per block,
  then the squarest block;
- ``strips``: column strips side by side (one row of blocks; more rows only when there are
  more experts than columns);
- ``bands``: full-width row bands, one under the other (an expert's d-shards sit under the
  top row's: dispatch and collect run straight down and up the columns).

With more experts than cores, experts share blocks (expert e on block e mod blocks). Each
expert's FFN is laid out on its block like a dense FFN (`TP2D.up` / `TP2D.down`: its tokens'
X on the block's top row, d split over the block's columns). The router runs on the layer's
top row (each column multiplies its d-shard by its rows of ``w_router``; the logits reduce
into the leader, which picks the experts and broadcasts the choice along the row).

Traffic (`MoEFFN.ffn`): dispatch, for each expert with tokens, the top row gathers their
rows, then every top-row core sends its d-shard of them to the block top-row core that holds
that part of d (`Unicast`, the hand-off's color; several top-row cores feed one block core);
the expert runs; collect, every block top-row core sends each top-row core its part of the
expert's output (`Unicast`, the backward hand-off's color); for a band each direction is one
record, every column straight down or up. The top row combines (`L{i}.combine`: the
weighted sum) once every expert's output has arrived, so the layer waits for the slowest
expert. Experts on separate blocks run at once; the dispatch and collect streams share the
top row's and the columns' links. A prefill in chunks routes each chunk's own tokens.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from mapper.placement import MappingError, slot_grids
from mapper.strategies import moe_functional as mf
from mapper.strategies.tp2d import COLORS, TP2D, Layout, _deps, layer_buffers
from workloads.graph import ExpertOp, build_graph, ops_in_order
from workloads.models import GPTConfig
from workloads.routing import Routing, make_routing
from wse_sim.hardware import DTYPE_BYTES
from wse_sim.program import Compute, Dep, Region, Unicast, wavelets_for

MOE_LAYOUTS = ("blocks", "strips", "bands")
# Dispatch and collect reuse the hand-off colors (the layer-to-layer hand-off and the
# backward's, which inference does not use): a wafer routes few colors (wse3: 8).
MOE_COLORS = {"dispatch": COLORS["handoff"], "collect": COLORS["back"]}


def parse_moe_layout(layout: str) -> tuple[str, int | None]:
    """(placement, expert blocks or None: one per expert) of `blocks`, `strips`, `bands`,
    optionally `:N`: the layer's experts spread over N blocks (the expert parallelism; experts
    beyond N share blocks, their work queues on the block's cores)."""
    base, sep, n = str(layout).partition(":")
    if base not in MOE_LAYOUTS or (sep and not (n.isdigit() and int(n) >= 1)):
        raise MappingError(f"moe_layout: got {layout!r}, must be one of {', '.join(MOE_LAYOUTS)}"
                           ", optionally :N (N >= 1 expert blocks), e.g. blocks:4")
    return base, int(n) if sep else None


def check_moe_layout(layout: str) -> None:
    parse_moe_layout(layout)


def expert_blocks(reg: Region, n: int, layout: str) -> list[Region]:
    """The block of each of `n` experts inside `reg` (module docstring): one per expert, or
    (`layout:N`) N blocks that experts e, e + N, ... share."""
    layout, groups = parse_moe_layout(layout)
    nb = min(groups or n, n, reg.rows if layout == "bands" else reg.size)
    if layout == "bands":
        grid = (1, nb, reg.cols, reg.rows // nb)
    elif layout == "strips":
        gx = min(nb, reg.cols)
        gy = math.ceil(nb / gx)
        grid = (gx, gy, reg.cols // gx, reg.rows // gy)
    else:
        sg = slot_grids(reg.cols, reg.rows, nb)[0]
        grid = (sg.gx, sg.gy, sg.cols, sg.rows)
    gx, _, cb, rb = grid
    blocks = [Region(reg.x + (b % gx) * cb, reg.y + (b // gx) * rb, cb, rb) for b in range(nb)]
    return [blocks[e % nb] for e in range(n)]


def expert_slots(cfg: GPTConfig) -> list[tuple[str, int]]:
    """(op prefix within a layer, expert id) of every expert: routed first, then shared."""
    moe = cfg.moe
    return [("expert", e) for e in range(moe.n_experts)] + \
        [("shared", j) for j in range(moe.n_shared_experts)]


def _per_token_ops(cfg: GPTConfig, dtype: str) -> dict:
    """One routed expert's ops for one token, by op name within an expert (``ffn_up``, ...):
    (flops, bytes_in, bytes_out, elements) per token (from a graph where each expert gets
    top_k tokens: exact integer division)."""
    E, k = cfg.moe.n_experts, cfg.moe.top_k
    g = build_graph(cfg, "decode", batch=E, context=1, dtype=dtype)
    layer = next(i for i in range(cfg.n_layers) if cfg.is_moe_layer(i))
    out = {}
    for op in ops_in_order(g):
        if isinstance(op, ExpertOp) and not op.shared and op.expert == 0 and op.layer == layer:
            out[op.name.rsplit(".", 1)[1]] = tuple(v // k for v in (
                op.flops, op.bytes_in, op.bytes_out, op.elements))
    return out


def _sized(op, per: dict, t: int):
    """Expert op `op` sized for `t` tokens (`per`: `_per_token_ops`)."""
    f, bi, bo, el = per[op.name.rsplit(".", 1)[1]]
    kw = {"m": t} if op.is_gemm else {}
    return dataclasses.replace(op, flops=f * t, bytes_in=bi * t, bytes_out=bo * t,
                               elements=el * t, tokens=t, **kw)


def moe_ops(ops: dict, cfg: GPTConfig, dtype: str, routing: Routing) -> dict:
    """The op graph's ops with every routed expert's ops sized by the tokens `routing` sends
    it in that layer (the graph itself has one token split for every layer)."""
    per = _per_token_ops(cfg, dtype)
    counts = {i: routing.counts(i) for i in routing.choices}
    out = {}
    for name, op in ops.items():
        if isinstance(op, ExpertOp) and not op.shared and op.phase == "fwd":
            op = _sized(op, per, counts[op.layer][op.expert])
        out[name] = op
    return out


def part_rows(run) -> list[np.ndarray]:
    """The token indices (rows of the routing) of each prefill chunk (`parts.part_spans`);
    one part of every token otherwise."""
    from mapper.strategies.parts import part_spans
    if run.parts == 1:
        return [np.arange(run.tokens)]
    sq = run.prompt
    return [np.array([b * sq + s for b in range(b0, b0 + nb) for s in range(s0, s0 + ns)])
            for _, b0, nb, s0, ns in part_spans(run)]


def part_counts(routing: Routing, layer: int, rows: np.ndarray) -> tuple[int, ...]:
    """Tokens of `rows` routed to each expert of `layer`."""
    ids = np.asarray(routing.choices[layer])[rows].reshape(-1)
    return tuple(int(c) for c in np.bincount(ids, minlength=routing.n_experts))


def _max_tokens(run) -> int:
    """The most tokens an expert takes at a time (one chunk's in a prefill in chunks)."""
    parts = part_rows(run)
    most = max(max(part_counts(run.routing, i, rows)) for i in run.routing.choices
               for rows in parts)
    return max(most, max(len(r) for r in parts) if run.cfg.moe.n_shared_experts else 0)


def moe_layer_buffers(run, lay: Layout, weight_layers: int = 1,
                      stream_weights: bool = False) -> dict[str, int]:
    """SRAM bytes per core on the fullest core of a region holding `weight_layers` layers
    of an MoE model (1: the fullest layer; `stream_weights`: two layers' worth, the double
    buffer of weight streaming): `tp2d.layer_buffers` of the attention, the dense layers'
    FFNs and, for the MoE layers, the router on the top row, the experts' weights on their
    blocks and their activations (tokens dispatched, partial sums, outputs collected on the
    top row)."""
    cfg, b = run.cfg, DTYPE_BYTES[run.dtype]
    moe, T = cfg.moe, run.chunk_tokens
    dense = cfg.with_overrides(moe=None)
    out = layer_buffers(dense, lay, T, run.keys, run.batch, run.dtype,
                        weight_layers=weight_layers, reduce_algo=run.reduce_algo)
    R, C, d, f = lay.reg.rows, lay.reg.cols, cfg.d_model, moe.d_expert
    attn_w = sum(k * n for k, n in cfg.attn_weight_shapes().values())
    ffn_w = sum(k * n for k, n in cfg.ffn_weight_shapes(cfg.d_ffn).values())
    attn = math.ceil(attn_w / (lay.rows_att * C))
    dense_pc = attn + math.ceil(ffn_w / (R * C)) + math.ceil(dense.layer_small_params() / C)
    blocks = expert_blocks(lay.reg, len(expert_slots(cfg)), run.moe_layout)
    n_w = len(cfg.expert_weight_shapes())
    per_block: dict[Region, int] = {}
    for blk in blocks:
        per_block[blk] = per_block.get(blk, 0) + \
            math.ceil(d / blk.cols) * math.ceil(f / blk.rows) * n_w
    moe_small = max(cfg.layer_small_params(i) for i in range(cfg.n_layers)
                    if cfg.is_moe_layer(i))
    moe_pc = attn + math.ceil(d * moe.n_experts / C) + math.ceil(moe_small / C) \
        + max(per_block.values())
    kinds = [cfg.is_moe_layer(i) for i in range(cfg.n_layers)]
    if weight_layers == 1 or stream_weights:
        out["weights"] = (2 if stream_weights else 1) * max(
            moe_pc if m else dense_pc for m in kinds) * b
    else:
        out["weights"] = sum(moe_pc if m else dense_pc for m in kinds) * b
    t = _max_tokens(run)
    small = min(blocks, key=lambda r: (r.cols, r.rows))
    swi = 2 if cfg.activation == "swiglu" else 1
    out["partial"] = max(out["partial"], 4 * t * math.ceil(f / small.rows) * swi,
                         4 * T * moe.n_experts)
    out["expert_x"] = 2 * t * math.ceil(d / small.cols) * b
    out["expert_outputs"] = (moe.top_k + moe.n_shared_experts) * T * math.ceil(d / C) * b
    return out


class MoEFFN:
    """Emits the FFN of an MoE layer (router, dispatch, experts, collect, combine) for `TP2D`
    (`TP2D.moe`); `routing` sizes every expert's work and traffic in every layer."""

    def __init__(self, run):
        check_moe_layout(run.moe_layout)
        self.cfg, self.routing, self.layout = run.cfg, run.routing, run.moe_layout
        self.rows = part_rows(run)  # each prefill chunk's tokens
        self.per = _per_token_ops(run.cfg, run.dtype)
        self.records = {"dispatch": 0, "collect": 0}
        self.slots: dict = {}  # per MoE layer: [kind, id, block rect, tokens] per expert

    def ffn(self, tp: TP2D, i: int, lay: Layout, dep, weight_dep=None, bufs=None) -> int:
        """Layer i's MoE FFN after norm2 (X on the top row); returns the combine record.
        Functional (`tp.fl`, `bufs`): every record carries its DataOp (`moe_functional`)."""
        if tp.share != (0, 1) and tp.fl is not None:
            raise NotImplementedError("functional MoE mapping of a prefill in chunks is not "
                                      "mapped; use a region whose buffers fit one chunk")
        cfg, moe, p, T = self.cfg, self.cfg.moe, f"L{i}.", tp.tokens
        fd = mf.router_data(cfg, bufs) if tp.fl is not None else {}
        row0 = lay.row0
        dep = tp.compute(p + "router", row0, _deps(dep) + _deps(weight_dep), fmac=True,
                         data=fd.get("router"))
        # the logits add up in fp32 (a chain along the row), the choice travels as fp32
        dep = tp.stream(p + "router.reduce", row0, "x", -1, T * moe.n_experts, dep,
                        reduce=True, color="row_reduce", dtype="fp32",
                        data=fd.get("router.reduce"))
        dep = tp.compute(p + "route", Region(row0.x, row0.y, 1, 1), dep, fmac=False,
                         data=fd.get("route"))
        choice = tp.stream(p + "route.bcast", row0, "x", 1, 2 * T * moe.top_k, dep,
                           reduce=False, color="row_bcast", dtype="fp32",
                           data=fd.get("route.bcast"))
        part = tp.share[0]
        counts = part_counts(self.routing, i, self.rows[part])
        blocks = expert_blocks(lay.reg, len(expert_slots(cfg)), self.layout)
        ends, used, slots = [], [], []
        for (kind, e), blk in zip(expert_slots(cfg), blocks, strict=True):
            pre = f"{p}{kind}{e}."
            t = len(self.rows[part]) if kind == "shared" else counts[e]
            slots.append([kind, e, [blk.x, blk.y, blk.cols, blk.rows], t])
            names = [pre + n for n in ("ffn_up", "ffn_gate", "act", "ffn_down")]
            if t == 0:  # chosen by no token: no traffic, no work (its ops have 0 FLOPs)
                tp.emitted.update(n for n in names if n in tp.ops)
                continue
            d = mf.expert_data(cfg, bufs, kind, e, blk) if tp.fl is not None else {}
            ends += self._part(tp, names, t, (pre, row0, blk, t, choice, weight_dep, d))
            used.append((kind, e))
        if part == 0:
            self.slots[str(i)] = slots
        deps = tuple(Dep(r, "all") for r in ends) + _deps(choice)
        return tp.compute(p + "combine", row0, deps, fmac=False,
                          data=mf.combine_data(cfg, bufs, used) if tp.fl is not None else None)

    def _part(self, tp: TP2D, names: list, t: int, args: tuple) -> list[int]:
        """`_expert(tp, *args)` with the expert's ops sized for this part's `t` tokens (a
        prefill in chunks: each chunk's routing, not an even share of the layer's)."""
        if tp.share == (0, 1):
            return self._expert(tp, *args)
        saved, share = {n: tp.ops[n] for n in names if n in tp.ops}, tp.share
        tp.ops.update({n: _sized(op, self.per, t) for n, op in saved.items()})
        tp.share = (0, 1)
        try:
            return self._expert(tp, *args)
        finally:
            tp.ops.update(saved)
            tp.share = share

    def _expert(self, tp: TP2D, pre: str, row0: Region, blk: Region, t: int, choice,
                weight_dep, d: dict) -> list[int]:
        """One expert on its block for its `t` tokens (the top row first gathers their rows);
        returns the records its output's arrival on the top row waits for."""
        cfg, T = self.cfg, tp.tokens
        rows_bytes = t * cfg.d_model * DTYPE_BYTES[tp.dtype]
        g = tp.pb.add(Compute(pre + "gather", row0, 0, tp.dtype, "vector",
                              sram_read_bytes=rows_bytes, sram_write_bytes=rows_bytes,
                              deps=_deps(choice), data=d.get("gather")))
        sent = self._dispatch(tp, pre, row0, blk, t, g, d.get("dispatch"))
        start = tuple(Dep(r, "all") for r in sent) or _deps(g)
        elay = Layout(blk, 1, 1)
        rows_f = math.ceil(cfg.moe.d_expert / blk.rows)
        swi = 2 if cfg.activation == "swiglu" else 1
        tp.tokens = t
        try:
            a = tp.up(elay, blk, [pre + "ffn_up", pre + "ffn_gate"], start, t * rows_f * swi,
                      pre + "ffn", weight_dep=weight_dep, d=d, key="ffn")
            a = tp.compute(pre + "act", elay.lead, a, fmac=False, data=d.get("act"))
            a = tp.down(elay, blk, [pre + "ffn_down"], a, t * rows_f, pre + "down",
                        weight_dep=weight_dep, d=d, key="down")
        finally:
            tp.tokens = T
        back = self._collect(tp, pre, row0, blk, t, a, d.get("collect"))
        return back or [a]

    @staticmethod
    def _owner(j: int, C: int, cb: int) -> int:
        """The block column that holds (most of) top-row column j's d-shard."""
        return j * cb // C

    def _dispatch(self, tp: TP2D, pre: str, row0: Region, blk: Region, t: int,
                  choice, data=None) -> list[int]:
        """Top-row cores send their d-shard of the expert's tokens to the block's top row."""
        C, cb, y = row0.cols, blk.cols, blk.y
        w = wavelets_for(t * math.ceil(self.cfg.d_model / C), tp.dtype)
        if (blk.x, cb) == (row0.x, C):  # a band: every column straight down, one record
            if y == row0.y:
                return []
            self.records["dispatch"] += 1
            return [tp.pb.add(Unicast(f"{pre}dispatch", row0, w, dy=y - row0.y,
                                      color=MOE_COLORS["dispatch"], deps=_deps(choice),
                                      data=data))]
        out = []
        for jb in range(cb):
            src = [row0.x + j for j in range(C) if self._owner(j, C, cb) == jb]
            dest = (blk.x + jb, y)
            for xs in _runs([x for x in src if (x, row0.y) != dest]):
                reg = Region(xs[0], row0.y, len(xs), 1)
                out.append(tp.pb.add(Unicast(f"{pre}dispatch", reg, w, to=dest,
                                             color=MOE_COLORS["dispatch"], deps=_deps(choice),
                                             data=data)))
        self.records["dispatch"] += len(out)
        return out

    def _collect(self, tp: TP2D, pre: str, row0: Region, blk: Region, t: int,
                 dep, data=None) -> list[int]:
        """Each block top-row core sends every top-row core its part of the output."""
        C, cb = row0.cols, blk.cols
        w = wavelets_for(t * math.ceil(self.cfg.d_model / C), tp.dtype)
        if (blk.x, cb) == (row0.x, C):  # a band: every column straight up, one record
            if blk.y == row0.y:
                return []
            self.records["collect"] += 1
            top = Region(blk.x, blk.y, C, 1)
            return [tp.pb.add(Unicast(f"{pre}collect", top, w, dy=row0.y - blk.y,
                                      color=MOE_COLORS["collect"], deps=_deps(dep),
                                      data=data))]
        out = []
        for j in range(C):
            src = (blk.x + self._owner(j, C, cb), blk.y)
            dest = (row0.x + j, row0.y)
            if src == dest:
                continue
            out.append(tp.pb.add(Unicast(f"{pre}collect", Region(*src, 1, 1), w, to=dest,
                                         color=MOE_COLORS["collect"], deps=_deps(dep),
                                         data=data)))
        self.records["collect"] += len(out)
        return out

    def meta(self) -> dict:
        """What the program's meta says about the MoE layers."""
        r = self.routing
        layers = sorted(r.choices)
        return {"routing": r.spec, "moe_layout": self.layout,
                "expert_tokens": {str(i): list(r.counts(i)) for i in layers},
                "max_imbalance": max(r.imbalance(i) for i in layers),
                "moe_records": dict(self.records), "slots": self.slots}


def _runs(xs: list[int]) -> list[list[int]]:
    """Consecutive runs of sorted integers."""
    out: list[list[int]] = []
    for x in xs:
        if out and out[-1][-1] + 1 == x:
            out[-1].append(x)
        else:
            out.append([x])
    return out


def router_choices(cfg: GPTConfig, run, seed: int) -> dict:
    """{MoE layer: (tokens, k) expert ids} the model's router picks on the weights and tokens
    that `functional_model.random_case` draws from `seed` (weights rounded to the run's
    dtype)."""
    from mapper.strategies.functional_model import round_to, sparsify
    from workloads import reference

    weights = reference.init_weights(cfg, seed)
    rng = np.random.default_rng(seed)
    weights = sparsify(weights, run.sparsity, rng)  # as random_case draws them
    w = {k: round_to(v, run.dtype).astype(np.float64) for k, v in weights.items()}
    start = run.context if run.phase == "decode" else 0
    sq = 1 if run.phase == "decode" else run.prompt
    kv = None
    if start:
        prompt = rng.integers(0, cfg.vocab_size, (run.batch, start))
        _, kv = reference.forward(cfg, w, prompt)
    tokens = rng.integers(0, cfg.vocab_size, (run.batch, sq))
    routes: dict = {}
    reference.forward(cfg, w, tokens, kv_cache=kv, start_pos=start, routes=routes)
    return {i: idx for i, (idx, _) in routes.items()}


def moe_run(run, spec: str | None, layout: str | None, seed: int, functional: bool = False):
    """`run` (a `common.Run` of an MoE model) with its routing and expert layout; refuses what
    is not mapped. Defaults: routing `uniform` (functional: `router`), layout `blocks`
    (functional: `bands`)."""
    spec = spec or ("router" if functional else "uniform")
    layout = layout or ("bands" if functional else "blocks")
    check_moe_layout(layout)
    if run.phase == "train":
        raise NotImplementedError(f"MoE training is not mapped: {run.cfg.name} (no MoE backward "
                                  "in the reference either); map prefill or decode")
    routing = make_routing(spec, run.cfg, run.tokens, seed=seed,
                           router_case=lambda: router_choices(run.cfg, run, seed))
    run = dataclasses.replace(run, routing=routing, moe_layout=layout)
    if functional:
        mf.check_functional(run.cfg, run)
    return run


def stage_model(cfg: GPTConfig, first: int, layers: int) -> GPTConfig:
    """The model of one wafer's slice of layers first .. first + layers - 1: its dense layers
    renumbered from 0 (a dense model: just fewer layers)."""
    if not cfg.is_moe:
        return cfg.with_overrides(n_layers=layers)
    dense = tuple(d - first for d in cfg.moe.dense_layers if first <= d < first + layers)
    return cfg.with_overrides(n_layers=layers, moe=dataclasses.replace(cfg.moe, dense_layers=dense))


def stage_routing(run, cfg: GPTConfig, first: int, spec: str | None, seed: int):
    """`run` (of a slice's model, `stage_model`) with the whole model's routing of its layers,
    renumbered from 0: the experts each token takes are those of the one-wafer mapping."""
    spec = spec or "uniform"
    if spec == "router":
        raise NotImplementedError("routing router (computed from the router weights) is not "
                                  "mapped over wafers; use uniform, skewed:ALPHA or a file")
    full = make_routing(spec, cfg, run.tokens, seed=seed)
    last = first + run.cfg.n_layers
    choices = {i - first: ids for i, ids in full.choices.items() if first <= i < last}
    return dataclasses.replace(run, routing=Routing(full.spec, full.n_experts, full.tokens,
                                                    choices))


def check_moe_strategy(cfg: GPTConfig, strategy: str, functional: bool) -> None:
    """What is not mapped for MoE models yet, by strategy (functional: `moe_functional`)."""
    if not cfg.is_moe:
        return
    if strategy == "weight-streaming" and functional:
        raise NotImplementedError(f"functional weight-streaming of an MoE model is not "
                                  f"mapped: {cfg.name}; use layer-pipelined or "
                                  "layer-sequential")


def functional_tiles(fl, run, lay: Layout, bufs, i: int, tiles: dict) -> dict:
    """`tiles` with MoE layer i's (`moe_functional.moe_tiles`) in place of its dense FFN's
    (its weights, and its scratch when the layer has its own activations); `tiles` itself
    for a dense layer."""
    if not run.cfg.is_moe_layer(i):
        return tiles
    drop = {bufs(k) for k in ("wup", "wgate", "wdown")}
    if bufs.a == bufs.w:
        drop |= {bufs(k) for k in ("fpart", "act")}
    slots = expert_slots(run.cfg)
    moe = mf.moe_tiles(fl, run, lay, bufs, i, expert_blocks(lay.reg, len(slots),
                                                            run.moe_layout), slots)
    return {k: v for k, v in tiles.items() if k not in drop} | moe


def streamed_layer_params(run, i: int) -> int:
    """Parameters of layer i that weight streaming brings in: all of a dense layer's; of an
    MoE layer, everything but the routed experts that no token of the run chose."""
    cfg = run.cfg
    if not cfg.is_moe_layer(i):
        return cfg.layer_params(i)
    unused = sum(1 for c in run.routing.counts(i) if c == 0)
    per_expert = sum(k * n for k, n in cfg.expert_weight_shapes().values()) + \
        (sum(n for _, n in cfg.expert_weight_shapes().values()) if cfg.has_bias else 0)
    return cfg.layer_params(i) - unused * per_expert
