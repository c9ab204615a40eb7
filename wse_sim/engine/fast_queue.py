"""The fast engine's ready queue and the ordering of a round.

Ready instances wait in a timing wheel: one FIFO list per cycle for the next W cycles, a
bitmap of the non-empty slots to find the next one; instances ready further on wait in a
radix queue (monotone: nothing becomes ready before the current cycle). Both are intrusive
lists: an instance is queued once, before it is granted, so the scheduler lends it its start
and blocker slots for its ready time and link. A round is every instance of the earliest
time, sorted by global id, i.e. (task, index): `queue_take` groups them by task (a signal
wakes one instance of each dependent task, so tasks come interleaved) and sorts each group
(merging runs, insertion sort, or heapsort: nothing allocates).
"""

from __future__ import annotations

import numpy as np

from wse_sim.engine.fast_tasks import kernel

TB = 10  # tblk[g >> TB]: the task holding instance id (g >> TB) << TB
NEVER = np.iinfo(np.int64).max
QUEUE_SLOTS = 260  # radix queue: 65 buckets x (head, tail, length, earliest time)


@kernel(inline=True)
def task_of(ib, tblk, g, t):
    """The task of instance id g (t: a guess, e.g. the previous instance's task)."""
    if ib[t] <= g < ib[t + 1]:
        return t
    t = tblk[g >> TB]
    while ib[t + 1] <= g:
        t += 1
    return t


@kernel(inline=True)
def task_in(ib, g, t, lo, hi):
    """The task of instance id g, one of tasks lo .. hi - 1 (t: a guess in that range, e.g.
    the previous instance's task): the guess or the task after it, else a binary search of
    ib (no table per instance block: the step and window paths' programs may count 10^11
    instances, loops' skipped iterations included)."""
    if ib[t] <= g < ib[t + 1]:
        return t
    if t + 1 < hi and ib[t + 1] <= g < ib[t + 2]:
        return t + 1
    a, b = lo, hi  # ib[a] <= g < ib[b]; the last task with ib <= g holds g (empty ones
    while b - a > 1:  # share their successor's ib)
        m = (a + b) >> 1
        if ib[m] <= g:
            a = m
        else:
            b = m
    return a


@kernel(inline=True)
def _bucket(t, last):
    """Radix-queue bucket of time t when the last time taken out was `last` (t >= last):
    0 for t == last, else the bit length of t ^ last (1 .. 64)."""
    x = t ^ last
    if x == 0:
        return 0
    n = 1
    if x >> 32:
        x >>= 32
        n += 32
    if x >> 16:
        x >>= 16
        n += 16
    if x >> 8:
        x >>= 8
        n += 8
    if x >> 4:
        x >>= 4
        n += 4
    if x >> 2:
        x >>= 2
        n += 2
    if x >> 1:
        n += 1
    return n


@kernel(inline=True)
def _radix_push(head, qtime, qnext, last, g, t):
    """Queue instance g, ready at t (>= last, the radix queue's last time taken out), in the
    radix queue: a FIFO list per bucket (heads in head[:65], tails in head[65:130], lengths
    in head[130:195], earliest times in head[195:260]), linked through qnext."""
    b = _bucket(t, last)
    qtime[g] = t
    qnext[g] = -1
    head[130 + b] += 1
    if t < head[195 + b]:
        head[195 + b] = t
    if head[b] < 0:
        head[b] = g
    else:
        qnext[head[65 + b]] = g
    head[65 + b] = g


@kernel(inline=True)
def queue_push(head, wheel, qtime, qnext, now, olast, g, t):
    """Queue instance g, ready at t >= now. Within the wheel's span of `now` (the usual
    case): a FIFO list in wheel slot t mod W (heads wheel[:W], tails [W:2W], lengths
    [2W:3W], a bitmap of non-empty slots [3W:3W + W/64], the total last); further on: the
    radix queue (`_radix_push`). An instance is queued once, so the scheduler lends it its
    start / blocker slots for its time / link."""
    w = (wheel.shape[0] - 1) * 64 // 193
    if t - now < w:
        s = t & (w - 1)
        qtime[g] = t
        qnext[g] = -1
        if wheel[s] < 0:
            wheel[s] = g
        else:
            qnext[wheel[w + s]] = g
        wheel[w + s] = g
        wheel[2 * w + s] += 1
        wheel[3 * w + (s >> 6)] |= np.int64(1) << (s & 63)
        wheel[wheel.shape[0] - 1] += 1
    else:
        _radix_push(head, qtime, qnext, olast, g, t)


