"""The reference engine: the Program executed with SimPy, written to be read, not to be fast.

Every task of the program becomes instances (one per core for a compute, one per source core
for a unicast, one per line for a line stream, one per multicast). An instance waits, as a
SimPy process, until every event it depends on has happened; then it asks the arbiter for its
resources. The arbiter grants the requests of one cycle together, in order of (task, instance)
id, after every other event of that cycle (SimPy priority 2), so runs are deterministic.

A granted instance reserves each of its resources (links, ramps, core compute) for a window
at a fixed offset from its start S: the stream is a pipeline, so link k of a route is busy
from S + T_R + k * hop for (beats x pace) cycles, a beat being the wavelets a link carries
in one cycle (`link_bits_per_cycle / 32`). S is the earliest cycle >= the ready time at which
every window is free (each resource is free after its last reservation). See
docs/hardware-model.md for the exact rules; `engine.fast` implements the same ones.
"""

from __future__ import annotations

import gc
import time

import numpy as np
import simpy

from wse_sim.defects import check_repairable
from wse_sim.engine.common import (
    EngineResultBuilder,
    Hops,
    deps_needed,
    ensure_acyclic,
    head_needs,
)
from wse_sim.fabric import Mesh, line_hops, multicast_tree, xy_route
from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.program import (
    Compute,
    IoTransfer,
    LineStream,
    Multicast,
    Program,
    Unicast,
    check_fits,
)
from wse_sim.timing import (
    compute_cycles,
    executed_flops,
    io_cycles,
    reduce_pace,
    split_evenly,
    stream_beats,
)

GRANT_PRIORITY = 2  # after SimPy's URGENT (0) and NORMAL (1): every same-cycle event first


class Instance:
    """One task's work at one place: what it waits for, what it reserves, when it signals."""

    __slots__ = ("task", "index", "needs", "heads", "res", "events", "flops", "exec_flops",
                 "sram_bytes", "core", "stream_flops", "dtype", "wavelets", "io_bytes")

    def __init__(self, task: int, index: int):
        self.task, self.index = task, index
        self.needs: list = []      # (dep task, core id or -1 for the whole task)
        self.heads: list = []      # ((dep task, core id), lead): head dependencies
        self.res: list = []        # (resource id, offset, length)
        self.events: list = []     # (core id, offset): when this instance is done at that core
        self.flops = self.exec_flops = self.sram_bytes = self.stream_flops = 0
        self.core = -1
        self.dtype = "fp32"
        self.wavelets = 0
        self.io_bytes = 0


def expand(program: Program, hw: HardwareConfig, mesh: Mesh) -> list[list[Instance]]:
    """Turn every task record into its instances, routes resolved hop by hop."""
    tr, hop = hw.ramp_latency_cycles, hw.hop_latency_cycles
    hops = Hops(hw)
    out = []
    for ti, t in enumerate(program.tasks):
        insts = []
        if isinstance(t, Compute):
            n = t.region.size
            q = t.density_q20
            for rank, (x, y) in enumerate(t.region.cells()):
                c = mesh.core(x, y)
                inst = Instance(ti, rank)
                f = split_evenly(t.flops, n, rank)
                rd = split_evenly(t.sram_read_bytes, n, rank)
                wr = split_evenly(t.sram_write_bytes, n, rank)
                cyc = compute_cycles(hw, f, t.dtype, t.kind, q if t.kind == "fmac" else 1 << 20,
                                     rd, wr)
                inst.core, inst.flops, inst.sram_bytes, inst.dtype = c, f, rd + wr, t.dtype
                inst.exec_flops = executed_flops(f, q) if t.kind == "fmac" else f
                inst.needs = deps_needed(t, x, y, mesh)
                inst.res.append((mesh.compute(c), 0, cyc))
                inst.events.append((c, cyc))
                insts.append(inst)
        elif isinstance(t, Unicast):
            b = stream_beats(hw, t.wavelets)
            for rank, (x, y) in enumerate(t.region.cells()):
                tx, ty = t.dest(x, y)
                inst = Instance(ti, rank)
                inst.wavelets = t.wavelets
                inst.needs = deps_needed(t, x, y, mesh)
                route = xy_route(x, y, tx, ty)
                src, dst = mesh.core(x, y), mesh.core(tx, ty)
                inst.core = src
                inst.res.append((mesh.ramp_on(src), 0, b))
                for hx, hy, d in route:  # link k after the physical hops before it
                    inst.res.append((mesh.link(hx, hy, d), tr + hops.route(x, y, hx, hy) * hop, b))
                h = hops.route(x, y, tx, ty)
                inst.res.append((mesh.ramp_off(dst), tr + h * hop, b))
                inst.events.append((src, tr + b - 1))
                inst.events.append((dst, 2 * tr + h * hop + b - 1))
                insts.append(inst)
        elif isinstance(t, Multicast):
            b = stream_beats(hw, t.wavelets)
            sx, sy = t.src
            inst = Instance(ti, 0)
            inst.wavelets = t.wavelets
            inst.needs = deps_needed(t, sx, sy, mesh)
            links, dests = multicast_tree(sx, sy, t.region.x, t.region.y, t.region.cols,
                                          t.region.rows)
            src = mesh.core(sx, sy)
            inst.core = src
            inst.res.append((mesh.ramp_on(src), 0, b))
            for hx, hy, d, _depth in links:  # the tree's depth in physical hops
                inst.res.append((mesh.link(hx, hy, d), tr + hops.route(sx, sy, hx, hy) * hop, b))
            inst.events.append((src, tr + b - 1))
            for dx, dy, _h in dests:
                h = hops.route(sx, sy, dx, dy)
                inst.res.append((mesh.ramp_off(mesh.core(dx, dy)), tr + h * hop, b))
                inst.events.append((mesh.core(dx, dy), 2 * tr + h * hop + b - 1))
            insts.append(inst)
        elif isinstance(t, IoTransfer):
            insts.append(_io_instance(t, ti, hw, mesh, hops))
        elif isinstance(t, LineStream):
            for rank, line in enumerate(t.lines()):
                insts.append(_line_instance(t, ti, rank, line, hw, mesh, hops))
        if isinstance(t, Unicast | Multicast | LineStream):
            for inst in insts:
                _message_costs(inst, hw, root_only=isinstance(t, LineStream) and t.reduce)
                inst.heads = head_needs(t, inst.events, stream_beats(hw, t.wavelets),
                                        hw.message_receive_cycles, mesh)
        out.append(insts)
    return out


