"""The fast engine: the reference engine's semantics, to the cycle, in numba.

`simulate_fast(program, hw)` gives the same `SimResult` as `simulate_reference` (every counter,
the per-op breakdown, the critical path and the per-instance spans) except `engine` and
`wall_seconds`. The program is never expanded per core in Python: each task becomes one row of
an integer table (`fast_tables`), and the numba scheduler (`fast_sched`, with its ready queue
in `fast_queue`) generates each instance's reservations, events and needs from that row when
it needs them (`fast_tasks`), in the reference's order.

Memory: per resource (7 per core) the cycle it is free from and its last holder (12 bytes);
per instance its start, its blocker and its pending needs (16 bytes); per (task, core) signal
its time, producer and pending count (16 bytes); the result's maps (72 bytes per core); spans,
when kept, 32 more bytes per instance; the ready queue, a timing wheel of WHEEL slots backed by
a radix queue, about 200 KB. (Ids are int64 beyond 2**31 instances.)
"""

from __future__ import annotations

import sys
import time

import numpy as np

from wse_sim import host
from wse_sim.defects import bytes_hops, check_repairable
from wse_sim.engine import fast_loops as L
from wse_sim.engine import fast_memory as mem
from wse_sim.engine import fast_queue as Q
from wse_sim.engine import fast_sched as S
from wse_sim.engine import fast_step as P
from wse_sim.engine import fast_tasks as K
from wse_sim.engine import fast_window_run as W
from wse_sim.engine.common import ensure_acyclic
from wse_sim.engine.fast_counts import op_table, static_counts
from wse_sim.engine.fast_tables import (
    Tables,
    deps_valid,
    head_counts,
    signal_counts,
    span_cores,
)
from wse_sim.fabric import Mesh
from wse_sim.hardware import HardwareConfig
from wse_sim.program import (
    Compute,
    LineStream,
    Multicast,
    Program,
    ProgramError,
    Region,
    Unicast,
    check_fits,
)
from wse_sim.report.metrics import SimResult

PROGRESS_MIN_INSTANCES = 20_000_000  # progress bar (stderr) from here: runs of a few seconds
SPANS_MAX_INSTANCES = 4_000_000     # fill SimResult.spans up to this many instances by default
CHUNK = 1 << 20                     # instances granted per numba call while showing progress
WHEEL = 1 << 13                     # timing-wheel slots (cycles ahead kept in O(1) buckets)


PATHS = ("auto", "step", "window", "event")
# auto takes the event path (1.15-1.45x faster, bench_engine) while its memory estimate is
# within this fraction of the free RAM, the step path (memory flat in the steps) beyond
EVENT_PREFERRED_FRACTION = 0.25


class StepPathUnsupported(ProgramError):
    """path='step' was asked for a program the step path cannot run exactly."""


def simulate_fast(program: Program, hw: HardwareConfig, progress: bool | None = None,
                  spans: bool | None = None, path: str = "auto",
                  fast_forward: bool = True) -> SimResult:
    """Run `program` on `hw` with the numba engine; the same result as `simulate_reference`.

    `progress`: a tqdm bar on stderr; by default shown from PROGRESS_MIN_INSTANCES instances.
    `spans`: fill `SimResult.spans`; by default up to SPANS_MAX_INSTANCES instances.
    `path`: 'step' (task by task, `fast_step`; memory independent of the number of steps),
    'event' (rounds by ready time, `fast_sched`; faster, memory grows with the instances) or
    'auto' (step when the program has a loop of `fast_loops.AUTO_STEP_COUNT` iterations or
    more to fast-forward; else events while they need
    under EVENT_PREFERRED_FRACTION of the free RAM, else step; events where the step path
    finds it cannot give the reference's order). Every path
    gives the same result;
    `result.fast_path` says which one ran (`result.fast_path_reason`: why not 'step').
    `fast_forward`: skip a loop's iterations once they repeat (`fast_loops`; the result is
    the same either way, False is for benchmarks and checks).
    `wall_seconds` covers everything but numba's compilation (done once per process, first).
    """
    from wse_sim.hardware import ConfigError
    if path not in PATHS:
        raise ConfigError(f"path: got {path!r}, must be one of {', '.join(PATHS)}")
    if not isinstance(fast_forward, bool):
        raise ConfigError(f"fast_forward: got {fast_forward!r}, must be True or False")
    warm_up()
    return _simulate(program, hw, progress, spans, path, fast_forward)


