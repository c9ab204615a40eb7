"""The fast engine's step path: one SPMD phase (a task, all its cores) at a time.

The event path (`fast_sched.run`) grants instances in rounds by ready time, the reference's
order: per resource, reservations happen in order of the key (ready time, round at that time,
global id). A regular SPMD program (every core of a region does the same step, steps follow
each other) reserves each resource in task order anyway. The step path exploits that: it takes
the tasks one after another, computes every instance's ready time and round from its needs
(all made by earlier tasks, so final), grants the task's instances in key order, and checks on
every reservation that the resource's previous reservation had a key no larger. While that
holds, every reservation happens in the reference's order, so every start, end and counter is
the reference's to the cycle; the first time it fails the step path gives up (status ORDER)
and the caller runs the event path instead.

The round of an instance: it is queued when the last contributor of its needs is granted
(the one with the largest key); if it is ready at that contributor's ready time it waits for
the next round at that time, else it is in the first round of its own ready time.

Nothing is kept per instance (unless spans are asked for): per resource its free time, the key
of its last reservation and that holder's start, kind and critical-path compute; per signal
slot its time, largest contributor key and its producer's start, kind and critical-path
compute (with the pieces below, see next).

The signal store. A task's signal slots (one per core where someone waits for it core by
core, then its whole-task slot, which a `Dep(task, "all")` reads: the latest end and its
contributor) are one block of rows of the store `sig`, live from the task's group to the last
group that reads them (`live_groups`). The blocks are placed once per program, in the Python
`plan` pass (`allocate`): in task order, first fit over the rows that tasks no longer read
(those whose last reader group is done), one-row blocks apart (a stack); slot s of task t is
row s + off[t]. So the store holds the signals still needed, wherever their readers are: a
layer's weights that the GEMMs of the whole layer wait for, or the end of layer i - 2, cost
their own block, not a ring spanning every task in between (Cerebras-GPT-1.3B, weight
streaming, 2-D layout, 2,048 tokens on wse2: 0.9 GiB planned instead of 448 GiB,
`benchmarks/bench_step_memory.py`). A group's blocks are reset when the group starts; the
loop fast-forward keeps the slots of a loop's tasks that tasks after the loop read up to the
end of their iteration, to copy them to the skipped iterations (`fast_loops`).

The critical path is accumulated forward. The backward walk (`fast_sched.critical_path`) from
an instance g with boundary B counts max(0, B - start) of g, then walks on from g's
predecessor p (its blocker, else the producer of its latest need) with boundary min(B, start).
Its compute part f_g(B) is piecewise linear in B: slope [g computes] from s_g up, and below s_g
it is f_p, whose pieces start at the chain's earlier starts that are lower than every later one.
Each holder keeps A_g = f_p(s_g) and its PIECES highest lower pieces (bound, slope; neighbours
of one slope merged): enough for a successor that starts a little before its predecessor
(short messages on long routes). A successor below the last kept piece would need the walk
further back: status NONMONO (the caller retries with PIECES_RETRY pieces, then events).
"""

from __future__ import annotations

import bisect

import numpy as np

from wse_sim.engine import fast_memory as mem
from wse_sim.engine.fast_groups import task_groups
from wse_sim.engine.fast_queue import task_in
from wse_sim.engine.fast_sched import A_FIRST, NA, account, task_span
from wse_sim.engine.fast_tasks import (
    D_OWNER,
    D_TASK,
    F_B,
    F_D0,
    F_DH,
    F_DN,
    F_KIND,
    F_NEV,
    F_NI,
    F_NRES,
    F_SA,
    F_SB,
    F_SLOTS,
    H_N,
    K_COMPUTE,
    Counters,
    ProgramArrays,
    Scratch,
    StepArrays,
    anchor,
    fill_events,
    fill_res,
    head_lead0,
    kernel,
    n_anchors,
    need_slot,
    sig_slot,
)

