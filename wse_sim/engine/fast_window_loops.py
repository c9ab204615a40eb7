"""Exact fast-forward of a program's loops on the fast engine's window path.

The step path (`fast_loops`) compares the state between two iterations, where every task
before the boundary is done and none after it has begun. The window path has no such
boundary: a pipeline's iterations overlap (chunk 0 of layer i + 1 starts while the last
chunks of layer i still run). Its cut is the moment just before the first task of an
iteration enters the window (`fast_window.PAUSE`): admission is in program order, so every
run passes that moment exactly once. The state there is everything the rest of the run reads:

- the resources the loop may reserve (as on the step path);
- the window: per task its instances not yet granted and its counters, per instance its
  needs not yet met, the heap of ready instances (key, instance, its latest need's slot);
- the signal blocks still allocated (tasks whose last reader has not left);
- per task not yet in, its dependencies not yet granted and their largest first key, and
  the admission heap;
- the run's finish, and the bytes injected and delivered.

Every rule of the window path is max / plus of times compared as keys, and admission and
grant order depend on keys only, so a state that is another state with every time moved by
delta and every task moved by whole iterations evolves as that one did, moved the same way
(the argument of `fast_loops`). When the state at the cut before iteration k + c is the one
before k moved by c iterations and delta, and before k + 2 c by 2 c and 2 delta (c = 1, else
2; with the same pieces of the critical path moving, and no outer need the latest of any
instance in between), whole periods of c iterations are skipped: the window, its heaps and
the live blocks are relabelled that many iterations on (each block keeps its rows), their
times moved, the counters extrapolated. The per-task counters of the skipped tasks are filled
at the end from the simulated tasks whole periods later, moved back (`_fill`). Loops inside
an iteration and a finish held outside the loop are not fast-forwarded here (the loop runs
in full: correctness first). docs/hardware-model.md, "Loops on the window path".
"""

from __future__ import annotations

import numpy as np

from wse_sim.engine import fast_loops as L
from wse_sim.engine.fast_sched import A_END, A_FIRST, A_START
from wse_sim.engine.fast_step import (
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
)
from wse_sim.engine.fast_tasks import D_HEAD, D_OWNER, D_TASK, F_SA, F_SB, kernel
from wse_sim.engine.fast_window import PAUSE, W_AN, W_DONE, W_HI, W_HN, W_LO
from wse_sim.host import free_bytes


@kernel
def _sig_count(sig, firsts, ks):
    """Rows of blocks (firsts[b], ks[b]) that a contribution has reached (time >= 0)."""
    n = 0
    for b in range(firsts.shape[0]):
        for r in range(firsts[b], firsts[b] + ks[b]):
            if sig[r, 0] >= 0:
                n += 1
    return n


@kernel
def _sig_take(sig, spend, firsts, ks, pos, rows, sp):
    """Copy the reached rows of the blocks, in order: their place among all the blocks' rows
    (pos), the row and its contributions still to come. The rest have time and key -1."""
    p = 0
    n = 0
    for b in range(firsts.shape[0]):
        for r in range(firsts[b], firsts[b] + ks[b]):
            if sig[r, 0] >= 0:
                pos[n] = p
                sp[n] = spend[r]
                for c in range(sig.shape[1]):
                    rows[n, c] = sig[r, c]
                n += 1
            p += 1


@kernel
def _sig_same(sig, spend, firsts, ks, pos, rows, sp, delta, da, codes, first):
    """Whether the blocks now are the copy (`_sig_take`) moved by delta: a row reached then
    is reached now with time + delta, key + delta << GEN, holder start + 2 delta, chain
    compute + da, its leading critical-path pieces + 2 delta and the rest fixed (codes[n]: 1
    + how many move; recorded when `first`, else they must be the same), the same
    contributions to come; a row not reached then is not reached now."""
    npos = pos.shape[0]
    p = 0
    n = 0
    for b in range(firsts.shape[0]):
        for r in range(firsts[b], firsts[b] + ks[b]):
            if n < npos and pos[n] == p:
                code = L.row_code(sig, r, rows, n, delta, da)
                if code == 0 or spend[r] != sp[n]:
                    return False
                if first:
                    codes[n] = code
                elif codes[n] != code:
                    return False
                n += 1
            elif sig[r, 0] >= 0 or sig[r, 1] >= 0:
                return False
            p += 1
    return n == npos