def _simulate(program: Program, hw: HardwareConfig, progress: bool | None = None,
              spans: bool | None = None, path: str = "auto",
              fast_forward: bool = True) -> SimResult:
    t0 = time.perf_counter()
    maps = check_fits(program, hw)
    check_repairable(program, hw)
    ensure_acyclic(program)
    mesh = Mesh(hw.mesh_cols, hw.mesh_rows)
    tables = Tables(program, hw)
    _check(program, tables, mesh)
    total = tables.n_instances
    keep_spans = spans if spans is not None else total <= SPANS_MAX_INSTANCES
    show = total >= PROGRESS_MIN_INSTANCES if progress is None else progress
    why = "asked for"
    if path == "auto" and not (fast_forward and any(lp.count >= L.AUTO_STEP_COUNT
                                                    for lp in program.loops)):
        have = host.free_bytes()
        if have is None or estimate_bytes(tables, mesh) <= EVENT_PREFERRED_FRACTION * have:
            path, why = "event", "the faster path, and it fits in memory"
    if path != "event":
        planned = P.plan(tables) if P.eligible(tables) else None
        why = _step_refusal(tables, mesh, keep_spans, planned)
        if path == "window":
            if planned is None:
                raise StepPathUnsupported(f"fast engine window path: {why}")
            res = _window(program, hw, mesh, tables, maps, keep_spans, show, "asked for",
                          planned, fast_forward)
            res.wall_seconds = time.perf_counter() - t0
            return res
        status = P.OK
        for pieces in ((P.PIECES, P.PIECES_RETRY) if why is None else ()):
            st = P.StepRun(tables, mesh.n, keep_spans, pieces, planned)
            status = _run_steps(st, tables, show, fast_forward)
            if status == P.OK:
                res = _step_result(program, hw, mesh, tables, st, maps, keep_spans)
                res.wall_seconds = time.perf_counter() - t0
                return res
            why = f"{P.REASONS[status]} (task {int(st.state[P.T_TASK])})"
            del st
            if status != P.NONMONO:
                break
        if path == "step":
            raise StepPathUnsupported(f"fast engine step path: {why}")
        if status == P.ORDER and not _fits(estimate_bytes(tables, mesh)):
            res = _window(program, hw, mesh, tables, maps, keep_spans, show, why, planned,
                          fast_forward)
            if isinstance(res, str):  # it stopped: the event path's memory check says more
                why = f"{why}; the window path: {res}"
            elif res is not None:
                res.wall_seconds = time.perf_counter() - t0
                return res
    _memory_guard(tables, mesh, "" if why in ("asked for", "the faster path, and it fits in "
                                             "memory") else why)
    st = _Run(tables, mesh.n, keep_spans)
    st.schedule(tables, show)
    granted = int(st.state[S.S_GRANTED])
    if granted < total:
        stuck = []
        for g in np.flatnonzero(st.pend >= 0)[:6]:
            ti = int(np.searchsorted(tables.ib, g, side="right")) - 1
            stuck.append(f"{program.tasks[ti].op}#{int(g - tables.ib[ti])}")
        raise ProgramError(f"deadlock: {total - granted} instances never ran "
                           f"(e.g. {', '.join(stuck)})")
    last, cycles = int(st.state[S.S_LAST]), int(st.state[S.S_MAXEND])
    cp_compute = cp_comm = 0
    if last >= 0:
        cp_compute, cp_comm = (int(v) for v in S.critical_path(
            tables.td, tables.deps, tables.ib, st.start, st.blk, st.sig_time, st.sig_prod,
            last, cycles, tables.hwc, st.ex, st.ey, st.eoff))
    st.release(keep_spans)
    if not len(st.lbytes):
        st.lbytes = st.lbusy * 4
    res = _result(program, hw, mesh, tables, st, maps, max(cycles, 0), cp_compute, cp_comm)
    res.fast_path, res.fast_path_reason = "event", why  # (not in the result's JSON)
    if keep_spans:
        res.spans = _spans(tables, st.start, st.ends)
    res.wall_seconds = time.perf_counter() - t0
    return res


def _fits(need: int) -> bool:
    """Whether `need` bytes fit in the host's free RAM with a margin (80 %; True where the
    platform does not say)."""
    have = host.free_bytes()
    return have is None or need <= 0.8 * have


