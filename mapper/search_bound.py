"""A provable lower bound on a program's simulated cycles, without simulating it
(`cycles_lower_bound`): what lets the search skip candidates that cannot win.

It follows a set of cores (`tracked_cores`) through the program in dependency order, keeping
for every task the earliest each followed core can see its event. Each task's work is done
on numpy arrays over the followed cores it touches (one task is a few array operations, not
a Python loop over its cores): a 2-D prefill of 37,501 records over 634 followed cores took
30 s as a loop per core, which was more than simulating it.
"""

from __future__ import annotations

import numpy as np

from wse_sim.program import (
    Compute,
    IoTransfer,
    LineStream,
    Multicast,
    Unicast,
    topological_order,
)
from wse_sim.timing import compute_cycles, io_cycles, reduce_pace, stream_beats


def _corners(r) -> list[tuple[int, int]]:
    return list(dict.fromkeys(((r.x, r.y), (r.x1, r.y), (r.x, r.y1), (r.x1, r.y1))))


def tracked_cores(program, max_cores: int = 4096) -> list[tuple[int, int]]:
    """The cores `cycles_lower_bound` follows: the corners of every task's region (and a
    multicast's source, a unicast's fixed destination) while there are at most `max_cores`
    of them, else the corners of the regions' bounding box."""
    cores: dict = {}
    for t in program.tasks:
        for c in _corners(t.region):
            cores[c] = None
        for c in (getattr(t, "src", None), getattr(t, "to", None)):
            if c is not None:
                cores[tuple(c)] = None
        if len(cores) > max_cores:
            x0 = min(t.region.x for t in program.tasks)
            y0 = min(t.region.y for t in program.tasks)
            x1 = max(t.region.x1 for t in program.tasks)
            y1 = max(t.region.y1 for t in program.tasks)
            return list(dict.fromkeys(((x0, y0), (x1, y0), (x0, y1), (x1, y1))))
    return list(cores)


