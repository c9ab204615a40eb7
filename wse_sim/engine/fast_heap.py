"""A binary min-heap in three parallel arrays (key, id, payload), ordered by key then id: the
window path's ready instances and its tasks waiting to enter (`fast_window`)."""

from __future__ import annotations

from wse_sim.engine.fast_tasks import kernel


@kernel(inline=True)
def heap_push(hk, hg, hp, hn, rg, g, pred):
    """Add (rg, g) with its pred to the heap of hn entries (smallest key, then id, first)."""
    j = hn
    while j > 0:
        p = (j - 1) >> 1
        if hk[p] < rg or (hk[p] == rg and hg[p] < g):
            break
        hk[j], hg[j], hp[j] = hk[p], hg[p], hp[p]
        j = p
    hk[j], hg[j], hp[j] = rg, g, pred
    return hn + 1


@kernel(inline=True)
def heap_pop(hk, hg, hp, hn):
    """Remove the heap's first entry (the caller has read it); the new size."""
    hn -= 1
    rg, g, pred = hk[hn], hg[hn], hp[hn]
    j = 0
    while True:
        c = 2 * j + 1
        if c >= hn:
            break
        if c + 1 < hn and (hk[c + 1] < hk[c] or (hk[c + 1] == hk[c] and hg[c + 1] < hg[c])):
            c += 1
        if rg < hk[c] or (rg == hk[c] and g < hg[c]):
            break
        hk[j], hg[j], hp[j] = hk[c], hg[c], hp[c]
        j = c
    if hn > 0:
        hk[j], hg[j], hp[j] = rg, g, pred
    return hn
