"""The window path's run: its arrays, grown as it goes, and the driver (`fast_window` has the
kernels)."""

from __future__ import annotations

import numpy as np

from wse_sim.engine.fast_step import (
    BYTES_PER_CORE,
    BYTES_PER_SLOT,
    NONMONO,
    OK,
    PIECES,
    PIECES_RETRY,
    REASONS,
    T_STATUS,
    T_TASK,
    StepRun,
)
from wse_sim.engine.fast_tasks import (
    D_HEAD,
    D_OWNER,
    D_TASK,
    F_NI,
    F_SA,
    F_SB,
    Counters,
    ProgramArrays,
    Scratch,
)
from wse_sim.engine.fast_window import (
    FULL,
    NEED_FREE,
    NEED_RING,
    NEED_ROWS,
    W_AN,
    W_DONE,
    W_HI,
    W_HN,
    W_LO,
    W_NEED,
    W_STOP,
    WindowArrays,
    run_window,
    state_vector,
)
from wse_sim.engine.fast_window_loops import WindowForward

CAP0 = 1 << 20        # instances of the window: the first ring's (doubled as needed)
FREE0 = 1 << 10       # blocks in the store's free list at first
BYTES_PER_ROOM = 4 + 3 * 8  # per instance of room: its count, a heap entry


def readers(tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(offsets, tasks, last): the tasks whose signal blocks task w frees when it leaves the
    window, tasks[offsets[w]:offsets[w + 1]]: those whose last reader (or, unread, they
    themselves) is w; last[u]: that reader of task u."""
    td, deps = tables.td, tables.deps
    nt = len(td)
    last = np.arange(nt, dtype=np.int64)
    if len(deps):
        np.maximum.at(last, deps[:, D_TASK], deps[:, D_OWNER])
    order = np.argsort(last, kind="stable").astype(np.int64)
    offsets = np.searchsorted(last[order], np.arange(nt + 1)).astype(np.int64)
    return offsets, order, last


class WindowRun(StepRun):
    """The arrays of one window run: `fast_step.StepRun`'s (its store given out as the run
    goes, `fast_rows`), the window's ring of counts and heap, the admission heap."""

    def __init__(self, tables, n: int, keep_ends: bool, pieces: int, rows: int, cap: int):
        nt = len(tables.td)
        super().__init__(tables, n, keep_ends, pieces,
                         (np.arange(nt + 1, dtype=np.int64), rows, np.zeros(nt, np.int64)))
        self.rgs = self.preds = self.order = self.tmp = None  # (the step path's group sort)
        self.spend = np.zeros(rows, np.int32)
        self.pend = np.zeros(cap, np.int32)
        self.left = np.zeros(max(nt, 1), np.int64)
        self.hq = np.empty((cap, 3), np.int64)
        self.scr2 = Scratch(*(np.empty(len(a), np.int64) for a in
                              (self.rrid, self.roff, self.rlen, self.ex, self.ey, self.eoff)))
        # the admission heap starts with the tasks without (non-head) dependencies, bound -1
        deps = tables.deps
        nonhead = deps[deps[:, D_HEAD] == 0] if len(deps) else deps
        self.unres = (np.bincount(nonhead[:, D_OWNER], minlength=nt).astype(np.int32)
                      if len(nonhead) else np.zeros(max(nt, 1), np.int32))
        self.rmax = np.full(max(nt, 1), -1, np.int64)
        roots = np.flatnonzero(self.unres[:nt] == 0).astype(np.int64)
        self.aq = np.zeros((max(nt, 1), 3), np.int64)
        self.aq[:len(roots), 0] = -1
        self.aq[:len(roots), 1] = roots  # equal keys by task: already a heap
        self.fs, self.fz = np.zeros(FREE0, np.int64), np.zeros(FREE0, np.int64)
        self.fm = np.array([0, 0, rows], np.int64)
        self.rp, self.ru, self.last = readers(tables)
        self.state = state_vector()
        self.state[W_AN] = len(roots)

    def finished(self, tables) -> bool:
        return int(self.state[W_HI]) == len(tables.td) and int(self.state[W_HN]) == 0

    def run(self, tables, limit: int) -> int:
        """Grant up to `limit` more instances; the status."""
        run_window(ProgramArrays(tables.td, tables.deps, tables.rdeps, tables.ib, self.tblk,
                                 tables.hwc),
                   WindowArrays(self.off, self.res, self.sig, self.pc, self.start, self.spend,
                                self.pend, self.left, self.hq, self.unres, self.rmax, self.aq,
                                self.fs, self.fz, self.fm, self.rp, self.ru),
                   Counters(self.busy, self.lbytes, self.lbusy, self.tacc),
                   Scratch(self.rrid, self.roff, self.rlen, self.ex, self.ey, self.eoff),
                   self.scr2, self.ends, self.state, limit, self.watch)
        return int(self.state[T_STATUS])

    def grow_bytes(self) -> int:
        """Host bytes the next `grow` adds (the new array's, before the old one is freed)."""
        need = int(self.state[W_NEED])
        if need == NEED_RING:
            return 2 * len(self.pend) * (self.pend.itemsize + self.hq.itemsize * 3)
        if need == NEED_ROWS:
            return 2 * len(self.sig) * (self.sig.itemsize * self.sig.shape[1] + 4)
        return 2 * len(self.fs) * 16

    def grow(self, tables) -> None:
        """Twice the room of the array the run found full (`W_NEED`), contents kept."""
        need = int(self.state[W_NEED])
        if need == NEED_RING:
            cap, new = len(self.pend), 2 * len(self.pend)
            lo, hi, hn = (int(self.state[k]) for k in (W_LO, W_HI, W_HN))
            ids = np.arange(tables.ib[lo], tables.ib[hi], dtype=np.int64)
            pend = np.zeros(new, np.int32)
            pend[ids % new] = self.pend[ids % cap]
            self.pend = pend
            self.hq = _grown(self.hq, new, hn)
        elif need == NEED_ROWS:
            rows = 2 * len(self.sig)
            self.sig = _grown(self.sig, rows, int(self.fm[1]))
            self.spend = _grown(self.spend, rows, int(self.fm[1]))
            self.fm[2] = rows
        elif need == NEED_FREE:
            nf = int(self.fm[0])
            self.fs = _grown(self.fs, 2 * len(self.fs), nf)
            self.fz = _grown(self.fz, 2 * len(self.fz), nf)
        self.state[T_STATUS] = OK


