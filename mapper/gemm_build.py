"""The GEMM builders: 1d, SUMMA, Cannon and MeshGEMM as SPMD records (see docs/gemm.md).

Conventions: core (x, y) of the grid holds block (row y, column x) of the 2-D layouts. Every
step's operands are double-buffered (parity s % 2). Reads wait for the flow that delivered the
data at the same core (`same`). A write into a step buffer (the write-after-read hazard) waits
for every core to have finished the compute step that last read it (`Dep(compute, "all")`),
or, for Cannon and MeshGEMM with `plan.flow_control`, only for its destination, under flow
control: the shift may start once its first wavelet can be taken there (`Dep(compute,
head=True)`). docs/gemm.md compares the two; SUMMA has only the first (its crossing
broadcasts staircase in the window model under flow control: docs/hardware-model.md).
"""

from __future__ import annotations

from mapper.gemm_common import Ctx, ring_order
from wse_sim.program import Compute, Dep, LineStream, Multicast, Region, Unicast


def _gemm_compute(ctx: Ctx, op: str, region: Region, a: str, b: str, deps, *,
                  accumulate: bool = True) -> int:
    plan, n = ctx.plan, region.size
    rd, wr = plan.gemm_sram(accumulate)
    return ctx.add(Compute(ctx.op(op), region, plan.tile_flops() * n, plan.dtype, "fmac",
                           sram_read_bytes=rd * n, sram_write_bytes=wr * n, deps=tuple(deps),
                           data=ctx.data("gemm_acc" if accumulate else "gemm", (a, b), "c")))


def _copy(ctx: Ctx, op: str, region: Region, src: str, dst: str, nbytes: int) -> int:
    """A local tile copy (SRAM traffic only)."""
    n = region.size
    return ctx.add(Compute(ctx.op(op), region, 0, ctx.plan.dtype, "vector",
                           sram_read_bytes=nbytes * n, sram_write_bytes=nbytes * n,
                           deps=ctx.start, data=ctx.data("copy", (src,), dst)))


def build_1d(ctx: Ctx) -> None:
    """A (whole) multicast from core (0, 0) to every core; core r holds columns
    [r nq, (r + 1) nq) of B and computes its slice of C."""
    plan = ctx.plan
    for name in ("a", "b", "c"):
        ctx.alloc(name)
    wa = plan.wavelets(plan.m * plan.k)
    mc = ctx.add(Multicast(ctx.op("1d.bcast_a"), (0, 0), ctx.R, wa, color=plan.color("a"),
                           data=ctx.data("copy", ("a",), "a")))
    _gemm_compute(ctx, "1d.gemm", ctx.R, "a", "b", [Dep(mc)], accumulate=False)


def _halves(ctx: Ctx, op: str, axis: str, s: int, w: int, src: str, dst: str, color: int,
            deps) -> list[tuple[int, int, int]]:
    """Broadcast from position s of every line to the whole line as two half-streams (toward
    0 and toward P - 1). Returns (task, lo, hi): the task whose events cover positions lo..hi."""
    P = ctx.P
    out = []

    def part(lo: int, length: int) -> Region:
        return Region(lo, 0, length, P) if axis == "x" else Region(0, lo, P, length)

    data = ctx.data("copy", (src,), dst)
    if s >= 1:
        t = ctx.add(LineStream(ctx.op(op), part(0, s + 1), axis, -1, w, color=color,
                               deps=tuple(deps), data=data))
        out.append((t, 0, s))
    if s <= P - 2:
        t = ctx.add(LineStream(ctx.op(op), part(s, P - s), axis, +1, w, color=color,
                               deps=tuple(deps), data=data))
        out.append((t, s + 1 if s >= 1 else 0, P - 1))
    return out


