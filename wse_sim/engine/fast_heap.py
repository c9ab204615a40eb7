"""A binary min-heap of (key, id, payload) rows of one int64 array, ordered by key then id:
the window path's ready instances and its records waiting to enter (`fast_window`). One row
per entry: a level of the heap costs one cache line, not three."""

from __future__ import annotations

from wse_sim.engine.fast_tasks import kernel


@kernel(inline=True)
def heap_push(h, hn, key, g, pay):
    """Add (key, g, pay) to the heap h of hn entries; the new size."""
    j = hn
    while j > 0:
        p = (j - 1) >> 1
        if h[p, 0] < key or (h[p, 0] == key and h[p, 1] < g):
            break
        h[j, 0], h[j, 1], h[j, 2] = h[p, 0], h[p, 1], h[p, 2]
        j = p
    h[j, 0], h[j, 1], h[j, 2] = key, g, pay
    return hn + 1


@kernel(inline=True)
def heap_pop(h, hn):
    """Remove the heap's first entry (the caller has read it); the new size."""
    hn -= 1
    key, g, pay = h[hn, 0], h[hn, 1], h[hn, 2]
    j = 0
    while True:
        c = 2 * j + 1
        if c >= hn:
            break
        if c + 1 < hn and (h[c + 1, 0] < h[c, 0] or (h[c + 1, 0] == h[c, 0]
                                                      and h[c + 1, 1] < h[c, 1])):
            c += 1
        if key < h[c, 0] or (key == h[c, 0] and g < h[c, 1]):
            break
        h[j, 0], h[j, 1], h[j, 2] = h[c, 0], h[c, 1], h[c, 2]
        j = c
    if hn > 0:
        h[j, 0], h[j, 1], h[j, 2] = key, g, pay
    return hn
