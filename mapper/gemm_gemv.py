"""The GEMV builders (decode, y = x W): `chain` and `tree` (see docs/gemm.md "GEMV").

Layout (every core holds only its share): K is cut into `grid` blocks of kt = ceil(K / grid)
rows and N into `grid` blocks of nt = ceil(N / grid) columns. Core (x, y) holds the weight
tile W[K block x, N block y] (kt x nt). x starts on row 0, core (i, 0) holding K block i
(the layout y ends in, so GEMVs chain). Then:

1. `bcast_x`: one pipelined stream down every column carries the column's kt values of x
   (each core keeps its K/P slice as it passes).
2. `local`: every core multiplies its slice by its tile: an nt-long partial of y block y.
3. `row_reduce`: the partials of row y are reduced along the row into column 0 (core (0, y)
   holds y block y): `chain`, one pipelined reduce stream per row; `tree`, the two-level
   tree of `mapper.tree_reduce` (its root keeps one nt-long receive buffer per group).
4. `y_to_row0`: core (0, j) sends y block j to core (j, 0) (j >= 1; XY routes along row j
   then up column j: no two share a link); core (0, 0) copies its block locally. y ends on
   row 0 in x's layout.
"""

from __future__ import annotations

from mapper.gemm_common import Ctx
from mapper.tree_reduce import TreeBufs, build_tree, tree_groups
from wse_sim.program import Compute, Dep, LineStream, Region, Unicast


def _row_reduce(ctx: Ctx, after: int) -> int:
    """Reduce `part` along every row into column 0; returns the task whose event at (0, y)
    marks row y's sum."""
    plan, R = ctx.plan, ctx.R
    w = plan.wavelets(plan.tiles[2])
    if plan.algo == "chain" or tree_groups(ctx.P)[1] == 0:  # 2 cores: the tree is the chain
        return ctx.add(LineStream("gemv.row_reduce", R, "x", -1, w, reduce=True,
                                  dtype=plan.dtype, color=plan.color("row"), deps=(Dep(after),),
                                  data=ctx.data("copy", ("part",), "part")))
    bufs = TreeBufs("part", "part", recv_prefix="recv") if ctx.functional else None
    last, _ = build_tree(ctx.add, "gemv.row", R, "x", wavelets=w, values=plan.tiles[2],
                         dtype=plan.dtype, colors=(plan.color("row"), plan.color("row2")),
                         deps=(Dep(after),), bufs=bufs)
    return last


def build_gemv(ctx: Ctx) -> None:
    plan, P, R = ctx.plan, ctx.P, ctx.R
    _, kt, nt = plan.tiles
    ctx.alloc("x")
    ctx.alloc("w")
    ctx.alloc("part")
    ctx.alloc("y", Region(0, 0, P, 1))
    if plan.algo == "tree":
        for k in range(1, tree_groups(P)[1] + 1):
            ctx.alloc(f"recv{k}", Region(0, 0, 1, P))
    bc = ctx.add(LineStream("gemv.bcast_x", R, "y", +1, plan.wavelets(kt), color=plan.color("x"),
                            data=ctx.data("copy", ("x",), "x")))
    rd, wr = plan.gemm_sram(False)
    local = ctx.add(Compute("gemv.local", R, plan.tile_flops() * R.size, plan.dtype, "fmac",
                            sram_read_bytes=rd * R.size, sram_write_bytes=wr * R.size,
                            deps=(Dep(bc),), data=ctx.data("gemm", ("x", "w"), "part")))
    red = _row_reduce(ctx, local)
    nbytes = nt * plan.b
    ctx.add(Compute("gemv.y_local", Region(0, 0, 1, 1), 0, plan.dtype, "vector",
                    sram_read_bytes=nbytes, sram_write_bytes=nbytes, deps=(Dep(red),),
                    data=ctx.data("copy", ("part",), "y")))
    for j in range(1, P):
        ctx.add(Unicast("gemv.y_to_row0", Region(0, j, 1, 1), plan.wavelets(nt), to=(j, 0),
                        color=plan.color("y"), deps=(Dep(red),),
                        data=ctx.data("copy", ("part",), "y")))