GEN_BITS = 20                     # the round at a cycle, packed under the ready time
GEN_MAX = (1 << GEN_BITS) - 1
READY_MAX = 1 << (62 - GEN_BITS)  # ready times the packed key can hold
# status of a step run
OK, ORDER, NONMONO, OVERFLOW = 0, 1, 2, 3
REASONS = {ORDER: "a resource is reserved out of task order",
           NONMONO: "a critical-path successor starts before its predecessor",
           OVERFLOW: "a ready time or round beyond the packed key"}
# columns of the per-resource and per-signal-slot tables (a holder's start is kept as
# start * 2 + 1 when it computes, start * 2 when it communicates)
# then the holder's (or producer's) start * 2 + kind, its chain's compute A, and its pieces
R_FREE, R_KEY = 0, 1
G_TIME, G_MK = 0, 1
C_S, C_A, C_P0 = 2, 3, 4
PIECES, PIECES_RETRY = 3, 12  # lower pieces kept; a second try keeps more
# state vector
(T_STATUS, T_TASK, T_COMM, T_DELIV, T_MAXEND, T_LAST_RG, T_LAST_G, T_LAST_S, T_LAST_A,
 T_NEXT) = range(10)
NT = 10


@kernel(inline=True)
def _needs(td, deps, t, i, off, sig, watch, hwc, ex, ey, eoff):
    """(ready time, store row of the first latest need or -1, largest contributor key or -1)
    of instance i: its needs in the reference's order (anchors, then dependencies; then the
    head dependencies at every destination, each met `lead` cycles before its event where
    the named task has one, and never before the grant of the largest contributor).

    While a loop is watched (watch[0]: its first task, else -1), sets watch[1] when a need on
    a task before the loop (a time that does not move with the iterations) is at least the
    latest of the other needs, or when there are no others: see `fast_loops`. watch[2], [3]:
    the same for a loop inside it (its iterations are tried within the outer one's)."""
    d0, dh, d1 = td[t, F_D0], td[t, F_DH], td[t, F_DN]
    lo, lo2 = watch[0], watch[2]
    if d0 == d1:
        if lo >= 0:
            watch[1] = 1
        if lo2 >= 0:
            watch[3] = 1
        return 0, -1, -1
    best, pred, mk = -1, -1, -1
    ibest, imk, obest, omk = -1, -1, -1, -1
    ibest2, imk2, obest2, omk2 = -1, -1, -1, -1
    for a in range(n_anchors(td, t) if d0 < dh else 0):
        x, y = anchor(td, t, i, a)
        for d in range(d0, dh):
            s = need_slot(td, deps, d, x, y) + off[deps[d, D_TASK]]
            if sig[s, G_TIME] > best:
                best, pred = sig[s, G_TIME], s
            if sig[s, G_MK] > mk:
                mk = sig[s, G_MK]
            if lo >= 0:
                if deps[d, D_TASK] < lo:
                    obest, omk = max(obest, sig[s, G_TIME]), max(omk, sig[s, G_MK])
                else:
                    ibest, imk = max(ibest, sig[s, G_TIME]), max(imk, sig[s, G_MK])
            if lo2 >= 0:
                if deps[d, D_TASK] < lo2:
                    obest2, omk2 = max(obest2, sig[s, G_TIME]), max(omk2, sig[s, G_MK])
                else:
                    ibest2, imk2 = max(ibest2, sig[s, G_TIME]), max(imk2, sig[s, G_MK])
    if dh < d1:
        nev = fill_events(td, t, i, hwc, ex, ey, eoff)
        lead0 = head_lead0(td, t, hwc)
        for e in range(1, nev):
            for d in range(dh, d1):
                s = need_slot(td, deps, d, ex[e], ey[e])
                if s < 0:
                    continue
                s += off[deps[d, D_TASK]]
                if sig[s, G_TIME] < 0:  # the named task has no event there
                    continue
                v = sig[s, G_TIME] - (eoff[e] - lead0)
                if v > best:
                    best, pred = v, s
                if sig[s, G_MK] > mk:
                    mk = sig[s, G_MK]
                if lo >= 0:
                    if deps[d, D_TASK] < lo:
                        obest, omk = max(obest, v), max(omk, sig[s, G_MK])
                    else:
                        ibest, imk = max(ibest, v), max(imk, sig[s, G_MK])
                if lo2 >= 0:
                    if deps[d, D_TASK] < lo2:
                        obest2, omk2 = max(obest2, v), max(omk2, sig[s, G_MK])
                    else:
                        ibest2, imk2 = max(ibest2, v), max(imk2, sig[s, G_MK])
        if mk >= 0:  # never before the grant that made it ready
            best = max(best, mk >> GEN_BITS)
        best = max(best, 0)
    if lo >= 0 and (obest >= 0 or omk >= 0) and (obest >= ibest or omk >= imk):
        watch[1] = 1
    if lo2 >= 0 and (obest2 >= 0 or omk2 >= 0) and (obest2 >= ibest2 or omk2 >= imk2):
        watch[3] = 1
    return best, pred, mk


