"""The fast engine's window path: the step path's state, granted in key order over a sliding
window of tasks.

The step path (`fast_step`) grants one group of independent tasks at a time and gives up
(ORDER) when a later task reserves a resource before an earlier one: pipelines whose stages
overlap (chunks of tokens in two layers at once, weights streaming in beside the compute of
the layer before). The event path runs those, but keeps every instance and every per-core
signal of the whole program (tens of GiB at full wafer). The window path keeps what the step
path keeps (per resource, and per signal slot still read) plus, for the tasks of a window,
each instance's count of needs not yet met and a heap of the instances that have none, by
key (ready time, round, id): the reference's grant order.

Tasks enter the window in program order (their slots get their contribution counts, their
instances their counts; those with none get their key and enter the heap) and leave it when
all their instances are granted. When must a task enter? An instance's key is larger than
the key of every contributor of its needs, so a task whose dependencies have all been granted
at least once has every key above the largest of their first keys (its bound), and a task
with a dependency not yet granted has every key above the heap's smallest. Tasks wait in an
admission heap by bound (from the start, those without dependencies); before each grant,
every task whose bound is below the heap's smallest key enters, with all tasks before it.
Every grant then checks, as the step path does, that the resources it reserves (and the
signal slots it writes) had no later key: the check that makes the result the reference's to
the cycle. When it fails the run stops (ORDER) and the caller takes the event path.

A task's block of signal slots is taken from the store when it enters (`fast_rows`) and given
back when the last task that reads it has left the window, so the store holds what the
window's tasks still read, as the step path's plan does for its groups.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from wse_sim.engine.fast_heap import heap_pop, heap_push
from wse_sim.engine.fast_queue import task_in
from wse_sim.engine.fast_rows import rows_give, rows_take
from wse_sim.engine.fast_sched import A_FIRST, task_span, wake_range
from wse_sim.engine.fast_step import (
    G_MK,
    G_TIME,
    NT,
    OK,
    OVERFLOW,
    T_COMM,
    T_DELIV,
    T_LAST_A,
    T_LAST_G,
    T_LAST_RG,
    T_LAST_S,
    T_MAXEND,
    T_STATUS,
    T_TASK,
    _grant,
    _needs,
    key_of,
)
from wse_sim.engine.fast_tasks import (
    D_DX,
    D_DY,
    D_HEAD,
    D_OWNER,
    D_RULE,
    D_TASK,
    F_D0,
    F_DH,
    F_DN,
    F_NI,
    F_RD0,
    F_RDN,
    F_SA,
    F_SB,
    F_SLOTS,
    R_ALL,
    R_AT,
    anchor,
    fill_events,
    head_dest,
    kernel,
    n_anchors,
    need_slot,
    sig_slot,
)

FULL = 4  # status beyond fast_step's: an array is full, W_NEED says which (the caller grows it)
PAUSE = 5  # ... and: the next task to enter is state[W_STOP] (a loop iteration's first: the
# state there is compared by `fast_window_loops`); the caller clears W_STOP and runs on
NEED_RING, NEED_ROWS, NEED_FREE = 1, 2, 3  # (the heap has the ring's room)
# state vector: fast_step's, then the window's
W_LO, W_HI, W_HN, W_AN, W_NEED, W_DONE, W_STOP = (NT, NT + 1, NT + 2, NT + 3, NT + 4, NT + 5,
                                                  NT + 6)
NW = NT + 7
# the window's arrays: the step path's store and resources (`fast_step`), then per store row
# the contributions still to come, per instance of the window (a ring) its needs not met, per
# task its instances not granted, the heap (key, instance, its first latest need's row); per
# task not yet in, its dependencies without a grant and the largest first key of the others,
# the admission heap (bound, task), the store's free list (`fast_rows`), and by last reader
# the tasks whose blocks it frees (rp: offsets into ru)
WindowArrays = namedtuple("WindowArrays", "off res sig pc starts spend pend left hq unres rmax "
                                           "aq fs fz fm rp ru")


@kernel(inline=True)
def _pending(td, deps, t, i, off, spend, hwc, ex, ey, eoff):
    """How many of instance i's needs are on signal slots still waiting for contributions,
    counted as `fast_sched._wake` will count them off: a core-slot need per anchor, an 'all'
    or 'at' need once, a head need per destination where the named task has an event."""
    d0, dh, d1 = td[t, F_D0], td[t, F_DH], td[t, F_DN]
    c = 0
    for d in range(d0, dh):
        u = deps[d, D_TASK]
        rule = deps[d, D_RULE]
        if rule == R_ALL:
            if spend[td[u, F_SA] + off[u]] > 0:
                c += 1
        elif rule == R_AT:
            if spend[sig_slot(td, u, deps[d, D_DX], deps[d, D_DY]) + off[u]] > 0:
                c += 1
        else:
            for a in range(n_anchors(td, t)):
                x, y = anchor(td, t, i, a)
                if spend[need_slot(td, deps, d, x, y) + off[u]] > 0:
                    c += 1
    if dh < d1:
        nev = fill_events(td, t, i, hwc, ex, ey, eoff)
        for e in range(1, nev):
            for d in range(dh, d1):
                s = need_slot(td, deps, d, ex[e], ey[e])
                if s >= 0 and spend[s + off[deps[d, D_TASK]]] > 0:
                    c += 1
    return c


@kernel(inline=True)
def _resolve(deps, rdeps, td, u, key, hi, unres, rmax, aq, an):
    """Task u's first grant (key `key`, -1 for a task without instances): a task not yet in
    whose dependencies now all have one gets its bound (the largest of their first keys)
    and waits in the admission heap `aq` (of an entries). The heap's size."""
    for r in range(td[u, F_RD0], td[u, F_RDN]):
        k = rdeps[r]
        dt = deps[k, D_OWNER]
        if deps[k, D_HEAD] or dt < hi:
            continue
        rmax[dt] = max(rmax[dt], key)
        unres[dt] -= 1
        if unres[dt] == 0:
            an = heap_push(aq, an, rmax[dt], dt, 0)
    return an


