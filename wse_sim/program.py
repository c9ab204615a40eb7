"""The Program IR: work for the mesh, described over rectangular regions (SPMD).

A Program is a list of tasks. Each task is one record for many cores: a `Compute` runs on
every core of its region; a `Unicast` sends from every core of its region to a core given by
an offset rule or a fixed core; a `LineStream` runs along every row (or column) of its region,
either broadcasting from the first core or reducing into the last; a `Multicast` copies one
core's data to a whole region through a row-then-column tree. A full-wafer program is a few
hundred records, not a Python object per core.

Dependencies (`Dep`) are per core: the instance of a task that touches core c waits for the
event of task `Dep.task` at a core given by the rule: `same` (c), `offset` (c + (dx, dy)),
`at` (a fixed core) or `all` (the whole task). Timing rules are in docs/hardware-model.md.

Flow control (`Dep(..., head=True)`): a stream (unicast, multicast, broadcast line) may start
before a core it delivers to is ready to take the data; the fabric then holds its wavelets back.
A head dependency is taken at every destination d of the stream (the rule applied to d) and is
met when the stream's first wavelet can be taken there: the stream may start
`message_start + 2 T_R + hops(source, d) x hop` cycles before the needed event at d (never
before the grant that makes it ready). Destinations where the named task has no event impose
nothing.

Loops (`Loop`): a block of tasks repeated `count` times is stated once as such, so that the
listing prints it once and the fast engine can fast-forward it (docs/hardware-model.md,
"Loops"). The tasks stay in `Program.tasks`, every iteration in full; `ProgramBuilder.repeat`
builds them and checks that every iteration is the first one moved by whole iterations.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from wse_sim.hardware import DTYPE_BYTES, DTYPES, ConfigError, HardwareConfig

SPARSITY_ONE = 1 << 20  # density is stored as an integer fraction of 2**20: exact arithmetic


class ProgramError(ValueError):
    """The program is malformed or does not fit the hardware; one line with the numbers."""


@dataclass(frozen=True)
class Region:
    """Cores [x, x + cols) x [y, y + rows)."""

    x: int
    y: int
    cols: int
    rows: int

    def __post_init__(self):
        for name in ("x", "y", "cols", "rows"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer):
                raise ProgramError(f"Region.{name}: got {v!r}, must be an integer")
        if self.x < 0 or self.y < 0 or self.cols < 1 or self.rows < 1:
            raise ProgramError(f"Region: got {self}, needs x, y >= 0 and cols, rows >= 1")

    @property
    def size(self) -> int:
        return self.cols * self.rows

    @property
    def x1(self) -> int:
        return self.x + self.cols - 1

    @property
    def y1(self) -> int:
        return self.y + self.rows - 1

    def contains(self, x: int, y: int) -> bool:
        return self.x <= x <= self.x1 and self.y <= y <= self.y1

    def cells(self):
        """(x, y) of every core, row-major."""
        for yy in range(self.y, self.y + self.rows):
            for xx in range(self.x, self.x + self.cols):
                yield xx, yy

    def index(self, x: int, y: int) -> int:
        """Row-major rank of (x, y) inside the region."""
        return (y - self.y) * self.cols + (x - self.x)

    def __str__(self) -> str:
        return f"[{self.x}:{self.x + self.cols}, {self.y}:{self.y + self.rows}]"


DEP_RULES = ("same", "offset", "at", "all")


@dataclass(frozen=True)
class Dep:
    """Wait for task `task` at the core the rule names (see module docstring)."""

    task: int
    rule: str = "same"
    dx: int = 0
    dy: int = 0
    head: bool = False  # flow control: met when the first wavelet can be taken (see above)

    def __post_init__(self):
        if self.rule not in DEP_RULES:
            raise ProgramError(f"Dep.rule: got {self.rule!r}, must be one of {', '.join(DEP_RULES)}")
        if not isinstance(self.task, int) or self.task < 0:
            raise ProgramError(f"Dep.task: got {self.task!r}, must be a task index >= 0")
        if not isinstance(self.head, bool):
            raise ProgramError(f"Dep.head: got {self.head!r}, must be True or False")
        if self.head and self.rule not in ("same", "offset"):
            raise ProgramError(f"Dep.head: a head dependency is taken at each destination of "
                               f"the stream, so its rule must be 'same' or 'offset', got "
                               f"{self.rule!r}")

    def core_for(self, x: int, y: int) -> tuple[int, int] | None:
        """The core whose event is needed by the instance at (x, y); None for `all`."""
        if self.rule == "same":
            return x, y
        if self.rule == "offset":
            return x + self.dx, y + self.dy
        if self.rule == "at":
            return self.dx, self.dy
        return None


MAX_COUNT = 1 << 62  # FLOPs, bytes and wavelets: more would overflow the engines' int64 times


def _check_common(t):
    if not t.op or not isinstance(t.op, str):
        raise ProgramError(f"{type(t).__name__}.op: got {t.op!r}, must be a non-empty name")
    if not isinstance(t.region, Region):
        raise ProgramError(f"{t.op}: region got {t.region!r}, must be a Region(x, y, cols, rows)")
    if not isinstance(t.deps, tuple):
        raise ProgramError(f"{t.op}: deps got {t.deps!r}, must be a tuple of Dep records")
    for d in t.deps:
        if not isinstance(d, Dep):
            raise ProgramError(f"{t.op}: deps must be Dep records, got {d!r}")
        if d.head and not _delivers(t):
            raise ProgramError(f"{t.op}: a head dependency (flow control) needs a stream that "
                               f"delivers to cores (Unicast, Multicast, a broadcast "
                               f"LineStream), not a {_kind_name(t)}")


def _delivers(t) -> bool:
    """Whether a task is a stream that delivers its wavelets to other cores."""
    if isinstance(t, LineStream):
        return not t.reduce
    return isinstance(t, Unicast | Multicast)


def _kind_name(t) -> str:
    return "reducing LineStream" if isinstance(t, LineStream) else type(t).__name__


def _check_flow(t):
    _check_common(t)
    if isinstance(t.wavelets, bool) or not isinstance(t.wavelets, int) or t.wavelets < 1 \
            or t.wavelets > MAX_COUNT:
        raise ProgramError(f"{t.op}: wavelets got {t.wavelets!r}, must be an integer in "
                           "[1, 2**62]")
    if not isinstance(t.color, int) or t.color < 0:
        raise ProgramError(f"{t.op}: color got {t.color!r}, must be an integer >= 0")


@dataclass(frozen=True)
class DataOp:
    """What a task does to real data, for functional runs (`wse_sim.functional`).

    Compute: `kernel` names a batched kernel (e.g. "gemm_acc": out += a @ b) reading the
    buffers `inputs` and writing `output` on every core of the region. Flows: the buffer
    `inputs[0]` at the source is delivered into `output` at each destination (a reduce stream
    delivers the sum over its line). `params` holds kernel parameters as (key, value) pairs.
    Timing never looks at it: a task without data is a timing-only task.
    """

    kernel: str = ""
    inputs: tuple = ()
    output: str = ""
    params: tuple = ()

    def param(self, key: str, default=None):
        return dict(self.params).get(key, default)


@dataclass(frozen=True)
class Compute:
    """Every core of `region` computes. `flops` and SRAM bytes are totals over the region,
    split evenly; the first `total % cores` cores in row-major order take one more.

    kind `fmac`: FLOPs run as multiply-adds on the dtype's FMAC lanes (2 FLOPs per lane-cycle)
    with the skipped zeros of `sparsity` removed; kind `vector`: one FLOP per lane-cycle.
    """

    op: str
    region: Region
    flops: int
    dtype: str = "fp32"
    kind: str = "fmac"
    sparsity: float = 0.0
    sram_read_bytes: int = 0
    sram_write_bytes: int = 0
    deps: tuple = ()
    data: DataOp | None = None

    def __post_init__(self):
        _check_common(self)
        if self.dtype not in DTYPES:
            raise ProgramError(f"{self.op}: dtype got {self.dtype!r}, must be one of {', '.join(DTYPES)}")
        if self.kind not in ("fmac", "vector"):
            raise ProgramError(f"{self.op}: kind got {self.kind!r}, must be fmac or vector")
        for name in ("flops", "sram_read_bytes", "sram_write_bytes"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= MAX_COUNT:
                raise ProgramError(f"{self.op}: {name} got {v!r}, must be an integer in "
                                   "[0, 2**62]")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, int | float) \
                or not 0.0 <= self.sparsity < 1.0:
            raise ProgramError(f"{self.op}: sparsity got {self.sparsity!r}, must be in [0, 1)")

    @property
    def density_q20(self) -> int:
        """Fraction of multiply-adds kept, as an integer out of 2**20."""
        return SPARSITY_ONE - int(round(float(self.sparsity) * SPARSITY_ONE))


@dataclass(frozen=True)
class Unicast:
    """Every core (x, y) of `region` sends `wavelets` to (x + dx, y + dy), or to the fixed core
    `to` when given. With `wrap`, the offset wraps around inside the region (a torus shift,
    routed the long way back across the physical mesh). With `ring` ('x' or 'y'), every row
    (column) of the region is the interleaved ring 0, 2, 4, ..., 5, 3, 1 of its positions and
    a core's data moves `dx` (`dy`) places along it (`ring_core`): a shift whose every hop is at
    most 2 cores (MeshGEMM's), or a rotation by any number of places; one record per shift."""

    op: str
    region: Region
    wavelets: int
    dx: int = 0
    dy: int = 0
    to: tuple | None = None
    wrap: bool = False
    color: int = 0
    deps: tuple = ()
    data: DataOp | None = None
    ring: str = ""

    def __post_init__(self):
        _check_flow(self)
        r = self.region
        if self.ring not in ("", "x", "y"):
            raise ProgramError(f"{self.op}: ring got {self.ring!r}, must be '', 'x' or 'y'")
        if self.ring:
            n, steps, other = ((r.cols, self.dx, self.dy) if self.ring == "x"
                               else (r.rows, self.dy, self.dx))
            if self.to is not None or self.wrap or other != 0 or isinstance(steps, bool) \
                    or not isinstance(steps, int) or steps % n == 0:
                raise ProgramError(
                    f"{self.op}: a ring shift along {self.ring} moves d{self.ring} places "
                    f"(an integer, not a multiple of the {n} cores of the line), with no "
                    f"to, no wrap and d{'y' if self.ring == 'x' else 'x'} = 0; got "
                    f"dx={self.dx!r}, dy={self.dy!r}, to={self.to}, wrap={self.wrap}")
            return
        if self.to is not None and not (
                isinstance(self.to, tuple | list) and len(self.to) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in self.to)):
            raise ProgramError(f"{self.op}: to got {self.to!r}, must be a core (x, y) or None")
        for name in ("dx", "dy"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ProgramError(f"{self.op}: {name} got {v!r}, must be an integer")
        to_self = (self.to is not None and r.contains(*self.to)) or (
            self.to is None and self.dx % (r.cols if self.wrap else 1 << 62) == 0
            and self.dy % (r.rows if self.wrap else 1 << 62) == 0)
        if to_self:
            raise ProgramError(f"{self.op}: a core of {r} would send to itself "
                               f"(to={self.to}, dx={self.dx}, dy={self.dy}); that moves nothing")

    def dest(self, x: int, y: int) -> tuple[int, int]:
        r = self.region
        if self.ring == "x":
            return r.x + ring_core(ring_position(x - r.x, r.cols) + self.dx, r.cols), y
        if self.ring == "y":
            return x, r.y + ring_core(ring_position(y - r.y, r.rows) + self.dy, r.rows)
        if self.to is not None:
            return tuple(self.to)
        if self.wrap:
            r = self.region
            return (r.x + (x - r.x + self.dx) % r.cols, r.y + (y - r.y + self.dy) % r.rows)
        return x + self.dx, y + self.dy


def ring_core(position, n: int):
    """The core (0 .. n - 1 along a line) at `position` (taken modulo n) of the interleaved
    ring 0, 2, 4, ..., 5, 3, 1; works on numpy arrays too."""
    p = position % n
    half = (n + 1) // 2
    return np.where(p < half, 2 * p, 2 * (n - 1 - p) + 1) if isinstance(p, np.ndarray) \
        else (2 * p if p < half else 2 * (n - 1 - p) + 1)


def ring_position(core, n: int):
    """Where core `core` (0 .. n - 1 along a line) sits on the interleaved ring."""
    return np.where(core % 2 == 0, core // 2, n - 1 - (core - 1) // 2) \
        if isinstance(core, np.ndarray) else (core // 2 if core % 2 == 0
                                               else n - 1 - (core - 1) // 2)


@dataclass(frozen=True)
class LineStream:
    """Along every row (axis 'x') or column (axis 'y') of `region`, a pipelined stream of
    `wavelets` runs in `direction` (+1: toward larger x/y). Broadcast (reduce=False): the first
    core's data reaches every core of the line. Reduce: every core adds its own vector of
    `dtype` values to the passing stream and forwards it; the last core holds the sum."""

    op: str
    region: Region
    axis: str
    direction: int
    wavelets: int
    reduce: bool = False
    dtype: str = "fp32"
    color: int = 0
    deps: tuple = ()
    data: DataOp | None = None

    def __post_init__(self):
        _check_flow(self)
        if self.axis not in ("x", "y"):
            raise ProgramError(f"{self.op}: axis got {self.axis!r}, must be 'x' or 'y'")
        if self.direction not in (1, -1):
            raise ProgramError(f"{self.op}: direction got {self.direction!r}, must be +1 or -1")
        if self.dtype not in DTYPES:
            raise ProgramError(f"{self.op}: dtype got {self.dtype!r}, must be one of {', '.join(DTYPES)}")
        if self.length < 2:
            raise ProgramError(f"{self.op}: a line stream needs at least 2 cores along {self.axis}")

    @property
    def length(self) -> int:
        return self.region.cols if self.axis == "x" else self.region.rows

    def lines(self):
        """(cores of the line in stream order) for every line of the region."""
        r = self.region
        if self.axis == "x":
            xs = range(r.x, r.x1 + 1) if self.direction > 0 else range(r.x1, r.x - 1, -1)
            for y in range(r.y, r.y1 + 1):
                yield [(x, y) for x in xs]
        else:
            ys = range(r.y, r.y1 + 1) if self.direction > 0 else range(r.y1, r.y - 1, -1)
            for x in range(r.x, r.x1 + 1):
                yield [(x, y) for y in ys]


@dataclass(frozen=True)
class Multicast:
    """Core `src` sends `wavelets` to every core of `region` along a row-then-column tree."""

    op: str
    src: tuple
    region: Region
    wavelets: int
    color: int = 0
    deps: tuple = ()
    data: DataOp | None = None

    def __post_init__(self):
        _check_flow(self)
        if len(self.src) != 2:
            raise ProgramError(f"{self.op}: src got {self.src!r}, must be (x, y)")
        if self.region.size == 1 and self.region.contains(*self.src):
            raise ProgramError(f"{self.op}: a multicast from {self.src} to itself has no "
                               "destination")


@dataclass(frozen=True)
class Alloc:
    """A buffer of `bytes_per_core` bytes in the SRAM of every core of `region`."""

    name: str
    region: Region
    bytes_per_core: int
    shape: tuple = ()      # tile shape per core, for functional runs (optional)
    dtype: str = "fp32"

    def __post_init__(self):
        if not isinstance(self.region, Region):
            raise ProgramError(f"Alloc {self.name}: region got {self.region!r}, must be a "
                               "Region(x, y, cols, rows)")
        v = self.bytes_per_core
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or not 0 <= v <= MAX_COUNT:
            raise ProgramError(f"Alloc {self.name}: bytes_per_core got {v!r}, must be an "
                               "integer in [0, 2**62]")


@dataclass(frozen=True)
class IoTransfer:
    """Bytes between off-wafer memory and every core of `region`, through the wafer's I/O.

    `direction` 'in' (weights streaming in) or 'out' (gradients streaming out). `bytes` is the
    total over the region. The I/O channel (`io_bits_per_s`) is one resource shared by all
    transfers; inside the wafer the data enters each row at the west edge of the mesh.
    """

    op: str
    region: Region
    bytes: int
    direction: str = "in"
    deps: tuple = ()
    data: DataOp | None = None
    color: int = 0

    def __post_init__(self):
        _check_common(self)
        if isinstance(self.bytes, bool) or not isinstance(self.bytes, int | np.integer) \
                or not 1 <= self.bytes <= MAX_COUNT:
            raise ProgramError(f"{self.op}: bytes got {self.bytes!r}, must be an integer >= 1")
        if self.direction not in ("in", "out"):
            raise ProgramError(f"{self.op}: direction got {self.direction!r}, must be 'in' or 'out'")


TASK_TYPES = (Compute, Unicast, LineStream, Multicast, IoTransfer)


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


def _event_rects(t) -> list[tuple[int, int, int, int]]:
    """Rectangles (x, y, cols, rows) covering every core where task t has an event."""
    r = t.region
    out = [(r.x, r.y, r.cols, r.rows)]
    if isinstance(t, Unicast):
        out.append((t.to[0], t.to[1], 1, 1) if t.to is not None else
                   (r.x, r.y, r.cols, r.rows) if t.wrap or t.ring else
                   (r.x + t.dx, r.y + t.dy, r.cols, r.rows))
    elif isinstance(t, Multicast):
        out.append((t.src[0], t.src[1], 1, 1))
    return out


def _check_head(i: int, t, d: Dep, producer) -> None:
    """A head dependency must name, at some destination of the stream, a core where the
    producer has an event (else it would be silently void)."""
    dests = _event_rects(t)[-1] if isinstance(t, Unicast) else (
        t.region.x, t.region.y, t.region.cols, t.region.rows)
    x, y, c, r = dests
    x, y = x + (d.dx if d.rule == "offset" else 0), y + (d.dy if d.rule == "offset" else 0)
    for px, py, pc, pr in _event_rects(producer):
        if x < px + pc and px < x + c and y < py + pr and py < y + r:
            return
    raise ProgramError(f"task {i} ({t.op}): head dependency on task {d.task} "
                       f"({producer.op}) names no destination core where that task has an event")


@dataclass(frozen=True)
class Program:
    """Tasks + SRAM allocations + facts about what is being run (`meta`)."""

    name: str
    tasks: tuple
    allocs: tuple = ()
    dtype: str = "fp32"
    tokens: int = 0
    cores_used: int = 0
    meta: dict = field(default_factory=dict, compare=False, hash=False)
    loops: tuple = ()

    def __post_init__(self):
        if not isinstance(self.loops, tuple) or not all(isinstance(lp, Loop) for lp in self.loops):
            raise ProgramError(f"Program.loops: got {self.loops!r}, must be a tuple of Loop")
        _check_nesting(self.loops)
        for i, t in enumerate(self.tasks):
            if not isinstance(t, TASK_TYPES):
                raise ProgramError(f"task {i}: got {type(t).__name__}, must be one of "
                                   f"{', '.join(c.__name__ for c in TASK_TYPES)}")
            for d in t.deps:
                if d.task >= len(self.tasks) or d.task == i:
                    raise ProgramError(f"task {i} ({t.op}): depends on task {d.task}, "
                                       f"which is itself or not in 0..{len(self.tasks) - 1}")
                if d.head:
                    _check_head(i, t, d, self.tasks[d.task])
        for lp in self.loops:
            _check_loop(self.tasks, lp)

    def io_bytes(self) -> int:
        return sum(t.bytes for t in self.tasks if isinstance(t, IoTransfer))

    def loop_iterations(self) -> int:
        """Iterations of all the program's loops."""
        return sum(lp.count for lp in self.loops)

    def total_flops(self) -> int:
        return sum(t.flops for t in self.tasks if isinstance(t, Compute))

    def describe(self) -> str:
        """A listing a person can read: one line per task; a loop prints its first iteration
        once, with its count."""
        lines = [f"program {self.name}: {len(self.tasks)} tasks, {len(self.allocs)} buffers"
                 + (f", {len(self.loops)} loops" if self.loops else "")]
        starts = {lp.first: lp for lp in self.loops}
        self._listing(lines, 0, len(self.tasks), starts, "", set())
        return "\n".join(lines)

    def _listing(self, lines: list, i: int, end: int, starts: dict, pad: str, seen: set) -> None:
        """Tasks i .. end - 1; a loop prints its iteration 0 once (an inner one inside it)."""
        while i < end:
            lp = starts.get(i)
            if lp is not None and lp.name + str(lp.first) not in seen:
                seen.add(lp.name + str(lp.first))
                lines.append(f"{pad}  loop {lp.name} x {lp.count} (tasks {lp.first}.."
                             f"{lp.end - 1}, {lp.size} per iteration; iteration 0:)")
                self._listing(lines, lp.first, lp.first + lp.size, starts, pad + "  ", seen)
                lines.append(f"{pad}  end loop {lp.name}")
                i = lp.end
                continue
            lines.append(pad + self._line(i))
            i += 1

    def _line(self, i: int) -> str:
        t = self.tasks[i]
        deps = ",".join(f"{d.task}{'' if d.rule == 'same' else ':' + d.rule}"
                        f"{':head' if d.head else ''}" for d in t.deps)
        if isinstance(t, Compute):
            body = f"compute {t.kind} {t.flops} FLOP {t.dtype} on {t.region}"
        elif isinstance(t, Unicast):
            tgt = (f"to {t.to}" if t.to is not None else
                   f"{t.dx if t.ring == 'x' else t.dy} places along the {t.ring} ring"
                   if t.ring else f"by ({t.dx},{t.dy}){' wrap' if t.wrap else ''}")
            body = f"unicast {t.wavelets} wv from {t.region} {tgt} color {t.color}"
        elif isinstance(t, LineStream):
            kind = "reduce" if t.reduce else "bcast"
            body = (f"line-{kind} {t.wavelets} wv along {t.axis}{'+' if t.direction > 0 else '-'}"
                    f" of {t.region} color {t.color}")
        elif isinstance(t, IoTransfer):
            body = f"io-{t.direction} {t.bytes} B {'to' if t.direction == 'in' else 'from'} {t.region}"
        else:
            body = f"multicast {t.wavelets} wv from {t.src} to {t.region} color {t.color}"
        return f"  {i:4d} {t.op:24s} {body}  deps[{deps}]"


def topological_order(program: Program) -> list[int]:
    """Task indices, every task after the tasks it depends on, ready ties by lowest index;
    a dependency cycle is a ProgramError naming the tasks (such a program never finishes)."""
    import heapq
    n = len(program.tasks)
    indeg = [0] * n
    users: list[list[int]] = [[] for _ in range(n)]
    for i, t in enumerate(program.tasks):
        for d in {d.task for d in t.deps}:
            indeg[i] += 1
            users[d].append(i)
    heap = [i for i in range(n) if indeg[i] == 0]
    heapq.heapify(heap)
    order = []
    while heap:
        i = heapq.heappop(heap)
        order.append(i)
        for j in users[i]:
            indeg[j] -= 1
            if indeg[j] == 0:
                heapq.heappush(heap, j)
    if len(order) < n:
        stuck = [f"{i} ({program.tasks[i].op})" for i in range(n) if indeg[i] > 0]
        raise ProgramError(f"dependency cycle: tasks {', '.join(stuck[:8])} wait on each other "
                           "and can never run")
    return order


def iteration_templates(n_tasks: int, loops) -> np.ndarray:
    """Per task, an earlier task with the same timing fields (iteration 0's task j for a
    later iteration's task j, which the loop check makes equal), or itself."""
    tpl = np.arange(n_tasks, dtype=np.int64)
    for lp in loops:
        t = np.arange(lp.first + lp.size, lp.end, dtype=np.int64)
        tpl[t] = lp.first + (t - lp.first) % lp.size
    return tpl


# ---- static checks against the hardware ------------------------------------------------------

def _rects(t) -> list[tuple[int, int, int, int]]:
    """Rectangles (x0, y0, x1, y1) covering every router a task's routes pass through."""
    if isinstance(t, Compute | IoTransfer):
        return []
    if isinstance(t, LineStream):
        r = t.region
        return [(r.x, r.y, r.x1, r.y1)]
    if isinstance(t, Multicast):
        r = t.region
        sx, sy = t.src
        return [(min(sx, r.x), sy, max(sx, r.x1), sy),
                (r.x, min(sy, r.y), r.x1, max(sy, r.y1))]
    r = t.region
    if t.wrap or t.ring:
        return [(r.x, r.y, r.x1, r.y1)]
    if t.to is not None:
        tx, ty = t.to
        return [(min(r.x, tx), r.y, max(r.x1, tx), r.y1), (tx, min(r.y, ty), tx, max(r.y1, ty))]
    return [(min(r.x, r.x + t.dx), r.y, max(r.x1, r.x1 + t.dx), r.y1),
            (r.x + t.dx, min(r.y, r.y + t.dy), r.x1 + t.dx, max(r.y1, r.y1 + t.dy))]


def _covered(rects: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Cores inside any of the rectangles (x0, y0, x1, y1): 2-D difference array, cumsum."""
    d = np.zeros((rows + 1, cols + 1), np.int32)
    x0, y0, x1, y1 = rects.T
    np.add.at(d, (y0, x0), 1)
    np.add.at(d, (y0, x1 + 1), -1)
    np.add.at(d, (y1 + 1, x0), -1)
    np.add.at(d, (y1 + 1, x1 + 1), 1)
    return d.cumsum(0).cumsum(1)[:rows, :cols] > 0


def check_fits(program: Program, hw: HardwareConfig) -> dict:
    """Reject a program that does not fit the hardware; return the per-core resource maps.

    Checks: every region, route and dependency core inside the mesh; SRAM bytes per core
    (sum of all allocations) within `sram_bytes`; routes (colors) per core within
    `colors_per_core`. Returns {'sram_bytes': array, 'colors': array} shaped (rows, cols).
    """
    cols, rows = hw.mesh_cols, hw.mesh_rows
    tpl = iteration_templates(len(program.tasks), program.loops).tolist()
    for i, t in enumerate(program.tasks):
        if tpl[i] != i:  # a later loop iteration: iteration 0's regions, checked already
            continue
        regions = [t.region] + ([Region(t.src[0], t.src[1], 1, 1)] if isinstance(t, Multicast) else [])
        if isinstance(t, Unicast) and not (t.wrap or t.ring):  # those stay in the region
            r = t.region
            if t.to is not None:
                regions.append(Region(int(t.to[0]), int(t.to[1]), 1, 1) if min(t.to) >= 0 else r)
                if min(t.to) < 0:
                    raise ProgramError(f"task {i} ({t.op}): destination {t.to} is outside the mesh")
            else:
                if r.x + t.dx < 0 or r.y + t.dy < 0:
                    raise ProgramError(f"task {i} ({t.op}): destinations {r} + ({t.dx},{t.dy}) "
                                       f"leave the {cols} x {rows} mesh")
                regions.append(Region(r.x + t.dx, r.y + t.dy, r.cols, r.rows))
        for g in regions:
            if g.x1 >= cols or g.y1 >= rows:
                raise ProgramError(f"task {i} ({t.op}): region {g} does not fit the "
                                   f"{cols} x {rows} mesh of {hw.name}")
    sram = np.zeros((rows + 1, cols + 1), dtype=np.int64)
    for a in program.allocs:
        r = a.region
        if r.x1 >= cols or r.y1 >= rows:
            raise ProgramError(f"buffer {a.name}: region {r} does not fit the {cols} x {rows} mesh")
        sram[r.y, r.x] += a.bytes_per_core
        sram[r.y, r.x1 + 1] -= a.bytes_per_core
        sram[r.y1 + 1, r.x] -= a.bytes_per_core
        sram[r.y1 + 1, r.x1 + 1] += a.bytes_per_core
    sram = sram.cumsum(0).cumsum(1)[:rows, :cols]
    worst = int(sram.max()) if sram.size else 0
    if worst > hw.sram_bytes:
        y, x = np.unravel_index(int(sram.argmax()), sram.shape)
        held = [f"{a.name}={a.bytes_per_core}" for a in program.allocs if a.region.contains(x, y)]
        raise ProgramError(f"SRAM does not fit: core ({x},{y}) needs {worst} bytes > sram_bytes "
                           f"{hw.sram_bytes} ({', '.join(held[:6])}{' ...' if len(held) > 6 else ''})")
    rects: dict[int, set] = {}
    routes: list = []  # per task its route rectangles (a loop iteration's: iteration 0's)
    for i, t in enumerate(program.tasks):
        found = _rects(t) if tpl[i] == i else routes[tpl[i]]
        routes.append(found)
        if found:
            rects.setdefault(t.color, set()).update(found)
    used = np.zeros((rows, cols), np.int16)
    for found in rects.values():  # a color counts once per core, however many routes share it
        used += _covered(np.array(list(found), np.int64), rows, cols)
    most = int(used.max()) if rects else 0
    if most > hw.colors_per_core:
        y, x = np.unravel_index(int(used.argmax()), used.shape)
        raise ProgramError(f"colors do not fit: core ({x},{y}) routes {most} colors > "
                           f"colors_per_core {hw.colors_per_core}")
    return {"sram_bytes": sram, "colors": used}


def wavelets_for(values: int, dtype: str) -> int:
    """32-bit wavelets needed to carry `values` numbers of `dtype` (fp16/bf16 pack two)."""
    try:
        per = 4 // DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"dtype: got {dtype!r}, must be one of {', '.join(DTYPES)}") from None
    return -(-int(values) // per)


class ProgramBuilder:
    """Collects tasks and buffers in order; `add` returns the task's index for `Dep`s."""

    def __init__(self, name: str):
        self.name = name
        self.tasks: list = []
        self.allocs: list = []
        self.loops: list = []

    def add(self, task) -> int:
        self.tasks.append(task)
        return len(self.tasks) - 1

    def repeat(self, name: str, count: int, body) -> Loop | None:
        """Call `body(i)` for i = 0 .. count - 1, each call adding one iteration's tasks, and
        declare them a `Loop` (checked when the program is built: every iteration must be the
        first one moved by whole iterations). Returns the Loop (None when count is 0)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ProgramError(f"loop {name}: count got {count!r}, must be an integer >= 0")
        first, before = len(self.tasks), len(self.loops)
        for i in range(count):
            body(i)
        if count == 0:
            return None
        size, rest = divmod(len(self.tasks) - first, count)
        if rest or not size:
            raise ProgramError(f"loop {name}: its {count} iterations added "
                               f"{len(self.tasks) - first} tasks, not the same number each")
        lp = Loop(name, first, size, count)
        if before and first < self.loops[before - 1].end:
            raise ProgramError(f"loop {name}: starts inside loop {self.loops[before - 1].name}")
        # loops its body made are inner loops: the enclosing one goes before them (task order)
        self.loops.insert(before, lp)
        _check_nesting(tuple(self.loops[before:]))
        return lp

    def alloc(self, name: str, region: Region, bytes_per_core: int, shape: tuple = (),
              dtype: str = "fp32") -> None:
        if bytes_per_core > 0:
            self.allocs.append(Alloc(name, region, int(bytes_per_core), tuple(shape), dtype))

    def build(self, **kw) -> Program:
        return Program(self.name, tuple(self.tasks), tuple(self.allocs),
                       loops=tuple(self.loops), **kw)