@kernel(inline=True)
def _chain(tbl, row, s_at, pc):
    """Critical-path compute of an instance starting at s_at whose predecessor's data is
    tbl[row] (start * 2 + kind, A, pieces); its own lower pieces go to pc. -1 when s_at lies
    below the predecessor's last piece."""
    npc = pc.shape[0]
    ps, pa = tbl[row, C_S], tbl[row, C_A]
    p_start, kp = ps >> 1, ps & 1
    if s_at >= p_start:  # the predecessor's own cycles up to here, then its pieces
        lo, j = p_start, 0
        first = tbl[row, C_P0]
        if first >= 0 and (first & 1) == kp:  # same slope below: one piece
            lo, j = first >> 1, 1
        pc[0] = (lo << 1) | kp
        for q in range(1, npc):
            pc[q] = tbl[row, C_P0 + j + q - 1] if j + q - 1 < npc else -1
        return pa + (s_at - p_start) * kp
    top, val = p_start, pa  # starts before its predecessor: down its pieces
    for j in range(npc):
        v = tbl[row, C_P0 + j]
        if v < 0:
            return -1
        lo, k = v >> 1, v & 1
        if s_at >= lo:
            for q in range(npc):
                pc[q] = tbl[row, C_P0 + j + q] if j + q < npc else -1
            return val - (top - s_at) * k
        val -= (top - lo) * k
        top = lo
    return -1


@kernel(inline=True)
def _hold(tbl, row, me, a, pc):
    """Record the instance `me` (start * 2 + kind) with chain compute `a` and pieces `pc` as
    the holder (producer) in tbl[row]."""
    tbl[row, C_S], tbl[row, C_A] = me, a
    for q in range(pc.shape[0]):
        tbl[row, C_P0 + q] = pc[q]


RADIX_BITS = 11
RADIX = 1 << RADIX_BITS


@kernel
def _sort_by_key(keys, order, tmp, count, n):
    """order[:n] = the indices 0..n-1 stably sorted by keys[:n] (LSD radix sort on the keys
    less their minimum, RADIX_BITS at a time: SPMD phases have a narrow spread of keys)."""
    lo, hi = keys[0], keys[0]
    for i in range(n):
        order[i] = i
        lo, hi = min(lo, keys[i]), max(hi, keys[i])
    span = hi - lo
    shift = 0
    src, dst = order, tmp
    passes = 0
    while span >> shift:
        for d in range(RADIX):
            count[d] = 0
        for i in range(n):
            count[((keys[src[i]] - lo) >> shift) & (RADIX - 1)] += 1
        total = 0
        for d in range(RADIX):
            c = count[d]
            count[d] = total
            total += c
        for i in range(n):
            d = ((keys[src[i]] - lo) >> shift) & (RADIX - 1)
            dst[count[d]] = src[i]
            count[d] += 1
        src, dst = dst, src
        shift += RADIX_BITS
        passes += 1
    if passes % 2:
        for i in range(n):
            order[i] = tmp[i]