def _progress(tables: Tables):
    """The progress bar (stderr) of a run of `tables`' instances. With loops it says that it
    may jump (a loop fast-forwarded counts its skipped instances at once), so that its time
    left, from the rate so far, reads as the bound it is."""
    from tqdm import tqdm
    desc = "fast engine (loops may skip ahead)" if tables.loops else "fast engine"
    return tqdm(total=tables.n_instances, unit="inst", file=sys.stderr, desc=desc,
                dynamic_ncols=True)


def _window(program, hw, mesh, tables, maps, keep_spans, show, why, planned,
            fast_forward=True):
    """The window path's result (`fast_window`), once the step path found a resource
    reserved out of task order; None when it does not fit the free RAM and the reason when
    it cannot give the reference's result or outgrew the RAM (the caller takes the event
    path, whose memory check refuses in one line), an error when path='window' was asked
    for."""
    asked = why == "asked for"
    rows = planned[1]
    need = W.estimate_bytes(tables, mesh.n, keep_spans, rows)
    if not _fits(need):
        if asked:
            raise StepPathUnsupported(f"fast engine window path: needs about "
                                      f"{need / 2**30:.1f} GiB, {host.free_bytes() / 2**30:.1f} "
                                      "GiB free")
        return None
    bar = _progress(tables) if show else None
    try:
        wr, wwhy = W.run_windowed(tables, mesh.n, keep_spans, rows,
                                  bar.update if bar else None, _fits, fast_forward)
    finally:
        if bar is not None:
            bar.close()
    if wr is None:
        if asked:
            raise StepPathUnsupported(f"fast engine window path: {wwhy}")
        return wwhy
    res = _step_result(program, hw, mesh, tables, wr, maps, keep_spans)
    res.fast_path, res.fast_path_reason = "window", why
    return res


def _step_refusal(tables: Tables, mesh: Mesh, keep_spans: bool, planned) -> str | None:
    """Why the step path cannot take this program (None: it can try); `planned`: its
    `fast_step.plan`, None when a dependency names a later task."""
    if planned is None:
        return "a dependency names a later task"
    need = P.estimate_bytes(tables, mesh.n, keep_spans, planned)
    if not _fits(need):
        return f"needs about {need / 2**30:.1f} GiB, {host.free_bytes() / 2**30:.1f} GiB free"
    return None


def _run_steps(st, tables: Tables, show: bool, fast_forward: bool = True) -> int:
    """Run the step path to the end, fast-forwarding loops (`fast_loops`), in slices of task
    groups under a progress bar when `show`; `st.forward` keeps the loop counts."""
    bar = _progress(tables) if show else None
    first = tables.ib[st.groups]  # first instance of every group

    def advance(g1: int) -> int:
        if bar is None:
            return st.run(tables, g1)
        while (k := int(st.state[P.T_NEXT])) < g1:
            k1 = int(np.searchsorted(first, first[k] + CHUNK, side="right")) - 1
            k1 = min(max(k1, k + 1), g1)
            status = st.run(tables, k1)
            if status != P.OK:
                return status
            bar.update(int(first[k1] - first[k]))
        return P.OK

    st.forward = L.Forward(st, tables, advance, bar.update if bar is not None else None,
                           enabled=fast_forward)
    try:
        return st.forward.run()
    finally:
        if bar is not None:
            bar.close()


def _step_result(program, hw, mesh, tables, st, maps, keep_spans) -> SimResult:
    cycles, cp_compute, cp_comm = st.critical_path()
    st.release()
    state = np.zeros(S.NS, np.int64)
    state[S.S_COMM], state[S.S_DELIV] = st.state[P.T_COMM], st.state[P.T_DELIV]
    st.state = state
    if not len(st.lbytes):
        st.lbytes = st.lbusy * 4
    res = _result(program, hw, mesh, tables, st, maps, cycles, cp_compute, cp_comm)
    res.fast_path, res.fast_path_reason = "step", ""
    res.loop_iterations_skipped = st.forward.skipped_iterations
    if keep_spans:
        res.spans = _spans(tables, st.start, st.ends)
    return res


def _spans(tables: Tables, start, ends) -> dict:
    td = tables.td
    total = tables.n_instances
    return {"task": np.repeat(np.arange(len(td), dtype=np.int64), td[:, K.F_NI]),
            "index": np.arange(total, dtype=np.int64) - np.repeat(tables.ib[:-1], td[:, K.F_NI]),
            "core": span_cores(tables), "start": start, "end": ends}