def build_summa(ctx: Ctx) -> None:
    """P steps; step s: column s broadcasts its A blocks along every row, row s its B blocks
    down every column (each as two half-streams from the owner), then every core
    accumulates. The compute of a step is split by which half-stream reached the core (up
    to four records), so every read waits only for its own data."""
    plan, P = ctx.plan, ctx.P
    mt, kt, nt = plan.tiles
    for name in ("a", "b", "abuf0", "abuf1", "bbuf0", "bbuf1", "c"):
        ctx.alloc(name)
    wa, wb = plan.wavelets(mt * kt), plan.wavelets(kt * nt)
    comps: dict[int, list[int]] = {}
    for s in range(P):
        q = s % 2
        # buffers last read at step s - 2 (the first two steps: the operands' producers)
        war = [Dep(t, "all") for t in comps.get(s - 2, [])] if s >= 2 else list(ctx.start)
        ah = _halves(ctx, "summa.bcast_a", "x", s, wa, "a", f"abuf{q}", plan.color("a"), war)
        bh = _halves(ctx, "summa.bcast_b", "y", s, wb, "b", f"bbuf{q}", plan.color("b"), war)
        comps[s] = []
        for ta, x0, x1 in ah:
            for tb, y0, y1 in bh:
                reg = Region(x0, y0, x1 - x0 + 1, y1 - y0 + 1)
                comps[s].append(_gemm_compute(ctx, "summa.gemm", reg, f"abuf{q}", f"bbuf{q}",
                                              [Dep(ta), Dep(tb)],
                                              accumulate=ctx.accumulates(s)))
    ctx.last = comps[P - 1]


def build_cannon(ctx: Ctx) -> None:
    """Skew (row i shifts A left by i, column j shifts B up by j: one wrapping Unicast per row
    and per column), then P steps of multiply + 1-hop shift (A left, B up, wrapping around:
    the wrap-around crosses the whole row / column)."""
    plan, P, R = ctx.plan, ctx.P, ctx.R
    mt, kt, nt = plan.tiles
    for name in ("a0", "a1", "b0", "b1", "c"):
        ctx.alloc(name)
    wa, wb = plan.wavelets(mt * kt), plan.wavelets(kt * nt)
    ca, cb = plan.color("a"), plan.color("b")
    skew = []
    for i in range(1, P if ctx.skew_a else 1):
        skew.append(ctx.add(Unicast(ctx.op("cannon.skew_a"), Region(0, i, P, 1), wa, dx=-i,
                                    wrap=True, color=ca, deps=ctx.start,
                                    data=ctx.data("copy", ("a0",), "a0"))))
    for j in range(1, P if ctx.skew_b else 1):
        skew.append(ctx.add(Unicast(ctx.op("cannon.skew_b"), Region(j, 0, 1, P), wb, dy=-j,
                                    wrap=True, color=cb, deps=ctx.start,
                                    data=ctx.data("copy", ("b0",), "b0"))))
    start = [Dep(_sync(ctx, "cannon.sync", skew), "all")] if skew else list(ctx.start)
    ids = {}  # step s -> (compute, shift A, shift B) task ids

    def step(s: int) -> None:
        """Step s: multiply what the step's buffers hold, then (but at the last step) shift
        both operands into the other buffers once the previous step has read them."""
        q = s % 2
        prev = ids.get(s - 1)
        deps = start if prev is None else [Dep(prev[1]), Dep(prev[2]), Dep(prev[0])]
        comp = _gemm_compute(ctx, "cannon.gemm", R, f"a{q}", f"b{q}", deps,
                             accumulate=ctx.accumulates(s))
        if s == P - 1:
            ids[s] = (comp,)
            ctx.last = [comp]
            return
        war = [] if prev is None else [_war(ctx, prev[0])]
        sa = ctx.add(Unicast(ctx.op("cannon.shift_a"), R, wa, dx=-1, wrap=True, color=ca,
                             deps=tuple((start if prev is None else [Dep(prev[1])]) + war),
                             data=ctx.data("copy", (f"a{q}",), f"a{1 - q}")))
        sb = ctx.add(Unicast(ctx.op("cannon.shift_b"), R, wb, dy=-1, wrap=True, color=cb,
                             deps=tuple((start if prev is None else [Dep(prev[2])]) + war),
                             data=ctx.data("copy", (f"b{q}",), f"b{1 - q}")))
        ids[s] = (comp, sa, sb)

    # the first step (it waits for the skew) and the last (no shift) differ: the P - 2
    # between are one loop
    step(0)
    if P > 1:
        ctx.pb.repeat(ctx.op("cannon.step"), P - 2, lambda i: step(i + 1))
        step(P - 1)


def _war(ctx: Ctx, compute: int) -> Dep:
    """What a shift into a buffer waits for: the compute that last read it, at every core, or
    under flow control at its destination only."""
    return Dep(compute, head=True) if ctx.plan.flow_control else Dep(compute, "all")


