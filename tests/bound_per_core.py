"""The oracle of `mapper.search_bound.cycles_lower_bound`: the same rules written as a loop
over the followed cores of every task, with a dict per task (the implementation until
session 19, which numpy replaced: tests/test_search_bound.py checks they agree to the cycle,
benchmarks/bench_bound.py times both)."""

from __future__ import annotations

import numpy as np

from wse_sim.program import Compute, IoTransfer, LineStream, Multicast, Unicast, topological_order
from wse_sim.timing import compute_cycles, io_cycles, reduce_pace, stream_beats


def per_core_bound(program, hw, cores: list) -> int:
    """`cycles_lower_bound` of `cores`, one core at a time."""
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