@kernel(inline=True)
def _lowest_bit(x):
    """Index of the lowest set bit of x != 0."""
    b = x & -x
    n = 0
    if (b & 0x00000000FFFFFFFF) == 0:
        n += 32
    if (b & 0x0000FFFF0000FFFF) == 0:
        n += 16
    if (b & 0x00FF00FF00FF00FF) == 0:
        n += 8
    if (b & 0x0F0F0F0F0F0F0F0F) == 0:
        n += 4
    if (b & 0x3333333333333333) == 0:
        n += 2
    if (b & 0x5555555555555555) == 0:
        n += 1
    return n


@kernel
def wheel_next(wheel, now):
    """Earliest time in the wheel (every entry lies in [now, now + W)); NEVER if empty."""
    w = (wheel.shape[0] - 1) * 64 // 193
    if wheel[wheel.shape[0] - 1] == 0:
        return NEVER
    nw = w >> 6
    p = now & (w - 1)
    wi = p >> 6
    x = wheel[3 * w + wi] & (np.int64(-1) << (p & 63))
    for _ in range(nw + 1):
        if x != 0:
            s = (wi << 6) + _lowest_bit(x)
            return now + ((s - p) & (w - 1))
        wi = (wi + 1) & (nw - 1)
        x = wheel[3 * w + wi]
    return NEVER


@kernel
def radix_next(head):
    """Earliest time in the radix queue; NEVER if empty."""
    for b in range(65):
        if head[b] >= 0:
            return head[195 + b]
    return NEVER


@kernel
def queue_front(head, qtime, qnext, last):
    """Make bucket 0 of the radix queue hold every instance of its earliest time (radix-heap
    step: take the smallest non-empty bucket's minimum as the new time, redistribute that
    bucket). Returns that time."""
    if head[0] >= 0:
        return last
    b = 1
    while head[b] < 0:
        b += 1
    m = head[195 + b]
    g = head[b]
    head[b] = -1
    head[130 + b] = 0
    head[195 + b] = NEVER
    while g >= 0:
        nxt = qnext[g]
        _radix_push(head, qtime, qnext, m, g, qtime[g])
        g = nxt
    return m


@kernel
def queue_take(head, wheel, qnext, m, from_wheel, from_radix, batch, tmp, ib, tblk, tscr):
    """Move the round of time m (wheel slot m mod W and / or radix bucket 0) into `batch`,
    sorted by id, i.e. by (task, index); returns how many."""
    w = (wheel.shape[0] - 1) * 64 // 193
    n = 0
    runs = 1
    for part in range(2):
        if part == 0:
            if not from_wheel:
                continue
            s = m & (w - 1)
            g = wheel[s]
            wheel[wheel.shape[0] - 1] -= wheel[2 * w + s]
            wheel[s] = wheel[w + s] = -1
            wheel[2 * w + s] = 0
            wheel[3 * w + (s >> 6)] &= ~(np.int64(1) << (s & 63))
        else:
            if not from_radix:
                continue
            g = head[0]
            head[0] = -1
            head[130] = 0
            head[195] = NEVER
        while g >= 0:
            batch[n] = g
            if n and batch[n - 1] > g:
                runs += 1
            n += 1
            g = qnext[g]
    if runs > 1:
        _sort_batch(batch, tmp, n, ib, tblk, tscr)
    return n