@kernel
def _sig_move(sig, firsts, ks, codes, q, delta, da):
    """The reached rows of the blocks moved by q periods (`_sig_same`'s codes, in order)."""
    n = 0
    for b in range(firsts.shape[0]):
        for r in range(firsts[b], firsts[b] + ks[b]):
            if sig[r, 0] >= 0:
                L.move_row(sig, r, codes[n], q, delta, da)
                n += 1


def _ring_get(a: np.ndarray, start: int, n: int) -> np.ndarray:
    """a[(start + i) % len(a)] for i < n, as a copy."""
    s = start % len(a)
    return a[s:s + n].copy() if s + n <= len(a) else np.concatenate([a[s:], a[:s + n - len(a)]])


def _ring_put(a: np.ndarray, start: int, vals: np.ndarray) -> None:
    """a[(start + i) % len(a)] = vals[i]."""
    s, n = start % len(a), len(vals)
    if s + n <= len(a):
        a[s:s + n] = vals
    else:
        a[s:] = vals[:len(a) - s]
        a[:s + n - len(a)] = vals[len(a) - s:]


class WindowForward:
    """Runs a `fast_window_run.WindowRun` to its end, fast-forwarding its top-level loops.
    `drive(stop)` runs it until task `stop` is about to enter the window (PAUSE) or the end
    (-1: no stop); `skipped(n)` is told of the instances skipped."""

    def __init__(self, wr, tables, drive, skipped=None, enabled: bool = True):
        self.wr, self.tables, self.drive = wr, tables, drive
        self.skipped = skipped or (lambda n: None)
        self.skipped_iterations = 0
        self.halt = None  # a status other than PAUSE met during a try (the run stops there)
        self._base_of, self._base_arrays = None, None  # `_base`, for one loop at a time
        self.fills: list = []  # per skip: (first task skipped, tasks, tasks a period, delta)
        loops = tables.loops if enabled else ()
        self.plans = [lp for lp in loops if lp.count >= L.MIN_COUNT and not any(
            o is not lp and o.first <= lp.first and lp.end <= o.end for o in loops)]
        td = tables.td
        self.last = wr.last  # each task's last reader (`fast_window_run.readers`)
        self.unres0 = wr.unres.copy()
        self.slots = (td[:, F_SA] + 1 - td[:, F_SB]).astype(np.int64)

    def run(self) -> int:
        for lp in self.plans:
            status = self._loop(lp)
            if status not in (OK, PAUSE):
                return status
        status = self.drive(-1)
        if status == OK:
            self._fill()
        return status

    def _loop(self, lp) -> int:
        """Try the loop from iteration FIRST_TRY on, as `fast_loops.Forward._loop` does."""
        k = L.FIRST_TRY
        while k + 3 < lp.count:
            if int(self.wr.state[W_HI]) <= lp.task(k, 0):
                status = self.drive(lp.task(k, 0))
                if status != PAUSE:
                    return status
                done = self._try(lp, k)
                if self.halt is not None:
                    return self.halt
                if done is None:
                    return OVERFLOW
                if done is True:
                    return OK
                if done == "early":  # nothing run: the next iteration's cut may do
                    k += 1
                    continue
            k = k + L.TRY_EVERY if k < L.TRY_DOUBLING else k + max(L.TRY_EVERY, k // 4)
            k = max(k, self._at(lp))
        return OK

    def _at(self, lp) -> int:
        """The first iteration whose first task has not entered the window."""
        return -(-(int(self.wr.state[W_HI]) - lp.first) // lp.size)

    # --- the state at a cut ---------------------------------------------------------------

    def _snap(self, lp, j: int, rows: np.ndarray, keep_res: bool) -> dict | None:
        """The state before iteration j's first task enters (module docstring), tasks and
        instances relative to that task, times as they are. None when it holds a task
        outside the loop that moves (a task before the loop not done, one after it touched)."""
        wr, tables = self.wr, self.tables
        ib = tables.ib
        lo, hi = int(wr.state[W_LO]), int(wr.state[W_HI])
        f, g = lp.task(j, 0), int(ib[lp.task(j, 0)])
        if lo < lp.first or hi != f:
            return None
        live = np.flatnonzero(self.last[:hi] >= lo)
        outer = live[live < lp.first]
        inner = live[live >= lp.first]
        unres_o, rmax_o = self._base(lp)
        nt = len(tables.td)
        touched = hi + np.flatnonzero((wr.unres[hi:nt] != unres_o[hi:nt])
                                      | (wr.rmax[hi:nt] != rmax_o[hi:nt]))
        if (touched >= lp.end).any():
            return None
        an, hn = int(wr.state[W_AN]), int(wr.state[W_HN])
        aq, hq = wr.aq[:an], wr.hq[:hn]
        aq = aq[unres_o[aq[:, 1]] > 0]  # (the rest wait for tasks before the loop only)
        if (aq[:, 1] >= lp.end).any():
            return None
        o = np.argsort(hq[:, 1], kind="stable")
        sig = self._take(inner, len(rows)) if keep_res else None
        return {
            "lo": lo - f, "f": f, "outer": outer, "inner": inner - f,
            "sig": sig, "res": self._copy_res(rows) if sig is not None else None,
            "left": wr.left[lo:hi].copy(), "tacc": wr.tacc[lo:hi].copy(),
            "pend": _ring_get(wr.pend, int(ib[lo]), int(ib[hi] - ib[lo])),
            "hq": np.stack([hq[o, 0], hq[o, 1] - g, self._labels(hq[o, 2], inner, outer, f)], 1),
            "aq": np.sort(aq[:, 1] - f),
            "aq_bound": aq[np.argsort(aq[:, 1], kind="stable"), 0].copy(),
            "touched": touched - f, "unres": wr.unres[touched].copy(),
            "rmax": wr.rmax[touched].copy(),
            "state": wr.state.copy(),
        }

    def _base(self, lp) -> tuple[np.ndarray, np.ndarray]:
        """Per task, its dependencies not yet granted and the largest first key of the
        others once every task before the loop is granted (as it is at every cut): the
        state of a task not yet in that no task of the loop has touched."""
        if self._base_of is not lp:
            wr, deps = self.wr, self.tables.deps
            m = (deps[:, D_OWNER] >= lp.first) & (deps[:, D_TASK] < lp.first) & (deps[:, D_HEAD] == 0)
            owner = deps[m, D_OWNER]
            unres, rmax = self.unres0.copy(), np.full(len(wr.rmax), -1, np.int64)
            np.subtract.at(unres, owner, 1)
            np.maximum.at(rmax, owner, wr.tacc[deps[m, D_TASK], A_FIRST])
            self._base_of, self._base_arrays = lp, (unres, rmax)
        return self._base_arrays

    def _blocks(self, tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first row, rows) of these tasks' signal blocks in the store, in task order."""
        td = self.tables.td
        return (td[tasks, F_SB] + self.wr.off[tasks]).astype(np.int64), self.slots[tasks]

    def _take(self, tasks: np.ndarray, res_rows: int) -> tuple | None:
        """The reached rows of these tasks' blocks (`_sig_take`): at full wafer most of a
        window's per-core slots are not reached yet, and only the others are copied. None
        when they and the loop's `res_rows` resource rows would not fit in half the free RAM
        (the try is not made)."""
        firsts, ks = self._blocks(tasks)
        n = _sig_count(self.wr.sig, firsts, ks)
        have, width = free_bytes(), 8 * self.wr.sig.shape[1]
        if have is not None and res_rows * (width + 1) + n * (width + 12) > have // 2:
            return None
        pos, sp = np.empty(n, np.int64), np.empty(n, np.int32)
        rows = np.empty((n, self.wr.sig.shape[1]), np.int64)
        _sig_take(self.wr.sig, self.wr.spend, firsts, ks, pos, rows, sp)
        return pos, rows, sp

    def _labels(self, rows: np.ndarray, inner, outer, f: int) -> np.ndarray:
        """Store rows as (task, slot) labels that do not depend on where the block lies:
        the loop's tasks relative to task f, outer tasks as they are (-1 stays -1)."""
        nt = len(self.tables.td)
        lab = np.full(len(rows), -1, np.int64)
        span = int(self.slots.max()) + 1
        for tasks, rel, flag in ((inner, inner - f, 0), (outer, outer, 1)):
            if not len(tasks):
                continue
            first, k = self._blocks(tasks)
            o = np.argsort(first)
            first, k, rel = first[o], k[o], rel[o]
            q = np.searchsorted(first, rows, "right") - 1
            ok = (rows >= 0) & (q >= 0)
            q = np.where(ok, q, 0)
            ok &= rows < first[q] + k[q]
            lab[ok] = ((rel[q[ok]] + nt) * span + rows[ok] - first[q[ok]]) * 2 + flag
        if ((rows >= 0) & (lab < 0)).any():
            lab[(rows >= 0) & (lab < 0)] = -2  # a row of no live block: compared as such
        return lab

    def _copy_res(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), self.wr.res.shape[1]), np.int64)
        L._gather(self.wr.res, rows, out)
        return out

    def _same(self, a: dict, b: dict, delta: int, da: int, codes: dict | None):
        """Whether state b, the one the run stands at, is state a moved by delta (and its
        chains' compute by da), with the same rows moving as `codes` says when given; the
        codes, else None. The signal rows are compared in the store (a's copy against b's
        blocks)."""
        key = delta << GEN_BITS
        if (a["lo"] != b["lo"] or len(a["inner"]) != len(b["inner"])
                or not np.array_equal(a["inner"], b["inner"])
                or not np.array_equal(a["outer"], b["outer"])
                or not np.array_equal(a["left"], b["left"]) or not np.array_equal(a["pend"], b["pend"])
                or not np.array_equal(a["touched"], b["touched"])
                or not np.array_equal(a["unres"], b["unres"])
                or not np.array_equal(a["aq"], b["aq"])):
            return None
        ta, tb = a["tacc"], b["tacc"]
        got = ta[:, A_FIRST] >= 0
        if not np.array_equal(got, tb[:, A_FIRST] >= 0):
            return None
        step = np.zeros(ta.shape[1], np.int64)
        step[[A_START, A_END, A_FIRST]] = delta, delta, key
        if not (tb[got] - ta[got] == step).all() or not np.array_equal(ta[~got], tb[~got]):
            return None
        ra, rb = a["rmax"], b["rmax"]
        if not np.array_equal(ra < 0, rb < 0) or not (rb[ra >= 0] - ra[ra >= 0] == key).all():
            return None
        ba, bb = a["aq_bound"], b["aq_bound"]
        if not (np.where(ba >= 0, ba + key, ba) == bb).all():
            return None
        ha, hb = a["hq"], b["hq"]
        if ha.shape != hb.shape or not ((hb[:, 0] - ha[:, 0] == key).all()
                                        and np.array_equal(ha[:, 1:], hb[:, 1:])):
            return None
        pos, rows, sp = a["sig"]
        firsts, ks = self._blocks(b["inner"] + b["f"])
        sig = codes["sig"] if codes is not None else np.zeros(len(pos), np.uint8)
        if not _sig_same(self.wr.sig, self.wr.spend, firsts, ks, pos, rows, sp, delta, da, sig,
                         codes is None):
            return None
        return {"sig": sig}

    # --- a try and a skip -----------------------------------------------------------------

    def _try(self, lp, k: int):
        """Compare the states before iterations k, k + c and k + 2 c (the run stands before
        k) for a period c of one, else two iterations; skip whole periods when they repeat.
        True: skipped; False: not settled (or not skippable here); "early": the state before
        k cannot be compared (a task before the loop still in the window); None: the
        extrapolated times overflow the keys."""
        wr = self.wr
        rows = L._footprint(self.tables, L._box(self.tables, lp))
        s0 = self._snap(lp, k, rows, True)
        if s0 is None:
            return "early"
        if s0["sig"] is None:  # the copy would not fit: the loop runs in full
            return False
        wr.watch[0], wr.watch[1] = lp.first, 0
        try:
            for c in (1, 2):
                if k + 2 * c >= lp.count or not self._go(lp.task(k + c, 0)):
                    return False
                cres = np.zeros(len(rows), np.uint8)
                shift = np.array([-1, -1], np.int64)
                if L._shift_check(wr.res, rows, s0["res"], shift, cres, True, True) \
                        and shift[0] > 0:
                    delta, da = int(shift[0]), int(shift[1])
                    s1 = self._snap(lp, k + c, rows, False)
                    codes = s1 and self._same(s0, s1, delta, da, None)
                    if codes:
                        break
            else:
                return False
            before = [a.copy() for a in (wr.busy, wr.lbusy, wr.lbytes)]
            if not self._go(lp.task(k + 2 * c, 0)):
                return False
            s2 = self._snap(lp, k + 2 * c, rows, False)
            ok = (s2 is not None
                  and L._shift_check(wr.res, rows, s0["res"], 2 * shift, cres, False, True)
                  and self._same(s0, s2, 2 * delta, 2 * da, codes) is not None
                  and wr.watch[1] == 0 and self._moves(s0["state"], s1["state"], s2["state"],
                                                       delta, da, lp, c))
        finally:
            wr.watch[0], wr.watch[1] = -1, 0
        if not ok:
            return False
        # the skipped tasks are filled from tasks a whole number of periods later: those of
        # the window must have entered after the first state compared (k)
        q = self._room(lp, k + 2 * c, c, s2) if wr.state[W_LO] >= lp.task(k, 0) else 0
        if q <= 0:
            return False
        if int(wr.state[T_MAXEND]) + q * delta >= READY_MAX:
            return None
        self._skip(lp, k + 2 * c, q, c, shift, cres, codes["sig"], rows, s1["state"], before,
                   s2)
        return True

    def _go(self, stop: int) -> bool:
        """Run on to the cut before task `stop`; False (and `halt` set) when the run ends or
        stops there instead."""
        status = self.drive(stop)
        if status != PAUSE:
            self.halt = status
        return status == PAUSE

    def _moves(self, t0, t1, t2, delta: int, da: int, lp, c: int) -> bool:
        """The bytes injected and delivered the same in both periods (of c iterations), and
        the run's finish (latest end, its instance and chain) moved by one period each time."""
        if not all(t1[x] - t0[x] == t2[x] - t1[x] for x in (T_COMM, T_DELIV)):
            return False
        inst = int(self.tables.ib[lp.task(c, 0)] - self.tables.ib[lp.first])
        return all(b[T_MAXEND] - a[T_MAXEND] == delta and b[T_LAST_G] - a[T_LAST_G] == inst
                   and b[T_LAST_RG] - a[T_LAST_RG] == delta << GEN_BITS
                   and b[T_LAST_S] - a[T_LAST_S] == 2 * delta and b[T_LAST_A] - a[T_LAST_A] == da
                   for a, b in ((t0, t1), (t1, t2)))

    def _room(self, lp, j: int, c: int, s: dict) -> int:
        """How many periods of c iterations from j may be skipped: the tasks not yet in that
        the state names stay inside the loop; every iteration that tasks after the loop
        read is simulated; and the period after the skip, whose tasks `_fill` copies, ends
        before the tasks after the loop enter (until then every cut repeats the last)."""
        reach = max(int(s["touched"].max(initial=0)), int(s["aq"].max(initial=0)))
        it = (lp.end - 1 - reach - lp.task(j, 0)) // lp.size
        after = self.tables.deps_on(lp.first, lp.end)
        late = after[after[:, D_OWNER] >= lp.end]
        if len(late):
            it = min(it, int((late[:, D_TASK] - lp.first).min()) // lp.size - j)
        return min(it, lp.count - j - c) // c

    def _skip(self, lp, j, q, c, shift, cres, csig, rows, t_prev, before, s) -> None:
        """Move the run from before iteration j to before j + q c: q periods of c
        iterations (module docstring)."""
        wr, tables = self.wr, self.tables
        td, ib = tables.td, tables.ib
        delta, da = int(shift[0]), int(shift[1])
        m, inst = q * c * lp.size, int(ib[lp.task(q * c, 0)] - ib[lp.first])
        dt, key = q * delta, (q * delta) << GEN_BITS
        lo, hi = int(wr.state[W_LO]), int(wr.state[W_HI])
        L._shift_rows(wr.res, rows, wr.res, rows, cres, q, shift)
        # live blocks: task u's rows become task u + m's, their times moved
        inner = s["inner"] + lp.task(j, 0)
        _sig_move(wr.sig, *self._blocks(inner), csig, q, delta, da)
        wr.off[inner + m] = wr.off[inner] + td[inner, F_SB] - td[inner + m, F_SB]
        # the window's tasks and instances
        _ring_put(wr.pend, int(ib[lo]) + inst, _ring_get(wr.pend, int(ib[lo]), int(ib[hi] - ib[lo])))
        left, tacc = wr.left[lo:hi].copy(), wr.tacc[lo:hi].copy()
        got = tacc[:, A_FIRST] >= 0
        tacc[got, A_START] += dt
        tacc[got, A_END] += dt
        tacc[got, A_FIRST] += key
        wr.left[lo + m:hi + m], wr.tacc[lo + m:hi + m] = left, tacc
        if len(wr.ends):  # the spans granted so far (the rest are written when granted)
            for arr in (wr.start, wr.ends):
                arr[ib[lo] + inst:ib[hi] + inst] = arr[ib[lo]:ib[hi]] + dt
        hn, an = int(wr.state[W_HN]), int(wr.state[W_AN])
        wr.hq[:hn, 0] += key
        wr.hq[:hn, 1] += inst
        # the tasks not yet in that the loop touched, and their admission entries
        unres_o, rmax_o = self._base(lp)
        touched = s["touched"] + lp.task(j, 0)
        unres, rmax = wr.unres[touched].copy(), wr.rmax[touched].copy()
        wr.unres[touched], wr.rmax[touched] = unres_o[touched], rmax_o[touched]
        wr.unres[touched + m] = unres
        wr.rmax[touched + m] = np.where(rmax >= 0, rmax + key, rmax)
        aq = wr.aq[:an]
        moving = unres_o[aq[:, 1]] > 0
        aq[moving, 0] = np.where(aq[moving, 0] >= 0, aq[moving, 0] + key, aq[moving, 0])
        aq[moving, 1] += m
        aq[:] = aq[np.lexsort((aq[:, 1], aq[:, 0]))]  # sorted: a heap again
        for now, was in zip((wr.busy, wr.lbusy, wr.lbytes), before, strict=True):
            now += q * (now - was)
        st = wr.state
        for col in (T_COMM, T_DELIV):
            st[col] += q * (st[col] - t_prev[col])
        st[T_MAXEND] += dt
        st[T_LAST_G] += inst
        st[T_LAST_RG] += key
        st[T_LAST_S] += 2 * dt
        st[T_LAST_A] += q * da
        st[W_LO] += m
        st[W_HI] += m
        st[W_DONE] += inst
        self.fills.append((lo, m, c * lp.size, delta))
        self.skipped_iterations += q * c
        self.skipped(inst)

    def _fill(self) -> None:
        """Per-task counters (and spans, when kept) of the skipped tasks: those of the task
        whole iterations later that ran, moved back (the latest skip first)."""
        wr, ib = self.wr, self.tables.ib
        for lo, m, size, delta in reversed(self.fills):
            t = np.arange(lo, lo + m, dtype=np.int64)
            back = (lo + m - t + size - 1) // size  # iterations to the first one that ran
            src = t + back * size
            moved = wr.tacc[src].copy()
            got = moved[:, A_FIRST] >= 0
            moved[got, A_START] -= back[got] * delta
            moved[got, A_END] -= back[got] * delta
            moved[got, A_FIRST] -= (back[got] * delta) << GEN_BITS
            wr.tacc[t] = moved
            if len(wr.ends):
                n = ib[t + 1] - ib[t]
                g = np.arange(ib[lo], ib[lo + m], dtype=np.int64)
                shift = np.repeat(ib[src] - ib[t], n)
                d = np.repeat(back * delta, n)
                wr.start[g] = wr.start[g + shift] - d
                wr.ends[g] = wr.ends[g + shift] - d