@kernel(inline=True)
def key_of(ready, mk):
    """The grant key (ready time, round) of an instance ready at `ready` whose largest
    contributor had key mk (-1: none): the round after mk's when mk was granted at that very
    time, else the first. -1 when it does not fit the packed key."""
    if ready >= READY_MAX:
        return -1
    gen = 0
    if mk >= 0 and (mk >> GEN_BITS) == ready:
        gen = (mk & GEN_MAX) + 1
        if gen > GEN_MAX:
            return -1
    return (ready << GEN_BITS) | gen


@kernel(inline=True)
def _grant(td, hwc, t, i, rg, pred, off, res, sig, pc, cnt, scr, check_slots):
    """Grant instance i of task t with key rg (pred: the store row of its first latest
    need, or -1): reserve its resources at the earliest start, count it, and write its
    signal slots with the critical path's pieces. Returns (status, start, end, holder code,
    chain compute, injected bytes, delivered bytes); status ORDER when a resource (or, with
    `check_slots`, a signal slot) was reserved by a later key, NONMONO (see the module
    docstring)."""
    busy, lbytes, lbusy, tacc = cnt
    rrid, roff, rlen, ex, ey, eoff = scr
    n = hwc[H_N]
    npc = pc.shape[0]
    nres = fill_res(td, t, i, hwc, rrid, roff, rlen)
    s_at, bk = rg >> GEN_BITS, -1
    for r in range(nres):
        rid = rrid[r]
        if rg < res[rid, R_KEY]:
            return ORDER, 0, 0, 0, 0, 0, 0
        f = res[rid, R_FREE] - roff[r]
        if f > s_at:
            s_at, bk = f, rid
    # the chain's compute cycles up to this start (see the module docstring)
    if bk >= 0:
        a = _chain(res, bk, s_at, pc)
    elif pred >= 0:
        a = _chain(sig, pred, s_at, pc)
    else:  # waited for nothing: no compute before it
        a = 0
        pc[0] = 0
        for q in range(1, npc):
            pc[q] = -1
    if a < 0:
        return NONMONO, 0, 0, 0, 0, 0, 0
    me = (s_at << 1) | (1 if td[t, F_KIND] == K_COMPUTE else 0)
    b4 = 4 * td[t, F_B]
    comm = deliv = 0
    for r in range(nres):
        rid, ln = rrid[r], rlen[r]
        res[rid, R_FREE] = s_at + roff[r] + ln
        res[rid, R_KEY] = rg
        _hold(res, rid, me, a, pc)
        dc, dd = account(rid, ln, b4, t, n, lbytes, lbusy, busy, tacc)
        comm += dc
        deliv += dd
    nev = fill_events(td, t, i, hwc, ex, ey, eoff)
    end = s_at
    for e in range(nev):
        end = max(end, s_at + eoff[e])
    if td[t, F_SLOTS] != 0:
        for e in range(nev):
            s = sig_slot(td, t, ex[e], ey[e]) + off[t]
            if check_slots and rg < sig[s, G_MK]:
                return ORDER, 0, 0, 0, 0, 0, 0
            at = s_at + eoff[e]
            if at > sig[s, G_TIME]:
                sig[s, G_TIME] = at
                _hold(sig, s, me, a, pc)
            sig[s, G_MK] = rg  # granted in key order: the last one is the largest
    sa = td[t, F_SA] + off[t]
    if check_slots and rg < sig[sa, G_MK]:
        return ORDER, 0, 0, 0, 0, 0, 0
    if end > sig[sa, G_TIME]:
        sig[sa, G_TIME] = end
        _hold(sig, sa, me, a, pc)
    sig[sa, G_MK] = rg
    return OK, s_at, end, me, a, comm, deliv


