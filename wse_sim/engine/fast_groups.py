"""The step path's task groups: runs of tasks granted as one, in key order.

A run of consecutive tasks none of which needs another of the run (the A and B shifts of a
GEMM step) is granted as one group, every instance in key order (ready time, round, id): two
tasks of a run may share a resource, which must see its reservations in that order. Where a
run splits into consecutive parts that share no resource (the rows of a GEMM's alignment:
each row's streams stay on its own links and ramps), each part is a group of its own. Every
resource then sees the same reservations in the same order, and so every start, end and
counter is the same; only the order in which the engine visits disjoint parts changes, to
one with better memory locality (one LLaMA3-8B 2-D prefill layer: its four activation
alignments take 11.6 s as one group each, see docs/hardware-model.md, "Task groups").
"""

from __future__ import annotations

import numpy as np

from wse_sim.engine.fast_tasks import (
    D_OWNER,
    D_TASK,
    F_KIND,
    F_RC,
    F_RR,
    F_RX,
    F_RY,
    F_S2C,
    F_S2R,
    F_S2X,
    F_S2Y,
    K_IO,
)

SPLIT_MIN_TASKS = 16     # shorter runs are not split (nothing to win)
SPLIT_MAX_TASKS = 4096   # longer runs are not split either (the pairwise test is quadratic)


def task_groups(tables, split_min: int | None = None) -> np.ndarray:
    """The first task of every group, then the number of tasks. A group is a run of
    consecutive tasks none of which needs another of its run, never across the start of a
    loop's iteration (the state between iterations must exist for the fast-forward), split
    where its parts share no resource (`disjoint_splits`)."""
    td, deps = tables.td, tables.deps
    if not len(td):
        return np.array([0], np.int64)
    latest = np.full(len(td), -1, np.int64)  # each task's latest need
    if len(deps):
        np.maximum.at(latest, deps[:, D_OWNER], deps[:, D_TASK])
    forced = np.zeros(len(td) + 1, bool)
    for lp in tables.loops:
        forced[lp.first:lp.end + 1:lp.size] = True
    firsts = [0]
    latest_l, forced_l = latest.tolist(), forced.tolist()
    for t in range(1, len(td)):
        if forced_l[t] or latest_l[t] >= firsts[-1]:
            firsts.append(t)
    lo = SPLIT_MIN_TASKS if split_min is None else split_min
    bounds = firsts + [len(td)]
    rects = None
    out = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        out.append(a)
        if lo <= b - a <= SPLIT_MAX_TASKS:
            rects = task_rects(td) if rects is None else rects
            out += [a + s for s in disjoint_splits(rects[a:b])]
    return np.array(out + [len(td)], np.int64)


def task_rects(td) -> np.ndarray:
    """Per task (x0, y0, x1, y1, io): the bounding box of the cores whose links, ramps and
    compute it may reserve (its region with its destinations or source: dimension-order
    routes stay inside), and 1 for a task on the I/O channel (one resource for all)."""
    x0, y0 = td[:, F_RX].copy(), td[:, F_RY].copy()
    x1, y1 = x0 + td[:, F_RC], y0 + td[:, F_RR]
    has = td[:, F_S2C] > 0
    sx, sy = td[:, F_S2X], td[:, F_S2Y]
    x0[has], y0[has] = np.minimum(x0, sx)[has], np.minimum(y0, sy)[has]
    x1[has] = np.maximum(x1, sx + td[:, F_S2C])[has]
    y1[has] = np.maximum(y1, sy + td[:, F_S2R])[has]
    return np.stack([x0, y0, x1, y1, (td[:, F_KIND] == K_IO).astype(np.int64)], 1)


def disjoint_splits(r: np.ndarray) -> list[int]:
    """Offsets s (0 < s < len(r)) where no task before s may share a resource with a task
    from s on (boxes overlap, or both use the I/O channel)."""
    n = len(r)
    ov = ((r[:, None, 0] < r[None, :, 2]) & (r[None, :, 0] < r[:, None, 2])
          & (r[:, None, 1] < r[None, :, 3]) & (r[None, :, 1] < r[:, None, 3]))
    ov |= (r[:, None, 4] & r[None, :, 4]).astype(bool)
    ov &= np.tri(n, k=-1, dtype=bool).T  # pairs i < j
    first = np.where(ov.any(0), ov.argmax(0), np.arange(n))  # earliest task j overlaps
    reach = np.minimum.accumulate(first[::-1])[::-1]  # over every task from s on
    return [s for s in range(1, n) if reach[s] >= s]
