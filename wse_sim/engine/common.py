"""What both engines share: dependency resolution, static checks and result accounting.

The accounting (`EngineResultBuilder`) turns granted instances into a `SimResult`; it is
shared so that the two engines differ only in how they decide *when* each instance runs.
"""

from __future__ import annotations

import numpy as np

from wse_sim.defects import bytes_hops
from wse_sim.fabric import Mesh
from wse_sim.hardware import HardwareConfig
from wse_sim.program import Compute, Program, ProgramError, topological_order
from wse_sim.report.metrics import SimResult, empty_maps


def deps_needed(task, x: int, y: int, mesh: Mesh) -> list[tuple[int, int]]:
    """(dep task, core id) signals the instance at (x, y) waits for; core -1 = whole task.
    Head dependencies (flow control) are not here: `head_needs`."""
    out = []
    for d in task.deps:
        if d.head:
            continue
        at = d.core_for(x, y)
        if at is None:
            out.append((d.task, -1))
            continue
        if not mesh.contains(*at):
            raise ProgramError(f"task {task.op}: dependency on task {d.task} at core {at} "
                               f"from core ({x},{y}) is outside the {mesh.cols} x {mesh.rows} mesh")
        out.append((d.task, mesh.core(*at)))
    return out


def head_needs(task, events: list, beats: int, receive_cycles: int,
               mesh: Mesh) -> list[tuple[tuple[int, int], int]]:
    """((dep task, core id), lead) of a stream instance's head dependencies: at every
    destination (events[1:], in order), every head dependency in order, the needed core and
    the cycles from the stream's start to its first wavelet there (the destination's event
    less the rest of the stream and the receipt). Cores outside the mesh are left out; so are
    signals that do not exist (the caller filters them)."""
    heads = [d for d in task.deps if d.head]
    out = []
    for core, off in (events[1:] if heads else ()):
        x, y = mesh.xy(core)
        lead = off - (beats - 1) - receive_cycles
        for d in heads:
            at = d.core_for(x, y)
            if mesh.contains(*at):
                out.append(((d.task, mesh.core(*at)), lead))
    return out


class Hops:
    """Physical hops of routes on the repaired mesh (`defects.Repair`): the reference engine's
    copy of `fast_tasks.xhops` / `yhops` / `route_hops` / `line_hops` / `io_col`. Without
    defects every count is the logical one."""

    def __init__(self, hw: HardwareConfig):
        rep = hw.repair()
        self.rep = rep if rep is not None and rep.has_detours else None

    def route(self, x0: int, y0: int, x1: int, y1: int) -> int:
        if self.rep is None:
            return abs(x1 - x0) + abs(y1 - y0)
        return self.rep.route_hops(x0, y0, x1, y1)

    def line(self, x0: int, y0: int, axis: str, step: int, j: int) -> int:
        """From the first core of a line to its j-th core."""
        if axis == "x":
            return self.route(x0, y0, x0 + j * step, y0)
        return self.route(x0, y0, x0, y0 + j * step)

    def io_col(self, x: int, y: int) -> int:
        """From the west edge of the physical mesh to core (x, y)."""
        return x if self.rep is None else x + int(self.rep.px[y, x])


def ensure_acyclic(program: Program) -> None:
    """Reject a program whose task dependencies form a cycle (it could never finish). A
    program whose every dependency names an earlier task (the mappers') has none."""
    if all(d.task < i for i, t in enumerate(program.tasks) for d in t.deps):
        return
    topological_order(program)