@kernel
def _enter(prog, wa, state, scr2, watch, lo, hi, hn, an):
    """Tasks in, in program order, up to every one whose keys may be below the heap's
    smallest (its bound is; a task no bound names yet goes in when nothing else can).
    Returns (status, hi, hn, an); FULL with state[W_NEED] when the ring or the store is full,
    PAUSE before task state[W_STOP] enters."""
    td, deps, rdeps, ib, _tblk, hwc = prog
    off, _res, sig, _pc, _st, spend, pend, left, hq, unres, rmax, aq, fs, fz, fm, _rp, _ru = wa
    nt = td.shape[0]
    while hi < nt and (hn == 0 or (an > 0 and aq[0, 0] < hq[0, 0])):
        last = aq[0, 1] if an > 0 else hi
        if last >= hi:
            if ib[last + 1] - ib[lo] > pend.shape[0]:
                state[W_NEED] = NEED_RING
                return FULL, hi, hn, an
            while hi <= last:
                if hi == state[W_STOP]:
                    return PAUSE, hi, hn, an
                state[T_TASK] = hi
                row = rows_take(fs, fz, fm, td[hi, F_SA] + 1 - td[hi, F_SB])
                if row < 0:
                    state[W_NEED] = NEED_ROWS
                    return FULL, hi, hn, an
                off[hi] = row - td[hi, F_SB]
                hn = _admit(td, deps, hi, ib, off, sig, spend, pend, left, hq, hn, hwc, scr2,
                            watch)
                if hn < 0:
                    return OVERFLOW, hi, 0, an
                hi += 1
                if td[hi - 1, F_NI] == 0:
                    an = _resolve(deps, rdeps, td, hi - 1, -1, hi, unres, rmax, aq, an)
        if an > 0 and aq[0, 1] == last:
            an = heap_pop(aq, an)
    return OK, hi, hn, an


