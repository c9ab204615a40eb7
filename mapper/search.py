"""Choose a mapping by simulated cost.

The mapper never runs the engine itself (imports point the other way), so the caller passes
`evaluate(candidate) -> cost` in seconds per token (the front door simulates). Candidates that
do not fit are skipped with the reason; the cheapest candidate wins, ties broken by the
candidate order. `grid_options` is the set of grid sizes the front door's search tries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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


@dataclass
class SearchResult:
    """The winner and every candidate's outcome (cost, or the reason it was rejected)."""

    best: dict | None
    best_cost: float | None
    tried: list = field(default_factory=list)
    left_out: int = 0  # candidates beyond the budget, not tried

    def explain(self) -> str:
        lines = []
        if self.left_out:
            lines.append(f"  {self.left_out} more candidates not tried: beyond --budget")
        for cand, cost, why in self.tried:
            tag = "best" if cand is self.best else ("" if cost is not None else
                                                    "pruned" if pruned(why) else "rejected")
            shown = f"{cost * 1e6:,.4f} µs/token" if cost is not None else why
            lines.append(f"  {tag:8} {_fmt(cand):60} {shown}")
        return "\n".join(lines)

    def absorb(self, other: SearchResult) -> None:
        """Add the outcomes of a further search; its winner wins if it is cheaper."""
        self.tried += other.tried
        self.left_out += other.left_out
        if other.best is not None and (self.best_cost is None or
                                       other.best_cost < self.best_cost):
            self.best, self.best_cost = other.best, other.best_cost

    def rivals(self, key: str) -> list[tuple]:
        """The tried (candidate, cost, reason) that differ from the winner only in `key` (e.g.
        the other reduce algorithms on the same mapping)."""
        if self.best is None:
            return []
        return [(c, cost, why) for c, cost, why in self.tried
                if c is not self.best and c.get(key) != self.best.get(key)
                and all(v == self.best.get(k) for k, v in c.items() if k != key)]

    def why(self, key: str) -> str:
        """One line: the winner's `key` against the other values tried on the same mapping."""
        if self.best is None:
            return "nothing fits"
        mine, parts = self.best.get(key), []
        for cand, cost, why in self.rivals(key):
            if cost is None:
                parts.append(f"{cand[key]} {'' if pruned(why) else 'rejected '}({why})")
            else:
                extra = 100 * (cost - self.best_cost) / self.best_cost if self.best_cost else 0.0
                more = "tie" if cost <= self.best_cost else f"+{extra:.1f} %"
                parts.append(f"{cand[key]} {cost * 1e6:.4g} µs/token ({more})")
        if not parts:
            return f"{mine}: the only {key} tried on this mapping"
        return (f"{mine}: the least time per token on this mapping, "
                f"{self.best_cost * 1e6:.4g} µs/token vs " + ", ".join(parts))


def pruned(why: str) -> bool:
    """Whether a tried candidate's reason says it was pruned by its lower bound (`search`)."""
    return why.startswith("pruned:")


GRID_MIN_SIDE = 4  # the smallest grid side (cores) a search tries


def grid_options(mesh_cols: int, mesh_rows: int) -> tuple:
    """The grid sizes a search tries: the whole mesh (None) first, then square grids whose side
    is a power of two from GRID_MIN_SIDE up to below the mesh's shorter side, largest first
    (wse2, 750 x 994: None, 512, 256, ..., 4). A grid too small for the model is rejected by
    the strategy's own budget check, with its reason."""
    sides, side = [], GRID_MIN_SIDE
    while side < min(mesh_cols, mesh_rows):
        sides.append(side)
        side *= 2
    return (None, *reversed(sides))


def _fmt(c: dict) -> str:
    return " ".join(f"{k}={'mesh' if k == 'grid' and v is None else v}" for k, v in c.items())


