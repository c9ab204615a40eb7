"""The fast engine's scheduler: list scheduling by rounds, in numba, over the task table.

State: per resource the cycle it is free from and its last owner; per instance its start,
its blocker and how many needs it still waits for; per signal slot its time, producer and
how many contributions it still waits for. Ready instances wait in a timing wheel (a FIFO
per cycle for the next W cycles) backed by a radix queue for later cycles (nothing becomes
ready before the current cycle, so both only move forward). A round takes every instance
whose ready time is the current minimum, sorts them by global instance id, i.e. (task,
index), and grants them in that order; instances made ready by these grants wait for the
next round even at the same cycle (the reference's priority-2 grant event).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from wse_sim.engine.fast_queue import (
    queue_front,
    queue_push,
    queue_take,
    radix_next,
    task_of,
    wheel_next,
)
from wse_sim.engine.fast_tasks import (
    D_DX,
    D_DY,
    D_HEAD,
    D_OWNER,
    D_RULE,
    D_TASK,
    F_B,
    F_D0,
    F_DN,
    F_KIND,
    F_NI,
    F_RD0,
    F_RDN,
    F_SA,
    F_SLOTS,
    H_COLS,
    H_HOP,
    H_N,
    H_ROWS,
    H_SEND,
    H_TR,
    K_COMPUTE,
    R_ALL,
    R_AT,
    anchor,
    anchor_inverse,
    fill_events,
    fill_res,
    head_dest,
    kernel,
    n_anchors,
    ready_pred,
    route_hops,
    sig_slot,
)

# state vector of a run
(S_QUEUED, S_BLEN, S_BPOS, S_TIME, S_GRANTED, S_MAXEND, S_LAST, S_COMM, S_DELIV, S_NEED,
 S_OLAST) = range(11)
NS = 11
# per-task accumulators
A_BUSY, A_BYTES, A_START, A_END, A_FIRST = 0, 1, 2, 3, 4
NA = 5


@njit(cache=True)
def check_needs(td, deps, hwc):
    """First need outside the mesh, else first need of a signal that never happens.

    Returns [kind (0 none, 1 outside, 2 missing), task, instance, dep row, x, y, from x, from y]
    for the first offender in the reference's order (task, instance, anchor, dep).
    """
    cols, rows = hwc[H_COLS], hwc[H_ROWS]
    out = np.zeros(8, np.int64)
    for phase in range(1, 3):
        for t in range(td.shape[0]):
            d0, d1 = td[t, F_D0], td[t, F_DN]
            if d0 == d1:
                continue
            na = n_anchors(td, t)
            for i in range(td[t, F_NI]):
                for a in range(na):
                    ax, ay = anchor(td, t, i, a)
                    for d in range(d0, d1):
                        rule = deps[d, D_RULE]
                        if rule == R_ALL or deps[d, D_HEAD]:
                            continue
                        if rule == R_AT:
                            x, y = deps[d, D_DX], deps[d, D_DY]
                        else:
                            x, y = ax + deps[d, D_DX], ay + deps[d, D_DY]
                        if phase == 1:
                            bad = not (0 <= x < cols and 0 <= y < rows)
                        else:
                            bad = sig_slot(td, deps[d, D_TASK], x, y) < 0
                        if bad:
                            out[0], out[1], out[2], out[3] = phase, t, i, d
                            out[4], out[5], out[6], out[7] = x, y, ax, ay
                            return out
    return out


@kernel(inline=True)
def account(rid, ln, b4, t, n, lbytes, lbusy, busy, tacc):
    """Count one reservation (resource rid for ln cycles, a stream of b4 bytes) on the
    per-link, per-core and per-task counters; returns the (injected, delivered) bytes."""
    if rid < 4 * n:
        if lbytes.shape[0] > 0:
            lbytes[rid] += b4
        lbusy[rid] += ln
    elif rid < 5 * n:
        tacc[t, A_BYTES] += b4
        return b4, 0
    elif rid < 6 * n:
        return 0, b4
    elif rid < 7 * n:
        busy[rid - 6 * n] += ln
        tacc[t, A_BUSY] += ln
    return 0, 0


@kernel(inline=True)
def task_span(tacc, t, order, s_at, end):
    """Widen task t's (start, end) span by one granted instance; the first one granted also
    records its place in the grant order (`order`)."""
    if tacc[t, A_FIRST] < 0:
        tacc[t, A_FIRST] = order
        tacc[t, A_START], tacc[t, A_END] = s_at, end
    else:
        tacc[t, A_START] = min(tacc[t, A_START], s_at)
        tacc[t, A_END] = max(tacc[t, A_END], end)


@kernel(inline=True)
def _wake(td, deps, rdeps, ib, hwc, tsk, cx, cy, at, pend, head, wheel, qtime, qnext, now,
          olast):
    """Signal (tsk, core (cx, cy)) or (tsk, whole task: cx < 0) is complete at cycle `at`:
    count it off the needs of every instance waiting for it, whose ready time (kept in
    qtime until it is queued) is the latest of its needs; queue the instances left with none.
    Returns how many were queued."""
    queued = 0
    for r in range(td[tsk, F_RD0], td[tsk, F_RDN]):
        k = rdeps[r]
        dt = deps[k, D_OWNER]
        if deps[k, D_HEAD]:  # at a destination: met `lead` before, not before this grant
            if cx < 0:
                continue
            ux, uy = cx - deps[k, D_DX], cy - deps[k, D_DY]
            j = 0
            while True:
                i, sx, sy = head_dest(td, dt, ux, uy, j)
                if i < 0:
                    break
                j += 1
                lead = hwc[H_SEND] + 2 * hwc[H_TR] + hwc[H_HOP] * route_hops(hwc, sx, sy, ux, uy)
                queued += _count_off(ib[dt] + i, max(at - lead, now), pend, head, wheel,
                                     qtime, qnext, now, olast)
            continue
        j0, j1 = wake_range(td, deps, k, dt, cx, cy)
        for j in range(j0, j1):
            queued += _count_off(ib[dt] + j, at, pend, head, wheel, qtime, qnext, now, olast)
    return queued


@kernel(inline=True)
def wake_range(td, deps, k, dt, cx, cy):
    """Instances j0 .. j1 - 1 of task dt whose need through dependency row k (not a head
    one) is met when the slot of core (cx, cy), or the whole-task slot (cx < 0), is
    complete: every instance for 'all' (whole-task slot) and 'at' (that core), the one
    anchored there for an offset."""
    rule = deps[k, D_RULE]
    if cx < 0:
        return (0, td[dt, F_NI]) if rule == R_ALL else (0, 0)
    if rule == R_ALL:
        return 0, 0
    if rule == R_AT:
        if deps[k, D_DX] != cx or deps[k, D_DY] != cy:
            return 0, 0
        return 0, td[dt, F_NI]
    j0 = anchor_inverse(td, dt, cx - deps[k, D_DX], cy - deps[k, D_DY])
    return (0, 0) if j0 < 0 else (j0, j0 + 1)


@kernel(inline=True)
def _count_off(g, at, pend, head, wheel, qtime, qnext, now, olast):
    """One need of instance g is met at `at`: its ready time is the latest of its needs; it
    is queued when none is left. Returns 1 when queued."""
    if at > qtime[g]:
        qtime[g] = at
    pend[g] -= 1
    if pend[g] == 0:
        queue_push(head, wheel, qtime, qnext, now, olast, g, qtime[g])
        return 1
    return 0


@kernel
def run(prog, q, cnt, scr, ends, state, limit):
    """Grant up to `limit` instances, then return (so that the caller can show progress).
    `prog`, `q`, `cnt`, `scr`: the `fast_tasks` named groups of arrays (ProgramArrays,
    EventQueue, Counters, Scratch).

    Until an instance is granted, start[g] / blk[g] hold its ready time (0 to begin with) /
    queue link. Ready instances wait in a timing wheel (the next W cycles) backed by a radix
    queue (further on).
    `ends` (one slot per instance, or empty) receives each instance's end time.
    Returns early, with state[S_NEED] set, when a round does not fit in `batch` / `tmp`.
    """
    td, deps, rdeps, ib, tblk, hwc = prog
    free, owner, start, blk, pend, sig_time, sig_prod, sig_pend, head, wheel, batch, tmp, tscr = q
    busy, lbytes, lbusy, tacc = cnt
    rrid, roff, rlen, ex, ey, eoff = scr
    n = hwc[H_N]
    w = (wheel.shape[0] - 1) * 64 // 193  # timing-wheel slots
    queued, blen, bpos, now = state[S_QUEUED], state[S_BLEN], state[S_BPOS], state[S_TIME]
    granted, maxend, last = state[S_GRANTED], state[S_MAXEND], state[S_LAST]
    comm, deliv, olast = state[S_COMM], state[S_DELIV], state[S_OLAST]
    state[S_NEED] = 0
    keep_ends = ends.shape[0] > 0
    stop = granted + limit
    t = 0
    while granted < stop:
        if bpos == blen:
            if queued == 0:
                break
            # a round: everything ready at the earliest time, in (task, index) order
            tw = wheel_next(wheel, now)
            tr = radix_next(head)
            now = min(tw, tr)
            need = 0
            if tr == now:
                olast = queue_front(head, start, blk, olast)
                need += head[130]
            if tw == now:
                need += wheel[2 * w + (now & (w - 1))]
            if need > batch.shape[0]:
                state[S_NEED] = need
                break
            blen = queue_take(head, wheel, blk, now, tw == now, tr == now, batch, tmp, ib,
                               tblk, tscr)
            queued -= blen
            bpos = 0
        g = batch[bpos]
        bpos += 1
        t = task_of(ib, tblk, g, t)
        i = g - ib[t]
        nres = fill_res(td, t, i, hwc, rrid, roff, rlen)
        s_at, bk = now, -1
        for r in range(nres):
            f = free[rrid[r]] - roff[r]
            if f > s_at:
                s_at, bk = f, owner[rrid[r]]
        b4 = 4 * td[t, F_B]
        for r in range(nres):
            rid, ln = rrid[r], rlen[r]
            free[rid] = s_at + roff[r] + ln
            owner[rid] = g
            dc, dd = account(rid, ln, b4, t, n, lbytes, lbusy, busy, tacc)
            comm += dc
            deliv += dd
        start[g] = s_at
        blk[g] = bk
        pend[g] = -1
        nev = fill_events(td, t, i, hwc, ex, ey, eoff)
        end = s_at
        for e in range(nev):
            end = max(end, s_at + eoff[e])
        slots = td[t, F_SLOTS] != 0
        for e in range(nev + 1):  # every event, then the whole-task signal (at the end)
            if e < nev:
                if not slots:  # nobody waits for this task core by core
                    continue
                at, x, y = s_at + eoff[e], ex[e], ey[e]
                s = sig_slot(td, t, x, y)
            else:
                at, x, y = end, -1, -1
                s = td[t, F_SA]
            if at > sig_time[s]:
                sig_time[s], sig_prod[s] = at, g
            sig_pend[s] -= 1
            if sig_pend[s] == 0:
                queued += _wake(td, deps, rdeps, ib, hwc, t, x, y, sig_time[s], pend, head, wheel,
                                start, blk, now, olast)
        if keep_ends:
            ends[g] = end
        task_span(tacc, t, granted, s_at, end)
        if end > maxend:
            maxend, last = end, g
        granted += 1
    state[S_QUEUED], state[S_BLEN], state[S_BPOS], state[S_TIME] = queued, blen, bpos, now
    state[S_GRANTED], state[S_MAXEND], state[S_LAST] = granted, maxend, last
    state[S_COMM], state[S_DELIV], state[S_OLAST] = comm, deliv, olast


@kernel
def critical_path(td, deps, ib, start, blk, sig_time, sig_prod, last, last_end, hwc, ex, ey,
                  eoff):
    """(compute, comm) cycles along the chain that decided the finish, walked back from the
    first instance with the latest end exactly as EngineResultBuilder.critical_path does:
    each instance counts from its start to the boundary its successor left (never a cycle
    twice), then the walk follows its blocker, else the producer of its latest need; the
    cycles before the chain's first instance count as waiting."""
    compute = comm = 0
    cur, boundary = last, last_end
    while cur >= 0:
        t = np.searchsorted(ib, cur, side="right") - 1
        s = start[cur]
        seg = max(0, boundary - s)
        if td[t, F_KIND] == K_COMPUTE:
            compute += seg
        else:
            comm += seg
        boundary = min(boundary, s)
        if blk[cur] >= 0:  # started late because of a resource: its last holder
            cur = blk[cur]
            continue
        _ready, pred = ready_pred(td, deps, t, cur - ib[t], sig_time, hwc, ex, ey, eoff)
        cur = sig_prod[pred] if pred >= 0 else -1  # else: waited for nothing
    comm += boundary
    return compute, comm
