"""Rows of the window path's signal store, given out and taken back while it runs: first fit
over a free list sorted by row (neighbours merged; a block that ends at the top lowers it).

`fm` holds [free blocks, top (rows in use below it), rows in all]; `fs`, `fz` the free
blocks' first rows and sizes. The step path plans the same store once per program
(`fast_step.allocate`, in Python): its groups run in task order. The window path's tasks
leave the window in an order known only as it runs, so it allocates as it goes.
"""

from __future__ import annotations

from wse_sim.engine.fast_tasks import kernel


@kernel(inline=True)
def rows_take(fs, fz, fm, k):
    """The first row of k free rows (first fit, else above the top), or -1 when the store
    has no room (the caller grows it)."""
    nf = fm[0]
    for q in range(nf):
        if fz[q] >= k:
            at = fs[q]
            fs[q] += k
            fz[q] -= k
            if fz[q] == 0:
                for r in range(q, nf - 1):
                    fs[r], fz[r] = fs[r + 1], fz[r + 1]
                fm[0] = nf - 1
            return at
    if fm[1] + k <= fm[2]:
        at = fm[1]
        fm[1] += k
        return at
    return -1


@kernel(inline=True)
def rows_give(fs, fz, fm, at, k):
    """Rows [at, at + k) free again. False when the free list has no room for one more
    block (the caller grows it and gives them again)."""
    nf = fm[0]
    lo, hi = 0, nf
    while lo < hi:  # the first block above `at`
        mid = (lo + hi) >> 1
        if fs[mid] < at:
            lo = mid + 1
        else:
            hi = mid
    q = lo
    if q < nf and at + k == fs[q]:  # merge with the next
        k += fz[q]
        for r in range(q, nf - 1):
            fs[r], fz[r] = fs[r + 1], fz[r + 1]
        nf -= 1
    if q > 0 and fs[q - 1] + fz[q - 1] == at:  # ... and the previous
        q -= 1
        at, k = fs[q], fz[q] + k
        for r in range(q, nf - 1):
            fs[r], fz[r] = fs[r + 1], fz[r + 1]
        nf -= 1
    if at + k == fm[1]:  # the top comes down, past a free block that now ends there
        fm[1] = at
        while nf > 0 and fs[nf - 1] + fz[nf - 1] == fm[1]:
            fm[1] = fs[nf - 1]
            nf -= 1
        fm[0] = nf
        return True
    if nf >= fs.shape[0]:
        fm[0] = nf
        return False
    for r in range(nf, q, -1):
        fs[r], fz[r] = fs[r - 1], fz[r - 1]
    fs[q], fz[q] = at, k
    fm[0] = nf + 1
    return True