@kernel
def _sort_batch(a, tmp, n, ib, tblk, tscr):
    """Sort a[:n] by id. A round's instances come as a few interleaved sequences, one per
    task, each mostly in order (a signal wakes one instance of every dependent task): group
    them by task (a stable counting sort over the tasks present), then sort each group.
    tscr: 4 slots per task, the first block all -1 between calls."""
    nt = ib.shape[0] - 1
    k = 0
    t = 0
    for j in range(n):
        g = a[j]
        t = task_of(ib, tblk, g, t)
        s = tscr[t]
        if s < 0:
            s = k
            tscr[t] = k
            tscr[nt + k] = t
            tscr[2 * nt + k] = 0
            k += 1
        tscr[2 * nt + s] += 1
    if k > 1:
        for j in range(1, k):  # the tasks present, ascending (usually a handful)
            v = tscr[nt + j]
            i = j - 1
            while i >= 0 and tscr[nt + i] > v:
                tscr[nt + i + 1] = tscr[nt + i]
                i -= 1
            tscr[nt + i + 1] = v
        pos = 0
        for j in range(k):  # offsets, by slot
            s = tscr[tscr[nt + j]]
            tscr[3 * nt + s] = pos
            pos += tscr[2 * nt + s]
        for j in range(n):
            g = a[j]
            t = task_of(ib, tblk, g, t)
            s = tscr[t]
            tmp[tscr[3 * nt + s]] = g
            tscr[3 * nt + s] += 1
        for j in range(n):
            a[j] = tmp[j]
    lo = 0
    for j in range(k):
        t = tscr[nt + j]
        hi = lo + tscr[2 * nt + tscr[t]]
        runs = 1
        for i in range(lo + 1, hi):
            if a[i - 1] > a[i]:
                runs += 1
        if runs > 1:
            _sort_runs(a[lo:hi], tmp[lo:hi], hi - lo, runs)
        lo = hi
    for j in range(k):
        tscr[tscr[nt + j]] = -1


@kernel
def _sort_runs(a, tmp, n, runs):
    """Sort a[:n], made of `runs` ascending runs (instances are woken in a few ordered
    sweeps): merge neighbouring runs pairwise until one is left when they are few; insertion
    sort when many but each only a little out of place; else heapsort."""
    if runs > 8:  # a few elements out of place (e.g. each row's first core woken last)?
        budget = 32 * n
        for k in range(1, n):
            v = a[k]
            j = k - 1
            while j >= 0 and a[j] > v:
                a[j + 1] = a[j]
                j -= 1
            a[j + 1] = v
            budget -= k - 1 - j
            if budget < 0:
                _heapsort(a, n)
                return
        return
    src, dst = a, tmp
    flipped = False
    while True:
        i = k = 0
        merged = 0
        while i < n:
            j = i + 1
            while j < n and src[j - 1] <= src[j]:
                j += 1
            e = j + 1 if j < n else n
            while e < n and src[e - 1] <= src[e]:
                e += 1
            p, q = i, j
            while p < j and q < e:
                if src[p] <= src[q]:
                    dst[k] = src[p]
                    p += 1
                else:
                    dst[k] = src[q]
                    q += 1
                k += 1
            while p < j:
                dst[k] = src[p]
                p += 1
                k += 1
            while q < e:
                dst[k] = src[q]
                q += 1
                k += 1
            merged += 1
            i = e
        src, dst = dst, src
        flipped = not flipped
        if merged == 1:
            break
    if flipped:
        for k in range(n):
            a[k] = tmp[k]


@kernel
def _heapsort(a, n):
    """In-place heapsort of a[:n] (no allocation: the scheduler runs without numba's NRT)."""
    for start in range(n // 2 - 1, -1, -1):
        _sift(a, start, n)
    for end in range(n - 1, 0, -1):
        a[0], a[end] = a[end], a[0]
        _sift(a, 0, end)


@kernel
def _sift(a, j, n):
    v = a[j]
    while True:
        c = 2 * j + 1
        if c >= n:
            break
        if c + 1 < n and a[c + 1] > a[c]:
            c += 1
        if a[c] <= v:
            break
        a[j] = a[c]
        j = c
    a[j] = v
