"""The GEMV builders (decode, y = x W): `chain` and `tree` (see docs/gemm.md).

Layout: the reduction dimension K is cut into grid * grid slices of kc rows; core (x, y) of
rank r = y * grid + x holds W rows [r kc, (r + 1) kc) (kc x N). x (1 x K) starts on core
(0, 0) and is multicast to every core (each multiplies its slice); the N-long partial sums
are then reduced to core (0, 0) and the result y is multicast back to every core.

- chain: a pipelined reduce stream along every row into column 0, then one down column 0.
- tree: two levels per axis: groups of g = ceil(sqrt(grid)) cores chain-reduce to their
  leader, then every leader sends its partial straight to the line's root, which adds them
  as they arrive (first along every row into column 0, then along column 0 into (0, 0)).
"""

from __future__ import annotations

from mapper.gemm_common import Ctx
from mapper.tree_reduce import TreeBufs, build_tree, line_length, tree_groups
from wse_sim.program import Compute, Dep, LineStream, Multicast, Region


def _chain(ctx: Ctx, op: str, region: Region, axis: str, after: list[int], color: int) -> int:
    plan = ctx.plan
    return ctx.add(LineStream(op, region, axis, -1, plan.wavelets(plan.n), reduce=True,
                              dtype=plan.dtype, color=color, deps=tuple(Dep(t) for t in after),
                              data=ctx.data("copy", ("part",), "part")))


def _two_level(ctx: Ctx, phase: str, lines: Region, axis: str, after: list[int],
               colors: tuple[int, int]) -> int:
    """Reduce `part` along every line of `lines` into position 0 (`mapper.tree_reduce`).
    Returns the last task, whose event at position 0 marks the sum."""
    plan = ctx.plan
    if tree_groups(line_length(axis, lines))[1] == 0:  # 2 cores: the tree is the chain
        return _chain(ctx, f"gemv.{phase}_group", lines, axis, after, colors[0])
    bufs = TreeBufs("part", "part", recv_prefix="recv") if ctx.functional else None
    last, _ = build_tree(ctx.add, f"gemv.{phase}", lines, axis, wavelets=plan.wavelets(plan.n),
                         values=plan.n, dtype=plan.dtype, colors=colors,
                         deps=tuple(Dep(t) for t in after), bufs=bufs)
    return last


def build_gemv(ctx: Ctx) -> None:
    plan, P, R = ctx.plan, ctx.P, ctx.R
    _, kc, n = plan.tiles
    col0 = Region(0, 0, 1, P)
    for name in ("x", "w", "part", "y"):
        ctx.alloc(name)
    if plan.algo == "tree":
        for k in range(1, tree_groups(P)[1] + 1):
            ctx.alloc(f"recv{k}", col0)
    mc = ctx.add(Multicast("gemv.bcast_x", (0, 0), R, plan.wavelets(kc * plan.cores),
                           color=plan.color("x"), data=ctx.data("copy", ("x",), "x")))
    rd, wr = plan.gemm_sram(False)
    local = ctx.add(Compute("gemv.local", R, plan.tile_flops() * R.size, plan.dtype, "fmac",
                            sram_read_bytes=rd * R.size, sram_write_bytes=wr * R.size,
                            deps=(Dep(mc),), data=ctx.data("gemm", ("x", "w"), "part",
                                                            a_k_block=kc)))
    if plan.algo == "chain":
        row = _chain(ctx, "gemv.row_reduce", R, "x", [local], plan.color("row"))
        last = _chain(ctx, "gemv.col_reduce", col0, "y", [row], plan.color("col"))
    else:
        row = _two_level(ctx, "row", R, "x", [local], (plan.color("row"), plan.color("row2")))
        last = _two_level(ctx, "col", col0, "y", [row], (plan.color("col"), plan.color("col2")))
    ctx.add(Multicast("gemv.bcast_y", (0, 0), R, plan.wavelets(n), color=plan.color("y"),
                      deps=(Dep(last),), data=ctx.data("copy", ("part",), "y")))