def _message_costs(inst: Instance, hw: HardwareConfig, root_only: bool) -> None:
    """The cores' own costs of a message: every window and event `message_start_cycles` late
    (the source starting it), each receiver's event `message_receive_cycles` later still.
    Event 0 is the source's; of a reduce, only the last event (the root's) is a receipt."""
    s, r = hw.message_start_cycles, hw.message_receive_cycles
    inst.res = [(rid, off + s, length) for rid, off, length in inst.res]
    last = len(inst.events) - 1
    inst.events = [(core, off + s + (r if (k == last if root_only else k > 0) else 0))
                   for k, (core, off) in enumerate(inst.events)]


def _io_instance(t: IoTransfer, ti: int, hw, mesh, hops: Hops) -> Instance:
    """The I/O channel busy for the bytes; 'in' reaches core (x, y) of the region after the
    channel time, the ramps and x hops from the west edge (its physical column, with defects);
    'out' has left at the channel end."""
    tr, hop = hw.ramp_latency_cycles, hw.hop_latency_cycles
    cyc = io_cycles(hw, t.bytes)
    inst = Instance(ti, 0)
    r = t.region
    inst.core = mesh.core(r.x, r.y)
    inst.io_bytes = t.bytes
    for x, y in r.cells():
        inst.needs.extend(deps_needed(t, x, y, mesh))
        at = cyc + 2 * tr + hops.io_col(x, y) * hop if t.direction == "in" else cyc
        inst.events.append((mesh.core(x, y), at))
    inst.res.append((mesh.io, 0, cyc))
    return inst