@kernel
def run_steps(prog, sa, cnt, scr, ends, g1, state, watch):
    """Run the task groups state[T_NEXT] .. g1 - 1 (group k: tasks groups[k] ..
    groups[k + 1] - 1, none of which needs another of the group). Stops early with
    state[T_STATUS] != OK (and state[T_TASK] the task) when the step path cannot give the
    reference's result. `prog`, `sa`, `cnt`, `scr`: the `fast_tasks` named groups of arrays
    (ProgramArrays, StepArrays, Counters, Scratch). `watch`: see `_needs`."""
    td, deps, _rdeps, ib, _tblk, hwc = prog
    groups, off, res, sig, rgs, preds, order, tmp, count, pc, starts = sa
    tacc = cnt.tacc
    ex, ey, eoff = scr.ex, scr.ey, scr.eoff
    keep_ends = ends.shape[0] > 0
    comm, deliv = state[T_COMM], state[T_DELIV]
    maxend, last_rg, last_g = state[T_MAXEND], state[T_LAST_RG], state[T_LAST_G]
    last_s, last_a = state[T_LAST_S], state[T_LAST_A]
    for grp in range(state[T_NEXT], g1):
        ta, tb = groups[grp], groups[grp + 1]
        base = ib[ta]
        for t in range(ta, tb):  # the group's slots: fresh
            for s in range(td[t, F_SB] + off[t], td[t, F_SA] + off[t] + 1):
                sig[s, G_TIME] = -1
                sig[s, G_MK] = -1
        in_order = True
        prev = -1
        for t in range(ta, tb):  # ready time and round of every instance
            state[T_TASK] = t
            for i in range(td[t, F_NI]):
                ready, pred, mk = _needs(td, deps, t, i, off, sig, watch, hwc, ex, ey, eoff)
                rg = key_of(ready, mk)
                if rg < 0:
                    state[T_STATUS] = OVERFLOW
                    return
                j = ib[t] + i - base
                rgs[j], preds[j] = rg, pred
                if rg < prev:
                    in_order = False
                prev = rg
        nj = ib[tb] - base
        if in_order:
            for j in range(nj):
                order[j] = j
        else:  # the reference's order: (ready time, round), then id
            _sort_by_key(rgs, order, tmp, count, nj)
        t = ta
        for jj in range(nj):
            j = order[jj]
            g = base + j
            t = task_in(ib, g, t, ta, tb)
            state[T_TASK] = t
            i = g - ib[t]
            rg = rgs[j]
            status, s_at, end, me, a, dc, dd = _grant(td, hwc, t, i, rg, preds[j], off, res,
                                                      sig, pc, cnt, scr, False)
            if status != OK:
                state[T_STATUS] = status
                return
            comm += dc
            deliv += dd
            if keep_ends:
                starts[g], ends[g] = s_at, end
            task_span(tacc, t, rg, s_at, end)
            # the finish: the first instance (in the reference's grant order) with the latest end
            if end > maxend or (end == maxend and (rg < last_rg or (rg == last_rg
                                                                     and g < last_g))):
                maxend, last_rg, last_g, last_s, last_a = end, rg, g, me, a
        state[T_NEXT] = grp + 1
        state[T_COMM], state[T_DELIV] = comm, deliv
        state[T_MAXEND], state[T_LAST_RG], state[T_LAST_G] = maxend, last_rg, last_g
        state[T_LAST_S], state[T_LAST_A] = last_s, last_a

def live_groups(tables, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) group in which each task's signal slots are live: its own group, up to
    the last group that reads them. A loop's task that tasks after the loop read is kept
    in every iteration up to the iteration's end: the fast-forward copies the last run
    iteration's slots to the skipped ones that are read after the loop (`fast_loops`)."""
    deps = tables.deps
    first = np.repeat(np.arange(len(groups) - 1, dtype=np.int64), np.diff(groups))
    last = first.copy()
    if len(deps):
        np.maximum.at(last, deps[:, D_TASK], first[deps[:, D_OWNER]])
    for lp in tables.loops:
        rows = tables.deps_on(lp.first, lp.end)
        rows = rows[rows[:, D_OWNER] >= lp.end]
        ends = first[lp.first + lp.size * np.arange(1, lp.count + 1) - 1]
        for j in np.unique((rows[:, D_TASK] - lp.first) % lp.size):
            ts = lp.first + lp.size * np.arange(lp.count) + j
            last[ts] = np.maximum(last[ts], ends)
    return first, last