@kernel
def _leave(td, wa, state, lo, hi):
    """Tasks out, in program order, once all their instances are granted; the blocks whose
    last reader leaves go back to the store. Returns (status, lo); FULL with state[W_NEED]
    when the free list is full."""
    off, fs, fz, fm, rp, ru, left = wa.off, wa.fs, wa.fz, wa.fm, wa.rp, wa.ru, wa.left
    while lo < hi and left[lo] == 0:
        while rp[lo] < rp[lo + 1]:
            u = ru[rp[lo]]
            if not rows_give(fs, fz, fm, off[u] + td[u, F_SB], td[u, F_SA] + 1 - td[u, F_SB]):
                state[W_NEED] = NEED_FREE
                return FULL, lo
            rp[lo] += 1
        lo += 1
    return OK, lo


@kernel
def run_window(prog, wa, cnt, scr, scr2, ends, state, limit, watch):
    """Grant up to `limit` instances over the sliding window (module docstring); returns
    with state[T_STATUS] OK when done or the limit is reached, FULL when an array needs more
    room (state[W_NEED]: which), PAUSE before task state[W_STOP] enters, or the step path's
    ORDER / NONMONO / OVERFLOW. `wa`:
    WindowArrays; `scr2`: a second Scratch (needs computed while a grant's events are being
    walked)."""
    td, deps, rdeps, ib, _tblk, hwc = prog
    off, res, sig, pc, starts, spend, pend, left, hq, unres, rmax, aq = wa[:12]
    tacc = cnt.tacc
    ex, ey, eoff = scr.ex, scr.ey, scr.eoff
    keep_ends = ends.shape[0] > 0
    lo, hi, hn, an = state[W_LO], state[W_HI], state[W_HN], state[W_AN]
    comm, deliv = state[T_COMM], state[T_DELIV]
    maxend, last_rg, last_g = state[T_MAXEND], state[T_LAST_RG], state[T_LAST_G]
    last_s, last_a = state[T_LAST_S], state[T_LAST_A]
    status = OK
    t = 0
    done = 0
    while done < limit:
        status, hi, hn, an = _enter(prog, wa, state, scr2, watch, lo, hi, hn, an)
        if status != OK or hn == 0:  # (hn == 0 here: every task is in, and granted)
            break
        rg, g, pred = hq[0, 0], hq[0, 1], hq[0, 2]
        hn = heap_pop(hq, hn)
        t = task_in(ib, g, t, lo, hi)  # (a task of the window: lo <= t < hi)
        state[T_TASK] = t
        i = g - ib[t]
        status, s_at, end, me, a, dc, dd = _grant(td, hwc, t, i, rg, pred, off, res, sig, pc,
                                                  cnt, scr, True)
        if status != OK:
            break
        comm += dc
        deliv += dd
        if keep_ends:
            starts[g], ends[g] = s_at, end
        if tacc[t, A_FIRST] < 0:  # its first grant: the bound of the tasks that need it
            an = _resolve(deps, rdeps, td, t, rg, hi, unres, rmax, aq, an)
        task_span(tacc, t, rg, s_at, end)
        if end > maxend or (end == maxend and (rg < last_rg or (rg == last_rg and g < last_g))):
            maxend, last_rg, last_g, last_s, last_a = end, rg, g, me, a
        # its contributions counted off; slots complete wake the window's waiting instances
        nev = fill_events(td, t, i, hwc, ex, ey, eoff) if td[t, F_SLOTS] != 0 else 0
        for e in range(nev + 1):
            if e < nev:
                s, cx, cy = sig_slot(td, t, ex[e], ey[e]) + off[t], ex[e], ey[e]
            else:
                s, cx, cy = td[t, F_SA] + off[t], -1, -1
            spend[s] -= 1
            if spend[s] == 0:
                hn = _wake(td, deps, rdeps, ib, t, cx, cy, hi, off, sig, pend, hq, hn,
                           hwc, scr2, watch)
                if hn < 0:
                    status = OVERFLOW
                    break
        if status != OK:
            break
        left[t] -= 1
        done += 1
        status, lo = _leave(td, wa, state, lo, hi)
        if status != OK:
            break
    state[T_STATUS] = status
    state[W_LO], state[W_HI], state[W_HN], state[W_AN] = lo, hi, hn, an
    state[W_DONE] += done
    state[T_COMM], state[T_DELIV] = comm, deliv
    state[T_MAXEND], state[T_LAST_RG], state[T_LAST_G] = maxend, last_rg, last_g
    state[T_LAST_S], state[T_LAST_A] = last_s, last_a