def _check(program: Program, tables: Tables, mesh: Mesh) -> None:
    """The reference's dependency errors: a needed core outside the mesh (raised while
    expanding), then a needed (task, core) signal that no instance produces."""
    if not len(tables.deps) or deps_valid(tables):
        return
    kind, t, _i, d, x, y, ax, ay = (int(v) for v in S.check_needs(tables.td, tables.deps,
                                                                  tables.hwc))
    if kind == 0:  # (deps_valid is exact: a safety net)
        return
    task = program.tasks[t]
    dep_task = int(tables.deps[d, K.D_TASK])
    if kind == 1:
        raise ProgramError(f"task {task.op}: dependency on task {dep_task} at core {(x, y)} "
                           f"from core ({ax},{ay}) is outside the {mesh.cols} x {mesh.rows} mesh")
    raise ProgramError(f"deadlock: task {t} ({task.op}) waits for task {dep_task} "
                       f"({program.tasks[dep_task].op}) at core ({x},{y}), which that task "
                       "never reaches")


class _Run:
    """The mutable state of one scheduling run: the arrays the numba loop updates."""

    def __init__(self, tables: Tables, n: int, keep_ends: bool):
        td = tables.td
        ni = tables.n_instances
        # ids of instances fit int32 unless a program has more than 2**31 of them
        idx = np.int32 if ni < 2**31 - 1 else np.int64
        dense = ni >= n  # a run that will touch most cores' resources
        self.free = mem.zeros(7 * n + 1, dense=dense)
        self.owner = mem.empty(7 * n + 1, idx, dense)  # read only where free > 0: written before
        self.start = mem.zeros(ni)             # ready times until granted (the latest need)
        self.blk = mem.empty(ni, idx)          # ... and its links here
        self.pend = np.repeat(td[:, K.F_PEND].astype(np.int32), td[:, K.F_NI])  # -1: granted
        self.sig_time = mem.full(tables.n_signals, -1)
        self.sig_prod = mem.empty(tables.n_signals, idx)
        self.sig_pend = signal_counts(tables)
        head_counts(tables, self.sig_pend, self.pend)
        self.busy = mem.zeros(n, dense=dense)
        self.lbytes = mem.zeros(4 * n if tables.link_bytes_apart else 0, dense=dense)  # else 4 x busy
        self.lbusy = mem.zeros(4 * n, dense=dense)
        self.tacc = np.zeros((len(td), S.NA), np.int64)
        self.tacc[:, S.A_FIRST] = -1
        nres = int(td[:, K.F_NRES].max()) if len(td) else 1
        nev = int(td[:, K.F_NEV].max()) if len(td) else 1
        self.rrid, self.roff, self.rlen = (np.empty(nres, np.int64) for _ in range(3))
        self.ex, self.ey, self.eoff = (np.empty(nev, np.int64) for _ in range(3))
        self.ends = mem.empty(ni if keep_ends else 0)
        # ready instances: a timing wheel (see fast_queue.queue_push) backed by a radix queue
        w = WHEEL
        assert w >= 64 and w & (w - 1) == 0, "WHEEL must be a power of two >= 64"
        self.wheel = np.full(3 * w + w // 64 + 1, -1, np.int64)
        self.wheel[2 * w:] = 0
        self.head = np.full(Q.QUEUE_SLOTS, -1, np.int64)
        self.head[130:195] = 0
        self.head[195:] = Q.NEVER
        # instances without needs are ready at cycle 0: wheel slot 0, linked in order
        roots = np.flatnonzero(self.pend == 0)
        if len(roots):
            self.wheel[0], self.wheel[w], self.wheel[2 * w] = roots[0], roots[-1], len(roots)
            self.wheel[3 * w] = 1
            self.wheel[-1] = len(roots)
            self.start[roots] = 0
            self.blk[roots[:-1]] = roots[1:]
            self.blk[roots[-1]] = -1
        biggest = int(td[:, K.F_NI].max()) if len(td) else 0
        self.batch = np.empty(max(1024, len(roots), biggest), np.int64)
        self.tmp = np.empty_like(self.batch)
        self.tscr = np.full(4 * max(1, len(td)), -1, np.int64)
        self.tblk = (np.searchsorted(tables.ib, np.arange(0, ni, 1 << Q.TB), side="right")
                     - 1).astype(np.int64)
        self.state = np.zeros(S.NS, np.int64)
        self.state[S.S_QUEUED] = len(roots)
        self.state[S.S_MAXEND] = -1
        self.state[S.S_LAST] = -1

    def step(self, tables: Tables, limit: int) -> None:
        while True:
            S.run(K.ProgramArrays(tables.td, tables.deps, tables.rdeps, tables.ib, self.tblk,
                                  tables.hwc),
                  K.EventQueue(self.free, self.owner, self.start, self.blk, self.pend,
                               self.sig_time, self.sig_prod, self.sig_pend, self.head,
                               self.wheel, self.batch, self.tmp, self.tscr),
                  K.Counters(self.busy, self.lbytes, self.lbusy, self.tacc),
                  K.Scratch(self.rrid, self.roff, self.rlen, self.ex, self.ey, self.eoff),
                  self.ends, self.state, limit)
            need = int(self.state[S.S_NEED])
            if not need:
                return
            self.batch = np.empty(max(need, 2 * len(self.batch)), np.int64)
            self.tmp = np.empty_like(self.batch)

    def release(self, keep_spans: bool) -> None:
        """Drop the scheduling state once the run and its critical path are done."""
        for name in ("free", "owner", "blk", "sig_time", "sig_prod", "sig_pend", "batch", "tmp"):
            setattr(self, name, None)
        if not keep_spans:
            self.start = self.ends = None

    @property
    def done(self) -> bool:
        s = self.state
        return s[S.S_QUEUED] == 0 and s[S.S_BPOS] == s[S.S_BLEN]

    def schedule(self, tables: Tables, progress: bool) -> None:
        total = tables.n_instances
        if not progress:
            self.step(tables, total + 1)
            return
        with _progress(tables) as bar:
            while not self.done:
                before = int(self.state[S.S_GRANTED])
                self.step(tables, CHUNK)
                bar.update(int(self.state[S.S_GRANTED]) - before)


def _result(program, hw, mesh, tables, st, maps, cycles, cp_compute, cp_comm) -> SimResult:
    """Counters that do not depend on timing come from the task records in closed form (every
    instance ran; `fast_counts`); the rest from the run."""
    c = static_counts(program, tables.roots)
    ops = op_table(program, st.tacc, tables.roots)
    rows, cols = mesh.rows, mesh.cols
    return SimResult(
        program=program.name, engine="fast", hardware=hw, cycles=int(cycles),
        flops=c["flops"], executed_flops=c["executed_flops"], stream_flops=c["stream_flops"],
        flops_by_dtype=c["flops_by_dtype"],
        comm_bytes=int(st.state[S.S_COMM]), delivered_bytes=int(st.state[S.S_DELIV]),
        bytes_hops=bytes_hops(hw, st.lbytes), sram_traffic_bytes=c["sram_traffic_bytes"],
        io_bytes=c["io_bytes"],
        compute_cycles=cp_compute, comm_cycles=cp_comm,
        core_busy_cycles=st.busy.reshape(rows, cols),
        link_bytes=st.lbytes.reshape(rows, cols, 4),
        link_busy_cycles=st.lbusy.reshape(rows, cols, 4),
        sram_bytes=maps["sram_bytes"], colors=maps["colors"], ops=ops,
        instances=tables.n_instances, tokens=program.tokens, dtype=program.dtype,
        cores_used=program.cores_used or hw.cores, wall_seconds=0.0,
        meta=dict(program.meta), loop_iterations=program.loop_iterations(),
    )


_WARM = False


def _refresh_stale_cache() -> None:
    """numba's cache keys a function on its own file only: after an edit of fast_tasks.py,
    fast_sched.py would reuse kernels built from the old helpers. Keep a digest of the kernel
    files next to the cache and drop every cached kernel when it changes."""
    import hashlib
    import os

    from numba.core.dispatcher import Dispatcher

    from wse_sim.engine import fast_heap, fast_rows, fast_tables, fast_window
    mods = (K, Q, S, P, L, fast_tables, fast_heap, fast_rows, fast_window)
    try:
        digest = hashlib.sha256(b"".join(open(m.__file__, "rb").read() for m in mods))
        stamp = os.path.join(S.run._cache._cache_path, "fast_engine.sha256")
        with open(stamp) as f:
            if f.read() == digest.hexdigest():
                return
    except FileNotFoundError:
        pass
    except (AttributeError, OSError):  # no cache or an unexpected numba: nothing to refresh
        return
    for mod in mods:
        for obj in vars(mod).values():
            if isinstance(obj, Dispatcher) and getattr(obj, "_cache", None) is not None:
                obj._cache.flush()
    try:
        with open(stamp, "w") as f:
            f.write(digest.hexdigest())
    except OSError:
        pass


def warm_up() -> float:
    """Compile (or load from numba's cache) every kernel, on a tiny program that takes every
    path, once per process. Returns the seconds it took (0 when already done)."""
    global _WARM
    if _WARM:
        return 0.0
    t0 = time.perf_counter()
    _refresh_stale_cache()
    from wse_sim.hardware import load_preset
    from wse_sim.program import Dep
    hw = load_preset("mesh4")
    prog = Program("warm-up", (
        Compute("c", Region(0, 0, 2, 2), 40),
        Unicast("u", Region(0, 0, 2, 2), 3, dx=1, wrap=True, deps=(Dep(0),)),
        LineStream("l", Region(0, 0, 2, 2), "x", 1, 2, reduce=True, deps=(Dep(1, "all"),)),
        Multicast("m", (0, 0), Region(0, 0, 2, 2), 2, deps=(Dep(2, "at", 1, 0),)),
        Compute("d", Region(0, 0, 1, 2), 40, deps=(Dep(3, "offset", 1, 0),)),
    ))
    for path in ("event", "step", "window"):
        _simulate(prog, hw, progress=False, spans=True, path=path)
    _simulate(_warm_up_loop(), hw, progress=False, spans=False, path="step")
    try:  # the exact dependency scan runs only for bad programs: compile it here too
        _simulate(Program("warm-up-bad", prog.tasks[:1] + (
            Compute("e", Region(2, 2, 1, 1), 1, deps=(Dep(0),)),)), hw)
    except ProgramError:
        pass
    _WARM = True
    return time.perf_counter() - t0


def _warm_up_loop() -> Program:
    """A loop of compute-and-send steps whose iterations repeat, so that a try compares two
    of them and the rest are skipped: loads the loop kernels (`fast_loops`) into the warm-up
    instead of the first looped run's timing (about 1 s from numba's cache)."""
    from wse_sim.program import Dep, ProgramBuilder
    b = ProgramBuilder("warm-up-loop")
    b.add(Compute("c", Region(0, 0, 2, 2), 40))

    def step(i):
        n = len(b.tasks)
        b.add(Unicast("u", Region(0, 0, 2, 2), 3, dx=1, wrap=True, deps=(Dep(n - 1),)))
        b.add(Compute("c", Region(0, 0, 2, 2), 40, deps=(Dep(n),)))

    b.repeat("warm-up.step", 16, step)
    return b.build()


# Measured on the full wafer: ~150 bytes per core of fixed state (resource free times and
# holders, result maps), ~16 bytes per instance and ~16 per per-core signal slot.
BYTES_PER_CORE, BYTES_PER_INSTANCE, BYTES_PER_SIGNAL = 150, 16, 16


def estimate_bytes(tables, mesh: Mesh) -> int:
    """Host memory the schedule needs, from the counts it is about to allocate."""
    return (BYTES_PER_CORE * mesh.n + BYTES_PER_INSTANCE * tables.n_instances
            + BYTES_PER_SIGNAL * tables.n_signals)


def _memory_guard(tables, mesh: Mesh, step_refusal: str = "") -> None:
    """Refuse up front, with the estimate, a program that would not fit in the host's RAM
    (instead of being killed by the kernel half way); `step_refusal`: why the step path,
    whose memory does not grow with the instances, could not run it."""
    need = estimate_bytes(tables, mesh)
    if not _fits(need):
        raise ProgramError(f"fast engine: this run needs about {need / 2**30:.1f} GiB "
                           f"({tables.n_instances:,} task instances, {tables.n_signals:,} "
                           f"per-core signals) but {host.free_bytes() / 2**30:.1f} GiB of RAM is free"
                           + (f" (the step path cannot run it: {step_refusal})"
                              if step_refusal else "")
                           + "; use a smaller grid, fewer steps or a machine with more memory")


