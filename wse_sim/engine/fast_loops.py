"""Exact fast-forward of a program's loops on the fast engine's step path.

Why it is exact. The step path's rules are max / plus of integer times, compared as keys
(time, round, id); shifting every time by a constant shifts every result by it and keeps every
comparison. Iteration i + 1 of a loop is iteration i moved by whole iterations (`Loop`), so it
computes the same function of the state it reads: the resources' free times, keys and holders,
the signal slots that earlier iterations leave for it, and the critical path's pieces. That
state is all made by earlier iterations, except the times of tasks before the loop (outer
needs), which do not move. So when

- the state after iteration k + 1 is the state after k with every time moved by one delta > 0
  and every chain's critical-path compute moved by one amount, twice in a row, and
- no outer need was the latest need of any instance in those iterations (`fast_step._needs`
  watches it; once below a moving time a fixed time stays below),

then every later iteration repeats the last one moved by delta, and its counters (cycles,
per-core and per-link busy, bytes, per-task spans, critical path) are the last one's moved by
delta or repeated. The loop's remaining iterations are skipped and those counters
extrapolated. The same holds for the body run twice (a period of two iterations: skipped by
pairs), with the run's finish held by a task outside the loop that no skipped end reaches,
and from iteration 0 when the tasks just before the loop stand for iteration -1 (a peeled
layer: `_peeled`) (docs/hardware-model.md, "Period two", "A finish held outside the loop",
"The peeled iteration"). When the state does not settle (the iterations differ, contention
that drifts), the loop runs in full: correctness first. docs/hardware-model.md, "Loops", has
a worked example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wse_sim.engine import fast_memory as mem
from wse_sim.engine.fast_groups import task_rects
from wse_sim.engine.fast_sched import A_END, A_FIRST, A_START
from wse_sim.engine.fast_step import (
    C_A,
    C_P0,
    C_S,
    GEN_BITS,
    OK,
    OVERFLOW,
    READY_MAX,
    T_COMM,
    T_DELIV,
    T_LAST_A,
    T_LAST_G,
    T_LAST_RG,
    T_LAST_S,
    T_MAXEND,
    T_NEXT,
)
from wse_sim.engine.fast_tasks import (
    D_OWNER,
    D_TASK,
    F_KIND,
    F_NI,
    F_RR,
    F_RX,
    F_SA,
    F_SB,
    H_COLS,
    H_N,
    kernel,
)

FIRST_TRY = 1      # the first iteration whose state is compared (after warm-up below)
TRY_EVERY = 2      # then every this many iterations ...
TRY_DOUBLING = 16  # ... up to here; beyond, every quarter of the iterations run (a loop that
# settles late is caught within a quarter more; one that never settles takes few copies)
MIN_COUNT = FIRST_TRY + 4  # shorter loops run in full
# `path='auto'` takes the step path for its fast-forward from this many iterations: a try
# copies the loop's whole state (at full wafer about a second), which a loop of a few
# iterations does not win back (a heuristic, measured: docs/hardware-model.md, "Loops";
# Cerebras-GPT-111M's 8 layer iterations stay on the event path)
AUTO_STEP_COUNT = 9
# a loop with peeled iterations (`_peeled`) is first tried from iteration 0 when one
# iteration has at least this many instances per resource row of its footprint (the try's
# copy, about 30 times cheaper per row than an instance): a layer or a K/V head, not a
# GEMM step, whose first iteration follows an alignment and seldom repeats
PEELED_MIN_INSTANCES = 1


@kernel(inline=True)
def row_code(a, x, b, y, delta, da):
    """1 + the number of critical-path pieces that move when row a[x] (a resource or a
    signal slot, later) is row b[y] (earlier) moved by delta > 0: time + delta, key + delta
    << GEN_BITS, holder start * 2 + 2 delta, chain compute + da, the leading pieces + 2 delta
    (recent ones), the rest fixed (starts of long runs of one slope, or from before the
    loop); 0 when it is not."""
    if (a[x, 0] - b[y, 0] != delta or delta <= 0 or b[y, 0] < 0 or b[y, 1] < 0
            or a[x, 1] - b[y, 1] != delta << GEN_BITS
            or a[x, C_S] - b[y, C_S] != 2 * delta or a[x, C_A] - b[y, C_A] != da):
        return 0
    w = a.shape[1]
    c = C_P0
    while c < w and a[x, c] >= 0 and b[y, c] >= 0 and a[x, c] - b[y, c] == 2 * delta:
        c += 1
    for c2 in range(c, w):
        if a[x, c2] != b[y, c2]:
            return 0
    return 1 + c - C_P0


@kernel(inline=True)
def move_row(a, x, code, m, delta, da):
    """Row a[x] moved by m periods of delta (`row_code`'s code: which pieces move)."""
    a[x, 0] += m * delta
    a[x, 1] += (m * delta) << GEN_BITS
    a[x, C_S] += 2 * m * delta
    a[x, C_A] += m * da
    for c in range(C_P0, C_P0 + code - 1):
        a[x, c] += 2 * m * delta


@kernel
def _shift_check(a, ra, b, shift, changed, first, same_ok):
    """Compare rows a[ra[i]] (later; a[i] when ra is empty) with b[i] (earlier): time + delta, key + delta << GEN_BITS, holder start * 2 + 2 delta, chain compute
    + dA (shift = [delta, dA], found here where -1), then the critical-path pieces: the
    recent ones moved by 2 delta, the deeper ones (starts of long runs of one slope, or from
    before the loop) fixed. changed[i]: 0 for a row the loop does not touch (allowed when
    `same_ok`), else 1 + the number of moving pieces; recorded when `first`, else it must be
    the same. False: not a shift."""
    n = ra.shape[0] if ra.shape[0] > 0 else a.shape[0]
    for i in range(n):
        x, y = (ra[i] if ra.shape[0] > 0 else i), i
        code = 0
        for c in range(a.shape[1]):
            if a[x, c] != b[y, c]:
                code = 1
                break
        if code == 0 and not same_ok:
            return False
        if code and a[x, 0] >= 0 and b[y, 0] >= 0:
            if shift[0] < 0:
                shift[0], shift[1] = a[x, 0] - b[y, 0], a[x, C_A] - b[y, C_A]
            code = row_code(a, x, b, y, shift[0], shift[1])
            if code == 0:
                return False
        elif code:  # a signal slot no event reached: alike in both
            if a[x, 0] != b[y, 0] or a[x, 1] != b[y, 1]:
                return False
            code = 1
        if first:
            changed[i] = code
        elif changed[i] != code:
            return False
    return True


@kernel
def _gather(a, ra, out):
    """out[i] = a[ra[i]] (into a buffer kept between tries: a fresh copy of a full wafer's
    rows costs more in page faults than the copy itself)."""
    for i in range(ra.shape[0]):
        for c in range(a.shape[1]):
            out[i, c] = a[ra[i], c]


@kernel
def _shift_rows(a, ra, src, rs, changed, m, shift):
    """a[ra[i]] = src[rs[i]] moved by m iterations, for the rows that change
    (`_shift_check`'s codes: how many pieces move); src may be a itself (rs = ra)."""
    delta, da = shift[0], shift[1]
    for i in range(ra.shape[0]):
        if changed[i] == 0:
            continue
        x, y = ra[i], rs[i]
        for c in range(a.shape[1]):
            a[x, c] = src[y, c]
        if a[x, 0] >= 0:
            move_row(a, x, changed[i], m, delta, da)


@dataclass
class LoopPlan:
    """What the fast-forward of one loop needs, computed once per program."""

    lp: object                 # the program's Loop
    groups: np.ndarray         # group index where iteration i starts, i = 0 .. count
    carried: tuple             # body tasks a later iteration reads (their slots of the
    # iteration before are in the state compared; see `plan_loops`)
    after: list                # (iteration, body task j) that tasks after the loop read
    inst: int                  # instances per iteration
    rows: np.ndarray           # resources the loop may touch (its bounding box's, the I/O)
    level: int = 0             # 1: inside an iteration of another loop (steps in a layer)
    inner_iterations: int = 0  # iterations of the loops inside one of its iterations
    peeled: int = 0            # iterations emitted just before the loop like its own (see
    # `_peeled`): the first try compares from iteration 0, one iteration sooner

    def slots(self, tables, iteration: int, j: int, off: np.ndarray) -> np.ndarray:
        """Signal-store rows of iteration `iteration`'s body task j (`fast_step.store_plan`)."""
        first, k = self.block(tables, iteration, j, off)
        return np.arange(first, first + k, dtype=np.int64)

    def block(self, tables, iteration: int, j: int, off: np.ndarray) -> tuple[int, int]:
        """(first row, rows) of those slots: one block of the store."""
        t = self.lp.task(iteration, j)
        return int(tables.td[t, F_SB] + off[t]), int(tables.td[t, F_SA] - tables.td[t, F_SB] + 1)


def plan_loops(tables, groups: np.ndarray) -> list[LoopPlan]:
    """A LoopPlan for every loop with enough iterations to fast-forward."""
    out = []
    boxes: dict = {}  # footprints by bounding box (the layers' loops share one)
    for lp in tables.loops:
        if lp.count < MIN_COUNT:
            continue
        level = int(any(o is not lp and o.first <= lp.first and lp.end <= o.end
                        for o in tables.loops))
        inner = sum(o.count for o in tables.loops if o is not lp
                    and lp.first <= o.first and o.end <= lp.first + lp.size)
        starts = lp.first + lp.size * np.arange(lp.count + 1, dtype=np.int64)
        g = np.searchsorted(groups, starts)
        assert (groups[g] == starts).all(), "a loop iteration must start a task group"
        # dependencies on the loop's tasks: from after the loop (`after`: (iteration, j)),
        # and from later iterations (`carried`: body tasks j, however far back they are
        # read: the state before iteration i holds iteration i - 1's slots of each, which the
        # try compares; `back`: how many iterations back each need reads)
        rows = tables.deps_on(lp.first, lp.end)
        task, owner = rows[:, D_TASK], rows[:, D_OWNER]
        it, j = np.divmod(task - lp.first, lp.size)
        late = owner >= lp.end
        after = {(int(x), int(y)) for x, y in np.unique(np.stack([it[late], j[late]], 1), axis=0)}
        back = np.where(late, 0, (owner - lp.first) // lp.size - it)
        carried = tuple(int(x) for x in np.unique(j[back > 0]))
        inst = int(tables.ib[lp.task(1, 0)] - tables.ib[lp.first])
        box = _box(tables, lp)
        if box not in boxes:
            boxes[box] = _footprint(tables, box)
        # an iteration cheaper than the try's copy: the try from iteration 1 suffices
        peeled = _peeled(tables, lp, int(back.max(initial=1))) \
            if inst >= PEELED_MIN_INSTANCES * len(boxes[box]) else 0
        out.append(LoopPlan(lp, g, carried, sorted(after), inst, boxes[box], level, inner,
                            peeled))
    return out


def _peeled(tables, lp, reach: int) -> int:
    """`reach` when the `reach` x size tasks just before the loop stand for iterations -reach
    .. -1 (the layers emitted before the layers' loop, a GEMM's first step before its
    steps'): each with the kind, region, instances and signal slots of the body task it
    stands for, and none a fixed (outer) need of the iterations. Then the state before
    iteration 0 holds the same slots, in the same places, as the state before any later
    iteration, and the iterations' needs on them are carried needs, which move with the loop
    (the first try may compare from iteration 0). Else 0."""
    n = reach * lp.size
    if lp.first < n:
        return 0
    td = tables.td
    body = td[lp.first:lp.first + lp.size]
    cols = [F_KIND, F_NI] + list(range(F_RX, F_RR + 1))
    for e in range(1, reach + 1):
        pre = td[lp.task(-e, 0):lp.task(-e + 1, 0)]
        if not ((pre[:, cols] == body[:, cols]).all()
                and (pre[:, F_SA] - pre[:, F_SB] == body[:, F_SA] - body[:, F_SB]).all()):
            return 0
    # a fixed need of every iteration on one of them: the last iteration reads it too (its
    # carried needs reach only `reach` < count iterations back, inside the loop)
    owner = tables.deps_on(lp.first - n, lp.first)[:, D_OWNER]
    if ((owner >= lp.task(lp.count - 1, 0)) & (owner < lp.end)).any():
        return 0
    return reach


def _box(tables, lp) -> tuple:
    """The bounding box (x0, y0, x1, y1) of the cores the body's records may reserve
    (`fast_groups.task_rects`)."""
    r = task_rects(tables.td[lp.first:lp.first + lp.size])
    return (int(r[:, 0].min()), int(r[:, 1].min()), int(r[:, 2].max()), int(r[:, 3].max()))


def _footprint(tables, box: tuple) -> np.ndarray:
    """Resource rows of every core in the box and the I/O channel."""
    x0, y0, x1, y1 = box
    cols, n = int(tables.hwc[H_COLS]), int(tables.hwc[H_N])
    ys, xs = np.mgrid[y0:y1, x0:x1]
    core = (ys * cols + xs).ravel().astype(np.int64)
    links = (4 * core[:, None] + np.arange(4)).ravel()
    return np.concatenate([links, 4 * n + core, 5 * n + core, 6 * n + core, [7 * n]])


class Forward:
    """Runs a `fast_step.StepRun` to its end, fast-forwarding every loop it meets.
    `advance(g1)` runs the step path up to group g1 and returns its status (the caller's
    progress bar goes there); `skipped(n)` is told of the instances skipped."""

    def __init__(self, st, tables, advance, skipped=None, enabled: bool = True):
        self.st, self.tables, self.raw = st, tables, advance
        self.skipped = skipped or (lambda n: None)
        plans = plan_loops(tables, st.groups) if enabled else []
        self.plans = [p for p in plans if p.level == 0]
        self.inner = [p for p in plans if p.level == 1]  # in task order
        self.skipped_iterations = 0
        # copies kept between tries, one set per loop level (a fresh copy of a full wafer's
        # rows costs more in page faults than in copying): resource rows, then counters
        self._kept = {}
        self._counters = [None, None]

    def _copy(self, name: str, level: int, rows: np.ndarray) -> np.ndarray:
        """st.<name>[rows] ("res" or "sig"), in the level's kept buffer (grown when needed)."""
        a = getattr(self.st, name)
        buf = self._kept.get((name, level))
        if buf is None or len(buf) < len(rows):
            buf = self._kept[(name, level)] = mem.empty((len(rows), a.shape[1]))
        out = buf[:len(rows)]
        _gather(a, rows, out)
        return out

    def _copy_counters(self, level: int) -> list:
        """The per-core and per-link counters, in the level's kept arrays."""
        now = (self.st.busy, self.st.lbusy, self.st.lbytes)
        if self._counters[level] is None:
            self._counters[level] = [mem.empty(c.shape, c.dtype) for c in now]
        for was, c in zip(self._counters[level], now, strict=True):
            np.copyto(was, c)
        return self._counters[level]

    def run(self) -> int:
        for p in self.plans:
            status = self._loop(p)
            if status != OK:
                return status
        return self.advance(len(self.st.groups) - 1)

    def advance(self, g1: int) -> int:
        """Run up to group g1, fast-forwarding the loops inside loops met on the way (an
        outer loop's iterations, run or tried, skip their step loops)."""
        for q in self.inner:
            now = int(self.st.state[T_NEXT])
            if int(q.groups[0]) < now:
                continue
            if int(q.groups[q.lp.count]) > g1:
                break
            status = self.raw(int(q.groups[0]))
            if status == OK:
                status = self._loop(q)
            if status != OK:
                return status
        return self.raw(g1)

    def _loop(self, p: LoopPlan) -> int:
        k = 0 if p.peeled else FIRST_TRY
        move = self.advance if p.level == 0 else self.raw
        while k + 2 < p.lp.count:
            status = move(int(p.groups[k]))
            if status != OK:
                return status
            done = self._try(p, k)
            if done is None:
                return OVERFLOW
            if done is True:
                return OK
            nxt = FIRST_TRY if k == 0 else \
                k + TRY_EVERY if k < TRY_DOUBLING else k + max(TRY_EVERY, k // 4)
            # never before the iteration the try ran up to (the state is before that one)
            nxt = max(nxt, self._at(p))
            if done == 2:  # two iterations repeat, but not in step with the loop's end
                nxt += (p.lp.count - nxt) % 2
            k = nxt
        return OK

    def _at(self, p: LoopPlan) -> int:
        """The first iteration not yet begun (the one the run stands before, unless it
        stopped inside one: then the step path has failed and the next move says so)."""
        return int(np.searchsorted(p.groups, self.st.state[T_NEXT]))

    @staticmethod
    def _segments(p: LoopPlan) -> list:
        """Body tasks j whose slots of the iteration before the state holds: what later
        iterations read, and what tasks after the loop read of the last iteration."""
        return list(p.carried) + sorted({j for _, j in p.after} - set(p.carried))

    def _state(self, p: LoopPlan, i: int) -> np.ndarray:
        """Store rows of the state's slots before iteration i (`_segments`)."""
        rows = [p.slots(self.tables, i - 1, j, self.st.off) for j in self._segments(p)]
        return np.concatenate(rows) if rows else np.zeros(0, np.int64)

    def _try(self, p: LoopPlan, k: int):
        """Watch the iterations from k (the state before k is current); skip the rest of the
        loop when they repeat with a period c of one or two iterations: the state after
        k + c is the state before k moved by one delta, and after k + 2 c by two. True:
        skipped; False: not settled; 2: two iterations repeat, but the loop's end is not a
        whole number of pairs away (the caller tries again in step); None: the extrapolated
        times overflow the keys."""
        st = self.st
        rows = p.rows
        rsig0 = self._state(p, k)
        res0, sig0 = self._copy("res", p.level, rows), self._copy("sig", p.level, rsig0)
        t0 = st.state.copy()
        w = slice(2 * p.level, 2 * p.level + 2)  # this loop's watch (an inner one: its own)
        move = self.advance if p.level == 0 else self.raw
        # needs on tasks before this are outer (fixed); from iteration 0, the peeled ones move
        st.watch[w] = p.lp.first - (p.lp.size * p.peeled if k == 0 else 0), 0
        # the state after k + c is compared with the copy of the state before k, and the
        # state after k + 2 c with the same copy moved by two periods (with the same rows
        # changing, that is the state after k + c moved by one): one copy, not two
        try:
            for c in (1, 2):
                if k + 2 * c >= p.lp.count or move(int(p.groups[k + c])) != OK:
                    return False
                cres = np.zeros(len(rows), np.uint8)
                csig = np.zeros(len(sig0), np.uint8)
                shift = np.array([-1, -1], np.int64)
                if (_shift_check(st.res, rows, res0, shift, cres, True, True)
                        and self._sig_check(p, k + c, sig0, shift, csig, True)
                        and shift[0] > 0):
                    break
            else:
                return False
            if c == 2 and not self._in_step(p, k):
                return 2
            t1 = st.state.copy()
            before = self._copy_counters(p.level)
            if move(int(p.groups[k + 2 * c])) != OK:
                return False
            ok = (_shift_check(st.res, rows, res0, 2 * shift, cres, False, True)
                  and self._sig_check(p, k + 2 * c, sig0, 2 * shift, csig, False)
                  and st.watch[w][1] == 0
                  and self._same_tasks(p, k + c, c, int(shift[0])))
            tail = self._same_tail(t0, t1, st.state, shift, p, c) if ok else None
        finally:
            st.watch[w] = -1, 0
        if tail is None:
            return False
        periods = (p.lp.count - (k + 2 * c)) // c
        if int(st.state[T_MAXEND]) + periods * int(shift[0]) >= READY_MAX:
            return None
        if tail == "held":  # the finish stays a task's outside the loop if no loop end reaches it
            lp = p.lp
            last = int(st.tacc[lp.task(k + c, 0):lp.task(k + 2 * c, 0), A_END].max())
            if last + periods * int(shift[0]) >= int(st.state[T_MAXEND]):
                return False
        self._skip(p, k + 2 * c, periods, c, shift, cres, csig, t1, before, tail == "moves")
        return True

    @staticmethod
    def _in_step(p: LoopPlan, k: int) -> bool:
        """A period of two iterations skips whole pairs: the loop's end is an even number of
        iterations after k, and every skipped iteration that the rest of the program reads
        is in step with the last one (its slots are the last simulated pair's second
        iteration's, moved)."""
        count = p.lp.count
        return (count - k) % 2 == 0 and all((count - 1 - it) % 2 == 0
                                            for it, _ in p.after if it >= k + 4)

    def _sig_check(self, p, i, ref, shift, codes, first) -> bool:
        """The state's signal slots before iteration i are `ref` moved by `shift`."""
        rows = self._state(p, i)
        return len(rows) == 0 or bool(_shift_check(self.st.sig, rows, ref, shift, codes, first,
                                                   False))

    @staticmethod
    def _same_tail(t0, t1, t2, shift, p, c: int = 1) -> str | None:
        """The bytes injected and delivered the same in both periods, and the finish (latest
        end, its instance, its chain) either moved by one period (c iterations) twice
        ("moves") or held both times by a task outside the loop, such as weights streaming
        in far ahead ("held"; `_try` checks that no skipped end reaches it); else None."""
        delta, da = int(shift[0]), int(shift[1])
        fin = (T_MAXEND, T_LAST_G, T_LAST_RG, T_LAST_S, T_LAST_A)
        if not all(t1[x] - t0[x] == t2[x] - t1[x] for x in (T_COMM, T_DELIV)):
            return None
        if all(a[x] == b[x] for a, b in ((t0, t1), (t1, t2)) for x in fin):
            return "held"
        for a, b in ((t0, t1), (t1, t2)):
            if (b[T_MAXEND] - a[T_MAXEND] != delta or b[T_LAST_G] - a[T_LAST_G] != c * p.inst
                    or b[T_LAST_RG] - a[T_LAST_RG] != delta << GEN_BITS
                    or b[T_LAST_S] - a[T_LAST_S] != 2 * delta or b[T_LAST_A] - a[T_LAST_A] != da):
                return None
        return "moves"

    def _same_tasks(self, p, i, c, delta) -> bool:
        """Iterations i .. i + c - 1's per-task counters are the c before's, their spans moved
        by delta."""
        lp, tacc = p.lp, self.st.tacc
        d = tacc[lp.task(i, 0):lp.task(i + c, 0)] - tacc[lp.task(i - c, 0):lp.task(i, 0)]
        return bool((d[:, A_START] == delta).all() and (d[:, A_END] == delta).all()
                    and (d[:, A_FIRST] == delta << GEN_BITS).all()
                    and (np.delete(d, [A_START, A_END, A_FIRST], axis=1) == 0).all())

    def _skip(self, p, i, q, c, shift, cres, csig, t_prev, before, finish_moves=True) -> None:
        """Iterations i .. i + q c - 1 (q periods of c iterations): iteration i - c + r moved
        by 1 .. q periods (r = 0 .. c - 1). The finish moves with them unless a task outside
        the loop holds it (`finish_moves` False)."""
        st, lp, tables = self.st, p.lp, self.tables
        delta = int(shift[0])
        m = q * c  # iterations skipped
        _shift_rows(st.res, p.rows, st.res, p.rows, cres, q, shift)
        # the slots the rest of the program reads from skipped iterations (each its own
        # rows in the store: `fast_step.live_groups` keeps them)
        rows, codes, at = self._state(p, i), csig, 0
        src = {}
        for j in self._segments(p):
            k = p.block(tables, 0, j, st.off)[1]
            src[j] = (st.sig[rows[at:at + k]], codes[at:at + k], np.arange(k, dtype=np.int64))
            at += k
        for it, j in p.after:  # in step with iteration i - 1 (`_in_step`)
            if it >= i:
                x0, k = p.block(tables, it, j, st.off)
                was, code, idx = src[j]
                _shift_rows(st.sig[x0:x0 + k], idx, was, idx, code, (it - (i - 1)) // c, shift)
        for now, was in zip((st.busy, st.lbusy, st.lbytes), before, strict=True):
            now += q * (now - was)
        s = st.state
        for col in (T_COMM, T_DELIV):
            s[col] += q * (s[col] - t_prev[col])
        if finish_moves:
            s[T_MAXEND] += q * delta
            s[T_LAST_G] += m * p.inst
            s[T_LAST_RG] += (q * delta) << GEN_BITS
            s[T_LAST_S] += 2 * q * delta
            s[T_LAST_A] += q * int(shift[1])
        self._fill_tasks(p, i, q, c, delta)
        s[T_NEXT] = p.groups[lp.count]
        self.skipped_iterations += m * (1 + p.inner_iterations)
        self.skipped(int(tables.ib[lp.end] - tables.ib[lp.task(i, 0)]))

    def _fill_tasks(self, p, i, q, c, delta) -> None:
        """Per-task counters (and per-instance spans, when kept) of the skipped iterations:
        the last simulated period's, moved by 1 .. q periods."""
        st, lp, ib = self.st, p.lp, self.tables.ib
        last = st.tacc[lp.task(i - c, 0):lp.task(i, 0)]
        step = np.zeros(last.shape[1], np.int64)
        step[[A_START, A_END, A_FIRST]] = delta, delta, delta << GEN_BITS
        reps = np.arange(1, q + 1, dtype=np.int64)[:, None, None]
        st.tacc[lp.task(i, 0):lp.end] = (last[None] + reps * step).reshape(-1, last.shape[1])
        if len(st.ends):
            g0, g1 = ib[lp.task(i - c, 0)], ib[lp.task(i, 0)]
            moved = reps[:, :, 0] * delta
            for arr in (st.start, st.ends):
                arr[g1:ib[lp.end]] = (arr[g0:g1][None] + moved).reshape(-1)