class EngineResultBuilder:
    """Accumulates counters from granted instances and assembles the SimResult."""

    def __init__(self, program: Program, hw: HardwareConfig, mesh: Mesh, instances, engine: str):
        self.program, self.hw, self.mesh, self.engine = program, hw, mesh, engine
        self.instances = instances
        n = mesh.n
        self.busy = np.zeros(n, np.int64)
        self.link_bytes = np.zeros(4 * n, np.int64)
        self.link_busy = np.zeros(4 * n, np.int64)
        self.comm_bytes = self.delivered = 0
        self.flops = self.exec_flops = self.stream_flops = self.sram_traffic = 0
        self.flops_by_dtype: dict[str, int] = {}
        self.ops: dict[str, dict] = {}
        self.sig_time: dict = {}
        self.sig_producer: dict = {}
        self.rec: dict = {}
        self.granted = 0
        self.last = None
        self.span_rows: list = []
        self.io_bytes = 0

    def signal_keys(self) -> set:
        keys = set()
        for ti, insts in enumerate(self.instances):
            keys.add((ti, -1))
            for inst in insts:
                for core, _ in inst.events:
                    keys.add((ti, core))
        return keys

    def check_dependencies(self) -> None:
        """Every awaited (task, core) signal must exist, or the program would deadlock."""
        keys = self.signal_keys()
        for ti, insts in enumerate(self.instances):
            for inst in insts:
                for key in inst.needs:
                    if key not in keys:
                        dep = self.program.tasks[key[0]]
                        x, y = self.mesh.xy(key[1])
                        raise ProgramError(
                            f"deadlock: task {ti} ({self.program.tasks[ti].op}) waits for task "
                            f"{key[0]} ({dep.op}) at core ({x},{y}), which that task never reaches")

    def record(self, inst, ready: int, start: int, end: int, pred, blocker) -> None:
        """Account one granted instance (called in grant order)."""
        n = self.mesh.n
        t = self.program.tasks[inst.task]
        op = self.ops.setdefault(t.op, {"flops": 0, "busy_cycles": 0, "bytes": 0,
                                        "start": start, "end": end, "kind": type(t).__name__})
        op["start"] = min(op["start"], start)
        op["end"] = max(op["end"], end)
        for rid, _, length in inst.res:
            if rid < 4 * n:
                self.link_bytes[rid] += 4 * inst.wavelets
                self.link_busy[rid] += length
            elif rid < 5 * n:
                self.comm_bytes += 4 * inst.wavelets
                op["bytes"] += 4 * inst.wavelets
            elif rid < 6 * n:
                self.delivered += 4 * inst.wavelets
            elif rid < 7 * n:
                self.busy[rid - 6 * n] += length
                op["busy_cycles"] += length
            else:
                self.io_bytes += inst.io_bytes
                op["bytes"] += inst.io_bytes
        if isinstance(t, Compute):
            self.flops += inst.flops
            self.exec_flops += inst.exec_flops
            self.flops_by_dtype[t.dtype] = self.flops_by_dtype.get(t.dtype, 0) + inst.exec_flops
            self.sram_traffic += inst.sram_bytes
            op["flops"] += inst.flops
        elif inst.stream_flops:
            self.stream_flops += inst.stream_flops
            self.flops_by_dtype[inst.dtype] = (self.flops_by_dtype.get(inst.dtype, 0)
                                               + inst.stream_flops)
        key_i = (inst.task, inst.index)
        for core, off in inst.events:
            self._signal((inst.task, core), start + off, key_i)
        self._signal((inst.task, -1), end, key_i)
        self.rec[key_i] = (ready, start, end, pred, blocker)
        self.span_rows.append((inst.task, inst.index, inst.core, start, end))
        if self.last is None or end > self.rec[self.last][2]:
            self.last = key_i
        self.granted += 1

    def _signal(self, key, at: int, inst_key) -> None:
        if key not in self.sig_time or at > self.sig_time[key]:
            self.sig_time[key] = at
            self.sig_producer[key] = inst_key

    def finish_deadlock_check(self) -> None:
        total = sum(len(i) for i in self.instances)
        if self.granted < total:
            stuck = [f"{self.program.tasks[ti].op}#{inst.index}" for ti, insts in
                     enumerate(self.instances) for inst in insts
                     if (ti, inst.index) not in self.rec]
            raise ProgramError(f"deadlock: {total - self.granted} instances never ran "
                               f"(e.g. {', '.join(stuck[:6])})")

    def critical_path(self) -> tuple[int, int]:
        """(compute cycles, comm cycles) along the chain that decided the finish time."""
        compute = comm = 0
        if self.last is None:
            return 0, 0
        boundary = self.rec[self.last][2]
        cur = self.last
        while cur is not None:
            ready, start, _end, pred, blocker = self.rec[cur]
            seg = max(0, boundary - start)
            if isinstance(self.program.tasks[cur[0]], Compute):
                compute += seg
            else:
                comm += seg
            boundary = min(boundary, start)  # never count a cycle twice
            if start > ready and blocker is not None:
                cur = blocker
            elif pred is not None:
                cur = self.sig_producer[pred]
            else:
                cur = None
        comm += boundary  # before the chain's first instance: waiting (nothing computed)
        return compute, comm

    def result(self, maps: dict, wall: float) -> SimResult:
        hw, mesh = self.hw, self.mesh
        rows, cols = mesh.rows, mesh.cols
        cycles = max((r[2] for r in self.rec.values()), default=0)
        cp_compute, cp_comm = self.critical_path()
        io = self.io_bytes
        busy, lb, lbusy = empty_maps(cols, rows)
        busy[:] = self.busy.reshape(rows, cols)
        lb[:] = self.link_bytes.reshape(rows, cols, 4)
        lbusy[:] = self.link_busy.reshape(rows, cols, 4)
        return SimResult(
            program=self.program.name, engine=self.engine, hardware=hw, cycles=int(cycles),
            flops=self.flops, executed_flops=self.exec_flops, stream_flops=self.stream_flops,
            flops_by_dtype=dict(sorted(self.flops_by_dtype.items())),
            comm_bytes=self.comm_bytes, delivered_bytes=self.delivered,
            bytes_hops=bytes_hops(hw, self.link_bytes), sram_traffic_bytes=self.sram_traffic,
            io_bytes=io, compute_cycles=cp_compute, comm_cycles=cp_comm,
            core_busy_cycles=busy, link_bytes=lb, link_busy_cycles=lbusy,
            sram_bytes=maps["sram_bytes"], colors=maps["colors"], ops=self.ops,
            instances=self.granted, tokens=self.program.tokens, dtype=self.program.dtype,
            cores_used=self.program.cores_used or hw.cores, wall_seconds=wall,
            meta=dict(self.program.meta), spans=spans_from_rows(self.span_rows),
            loop_iterations=self.program.loop_iterations(),
        )


def spans_from_rows(rows: list) -> dict:
    """Per-instance (task, index, core, start, end) as int64 arrays, sorted by (task, index)."""
    arr = np.array(sorted(rows), dtype=np.int64).reshape(-1, 5)
    return {k: arr[:, i].copy() for i, k in enumerate(("task", "index", "core", "start", "end"))}