def allocate(size: np.ndarray, first: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, int]:
    """(first row of every task's block, rows in all): a block of size[t] rows per task,
    live from group first[t] (nondecreasing) to last[t]. A block is free again for the tasks
    of the group after its last one; first fit over a coalesced free list, one-row blocks
    (tasks no one waits for core by core) from a stack of their own after the others."""
    n = len(size)
    row = np.empty(n, np.int64)
    by_last = np.argsort(last, kind="stable")
    starts: list[int] = []  # free blocks below `top`, by start, coalesced
    sizes: list[int] = []
    top = high = ones = 0
    free1: list[int] = []
    r = 0
    for t in range(n):
        g = first[t]
        while r < n and last[by_last[r]] < g:  # blocks no group from g on reads
            u = int(by_last[r])
            r += 1
            if size[u] == 1:
                free1.append(int(row[u]))
            else:
                top = _release(starts, sizes, int(row[u]), int(size[u]), top)
        k = int(size[t])
        if k == 1:
            if free1:
                row[t] = free1.pop()
            else:
                row[t], ones = ones, ones + 1
            continue
        for q in range(len(starts)):
            if sizes[q] >= k:
                row[t] = starts[q]
                starts[q] += k
                sizes[q] -= k
                if not sizes[q]:
                    del starts[q], sizes[q]
                break
        else:
            row[t], top = top, top + k
            high = max(high, top)
    row[size == 1] += high
    return row, high + ones


def _release(starts: list, sizes: list, at: int, k: int, top: int) -> int:
    """Free rows [at, at + k) into the free list (merged with its neighbours; the block
    that ends at `top` lowers it instead); the new top."""
    q = bisect.bisect(starts, at)
    if q < len(starts) and at + k == starts[q]:  # merge with the next
        k += sizes[q]
        del starts[q], sizes[q]
    if q and starts[q - 1] + sizes[q - 1] == at:  # ... and the previous
        q -= 1
        at, k = starts[q], sizes[q] + k
        del starts[q], sizes[q]
    if at + k == top:
        return at
    starts.insert(q, at)
    sizes.insert(q, k)
    return top


def store_plan(tables, groups: np.ndarray) -> tuple[int, np.ndarray]:
    """(rows of the signal store, per task: its block's first row less its first slot, so
    that slot s of task t lives in row s + off[t])."""
    td = tables.td
    if not len(td):
        return 1, np.zeros(0, np.int64)
    first, last = live_groups(tables, groups)
    row, rows = allocate(td[:, F_SA] + 1 - td[:, F_SB], first, last)
    return max(rows, 1), row - td[:, F_SB]


def ring_size(tables, groups: np.ndarray) -> int:
    """Signal rows the step path keeps at once (`store_plan`)."""
    return store_plan(tables, groups)[0]


def eligible(tables) -> bool:
    """Whether every dependency names an earlier task (the step path runs tasks in order)."""
    deps = tables.deps
    return not len(deps) or bool((deps[:, D_TASK] < deps[:, D_OWNER]).all())


BYTES_PER_CORE = 7 * 8 * (C_P0 + PIECES) + 8 + 4 * 16  # resources; busy; link maps
BYTES_PER_SLOT, BYTES_PER_TASK_CORE = 8 * (C_P0 + PIECES), 32


def plan(tables) -> tuple[np.ndarray, int, np.ndarray]:
    """(task groups, signal-store rows, per-task row offsets: `store_plan`) of a step run: a
    Python pass over the tasks, done once per program (the estimate and every try share it)."""
    groups = task_groups(tables)
    return (groups, *store_plan(tables, groups))


