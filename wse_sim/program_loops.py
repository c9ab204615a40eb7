"""Loops of the Program IR: a block of tasks repeated `count` times (`Loop`), and the
checks that every iteration is the first one moved by whole iterations and that loops nest
at most two deep (docs/hardware-model.md, "Loops")."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from wse_sim.program_records import ProgramError


@dataclass(frozen=True)
class Loop:
    """Tasks [first, first + count * size) are `count` iterations of one block of `size` tasks.

    Iteration i's task j is iteration 0's task j with the same timing fields (region, sizes,
    routes, dtype: everything but `op`, `color` and `data`, which may change per iteration,
    e.g. a buffer parity) and the same dependencies, each either *outer* (the same task before
    the loop in every iteration) or *carried* (iteration 0's task moved by i * size: a task of
    the same iteration, or of an earlier one, or of the tasks just before the loop). Checked
    by `Program`.
    """

    name: str
    first: int
    size: int
    count: int

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ProgramError(f"Loop.name: got {self.name!r}, must be a non-empty name")
        for f, lo in (("first", 0), ("size", 1), ("count", 1)):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
                raise ProgramError(f"Loop {self.name}: {f} got {v!r}, must be an integer >= {lo}")

    @property
    def end(self) -> int:
        """One past the loop's last task."""
        return self.first + self.size * self.count

    def task(self, iteration: int, j: int) -> int:
        """Index of task j of an iteration."""
        return self.first + iteration * self.size + j


_TIMING_SKIP = ("op", "color", "data", "deps")


def _check_loop(tasks: tuple, lp: Loop) -> None:
    """Every iteration of `lp` repeats iteration 0 (see `Loop`); one line naming the first
    task that does not."""
    if lp.end > len(tasks):
        raise ProgramError(f"loop {lp.name}: tasks {lp.first}..{lp.end - 1} do not exist "
                           f"(the program has {len(tasks)})")
    kinds = {}  # per (j, dep position): 'outer' or 'carried'
    for j in range(lp.size):
        a = tasks[lp.first + j]
        names = [f.name for f in fields(a) if f.name not in _TIMING_SKIP]
        for it in range(1, lp.count):
            ti = lp.task(it, j)
            b = tasks[ti]
            where = f"loop {lp.name}: task {ti} ({b.op}, iteration {it})"
            if type(b) is not type(a) or any(getattr(a, n) != getattr(b, n) for n in names):
                raise ProgramError(f"{where} is not task {lp.first + j} ({a.op}) of iteration "
                                   "0 repeated: its timing fields differ")
            if len(a.deps) != len(b.deps):
                raise ProgramError(f"{where} has {len(b.deps)} dependencies, iteration 0 "
                                   f"has {len(a.deps)}")
            for k, (da, db) in enumerate(zip(a.deps, b.deps, strict=True)):
                if (da.rule, da.dx, da.dy, da.head) != (db.rule, db.dx, db.dy, db.head):
                    raise ProgramError(f"{where}: dependency {k} has another rule than in "
                                       "iteration 0")
                kind = ("outer" if db.task == da.task < lp.first else
                        "carried" if db.task == da.task + it * lp.size else None)
                if kind is None or kinds.setdefault((j, k), kind) != kind:
                    raise ProgramError(
                        f"{where}: dependency {k} names task {db.task}; iteration 0 names "
                        f"{da.task}, so it must name {da.task} (a task before the loop) or "
                        f"{da.task + it * lp.size} (moved by {it} iterations) in every "
                        "iteration")


def _check_nesting(loops: tuple) -> None:
    """Loops in task order, each either after the one before or inside one iteration of an
    enclosing loop (loops nest two deep at most: steps inside layers)."""
    outer = None  # the enclosing loop of the current nest
    for a, b in zip(loops, loops[1:], strict=False):
        if outer is not None and b.first >= outer.end:
            outer = None
        if b.first >= a.end:
            if outer is not None and b.end > outer.end:
                raise ProgramError(f"loop {b.name} (tasks {b.first}..{b.end - 1}) crosses the "
                                   f"end of loop {outer.name} ({outer.first}..{outer.end - 1})")
            _check_inside(outer, b)
            continue
        if b.end > a.end or b.first < a.first:
            raise ProgramError(f"loops {a.name} and {b.name}: must be in task order, each after "
                               f"the last or inside it (tasks {a.first}..{a.end - 1} and "
                               f"{b.first}..{b.end - 1})")
        if outer is not None:
            raise ProgramError(f"loop {b.name}: loops nest two deep at most (inside {a.name}, "
                               f"inside {outer.name})")
        outer = a
        _check_inside(a, b)


def _check_inside(outer, inner) -> None:
    """An inner loop lies within one iteration of its enclosing loop."""
    if outer is None:
        return
    if (inner.first - outer.first) // outer.size != (inner.end - 1 - outer.first) // outer.size:
        raise ProgramError(f"loop {inner.name} (tasks {inner.first}..{inner.end - 1}) spans "
                           f"two iterations of loop {outer.name}")


def iteration_templates(n_tasks: int, loops) -> np.ndarray:
    """Per task, an earlier task with the same timing fields (iteration 0's task j for a
    later iteration's task j, which the loop check makes equal), or itself."""
    tpl = np.arange(n_tasks, dtype=np.int64)
    for lp in loops:
        t = np.arange(lp.first + lp.size, lp.end, dtype=np.int64)
        tpl[t] = lp.first + (t - lp.first) % lp.size
    return tpl


# ---- static checks against the hardware ------------------------------------------------------


def iteration_roots(n_tasks: int, loops) -> np.ndarray:
    """Per task, the first task with its timing fields: `iteration_templates` followed back
    (in nested loops a template may itself be a later iteration's task)."""
    root = iteration_templates(n_tasks, loops)
    while (root[root] != root).any():
        root = root[root]
    return root