def _line_instance(t: LineStream, ti: int, rank: int, line, hw, mesh, hops: Hops) -> Instance:
    """A broadcast or a reduce running along one line of cores; `lh[k]`: physical hops from
    the first core to the k-th (k with no detour)."""
    tr, hop, op = hw.ramp_latency_cycles, hw.hop_latency_cycles, hw.stream_op_latency_cycles
    b = stream_beats(hw, t.wavelets)
    inst = Instance(ti, rank)
    inst.wavelets = t.wavelets
    x0, y0 = line[0]
    cores = [mesh.core(x, y) for x, y in line]
    inst.core = cores[0]
    links = line_hops(x0, y0, t.axis, t.direction, len(line) - 1)
    lh = [hops.line(x0, y0, t.axis, t.direction, k) for k in range(len(line))]
    if not t.reduce:
        inst.needs = deps_needed(t, x0, y0, mesh)
        inst.res.append((mesh.ramp_on(cores[0]), 0, b))
        inst.events.append((cores[0], tr + b - 1))
        for k, (hx, hy, d) in enumerate(links):
            inst.res.append((mesh.link(hx, hy, d), tr + lh[k] * hop, b))
            inst.res.append((mesh.ramp_off(cores[k + 1]), tr + lh[k + 1] * hop, b))
            inst.events.append((cores[k + 1], 2 * tr + lh[k + 1] * hop + b - 1))
        return inst
    pace = reduce_pace(hw, t.dtype)
    length = b * pace
    values = t.wavelets * (4 // DTYPE_BYTES[t.dtype])
    for x, y in line:
        inst.needs.extend(deps_needed(t, x, y, mesh))
    stage = 2 * tr + hop + op
    inst.res.append((mesh.ramp_on(cores[0]), 0, length))
    inst.events.append((cores[0], tr + (b - 1) * pace))
    last = len(line) - 1
    for i in range(1, len(line)):  # stage i starts at (i - 1) stages and the detours before
        s_prev = (i - 1) * stage + (lh[i - 1] - (i - 1)) * hop
        s_i = i * stage + (lh[i] - i) * hop
        link = (lh[i] - lh[i - 1]) * hop  # one hop, and this link's detour
        hx, hy, d = links[i - 1]
        inst.res.append((mesh.link(hx, hy, d), s_prev + tr, length))
        inst.res.append((mesh.ramp_off(cores[i]), s_prev + tr + link, length))
        inst.res.append((mesh.compute(cores[i]), s_prev + 2 * tr + link, length))
        inst.stream_flops += values
        if i < last:
            inst.res.append((mesh.ramp_on(cores[i]), s_i, length))
            inst.events.append((cores[i], s_i + tr + (b - 1) * pace))
        else:
            inst.events.append((cores[i], s_i + (b - 1) * pace))
    inst.dtype = t.dtype
    return inst


def simulate_reference(program: Program, hw: HardwareConfig) -> object:
    """Run `program` on `hw` with SimPy; returns a `SimResult`."""
    maps = check_fits(program, hw)
    check_repairable(program, hw)
    ensure_acyclic(program)
    mesh = Mesh(hw.mesh_cols, hw.mesh_rows)
    instances = expand(program, hw, mesh)
    builder = EngineResultBuilder(program, hw, mesh, instances, "reference")
    builder.check_dependencies()
    t0 = time.perf_counter()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        _run(program, instances, mesh, builder)
    finally:
        if gc_was:
            gc.enable()
    wall = time.perf_counter() - t0
    return builder.result(maps, wall)


def _run(program: Program, instances, mesh: Mesh, builder: EngineResultBuilder) -> None:
    env = simpy.Environment()
    free = np.zeros(mesh.n_resources, dtype=np.int64)
    owner: dict[int, tuple] = {}
    # One SimPy event per (task, core) signal and per whole task; each fires at the latest of
    # its contributing instances' times, once all of them have been granted.
    signal = {}
    pending = {}
    latest = {}
    for ti, insts in enumerate(instances):
        for inst in insts:
            for core, _ in inst.events:
                pending[(ti, core)] = pending.get((ti, core), 0) + 1
        pending[(ti, -1)] = len(insts)
    for key in pending:
        signal[key] = env.event()
        latest[key] = 0
    # head needs (flow control) learn a signal's time when its last contributor is granted
    known = {}
    for insts in instances:
        for inst in insts:
            inst.heads = [(k, lead) for k, lead in inst.heads if k in pending]
            for k, _ in inst.heads:
                known.setdefault(k, env.event())

    queue: list = []
    grant_armed = [False]

    def fire(key):
        delay = latest[key] - env.now
        env.timeout(delay).callbacks.append(lambda _e, k=key: signal[k].succeed(latest[k]))

    def note(key, at):
        latest[key] = max(latest[key], at)
        pending[key] -= 1
        if pending[key] == 0:
            fire(key)
            if key in known:
                known[key].succeed(latest[key])

    def grant(_event):
        grant_armed[0] = False
        batch = sorted(queue, key=lambda it: (it[0].task, it[0].index))
        queue.clear()
        for inst, ready, pred in batch:
            start, blocker = ready, None
            for rid, off, _ in inst.res:
                if free[rid] - off > start:
                    start, blocker = int(free[rid] - off), owner[rid]
            for rid, off, length in inst.res:
                free[rid] = start + off + length
                owner[rid] = (inst.task, inst.index)
            end = start
            for core, off in inst.events:
                note((inst.task, core), start + off)
                end = max(end, start + off)
            note((inst.task, -1), end)
            builder.record(inst, ready, start, end, pred, blocker)

    def arm():
        if not grant_armed[0]:
            grant_armed[0] = True
            ev = simpy.Event(env)
            ev._ok, ev._value = True, None  # a triggered event scheduled at low priority
            ev.callbacks.append(grant)
            env.schedule(ev, GRANT_PRIORITY)

    def process(inst: Instance):
        events = [signal[key] for key in inst.needs] + [known[k] for k, _ in inst.heads]
        if events:
            yield env.all_of(events)
        pred, best = None, -1
        for key in inst.needs:
            if latest[key] > best:
                best, pred = latest[key], key
        for key, lead in inst.heads:  # met `lead` cycles before the event
            if latest[key] - lead > best:
                best, pred = latest[key] - lead, key
        ready = max(int(env.now), best)  # never before the grant that made it ready
        if ready > env.now:
            yield env.timeout(ready - env.now)
        queue.append((inst, ready, pred))
        arm()

    for insts in instances:
        for inst in insts:
            env.process(process(inst))
    env.run()
    builder.finish_deadlock_check()