def estimate_bytes(tables, n_cores: int, spans: bool, planned=None) -> int:
    """Host memory of a step run, from the counts it is about to allocate."""
    groups, rows, _off = planned or plan(tables)
    biggest = int(np.diff(tables.ib[groups]).max()) if len(tables.td) else 0
    return (BYTES_PER_CORE * n_cores + BYTES_PER_SLOT * rows
            + BYTES_PER_TASK_CORE * biggest + (16 * tables.n_instances if spans else 0))


class StepRun:
    """The arrays of one step run; `run` returns the status (OK, or why to use events)."""

    def __init__(self, tables, n: int, keep_ends: bool, pieces: int = PIECES, planned=None):
        td = tables.td
        nt = len(td)
        self.groups, rows, self.off = planned or plan(tables)
        dense = tables.n_instances >= n  # a run that will touch most cores' rows
        self.res = mem.zeros((7 * n + 1, C_P0 + pieces))
        self.res[:, R_KEY] = -1
        self.sig = mem.zeros((rows, C_P0 + pieces))
        self.pc = np.empty(pieces, np.int64)
        self.busy = mem.zeros(n, dense=dense)
        self.lbytes = mem.zeros(4 * n if tables.link_bytes_apart else 0, dense=dense)  # else 4 x busy
        self.lbusy = mem.zeros(4 * n, dense=dense)
        self.tacc = np.zeros((nt, NA), np.int64)
        self.tacc[:, A_FIRST] = -1
        biggest = max(1, int(np.diff(tables.ib[self.groups]).max()) if nt else 1)
        self.tblk = np.zeros(1, np.int64)  # (the event path's; here `task_in` searches ib)
        self.rgs, self.preds, self.order, self.tmp = (np.empty(biggest, np.int64)
                                                      for _ in range(4))
        self.count = np.empty(RADIX, np.int64)
        nres = int(td[:, F_NRES].max()) if nt else 1
        nev = int(td[:, F_NEV].max()) if nt else 1
        self.rrid, self.roff, self.rlen = (np.empty(nres, np.int64) for _ in range(3))
        self.ex, self.ey, self.eoff = (np.empty(nev, np.int64) for _ in range(3))
        ni = tables.n_instances if keep_ends else 0
        self.start, self.ends = mem.empty(ni), mem.empty(ni)
        self.state = np.zeros(NT, np.int64)
        self.state[T_MAXEND] = -1
        # (loop watched, a fixed time counted), then the same for a loop inside it
        self.watch = np.array([-1, 0, -1, 0], np.int64)

    def run(self, tables, g1: int) -> int:
        """Run the task groups up to g1 (exclusive); the status."""
        run_steps(ProgramArrays(tables.td, tables.deps, tables.rdeps, tables.ib, self.tblk,
                                tables.hwc),
                  StepArrays(self.groups, self.off, self.res, self.sig, self.rgs, self.preds,
                             self.order, self.tmp, self.count, self.pc, self.start),
                  Counters(self.busy, self.lbytes, self.lbusy, self.tacc),
                  Scratch(self.rrid, self.roff, self.rlen, self.ex, self.ey, self.eoff),
                  self.ends, g1, self.state, self.watch)
        return int(self.state[T_STATUS])

    def critical_path(self) -> tuple[int, int, int]:
        """(cycles, compute, comm) of the run: the chain that ends at the finish."""
        cycles = int(self.state[T_MAXEND])
        if cycles < 0:
            return 0, 0, 0
        last_s, last_a = int(self.state[T_LAST_S]), int(self.state[T_LAST_A])
        compute = last_a + (cycles - (last_s >> 1) if last_s & 1 else 0)
        return cycles, compute, cycles - compute

    def release(self) -> None:
        for name in ("res", "sig", "rgs", "preds", "order", "tmp"):
            setattr(self, name, None)
