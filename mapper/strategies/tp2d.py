"""A transformer layer laid 2-D tensor-parallel on one rectangular region (R rows x C cols).

Shared by every whole-model strategy. The activation X (T tokens x d) lives on the region's top
row, split by columns (column j holds a d/C shard). Two GEMM patterns:

- *up* (QKV, FFN-up, LM head): the X shard streams down each column; core (j, r) multiplies it
  by its weight block (d-shard j x out-shard r); partial sums reduce along each row (a pipelined
  chain) into the row's leader in column 0.
- *down* (O-projection, FFN-down): the leader broadcasts its out-shard along its row; core
  (j, r) holds (shard r x d-shard j); partial sums reduce up each column into the top row.

Attention (`mapper.attention`): Ra head groups of G rows each; a group owns hpr consecutive
query heads (consecutive, so that under GQA they share their K/V heads) and the K/V heads they
read. With G = 1 (R <= heads) row r is group r; with G > 1 (R > heads: a group per K/V head)
row g of a group holds the g-th slice of the group's Q|K|V and O-projection weights. Keys are
split by position over the group's G x C cores (sequence parallel); partial outputs and softmax
statistics reduce along the rows, then up the group's leaders, with an exact online-softmax
combine. Norms run split over the top row with their statistics all-reduced along it.

Functional runs (`fl`, a `functional_layout.FLayout`): every record of the forward pass also
carries its `DataOp` (the exact tiles and the memory plan are in `functional_layout`), so
`wse_sim.functional.run_functional` computes the real forward pass; the records themselves
(and so the timing) are the same with or without.

Backward mirrors it: the backward of an *up* GEMM is a *down* pattern (and vice versa); weight
gradients are local (each core already holds both operands of its block).

`reduce_algo` picks how the GEMMs' partial sums reduce (forward, backward and the LM head), for
the row reduces (into the leaders) and the column reduces (into the top row): `chain` (one
pipelined stream per line), `tree` (the two-level tree of `mapper.tree_reduce`: groups of
~sqrt(n) cores chain-reduce, their leaders send to the root, which adds each; its adds are
`combine_flops`, its receive buffers `tree_recv` in the SRAM budget), or the tree for one
direction only (`row-tree`, `col-tree`). The attention's softmax-combine reduce and the norms'
statistics stay chains.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mapper import attention
from mapper.reduce_algos import axis_algo
from mapper.tree_reduce import TreeBufs, build_tree, tree_groups
from workloads.models import GPTConfig
from wse_sim.hardware import DTYPE_BYTES
from wse_sim.precision import Precision
from wse_sim.program import Compute, Dep, LineStream, ProgramBuilder, Region, wavelets_for
from wse_sim.sparsity import Sparsity
from wse_sim.timing import split_evenly

if TYPE_CHECKING:
    from mapper.strategies.functional_layout import FLayout, LayerBufs

COLORS = {"col_bcast": 0, "row_reduce": 1, "row_bcast": 2, "col_reduce": 3, "stats": 4,
          "handoff": 5, "stats_bcast": 6, "back": 7, "row_tree": 8, "col_tree": 9}


@dataclass(frozen=True)
class Layout:
    """The sub-regions of one layer region: `ra` head groups of `g` rows each hold attention
    (`mapper.attention`: g = 1 is head parallel, g > 1 also splits the keys over the rows)."""

    reg: Region
    ra: int     # head groups
    g: int = 1  # rows per head group

    @classmethod
    def of(cls, reg: Region, cfg: GPTConfig, train: bool = False) -> Layout:
        """Training keeps one row per head group (the backward of the row split is not
        mapped)."""
        s = attention.split(cfg, reg.rows, reg.cols, seq_rows=not train)
        return cls(reg, s.groups, s.rows_per_group)

    @classmethod
    def fitted(cls, reg: Region, cfg: GPTConfig, train: bool, mode: str, fits) -> Layout:
        """The attention split of a region: `heads` (one row per head group: no group
        streams), `rows` (when rows > heads, each group's rows split the keys too: attention
        weights and KV cache spread over every row, at the cost of the group streams), or
        `auto`: heads when `fits(layout)` says its buffers fit, else rows. Training keeps
        heads (the backward of the row split is not mapped)."""
        heads = cls.of(reg, cfg, train=True)
        if train or mode == "heads" or (mode == "auto" and fits(heads)):
            return heads
        return cls.of(reg, cfg)

    def split(self, cfg: GPTConfig) -> attention.AttentionSplit:
        return attention.AttentionSplit(self.ra, self.g, self.reg.cols,
                                        math.ceil(cfg.n_heads / self.ra),
                                        math.ceil(cfg.n_kv_heads / self.ra), cfg.hd)

    @property
    def rows_att(self) -> int:
        return self.ra * self.g

    @property
    def row0(self) -> Region:
        return Region(self.reg.x, self.reg.y, self.reg.cols, 1)

    @property
    def att(self) -> Region:
        return Region(self.reg.x, self.reg.y, self.reg.cols, self.rows_att)

    @property
    def lead(self) -> Region:
        return Region(self.reg.x, self.reg.y, 1, self.reg.rows)

    @property
    def lead_att(self) -> Region:
        return Region(self.reg.x, self.reg.y, 1, self.rows_att)

    def group_lead(self, k: int) -> Region:
        """The leaders (column 0) of head group k's rows; its top core leads the group."""
        return Region(self.reg.x, self.reg.y + k * self.g, 1, self.g)


