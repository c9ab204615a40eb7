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

from mapper.gemm_common import Ctx, tree_groups
from wse_sim.program import Compute, Dep, LineStream, Multicast, Region, Unicast


def _line_part(axis: str, cross: Region, lo: int, length: int) -> Region:
    """Positions [lo, lo + length) along `axis` of the lines of `cross`."""
    if axis == "x":
        return Region(cross.x + lo, cross.y, length, cross.rows)
    return Region(cross.x, cross.y + lo, cross.cols, length)


def _chain(ctx: Ctx, op: str, region: Region, axis: str, after: list[int], color: int) -> int:
    plan = ctx.plan
    return ctx.add(LineStream(op, region, axis, -1, plan.wavelets(plan.n), reduce=True,
                              dtype=plan.dtype, color=color, deps=tuple(Dep(t) for t in after),
                              data=ctx.data("copy", ("part",), "part")))


def _two_level(ctx: Ctx, phase: str, lines: Region, axis: str, after: list[int],
               colors: tuple[int, int]) -> int:
    """Reduce `part` along every line of `lines` into position 0. Returns the last task whose
    event at position 0 marks the sum."""
    plan = ctx.plan
    n = lines.cols if axis == "x" else lines.rows
    g, m, r0 = tree_groups(n)
    wn = plan.wavelets(plan.n)
    root = _line_part(axis, lines, 0, 1)
    last = list(after)
    if r0 >= 2:
        last = [_chain(ctx, f"gemv.{phase}_group", _line_part(axis, lines, 0, r0), axis, after,
                       colors[0])]
    leaders = []
    for k in range(1, m + 1):
        lead = r0 + (k - 1) * g
        src = after
        if g >= 2:
            src = [_chain(ctx, f"gemv.{phase}_group", _line_part(axis, lines, lead, g), axis,
                          after, colors[0])]
        leaders.append((k, lead, src))
    for k, lead, src in leaders:
        step = {"dx": -lead} if axis == "x" else {"dy": -lead}
        send = ctx.add(Unicast(f"gemv.{phase}_to_root", _line_part(axis, lines, lead, 1), wn,
                               color=colors[1], deps=tuple(Dep(t) for t in src),
                               data=ctx.data("copy", ("part",), f"recv{k}"), **step))
        cores = root.size
        add = ctx.add(Compute(f"gemv.{phase}_add", root, plan.n * cores, plan.dtype, "vector",
                              sram_read_bytes=2 * plan.n * plan.b * cores,
                              sram_write_bytes=plan.n * plan.b * cores,
                              deps=tuple([Dep(send)] + [Dep(t) for t in last]),
                              data=ctx.data("add", ("part", f"recv{k}"), "part")))
        last = [add]
    return last[-1]


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