def _grown(a: np.ndarray, n: int, keep: int) -> np.ndarray:
    """a with n rows, its first `keep` kept."""
    out = np.empty((n,) + a.shape[1:], a.dtype)
    out[:keep] = a[:keep]
    return out


def estimate_bytes(tables, n_cores: int, keep_ends: bool, rows: int) -> int:
    """Host memory of a window run whose store holds `rows` at most (the step path's plan
    for the same program is a fair guess: both keep what the running tasks still read)."""
    return (BYTES_PER_CORE * n_cores + (BYTES_PER_SLOT + 4) * rows + BYTES_PER_ROOM * CAP0
            + (16 * tables.n_instances if keep_ends else 0))


def run_windowed(tables, n_cores: int, keep_ends: bool, rows: int, progress=None,
                 fits=None, fast_forward: bool = True):
    """Run the window path to the end: (the run, "") or (None, why it cannot give the
    reference's result, or why it stopped). `rows`: the store's first size. A critical-path
    successor below the kept pieces runs again with more pieces. `progress(n)`: told of every
    n granted. `fits(bytes)`: whether the host can take an array that grows by so much (a
    window that outgrows the free RAM stops with the reason, not a MemoryError).
    `fast_forward`: skip loop iterations once they repeat (`fast_window_loops`); the run's
    `forward` says how many were skipped."""
    biggest = int(tables.td[:, F_NI].max()) if len(tables.td) else 1
    block = int((tables.td[:, F_SA] + 1 - tables.td[:, F_SB]).max()) if len(tables.td) else 1
    pieces = PIECES
    while True:
        wr = WindowRun(tables, n_cores, keep_ends, pieces, max(rows, 2 * block),
                       max(CAP0, 2 * biggest))
        fw = wr.forward = WindowForward(
            wr, tables, lambda stop, wr=wr: _drive(wr, tables, progress, fits or (lambda n: True),
                                                   stop), progress, enabled=fast_forward)
        status = fw.run()
        if isinstance(status, str):
            return None, status
        if status == OK and int(wr.state[W_DONE]) < tables.n_instances:
            return None, "instances never granted (a deadlock: the event path names them)"
        if status == OK:
            return wr, ""
        task = int(wr.state[T_TASK])
        del wr
        if status == NONMONO and pieces == PIECES:
            pieces = PIECES_RETRY
            continue
        return None, f"{REASONS[status]} (task {task})"


def _drive(wr: WindowRun, tables, progress, fits, stop: int = -1):
    """Run `wr` to its end (growing what fills up), or until task `stop` is about to enter
    the window (PAUSE); the status, or why it stopped (a window that would outgrow the
    host's free RAM)."""
    wr.state[W_STOP] = stop
    try:
        return _drive_on(wr, tables, progress, fits)
    finally:
        wr.state[W_STOP] = -1


def _drive_on(wr: WindowRun, tables, progress, fits):
    while True:
        before = int(wr.state[W_DONE])
        status = wr.run(tables, 1 << 20)
        if progress is not None:
            progress(int(wr.state[W_DONE]) - before)
        if status == FULL:
            more = wr.grow_bytes()
            if not fits(more):
                return (f"its window outgrew the free RAM ({more / 2**30:.1f} GiB more after "
                        f"{int(wr.state[W_DONE]):,} of {tables.n_instances:,} instances)")
            wr.grow(tables)
            continue
        if status != OK or wr.finished(tables):  # (PAUSE included)
            return status