class _Followed:
    """The followed cores (index i: core (x[i], y[i]); index n: no followed core) and every
    task's bounds at them: `idx[k]` the followed cores task k has an event at, `val[k]` the
    bounds there, `whole[k]` the bound on its last event."""

    def __init__(self, cores: list, n_tasks: int):
        self.n = len(cores)
        self.x = np.array([c[0] for c in cores], dtype=np.int64)
        self.y = np.array([c[1] for c in cores], dtype=np.int64)
        # the followed index by core over the followed cores' bounding box (n: not followed)
        self.x0, self.y0 = (int(self.x.min()), int(self.y.min())) if self.n else (0, 0)
        self.grid = np.full((int(self.x.max()) - self.x0 + 1 if self.n else 1,
                             int(self.y.max()) - self.y0 + 1 if self.n else 1), self.n, np.int64)
        self.grid[self.x - self.x0, self.y - self.y0] = np.arange(self.n)
        self.geometry: dict = {}  # `cached`: what a record's shape gives, worked out once
        self.idx: list = [None] * n_tasks
        self.val: list = [None] * n_tasks
        self.whole = [0] * n_tasks
        self.dense = np.zeros(self.n + 1, np.int64)   # scratch: a task's bounds, spread out
        self.out = np.zeros(self.n + 1, np.int64)     # scratch: the task being bounded
        self.touched = np.zeros(self.n + 1, bool)

    def cached(self, key, make):
        """make(), once per key (records of one shape repeat: loop iterations, GEMM steps)."""
        got = self.geometry.get(key)
        if got is None:
            got = self.geometry[key] = make()
        return got

    def at(self, core) -> int:
        """The followed index of one core, or n."""
        return int(self.lookup(np.array([core[0]]), np.array([core[1]]))[0])

    def lookup(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The followed index of each core (x[i], y[i]), or n where it is not followed."""
        gx, gy = np.asarray(x) - self.x0, np.asarray(y) - self.y0
        ok = (gx >= 0) & (gx < self.grid.shape[0]) & (gy >= 0) & (gy < self.grid.shape[1])
        out = np.full(len(gx), self.n, np.int64)
        out[ok] = self.grid[gx[ok], gy[ok]]
        return out

    def shifted(self, dx: int, dy: int) -> np.ndarray:
        """For every followed index (and n), the index of the core (dx, dy) from it."""
        return self.cached(("shift", dx, dy), lambda: np.append(
            self.lookup(self.x + dx, self.y + dy), self.n))

    def inside(self, reg) -> np.ndarray:
        """The followed indices in region `reg`."""
        return self.cached(reg, lambda: np.flatnonzero(
            (self.x >= reg.x) & (self.x <= reg.x1) & (self.y >= reg.y) & (self.y <= reg.y1)))

    def values(self, k: int, at: np.ndarray) -> np.ndarray:
        """Task k's bounds at the followed indices `at` (0 where it has none)."""
        idx = self.idx[k]
        self.dense[idx] = self.val[k]
        got = self.dense[at]
        self.dense[idx] = 0
        return got

    def need(self, t, anchors: np.ndarray) -> tuple[int, np.ndarray]:
        """Bound on the ready time of an instance waiting at each anchor (followed indices;
        n: none): (what every anchor waits for, what each one waits for besides)."""
        r, per = 0, np.zeros(len(anchors), np.int64)
        for d in t.deps:
            if d.head:
                continue
            if d.rule == "all":
                r = max(r, self.whole[d.task])
                continue
            if not len(self.idx[d.task]):  # (dependencies come first: topological order)
                continue
            if d.rule == "at":
                r = max(r, int(self.values(d.task, np.array([self.at((d.dx, d.dy))]))[0]))
                continue
            at = anchors if d.rule != "offset" else self.shifted(d.dx, d.dy)[anchors]
            np.maximum(per, self.values(d.task, at), out=per)
        return r, per

    def put(self, at: np.ndarray, v) -> None:
        """The task's event at followed indices `at` is at least `v`."""
        np.maximum.at(self.out, at, v)
        self.touched[at] = True

    def close(self, k: int, floor: int = 0) -> int:
        """Keep the task's bounds (the followed cores it reached); its last event's bound."""
        idx = np.flatnonzero(self.touched[:self.n])
        self.idx[k], self.val[k] = idx, self.out[idx].copy()
        self.whole[k] = max(floor, int(self.val[k].max()) if len(idx) else 0)
        self.out[idx] = 0
        self.touched[idx] = False  # (`put` never marks index n)
        return self.whole[k]


def cycles_lower_bound(program, hw, cores: list | None = None) -> int:
    """A lower bound on the cycles that either engine simulates for `program` on `hw`, from
    the timing rules alone (docs/hardware-model.md), without simulating. The largest of:

    - the I/O channel: it is one resource whose windows never overlap, so the run lasts at
      least the sum of every `IoTransfer`'s channel cycles (`timing.io_cycles`);
    - each followed core's compute unit: one task at a time, so at least the sum of its
      `Compute` tasks' cycles (each at the even split rounded down, never more than a core's
      share);
    - a contention-free chain over the followed cores (`tracked_cores`): an instance starts
      no earlier than its ready time, which is no earlier than every (non-head) dependency's
      event at each of its anchors (its core; a line reduce's every core; a line broadcast's
      and a multicast's source; an I/O's every core); each event comes at least its
      contention-free offset after the start (compute: its cycles; a broadcast: 2 T_R + j hops
      + beats - 1 + start + receive at the j-th core, the source T_R + beats - 1 + start; a
      chain reduce's j-th core j (2 T_R + hop + op) + ... + (beats - 1) pace; a multicast's
      Manhattan distance, as a unicast's destination; an I/O its channel cycles); contention
      only delays starts, detours only add hops, and the run's cycles are at least its last
      event. Several events at one core (a unicast's source that is another's destination):
      the core's signal is the latest, at least each bound. A dependency on a core not
      followed, or a head dependency (flow control), contributes 0.

    Every term is a lower bound of the simulated cycles, so a candidate whose bound exceeds
    a simulated cost cannot be cheaper (tests/test_search_speed.py checks bound <= cycles)."""
    if cores is None:
        cores = tracked_cores(program)
    f = _Followed(cores, len(program.tasks))
    io_total, best = 0, 0
    busy = np.zeros(f.n, np.int64)
    for k in topological_order(program):
        t = program.tasks[k]
        reg = t.region
        mine = f.inside(reg)
        floor = 0
        if isinstance(t, Compute):
            n = reg.size
            cyc = compute_cycles(hw, t.flops // n, t.dtype, t.kind, t.density_q20,
                                 t.sram_read_bytes // n, t.sram_write_bytes // n)
            r, per = f.need(t, mine)
            f.put(mine, np.maximum(per, r) + cyc)
            busy[mine] += cyc
        elif isinstance(t, IoTransfer):
            ch = io_cycles(hw, t.bytes)
            io_total += ch
            r, per = f.need(t, mine)
            floor = max(r, int(per.max()) if len(per) else 0) + ch \
                + (2 * hw.ramp_latency_cycles if t.direction == "in" else 0)
            f.put(mine, floor)
        elif isinstance(t, LineStream):
            f.put(mine, _line_events(f, t, mine, hw))
        elif isinstance(t, Multicast):
            _multicast(f, t, mine, hw)
        elif isinstance(t, Unicast):
            _unicast(f, t, mine, hw)
        best = max(best, f.close(k, floor))
    return max(best, io_total, int(busy.max()) if f.n else 0)


def _line_events(f: _Followed, t: LineStream, mine: np.ndarray, hw) -> np.ndarray:
    """The bound on a line stream's event at each followed core of its region."""
    tr, hop = hw.ramp_latency_cycles, hw.hop_latency_cycles
    send, recv = hw.message_start_cycles, hw.message_receive_cycles
    b = stream_beats(hw, t.wavelets)
    pace = reduce_pace(hw, t.dtype) if t.reduce else 1
    reg = t.region
    n = reg.cols if t.axis == "x" else reg.rows

    def shape():  # (each core's place in stream order, its line, the lines' first cores)
        x, y = f.x[mine], f.y[mine]
        along, across, lo = (x, y, reg.x) if t.axis == "x" else (y, x, reg.y)
        j = along - lo if t.direction > 0 else n - 1 - (along - lo)
        first = np.full_like(along, lo if t.direction > 0 else lo + n - 1)
        firsts = f.lookup(first, across) if t.axis == "x" else f.lookup(across, first)
        lines, which = np.unique(across, return_inverse=True)
        return j, which, len(lines), firsts

    j, which, lines, firsts = f.cached(("line", reg, t.axis, t.direction), shape)
    if t.reduce:  # waits at every followed core of its line
        r, per = f.need(t, mine)
        most = np.zeros(lines, np.int64)
        np.maximum.at(most, which, per)
        ready = np.maximum(most[which], r)
        stage = 2 * tr + hop + hw.stream_op_latency_cycles
        return ready + j * stage + np.where((j > 0) & (j < n - 1), tr, 0) + (b - 1) * pace \
            + send + np.where(j == 0, tr, 0) + np.where(j == n - 1, recv, 0)
    r, per = f.need(t, firsts)  # waits at its line's first core
    return np.maximum(per, r) + send + np.where(j == 0, tr + b - 1,
                                                2 * tr + j * hop + b - 1 + recv)


def _multicast(f: _Followed, t: Multicast, mine: np.ndarray, hw) -> None:
    tr, hop = hw.ramp_latency_cycles, hw.hop_latency_cycles
    send, recv = hw.message_start_cycles, hw.message_receive_cycles
    src = tuple(t.src)
    b = stream_beats(hw, t.wavelets)
    at = f.at(src)
    r, per = f.need(t, np.array([] if at == f.n else [at], np.int64))
    ready = max(r, int(per.max()) if len(per) else 0)
    if at < f.n:
        f.put(np.array([at]), ready + tr + b - 1 + send)

    def reach():  # (the followed cores it reaches besides its source, their distances)
        others = mine[mine != at]
        return others, np.abs(f.x[others] - src[0]) + np.abs(f.y[others] - src[1])

    others, h = f.cached(("multicast", t.region, src), reach)
    f.put(others, ready + 2 * tr + h * hop + b - 1 + send + recv)


def _unicast(f: _Followed, t: Unicast, mine: np.ndarray, hw) -> None:
    """Each followed core of the region sends to `t.dest(core)`: its event, and the
    destination's where that is followed (routes are at least the Manhattan distance)."""
    tr, hop = hw.ramp_latency_cycles, hw.hop_latency_cycles
    send, recv = hw.message_start_cycles, hw.message_receive_cycles
    b = stream_beats(hw, t.wavelets)
    r, per = f.need(t, mine)
    ready = np.maximum(per, r)
    f.put(mine, ready + tr + b - 1 + send)

    def dests():  # (followed destinations, which sources send to one, their distances)
        x, y = f.x[mine], f.y[mine]
        dx, dy = t.dest(x, y)
        dest = f.lookup(dx, dy)
        keep = dest < f.n
        return dest[keep], keep, (np.abs(dx - x) + np.abs(dy - y))[keep]

    to = tuple(t.to) if t.to is not None else None
    dest, keep, h = f.cached(("unicast", t.region, t.ring, t.dx, t.dy, to, t.wrap), dests)
    f.put(dest, ready[keep] + 2 * tr + h * hop + b - 1 + send + recv)