def search(candidates: Iterable[dict], evaluate: Callable[[dict], float], *, budget: int = 64,
           progress: bool = False, bound: Callable[[dict], float] | None = None,
           prune_above: float | None = None) -> SearchResult:
    """Evaluate up to `budget` candidates (the count of the rest is `left_out`, and `explain`
    says it); errors of kind ValueError/NotImplementedError mark a candidate as not fitting
    (kept with its one-line reason).

    `bound(candidate)`: a lower bound of the cost `evaluate` would give (e.g. from
    `cycles_lower_bound`), computed for every candidate first (its errors reject it as
    `evaluate`'s would). Candidates are then evaluated by increasing bound, and one whose bound
    is above the best cost so far (or above `prune_above`, the best of an enclosing search)
    is not evaluated (`tried` says "pruned" with both figures): it cannot win, so the winner
    is the one an exhaustive search picks (the least cost, ties to the earlier candidate).
    `tried` keeps the candidates' order either way."""
    cands = list(candidates)
    left_out = max(0, len(cands) - budget)
    cands = cands[:budget]
    outcomes: list = [None] * len(cands)
    bounds: dict = {}
    if bound is not None:
        for i, cand in enumerate(cands):
            try:
                bounds[i] = float(bound(cand))
            except (ValueError, NotImplementedError) as e:
                outcomes[i] = (cand, None, str(e).splitlines()[0][:160])
        order = sorted(bounds, key=lambda i: (bounds[i], i))
    else:
        order = list(range(len(cands)))
    it = order
    if progress:
        from tqdm import tqdm
        it = tqdm(order, desc="search", unit="mapping", leave=False, disable=None)  # tty only
    out = SearchResult(None, None, left_out=left_out)
    best_i = None
    for i in it:
        cand = cands[i]
        cut = min(c for c in (out.best_cost, prune_above, math.inf) if c is not None)
        if i in bounds and bounds[i] > cut:
            outcomes[i] = (cand, None, f"pruned: lower bound {bounds[i] * 1e6:,.4f} µs/token > "
                                       f"best {cut * 1e6:,.4f} µs/token")
            continue
        try:
            cost = float(evaluate(cand))
        except (ValueError, NotImplementedError) as e:
            outcomes[i] = (cand, None, str(e).splitlines()[0][:160])
            continue
        outcomes[i] = (cand, cost, "")
        if out.best_cost is None or cost < out.best_cost or (cost == out.best_cost
                                                             and i < best_i):
            out.best, out.best_cost, best_i = cand, cost, i
    out.tried = [o for o in outcomes if o is not None]
    return out

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
    followed = set(cores)
    tr, hop = hw.ramp_latency_cycles, hw.hop_latency_cycles
    send, recv = hw.message_start_cycles, hw.message_receive_cycles
    stage = 2 * tr + hop + hw.stream_op_latency_cycles
    tasks = program.tasks
    lb: list[dict] = [{} for _ in tasks]  # task -> {followed core: event time bound}
    whole = [0] * len(tasks)              # task -> bound on its last event
    io_total, busy, best = 0, dict.fromkeys(cores, 0), 0

    def need(t, anchors) -> int:
        """Bound on the ready time of an instance waiting at `anchors` (followed cores)."""
        r = 0
        for d in t.deps:
            if d.head:
                continue
            if d.rule == "all":
                r = max(r, whole[d.task])
                continue
            got = lb[d.task]
            if not got:
                continue
            if d.rule == "at":
                r = max(r, got.get((d.dx, d.dy), 0))
                continue
            dx, dy = (d.dx, d.dy) if d.rule == "offset" else (0, 0)
            for x, y in anchors:
                v = got.get((x + dx, y + dy), 0)
                if v > r:
                    r = v
        return r

    cx = np.array([c[0] for c in cores], dtype=np.int64)
    cy = np.array([c[1] for c in cores], dtype=np.int64)
    for k in topological_order(program):
        t, out = tasks[k], lb[k]
        reg = t.region
        inside = np.flatnonzero((cx >= reg.x) & (cx <= reg.x1) & (cy >= reg.y) & (cy <= reg.y1))
        mine = [cores[i] for i in inside]
        if isinstance(t, Compute):
            n = reg.size
            cyc = compute_cycles(hw, t.flops // n, t.dtype, t.kind, t.density_q20,
                                 t.sram_read_bytes // n, t.sram_write_bytes // n)
            for c in mine:
                out[c] = need(t, [c]) + cyc
                busy[c] += cyc
        elif isinstance(t, IoTransfer):
            ch = io_cycles(hw, t.bytes)
            io_total += ch
            at = need(t, mine) + ch + (2 * tr if t.direction == "in" else 0)
            for c in mine:
                out[c] = at
            whole[k] = at
        elif isinstance(t, LineStream):
            b = stream_beats(hw, t.wavelets)
            pace = reduce_pace(hw, t.dtype) if t.reduce else 1
            along = 0 if t.axis == "x" else 1
            lo, n = (reg.x, reg.cols) if t.axis == "x" else (reg.y, reg.rows)
            lines: dict = {}
            for c in mine:
                lines.setdefault(c[1 - along], []).append(c)
            for c in mine:
                pos = c[along] - lo
                j = pos if t.direction > 0 else n - 1 - pos  # its place in stream order
                if t.reduce:  # waits at every core of its line
                    ready = need(t, lines[c[1 - along]])
                    off = j * stage + (tr if 0 < j < n - 1 else 0) + (b - 1) * pace + send \
                        + (tr if j == 0 else 0) + (recv if j == n - 1 else 0)
                else:  # waits at the line's first core
                    first = list(c)
                    first[along] = lo if t.direction > 0 else lo + n - 1
                    first = tuple(first)
                    ready = need(t, [first] if first in followed else [])
                    off = send + (tr + b - 1 if j == 0 else 2 * tr + j * hop + b - 1 + recv)
                out[c] = ready + off
        elif isinstance(t, Multicast):
            src = tuple(t.src)
            b = stream_beats(hw, t.wavelets)
            ready = need(t, [src] if src in followed else [])
            if src in followed:
                out[src] = ready + tr + b - 1 + send
            for c in mine:
                if c != src:
                    h = abs(c[0] - src[0]) + abs(c[1] - src[1])
                    out[c] = max(out.get(c, 0), ready + 2 * tr + h * hop + b - 1 + send + recv)
        elif isinstance(t, Unicast):  # each core of the region sends to t.dest(core)
            b = stream_beats(hw, t.wavelets)
            for c in mine:
                ready = need(t, [c])
                out[c] = max(out.get(c, 0), ready + tr + b - 1 + send)
                d = tuple(t.dest(*c))
                if d in followed:  # routes are at least the Manhattan distance long
                    h = abs(d[0] - c[0]) + abs(d[1] - c[1])
                    out[d] = max(out.get(d, 0), ready + 2 * tr + h * hop + b - 1 + send + recv)
        if out:
            whole[k] = max(whole[k], max(out.values()))
        best = max(best, whole[k])
    return max(best, io_total, max(busy.values(), default=0))