@kernel(inline=True)
def _ready(td, deps, t, i, ib, off, sig, hq, hn, hwc, scr2, watch):
    """Instance i of task t has every need met: its key, into the heap (-1: overflow)."""
    ready, pred, mk = _needs(td, deps, t, i, off, sig, watch, hwc, scr2.ex, scr2.ey, scr2.eoff)
    rg = key_of(ready, mk)
    if rg < 0:
        return -1
    return heap_push(hq, hn, rg, ib[t] + i, pred)


@kernel
def _admit(td, deps, t, ib, off, sig, spend, pend, left, hq, hn, hwc, scr2, watch):
    """Task t enters the window: its slots fresh with their contribution counts, each
    instance's count of needs not yet met; those with none into the heap. The heap's size
    (-1: a key overflows)."""
    ex, ey, eoff = scr2.ex, scr2.ey, scr2.eoff
    for s in range(td[t, F_SB] + off[t], td[t, F_SA] + off[t] + 1):
        sig[s, G_TIME] = -1
        sig[s, G_MK] = -1
        spend[s] = 0
    ni = td[t, F_NI]
    if td[t, F_SLOTS] != 0:
        for i in range(ni):
            for e in range(fill_events(td, t, i, hwc, ex, ey, eoff)):
                spend[sig_slot(td, t, ex[e], ey[e]) + off[t]] += 1
    spend[td[t, F_SA] + off[t]] = ni
    left[t] = ni
    cap = pend.shape[0]
    for i in range(ni):
        c = _pending(td, deps, t, i, off, spend, hwc, ex, ey, eoff)
        pend[(ib[t] + i) % cap] = c  # (0 too: the window's counts are compared at a cut)
        if c == 0:
            hn = _ready(td, deps, t, i, ib, off, sig, hq, hn, hwc, scr2, watch)
            if hn < 0:
                return -1
    return hn


@kernel(inline=True)
def _count_off(td, deps, dt, j, ib, off, sig, pend, hq, hn, hwc, scr2, watch):
    """One need of instance j of task dt met; into the heap when it was the last."""
    q = (ib[dt] + j) % pend.shape[0]
    pend[q] -= 1
    if pend[q] == 0:
        return _ready(td, deps, dt, j, ib, off, sig, hq, hn, hwc, scr2, watch)
    return hn


@kernel
def _wake(td, deps, rdeps, ib, tsk, cx, cy, hi, off, sig, pend, hq, hn, hwc, scr2,
          watch):
    """Slot (tsk, core (cx, cy)), or tsk's whole-task slot (cx < 0), has all its
    contributions: count it off the needs of the window's instances that wait for it, as
    `fast_sched._wake` does. The heap's size (-1: a key overflows)."""
    for r in range(td[tsk, F_RD0], td[tsk, F_RDN]):
        k = rdeps[r]
        dt = deps[k, D_OWNER]
        if dt >= hi:  # the reverse list is in task order: the rest are not in yet
            break
        if deps[k, D_HEAD]:
            if cx < 0:
                continue
            ux, uy = cx - deps[k, D_DX], cy - deps[k, D_DY]
            j = 0
            while True:
                i, _sx, _sy = head_dest(td, dt, ux, uy, j)
                if i < 0:
                    break
                j += 1
                hn = _count_off(td, deps, dt, i, ib, off, sig, pend, hq, hn, hwc,
                                scr2, watch)
                if hn < 0:
                    return -1
            continue
        j0, j1 = wake_range(td, deps, k, dt, cx, cy)
        for j in range(j0, j1):
            hn = _count_off(td, deps, dt, j, ib, off, sig, pend, hq, hn, hwc, scr2,
                            watch)
            if hn < 0:
                return -1
    return hn


def state_vector() -> np.ndarray:
    """A fresh window-run state (fast_step's vector, then the window's)."""
    st = np.zeros(NW, np.int64)
    st[T_MAXEND] = -1
    st[W_STOP] = -1
    return st