def _sync(ctx: Ctx, op: str, tasks: list[int]) -> int:
    """A zero-cycle join on core (0, 0) after every task of `tasks` (one instance waiting for
    many records, instead of every core waiting for each of them)."""
    return ctx.add(Compute(ctx.op(op), Region(0, 0, 1, 1), 0, ctx.plan.dtype, "vector",
                           deps=tuple(Dep(t, "all") for t in tasks)))


def build_meshgemm(ctx: Ctx) -> None:
    """Cannon on the interleaved ring 0, 2, 4, ..., 5, 3, 1 of every row and column: logical
    neighbours are at most 2 cores apart, so every shift moves at most 2 hops. A shift is one
    ring Unicast over the grid (`Unicast(..., ring='x')`: every row's tiles one place back
    along its ring), so a step is three records. The alignment (row l of A rotated by l places
    of the ring, column l of B likewise) is one ring Unicast per row (A) and per column (B)."""
    plan, P, R = ctx.plan, ctx.P, ctx.R
    for name in ("a0", "a1", "b0", "b1", "c"):
        ctx.alloc(name)
    mt, kt, nt = plan.tiles
    wa, wb = plan.wavelets(mt * kt), plan.wavelets(kt * nt)
    ca, cb = plan.color("a"), plan.color("b")
    order = ring_order(P)
    base = 0
    start = list(ctx.start)
    if plan.skew:
        moves = []
        for ly in range(1, P):  # row order[ly] of A rotates by ly places, column order[ly] of B
            if ctx.skew_a:
                moves.append(ctx.add(Unicast(ctx.op("meshgemm.align_a"), Region(0, order[ly], P, 1),
                                             wa, dx=-ly, ring="x", color=ca, deps=ctx.start,
                                             data=ctx.data("copy", ("a0",), "a1"))))
            if ctx.skew_b:
                moves.append(ctx.add(Unicast(ctx.op("meshgemm.align_b"), Region(order[ly], 0, 1, P),
                                             wb, dy=-ly, ring="y", color=cb, deps=ctx.start,
                                             data=ctx.data("copy", ("b0",), "b1"))))
        # Row 0 of A (l = 0) and column 0 of B stay put: a local copy into the step buffer.
        if ctx.skew_a:
            moves.append(_copy(ctx, "meshgemm.align_copy", Region(0, 0, P, 1), "a0", "a1",
                               plan.buffers()["a0"][2]))
        if ctx.skew_b:
            moves.append(_copy(ctx, "meshgemm.align_copy", Region(0, 0, 1, P), "b0", "b1",
                               plan.buffers()["b0"][2]))
        if moves:
            start = [Dep(_sync(ctx, "meshgemm.sync", moves), "all")]
        base = 1  # the aligned tiles are in buffer 1: step s reads parity (s + 1) % 2
    ids = {}  # step s -> (compute, shift A, shift B)

    def step(s: int) -> None:
        q = (s + base) % 2
        prev = ids.get(s - 1)
        deps = start if prev is None else [Dep(prev[1]), Dep(prev[2]), Dep(prev[0])]
        comp = _gemm_compute(ctx, "meshgemm.gemm", R, f"a{q}", f"b{q}", deps,
                             accumulate=ctx.accumulates(s))
        if s == P - 1:
            ids[s] = (comp,)
            ctx.last = [comp]
            return
        war = [] if prev is None else [_war(ctx, prev[0])]
        sa = ctx.add(Unicast(ctx.op("meshgemm.shift_a"), R, wa, dx=-1, ring="x", color=ca,
                             deps=tuple((start if prev is None else [Dep(prev[1])]) + war),
                             data=ctx.data("copy", (f"a{q}",), f"a{1 - q}")))
        sb = ctx.add(Unicast(ctx.op("meshgemm.shift_b"), R, wb, dy=-1, ring="y", color=cb,
                             deps=tuple((start if prev is None else [Dep(prev[2])]) + war),
                             data=ctx.data("copy", (f"b{q}",), f"b{1 - q}")))
        ids[s] = (comp, sa, sb)

    # the first step (after the alignment) and the last (no shift) differ: the rest is a loop
    step(0)
    if P > 1:
        ctx.pb.repeat(ctx.op("meshgemm.step"), P - 2, lambda i: step(i + 1))
        step(P - 1)
