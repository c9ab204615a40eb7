"""The Program IR's records: regions, dependencies and the five task kinds (`Compute`,
`Unicast`, `LineStream`, `Multicast`, `IoTransfer`), plus SRAM allocations and the data
operations a functional run attaches. Each record checks itself when it is made (one line
naming the field, the value and what is allowed). `wse_sim.program` puts them in a Program."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wse_sim.hardware import DTYPES

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

    def dest(self, x, y) -> tuple:
        """Where core (x, y) sends; of every core at once where x and y are numpy arrays."""
        r = self.region
        if self.ring == "x":
            return r.x + ring_core(ring_position(x - r.x, r.cols) + self.dx, r.cols), y
        if self.ring == "y":
            return x, r.y + ring_core(ring_position(y - r.y, r.rows) + self.dy, r.rows)
        if self.to is not None:
            if isinstance(x, np.ndarray):
                return np.full_like(x, self.to[0]), np.full_like(y, self.to[1])
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