def ffn_row_cols(cfg: GPTConfig, rows: int) -> int:
    """Columns of the FFN-up output each row holds: its f-shard of ceil(d_ffn / R), twice for
    SwiGLU (up and gate of the same shard, so the act is local to the row's leader)."""
    return math.ceil(cfg.d_ffn / rows) * (2 if cfg.activation == "swiglu" else 1)


def _weight_reads(op) -> int:
    """Weight bytes an op reads from SRAM: all of its weights, except a table lookup (the
    embedding), which reads only the rows it gathers (its output)."""
    return op.bytes_out if op.kind == "embedding" else op.weight_bytes


def _after_all(tasks) -> tuple:
    """Wait for every one of `tasks` to finish everywhere (per-group records, which do not
    reach every core of the record that waits)."""
    return tuple(Dep(int(t), "all") for t in tasks)


def _deps(dep) -> tuple:
    items = dep if isinstance(dep, tuple | list) else (dep,)
    return tuple(d if isinstance(d, Dep) else Dep(int(d)) for d in items if d is not None)


class TP2D:
    """Emits the records of layers laid out 2-D tensor-parallel; tracks which ops it emitted."""

    def __init__(self, pb: ProgramBuilder, cfg: GPTConfig, ops: dict, dtype: str,
                 sparsity: float | Sparsity, tokens: int, fl: FLayout | None = None,
                 reduce_algo: str = "chain", prec: Precision | None = None):
        self.pb, self.cfg, self.ops, self.dtype = pb, cfg, ops, dtype
        # the dtypes of the tensors (wse_sim.precision): what each op computes in
        self.prec = prec or Precision.of(dtype)
        # the zero weights the cores skip, per layer, and how they are stored
        self.sp = sparsity if isinstance(sparsity, Sparsity) else Sparsity("dense", sparsity)
        self.sparsity, self.tokens = self.sp.fraction, tokens
        self.fl = fl  # functional layout: DataOps are attached only when given
        self.reduce_algo = reduce_algo
        self.combine_flops = 0  # the tree's root adds (Compute records beyond the graph)
        self.tree_reduces = 0  # reduces emitted as trees
        self.tree_axes: set[str] = set()  # along which axes ('x', 'y') they were
        self.emitted: set[str] = set()
        self.share = (0, 1)  # (chunk, chunks): a chunk runs its share of every op's FLOPs
        self.moe = None  # an MoE model's FFN emitter (`moe_layer.MoEFFN`) for its MoE layers

    # ---- primitives -----------------------------------------------------------------------
    def compute(self, name: str, region: Region, dep, *, fmac: bool, flops: int | None = None,
                label: str | None = None, data=None) -> int:
        """One op of the graph (all its FLOPs, or `flops` of it) on every core of `region`."""
        op = self.ops[name]
        self.emitted.add(name)
        if flops is None:
            flops = split_evenly(op.flops, self.share[1], self.share[0])
        f = int(flops)
        frac = f / op.flops if op.flops else 1.0 / self.share[1]
        sparse = self.sp.of_layer(op.layer) if (fmac and op.weight and op.kind == "matmul") \
            else 0.0
        return self.pb.add(Compute(
            label or name, region, f, self.compute_dtype(op, fmac), "fmac" if fmac else "vector",
            sparse,
            sram_read_bytes=int((op.bytes_in + self.weight_reads(op)) * frac),
            sram_write_bytes=int(op.bytes_out * frac), deps=_deps(dep), data=data))

    def weight_reads(self, op) -> int:
        """Weight bytes `op` reads from SRAM: a layer's matrix as its sparse format stores it
        (values and index metadata; docs/sparsity.md), anything else as `_weight_reads`."""
        if self.sp.compressed and op.kind == "matmul" and op.weight and op.layer is not None:
            wb = self.prec.bytes("weights")
            return self.sp.stored_bytes(op.weight_bytes // wb, wb, op.layer)
        return _weight_reads(op)

    def compute_dtype(self, op, fmac: bool) -> str:
        """The dtype whose lanes run `op`: a matmul by a weight, weights x activations;
        attention, the KV cache x activations; anything else, the element-wise dtype (an op the
        graph gives a dtype of its own, the fp32 optimizer, keeps it)."""
        if op.dtype != self.dtype:
            return op.dtype
        if fmac and op.kind in ("attn_qk", "attn_av"):
            return self.prec.attention
        if fmac and op.weight:
            return self.prec.matmul
        return self.prec.vector

    def maybe(self, name: str, region: Region, dep, *, fmac: bool, data=None) -> int:
        return self.compute(name, region, dep, fmac=fmac, data=data) if name in self.ops else dep

    def stream(self, name: str, region: Region, axis: str, direction: int, values: int, dep, *,
               reduce: bool, color: str, dtype: str | None = None, data=None) -> int:
        """A line stream, or nothing when the region is one core wide along `axis`."""
        length = region.cols if axis == "x" else region.rows
        if length < 2 or values <= 0:
            return dep
        # activations in their dtype; partial sums (reduce streams) in the element-wise one
        dt = dtype or (self.prec.vector if reduce else self.dtype)
        return self.pb.add(LineStream(name, region, axis, direction, wavelets_for(values, dt),
                                      reduce=reduce, dtype=dt, color=COLORS[color],
                                      deps=_deps(dep), data=data))

    def reduce(self, name: str, region: Region, axis: str, values: int, dep, *, color: str,
               data=None) -> int:
        """A GEMM's partial sums (`values` per core) reduced along every line of `region` into
        position 0 (axis 'x': every row into column 0; 'y': every column into the top row) by
        `reduce_algo`; a line of fewer than 3 cores is always a chain."""
        n = region.cols if axis == "x" else region.rows
        vec = self.prec.vector  # partial sums travel in the element-wise dtype
        if axis_algo(self.reduce_algo, axis) == "chain" or tree_groups(n)[1] == 0 or values <= 0:
            return self.stream(name, region, axis, -1, values, dep, reduce=True, color=color,
                               data=data)
        last, flops = build_tree(
            self.pb.add, name, region, axis, wavelets=wavelets_for(values, vec),
            values=values, dtype=vec,
            colors=(COLORS[color], COLORS["row_tree" if axis == "x" else "col_tree"]),
            deps=_deps(dep), bufs=None if data is None else TreeBufs.of(data))
        self.combine_flops += flops
        self.tree_reduces += 1
        self.tree_axes.add(axis)
        return last

    def norm(self, name: str, row: Region, dep, tokens: int, d: dict | None = None,
             key: str = "") -> int:
        """Statistics (half the FLOPs), all-reduce of 2 numbers per token, normalise.
        `d`: DataOps by key (`key`.stats, .allreduce, .bcast, and `key` for the normalise)."""
        d = d or {}
        total = split_evenly(self.ops[name].flops, self.share[1], self.share[0])
        half = total // 2
        a = self.compute(name, row, dep, fmac=False, flops=half, label=name + ".stats",
                         data=d.get(key + ".stats"))
        a = self.stream(name + ".allreduce", row, "x", -1, 2 * tokens, a, reduce=True,
                        color="stats", dtype="fp32", data=d.get(key + ".allreduce"))
        a = self.stream(name + ".bcast", row, "x", 1, 2 * tokens, a, reduce=False,
                        color="stats_bcast", dtype="fp32", data=d.get(key + ".bcast"))
        return self.compute(name, row, a, fmac=False, flops=total - half, data=d.get(key))

    def gemms(self, names, region: Region, dep, weight_dep=None, d: dict | None = None) -> int:
        """The local GEMMs of `names` (those in the graph) on every core of `region`; the
        first also waits for the weights (`weight_dep`, when they stream in). DataOps in `d`
        are keyed by the op name without its layer prefix."""
        d = d or {}
        extra = _deps(weight_dep)
        for n in names:
            if n in self.ops:
                dep = self.compute(n, region, _deps(dep) + extra, fmac=True,
                                   data=d.get(n.split(".", 1)[-1]))
                extra = ()
        return dep

    def x_values(self, lay: Layout) -> int:
        """Values of one column's X shard: what the top row holds and hands on per column."""
        return self.tokens * math.ceil(self.cfg.d_model / lay.reg.cols)

    def up(self, lay: Layout, region: Region, names, dep, out_values: int, label: str, *,
           weight_dep=None, d: dict | None = None, key: str = "") -> int:
        """Column broadcast of the X shard, local GEMMs, row reduce into the leaders."""
        d = d or {}
        x_vals = self.x_values(lay)
        dep = self.stream(label + ".bcast", region, "y", 1, x_vals, dep, reduce=False,
                          color="col_bcast", data=d.get(key + ".bcast"))
        dep = self.gemms(names, region, dep, weight_dep, d)
        return self.reduce(label + ".reduce", region, "x", out_values, dep, color="row_reduce",
                           data=d.get(key + ".reduce"))

    def down(self, lay: Layout, region: Region, names, dep, in_values: int, label: str, *,
             weight_dep=None, d: dict | None = None, key: str = "") -> int:
        """Row broadcast from the leaders, local GEMMs, column reduce into the top row."""
        d = d or {}
        x_vals = self.x_values(lay)
        dep = self.stream(label + ".bcast", region, "x", 1, in_values, dep, reduce=False,
                          color="row_bcast", data=d.get(key + ".bcast"))
        dep = self.gemms(names, region, dep, weight_dep, d)
        return self.reduce(label + ".reduce", region, "y", x_vals, dep, color="col_reduce",
                           data=d.get(key + ".reduce"))

    # ---- sizes ------------------------------------------------------------------------------
    def sizes(self, lay: Layout) -> dict:
        """Values per core of the layer's streams: `qkv` and `attn_out` are a row's share (a
        whole group's when g = 1), `qkv_group` and `attn_group` a head group's."""
        cfg, t = self.cfg, self.tokens
        hpr, kvpr = math.ceil(cfg.n_heads / lay.ra), math.ceil(cfg.n_kv_heads / lay.ra)
        qw, ow = cfg.hd * (hpr + 2 * kvpr), cfg.hd * hpr
        return {"hpr": hpr, "kvpr": kvpr, "qkv_group": t * qw, "attn_group": t * ow,
                "qkv": t * math.ceil(qw / lay.g), "attn_out": t * math.ceil(ow / lay.g),
                "attn_part": t * hpr * (cfg.hd + 2),
                "ffn_out": t * ffn_row_cols(cfg, lay.reg.rows),
                "ffn_in": t * math.ceil(cfg.d_ffn / lay.reg.rows)}

    # ---- a layer ----------------------------------------------------------------------------
    def forward(self, i: int, lay: Layout, dep, weight_dep=None,
                bufs: LayerBufs | None = None, xo: str | None = None) -> int:
        """Records of layer i's forward pass; returns the last record. With a functional
        layout, `bufs` names the layer's tiles and every record gets its DataOp (training:
        the layer keeps what its backward needs and leaves its output in `xo`)."""
        p = f"L{i}."
        d = {}
        if self.fl is not None:
            d = self.fl.train_layer_data(bufs, xo or bufs("xo")) if self.fl.train \
                else self.fl.layer_data(bufs, i)
        dep = self.norm(p + "norm1", lay.row0, dep, self.tokens, d, "norm1")
        attend = self.attention_rows if lay.g == 1 else self.attention_groups
        dep = attend(p, lay, dep, weight_dep, d)
        dep = self.compute(p + "residual1", lay.row0, dep, fmac=False, data=d.get("residual1"))
        dep = self.norm(p + "norm2", lay.row0, dep, self.tokens, d, "norm2")
        if self.cfg.is_moe_layer(i):
            if self.moe is None:
                raise NotImplementedError(f"layer {i} is an MoE layer: TP2D.moe is not set")
            dep = self.moe.ffn(self, i, lay, dep, weight_dep, bufs)
            return self.compute(p + "residual2", lay.row0, dep, fmac=False,
                                data=d.get("residual2"))
        s = self.sizes(lay)
        dep = self.up(lay, lay.reg, [p + "ffn_up", p + "ffn_gate"], dep, s["ffn_out"],
                      p + "ffn", weight_dep=weight_dep, d=d, key="ffn")
        dep = self.compute(p + "act", lay.lead, dep, fmac=False, data=d.get("act"))
        dep = self.down(lay, lay.reg, [p + "ffn_down"], dep, s["ffn_in"], p + "down",
                        weight_dep=weight_dep, d=d, key="down")
        return self.compute(p + "residual2", lay.row0, dep, fmac=False, data=d.get("residual2"))

    def attention_rows(self, p: str, lay: Layout, dep, weight_dep, d: dict) -> int:
        """Attention with one row per head group: QKV (each row's heads at its leader), RoPE,
        Q, K, V along the row, scores, softmax and partial outputs on every core, the
        online-softmax combine into the leader, the O-projection into the top row."""
        s = self.sizes(lay)
        dep = self.up(lay, lay.att, [p + n for n in ("q_proj", "k_proj", "v_proj")], dep,
                      s["qkv"], p + "qkv", weight_dep=weight_dep, d=d, key="qkv")
        dep = self.maybe(p + "rope", lay.lead_att, dep, fmac=False, data=d.get("rope"))
        dep = self.stream(p + "qkv.bcast", lay.att, "x", 1, s["qkv"], dep, reduce=False,
                          color="row_bcast", data=d.get("qkv.share"))
        dep = self.attention_core(p, lay, dep, d)
        dep = self.stream(p + "attn.reduce", lay.att, "x", -1, s["attn_part"], dep, reduce=True,
                          color="row_reduce", data=d.get("attn.reduce"))
        return self.down(lay, lay.att, [p + "o_proj"], dep, s["attn_out"], p + "o",
                         weight_dep=weight_dep, d=d, key="o")

    def attention_groups(self, p: str, lay: Layout, dep, weight_dep, d: dict) -> int:
        """Attention with g > 1 rows per head group. Row g of a group holds the g-th slice of
        the group's Q|K|V output columns (and of the O-projection's input rows), so the
        weights spread over every row. Per group, in its leaders' column: the slices gather
        into the group's top core, which applies RoPE, and come back down; every row then
        shares Q, K, V along itself. Each core attends over its share of the positions;
        the (o, max, sum) partials merge along each row, then up the group's column, and the
        group's output goes back down (each row keeps its slice) for the O-projection.
        The per-group streams are records of their own; the row streams after them wait
        for every group's (they run side by side, alike)."""
        s = self.sizes(lay)
        dep = self.up(lay, lay.att, [p + n for n in ("q_proj", "k_proj", "v_proj")], dep,
                      s["qkv"], p + "qkv", weight_dep=weight_dep, d=d, key="qkv")
        ends = []
        for k in range(lay.ra):
            col = lay.group_lead(k)
            a = self.stream(p + "qkv.gather", col, "y", -1, s["qkv_group"], dep, reduce=True,
                            color="col_reduce", data=d.get("qkv.gather"))
            if p + "rope" in self.ops:
                a = self.compute(p + "rope", Region(col.x, col.y, 1, 1), a, fmac=False,
                                 flops=self.part(p + "rope", lay.ra, k), data=d.get("rope"))
            ends.append(self.stream(p + "qkv.group", col, "y", 1, s["qkv_group"], a,
                                    reduce=False, color="col_bcast", data=d.get("qkv.group")))
        dep = self.stream(p + "qkv.bcast", lay.att, "x", 1, s["qkv_group"], _after_all(ends),
                          reduce=False, color="row_bcast", data=d.get("qkv.share"))
        dep = self.attention_core(p, lay, dep, d)
        dep = self.stream(p + "attn.reduce", lay.att, "x", -1, s["attn_part"], dep, reduce=True,
                          color="row_reduce", data=d.get("attn.reduce"))
        ends = []
        for k in range(lay.ra):
            col = lay.group_lead(k)
            a = self.stream(p + "attn.combine", col, "y", -1, s["attn_part"], dep, reduce=True,
                            color="col_reduce", data=d.get("attn.combine"))
            ends.append(self.stream(p + "attn.share", col, "y", 1, s["attn_group"], a,
                                    reduce=False, color="col_bcast", data=d.get("attn.share")))
        return self.down(lay, lay.att, [p + "o_proj"], _after_all(ends), s["attn_out"],
                         p + "o", weight_dep=weight_dep, d=d, key="o")

    def attention_core(self, p: str, lay: Layout, dep, d: dict) -> int:
        for n, fmac in (("attn_qk", True), ("softmax", False), ("attn_av", True)):
            dep = self.compute(p + n, lay.att, dep, fmac=fmac, data=d.get(n))
        return dep

    def part(self, name: str, parts: int, k: int) -> int:
        """Part k of `parts` of this chunk's share of op `name`'s FLOPs."""
        return split_evenly(split_evenly(self.ops[name].flops, self.share[1], self.share[0]),
                            parts, k)

    def backward(self, i: int, lay: Layout, dep, weight_dep=None,
                 bufs: LayerBufs | None = None) -> tuple[int, list[int]]:
        """Layer i's backward pass (dY arrives on the top row); returns (last record, the
        records that finish its weight gradients). With a functional layout and `bufs` every
        record gets its DataOp (`FLayout.backward_data`)."""
        if lay.g > 1:
            raise NotImplementedError(
                f"backward of attention split over {lay.g} rows per head group is not mapped; "
                "a training layout keeps one row per group (Layout.of(..., train=True))")
        p, s = f"L{i}.", self.sizes(lay)
        grads: list[int] = []
        d = self.fl.backward_data(bufs) if self.fl is not None and bufs is not None else {}
        k = len(p)

        def bwd(names, region, dep, first_extra):
            first = True
            for n in names:
                for part in (".bwd_data", ".bwd_weight"):
                    if n + part in self.ops:
                        extra = _deps(first_extra) if first else ()
                        dep = self.compute(n + part, region, _deps(dep) + extra, fmac=True,
                                           data=d.get(n[k:] + part))
                        first = False
                        if part == ".bwd_weight":
                            grads.append(dep)
            return dep

        x_vals = self.x_values(lay)
        dep = self.compute(p + "residual2.bwd", lay.row0, dep, fmac=False,
                           data=d.get("residual2.bwd"))
        # FFN-down was a *down* GEMM: its backward is an *up* pattern.
        dep = self.stream(p + "down.bwd.bcast", lay.reg, "y", 1, x_vals, dep, reduce=False,
                          color="col_bcast", data=d.get("down.bwd.bcast"))
        dep = bwd([p + "ffn_down"], lay.reg, dep, weight_dep)
        dep = self.reduce(p + "down.bwd.reduce", lay.reg, "x", s["ffn_in"], dep,
                          color="row_reduce", data=d.get("down.bwd.reduce"))
        dep = self.compute(p + "act.bwd", lay.lead, dep, fmac=False, data=d.get("act.bwd"))
        dep = self.stream(p + "ffn.bwd.bcast", lay.reg, "x", 1, s["ffn_out"], dep, reduce=False,
                          color="row_bcast", data=d.get("ffn.bwd.bcast"))
        dep = bwd([p + "ffn_up", p + "ffn_gate"], lay.reg, dep, weight_dep)
        dep = self.reduce(p + "ffn.bwd.reduce", lay.reg, "y", x_vals, dep, color="col_reduce",
                          data=d.get("ffn.bwd.reduce"))
        dep = self.norm(p + "norm2.bwd", lay.row0, dep, self.tokens, d, "norm2.bwd")
        dep = self.compute(p + "residual1.bwd", lay.row0, dep, fmac=False,
                           data=d.get("residual1.bwd"))
        dep = self.stream(p + "o.bwd.bcast", lay.att, "y", 1, x_vals, dep, reduce=False,
                          color="col_bcast", data=d.get("o.bwd.bcast"))
        dep = bwd([p + "o_proj"], lay.att, dep, weight_dep)
        dep = self.reduce(p + "o.bwd.reduce", lay.att, "x", s["attn_out"], dep,
                          color="row_reduce", data=d.get("o.bwd.reduce"))
        dep = self.stream(p + "attn.bwd.bcast", lay.att, "x", 1, s["attn_part"], dep,
                          reduce=False, color="row_bcast", data=d.get("attn.bwd.bcast"))
        for n, fmac in (("attn_av.bwd_p", True), ("attn_av.bwd_v", True), ("softmax.bwd", False),
                        ("attn_qk.bwd_q", True), ("attn_qk.bwd_k", True)):
            dep = self.compute(p + n, lay.att, dep, fmac=fmac, data=d.get(n))
        dep = self.stream(p + "attn.bwd.reduce", lay.att, "x", -1, s["qkv"], dep, reduce=True,
                          color="row_reduce", data=d.get("attn.bwd.reduce"))
        dep = self.maybe(p + "rope.bwd", lay.lead_att, dep, fmac=False, data=d.get("rope.bwd"))
        dep = self.stream(p + "qkv.bwd.bcast", lay.att, "x", 1, s["qkv"], dep, reduce=False,
                          color="row_bcast", data=d.get("qkv.bwd.bcast"))
        dep = bwd([p + n for n in ("q_proj", "k_proj", "v_proj")], lay.att, dep, weight_dep)
        dep = self.reduce(p + "qkv.bwd.reduce", lay.att, "y", x_vals, dep, color="col_reduce",
                          data=d.get("qkv.bwd.reduce"))
        dep = self.norm(p + "norm1.bwd", lay.row0, dep, self.tokens, d, "norm1.bwd")
        return dep, grads

    def optimizer(self, names: list[str], region: Region, dep) -> int:
        """Adam updates of the named weights, on the cores that hold them (after every record
        in `dep` has finished everywhere)."""
        items = dep if isinstance(dep, tuple | list) else (dep,)
        dep = tuple(d if isinstance(d, Dep) else Dep(int(d), "all") for d in items)
        for n in names:
            if n in self.ops:
                dep = self.compute(n, region, dep, fmac=False)
        return dep

    def missing(self, skip_kinds: tuple = ()) -> list[str]:
        """Ops of the graph not emitted (must be empty, or FLOPs would not be conserved)."""
        return [n for n, op in self.ops.items() if n not in self.emitted and op.kind not in skip_kinds]


def tree_recv_bytes(reg: Region, x_values: int, y_values: int, dtype: str,
                    reduce_algo: str) -> int:
    """Bytes of a tree reduce's receive buffers on a root core (core (0, 0) is the root of both
    patterns, never at once): one tile per leader of the largest partial reduced along the rows
    (`x_values` per core) or up the columns (`y_values`) by a tree; 0 for chains."""
    x = tree_groups(reg.cols)[1] * x_values if axis_algo(reduce_algo, "x") == "tree" else 0
    y = tree_groups(reg.rows)[1] * y_values if axis_algo(reduce_algo, "y") == "tree" else 0
    return max(x, y) * DTYPE_BYTES[dtype]


def held_matrix_bytes(sp: Sparsity, tiles: tuple, value_bytes: int, layers: int) -> int:
    """Bytes of the weight-matrix tiles (`tiles`: positions per core of each) of the
    `layers` fullest layers a core holds, stored as `sp` says."""
    per = [sum(sp.stored_bytes(t, value_bytes, i) for t in tiles)
           for i in range(max(1, len(sp.per_layer)))]
    if len(per) == 1:
        return layers * per[0]
    return sum(sorted(per, reverse=True)[:layers])


def scale_bytes(cfg: GPTConfig, lay: Layout, keys: int, prec: Precision, layers: int,
                kv_streams: int) -> int:
    """The fp32 scales of 8-bit tensors on the fullest core (docs/precision.md): one per
    output column of every weight tile it holds (its row's Q|K|V share, the d-shards of O and
    FFN-down, its row's FFN-up (and gate) f-shard), for each of the `layers` layers held;
    and one per token, K/V head and K or V of its `kv_streams` KV caches."""
    out = 0
    att = lay.split(cfg)
    if DTYPE_BYTES[prec.weights] == 1:
        qw = cfg.hd * (att.heads_per_group + 2 * att.kv_heads_per_group)
        cols = math.ceil(qw / lay.g) + 2 * math.ceil(cfg.d_model / lay.reg.cols) \
            + ffn_row_cols(cfg, lay.reg.rows)
        out += layers * cols * 4
    if DTYPE_BYTES[prec.kv] == 1:
        out += att.kv_bytes_per_core(keys, "fp32", kv_streams) // cfg.hd
    return out


def layer_buffers(cfg: GPTConfig, lay: Layout, tokens: int, keys: int, batch: int,
                  dtype: str, *, train: bool = False, weight_layers: int = 1,
                  stream_weights: bool = False, reduce_algo: str = "chain",
                  prec: Precision | None = None, sp: Sparsity | None = None) -> dict[str, int]:
    """SRAM bytes per core on the fullest core of a layer region, by buffer.

    `keys` positions of each of `batch` sequences are attended to (and cached, the caches of
    the `weight_layers` layers and the sequences spread over the cores: `mapper.attention`;
    a training step keeps each at the first cores); `weight_layers` layers of weights are
    resident (layer-sequential holds all of them); `stream_weights` holds two layers' worth
    (double buffer) instead; a `reduce_algo` with trees adds the root's receive buffers
    (`tree_recv`). `prec` (default: `dtype` for every tensor, fp32 accumulators): the weight
    matrices in its weights dtype (norm gains and biases in `dtype`), the KV cache in its kv
    dtype, partial sums and scores in its accumulator dtype; 8-bit weights and KV cache add
    their fp32 scales (`scales`: `scale_bytes`). `sp` (default dense): the weight matrices
    stored as its sparse format says, the fullest layers' (`held_matrix_bytes`).
    """
    prec = prec or Precision.of(dtype)
    b, wb, ab = DTYPE_BYTES[dtype], prec.bytes("weights"), prec.bytes("accum")
    R, C = lay.reg.rows, lay.reg.cols
    d, hd = cfg.d_model, cfg.hd
    att = lay.split(cfg)
    hpr, kvpr = att.heads_per_group, att.kv_heads_per_group
    qw = hd * (hpr + 2 * kvpr)
    shapes = cfg.layer_weight_shapes()
    attn_names = ("w_q", "w_k", "w_v", "w_o")
    attn_w = sum(k * n for name, (k, n) in shapes.items() if name in attn_names)
    ffn_w = sum(k * n for name, (k, n) in shapes.items() if name not in attn_names)
    tiles = (math.ceil(attn_w / (lay.rows_att * C)), math.ceil(ffn_w / (R * C)))
    matrix_params = sum(tiles)
    small_params = math.ceil(cfg.layer_small_params() / C)
    per_layer_params = matrix_params + small_params
    layers = 2 if stream_weights else weight_layers
    key_slots = att.positions_per_core(keys)
    row_partial = tokens * max(ffn_row_cols(cfg, R), math.ceil(qw / lay.g))  # values reduced
    out = {
        "weights": held_matrix_bytes(sp or Sparsity(), tiles, wb, layers)
        + layers * small_params * b,
        "x_shard": 2 * tokens * math.ceil(d / C) * b,
        # partial sums (accumulators) of a row's FFN or Q|K|V share; with g > 1 rows per head
        # group also the group's whole Q|K|V, shared to every core (in the dtype)
        "partial": max(ab * row_partial, tokens * b * qw),
        "scores": tokens * hpr * key_slots * ab,
        "kv_cache": att.kv_bytes_per_core(keys, prec.kv, weight_layers * batch) if not train
        else weight_layers * batch * att.kv_bytes_per_core(keys, prec.kv),
    }
    scales = scale_bytes(cfg, lay, keys, prec, layers, weight_layers * batch)
    if scales:
        out["scales"] = scales
    recv = tree_recv_bytes(lay.reg, row_partial, tokens * math.ceil(d / C), prec.vector,
                           reduce_algo)
    if recv:
        out["tree_recv"] = recv
    if train:
        saved = tokens * (2 * math.ceil(d / C) + math.ceil(cfg.d_ffn / R) + hpr * hd) * b \
            + tokens * hpr * key_slots * b
        out["saved_activations"] = weight_layers * saved
        if not stream_weights:
            out["grads_and_adam"] = weight_layers * per_layer_params * (b + 12)
        else:
            out["grads"] = 2 * per_layer_params * b
    return out
