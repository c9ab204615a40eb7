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

from dataclasses import dataclass, field

import numpy as np

from wse_sim import host
from wse_sim.hardware import DTYPE_BYTES, DTYPES, ConfigError, HardwareConfig
from wse_sim.program_loops import (
    Loop,
    _check_loop,
    _check_nesting,
    iteration_roots,
    iteration_templates,
)
from wse_sim.program_records import (
    DEP_RULES,
    MAX_COUNT,
    SPARSITY_ONE,
    TASK_TYPES,
    Alloc,
    Compute,
    DataOp,
    Dep,
    IoTransfer,
    LineStream,
    Multicast,
    ProgramError,
    Region,
    Unicast,
    ring_core,
    ring_position,
)

__all__ = ["DEP_RULES", "MAX_COUNT", "SPARSITY_ONE", "TASK_TYPES", "Alloc", "Compute", "DataOp",
           "Dep", "IoTransfer", "LineStream", "Loop", "Multicast", "Program", "ProgramBuilder",
           "ProgramError", "Region", "Unicast", "check_fits", "iteration_roots",
           "iteration_templates",
           "ring_core", "ring_position", "topological_order", "wavelets_for"]


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


# The builder looks at the free RAM every ROOM_CHECK_EVERY records and stops, in one line,
# when less than MIN_FREE_BYTES is left: a program too big for the host (records are Python
# objects, about 640 bytes each with their dependencies, measured on the 2-D training step;
# loops keep every iteration) is refused instead of the process being killed.
ROOM_CHECK_EVERY = 1 << 16
MIN_FREE_BYTES = 1 << 30
RECORD_BYTES = 640


class ProgramBuilder:
    """Collects tasks and buffers in order; `add` returns the task's index for `Dep`s."""

    def __init__(self, name: str):
        self.name = name
        self.tasks: list = []
        self.allocs: list = []
        self.loops: list = []

    def add(self, task) -> int:
        self.tasks.append(task)
        n = len(self.tasks)
        if n % ROOM_CHECK_EVERY == 0:
            self._check_room(n)
        return n - 1

    def _check_room(self, n: int) -> None:
        free = host.free_bytes()
        if free is not None and free < MIN_FREE_BYTES:
            raise ProgramError(
                f"program {self.name}: building it stopped at {n:,} records (about "
                f"{n * RECORD_BYTES / 2**30:.1f} GiB) with {free / 2**30:.2f} GiB of RAM left; "
                "the program does not fit in this machine's memory (every loop iteration, "
                "micro-batch and chunk is a record of its own): use fewer micro-batches or "
                "chunks, fewer layers (--model-set n_layers=N), a smaller grid or a machine "
                "with more memory")

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
