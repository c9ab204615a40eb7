"""Collectives as Programs: broadcast, reduce, allreduce and all-to-all on a line or a region.

Every builder returns a `Program` (tasks + one `Alloc` of the vector buffer per core + `meta`)
for one collective over a line of P cores (`pes=P`: row 0 from x = 0; or a 1-row / 1-column
`region`) or over a rows x cols region, on a vector of B 32-bit wavelets per core (`wavelets`;
fp16/bf16 pack two values per wavelet). `root` is `"corner"` (the region's first core) or
`"centre"` (the middle core, position (P - 1) // 2; in 2-D the middle of both axes).

`build_collective(kind, hw, ...)` validates every argument and builds; `KINDS` maps each kind
name to its builder; `closed_form_cycles(kind, hw, ...)` is the contention-free cost of the
same program under our timing rules (docs/hardware-model.md), derived in docs/collectives.md;
tests pin the engines to it to the cycle.

Line builders work along an axis of a region and run on every line of it at once (SPMD): a
row phase of a 2-D collective is the line builder applied to all rows in the same records.
"""

from __future__ import annotations

from mapper.collectives_cost import _cf
from mapper.collectives_spec import (
    _IMPL,
    ROOTLESS,
    Line,
    Spec,
    _check,
    _rho,
    block_wavelets,
    root_core,
    sram_bytes_per_core,
    tree_children,
    two_level_groups,
)
from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.program import (
    Compute,
    Dep,
    LineStream,
    Multicast,
    Program,
    ProgramBuilder,
    Region,
    Unicast,
)


class _Ctx:
    def __init__(self, spec: Spec, hw: HardwareConfig):
        self.spec, self.hw = spec, hw
        self.pb = ProgramBuilder(f"{spec.kind}-P{spec.P}-B{spec.wavelets}")
        self.color = 0

    def add(self, task) -> int:
        return self.pb.add(task)

    def next_color(self) -> int:
        """A fresh color per phase (colors share link bandwidth; they only cost router budget)."""
        c = self.color
        self.color = (self.color + 1) % max(1, min(4, self.hw.colors_per_core))
        return c

    def values(self, wavelets: int) -> int:
        return wavelets * (4 // DTYPE_BYTES[self.spec.dtype])

    def add_task(self, op: str, region: Region, wavelets: int, deps) -> int:
        """Every core of `region` adds a received vector of `wavelets` into its own."""
        n = region.size
        return self.add(Compute(op, region, self.values(wavelets) * n, dtype=self.spec.dtype,
                                kind="vector", sram_read_bytes=8 * wavelets * n,
                                sram_write_bytes=4 * wavelets * n, deps=tuple(deps)))


def _same(tasks) -> list:
    return [Dep(t) for t in tasks]


def _chain(ctx: _Ctx, line: Line, rho: int, b: int, after=()) -> list[int]:
    """Pipelined chain reduce of every line into position rho: one LineStream from each side,
    the shorter side first (both end at rho, whose compute unit adds them one after the
    other). Returns the tasks whose event at rho marks the sum."""
    deps, color, out = tuple(_same(after)), ctx.next_color(), []
    if rho >= 1:
        out.append(ctx.add(LineStream("chain-lo", line.part(0, rho + 1), line.axis, +1, b,
                                      reduce=True, dtype=ctx.spec.dtype, color=color,
                                      deps=deps)))
    if rho <= line.n - 2:
        out.append(ctx.add(LineStream("chain-hi", line.part(rho, line.n - rho), line.axis, -1, b,
                                      reduce=True, dtype=ctx.spec.dtype, color=color,
                                      deps=deps)))
    return out


def _broadcast(ctx: _Ctx, after=()) -> list[int]:
    """Root to every core of the region: a LineStream from an end of a line, else one
    Multicast (row, then every column)."""
    spec, deps, color = ctx.spec, tuple(_same(after)), ctx.next_color()
    b = spec.wavelets
    if spec.is_line and spec.root == "corner":
        line = spec.line
        return [ctx.add(LineStream("bcast-line", line.region, line.axis, +1, b, color=color,
                                   deps=deps))]
    return [ctx.add(Multicast("bcast-tree", root_core(spec), spec.region, b, color=color,
                              deps=deps))]


def _star(ctx: _Ctx, line: Line, rho: int, b: int) -> list[int]:
    """Every core sends its vector to the root (the far side first in record order, nearest
    core first inside it); the root adds as the wavelets arrive."""
    color, out, to = ctx.next_color(), [], line.xy(rho)
    if rho <= line.n - 2:
        out.append(ctx.add(Unicast("star-hi", line.part(rho + 1, line.n - 1 - rho), b, to=to,
                                   color=color)))
    if rho >= 1:
        out.append(ctx.add(Unicast("star-lo", line.part(0, rho), b, to=to, color=color)))
    return out


def _tree(ctx: _Ctx, line: Line, rho: int, b: int) -> list[int]:
    """Reduce-tree: every child sends its partial sum to its receiver (one Unicast per child:
    the IR has no strided regions), which adds it (a vector Compute). A child sends after its
    own adds and after the receiver has added its previous child."""
    color = ctx.next_color()
    children = tree_children(line.n, rho, ctx.spec.arity)
    last_add: dict[int, int] = {}

    def emit(r: int) -> None:  # post-order: a child's subtree before the child sends
        for c, hops in children[r]:
            emit(c)
            deps = [Dep(last_add[c])] if c in last_add else []
            if r in last_add:
                rx, ry = line.xy(r)
                deps.append(Dep(last_add[r], "at", rx, ry))
            u = ctx.add(Unicast(f"tree-send-h{hops}", line.part(c), b, **line.step(r - c),
                                color=color, deps=tuple(deps)))
            last_add[r] = ctx.add_task(f"tree-add-h{hops}", line.part(r), b, [Dep(u)])

    emit(rho)
    return [last_add[rho]]


def _two_level(ctx: _Ctx, line: Line, b: int, after=()) -> list[int]:
    """Groups chain-reduce to their leaders (the end nearest the root, position 0), then the
    leaders send to the root, nearest first, once every group is done."""
    g, m, r0 = two_level_groups(line.n, ctx.spec.group)
    deps_after = _same(after)
    chains, out = [], []
    color = ctx.next_color()
    if r0 >= 2:
        out.append(ctx.add(LineStream("group0-chain", line.part(0, r0), line.axis, -1, b,
                                      reduce=True, dtype=ctx.spec.dtype, color=color,
                                      deps=tuple(deps_after))))
    if g >= 2:
        for k in range(1, m + 1):
            chains.append(ctx.add(LineStream(f"group{k}-chain", line.part(r0 + (k - 1) * g, g),
                                             line.axis, -1, b, reduce=True,
                                             dtype=ctx.spec.dtype, color=color,
                                             deps=tuple(deps_after))))
    color = ctx.next_color()
    leader_deps = tuple([Dep(t, "all") for t in chains] + deps_after)
    for k in range(1, m + 1):
        d = r0 + (k - 1) * g
        out.append(ctx.add(Unicast(f"leader{k}-to-root", line.part(d), b, **line.step(-d),
                                   color=color, deps=leader_deps)))
    return out


def _ring(ctx: _Ctx, line: Line, b: int, parts: str, first_deps=()) -> list[int]:
    """Ring allreduce phases on the folded ring of every line: 'rs' (reduce-scatter: n - 1
    steps of send block + add), 'ag' (allgather: n - 1 steps of forward), or 'both'. A step
    is one ring Unicast over the lines (every position sends one place on along its line's
    interleaved ring: neighbours at most 2 cores apart) and, in the reduce-scatter, one add;
    a position's next send waits for its own last add or receipt and its own last send (both
    events of the step at that core). A phase's steps after its first are a loop. Returns
    the last step's tasks."""
    n, color, reg = line.n, ctx.next_color(), line.region
    state = {"ready": list(first_deps), "last": []}

    def step(what: str) -> None:
        send = ctx.add(Unicast(f"ring-{what}-send", reg, b, **line.step(1), ring=line.axis,
                               color=color, deps=tuple(state["ready"])))
        if what == "rs":
            add = ctx.add_task("ring-rs-add", reg, b, [Dep(send)])
            state["ready"], state["last"] = [Dep(add), Dep(send)], [add]
        else:
            state["ready"], state["last"] = [Dep(send)], [send]

    for what in (("rs",) if parts == "rs" else ("ag",) if parts == "ag" else ("rs", "ag")):
        step(what)
        if n > 2:
            ctx.pb.repeat(f"ring-{what}", n - 2, lambda _i, w=what: step(w))
    return state["last"]


def _all_to_all(ctx: _Ctx, line: Line, b: int) -> list[int]:
    """n - 1 bulk-synchronous shift steps: at step k every core sends its block for the core k
    positions back (wrapping around the line) after the whole previous step is done."""
    color, prev = ctx.next_color(), None
    for k in range(1, line.n):
        deps = (Dep(prev, "all"),) if prev is not None else ()
        prev = ctx.add(Unicast(f"a2a-shift-{k}", line.region, b, **line.step(-k), wrap=True,
                               color=color, deps=deps))
    return [prev]


def _barrier(tasks) -> tuple:
    return tuple(Dep(t, "all") for t in tasks)


def _build_reduce(ctx: _Ctx) -> list[int]:
    """The reduce of ctx.spec.kind (or of the allreduce built on it) to the root."""
    spec, b = ctx.spec, ctx.spec.wavelets
    kind = spec.kind
    if kind in ("reduce-star",):
        line = spec.line
        return _star(ctx, line, _rho(spec, line.n), b)
    if kind == "reduce-tree":
        line = spec.line
        return _tree(ctx, line, _rho(spec, line.n), b)
    chain = kind in ("reduce-chain", "allreduce-reduce-broadcast")  # else two-level
    if spec.is_line:
        line = spec.line
        if chain:
            return _chain(ctx, line, _rho(spec, line.n), b)
        return _two_level(ctx, line, b)
    r = spec.region
    rows_line = Line(r, "x")
    rx, _ = root_core(spec)
    col_line = Line(Region(rx, r.y, 1, r.rows), "y")
    if chain:
        first = _chain(ctx, rows_line, _rho(spec, r.cols), b)
        return _chain(ctx, col_line, _rho(spec, r.rows), b, after=first)
    first = _two_level(ctx, rows_line, b)
    return _two_level(ctx, col_line, b, after=first)


def _build_ring(ctx: _Ctx) -> list[int]:
    spec = ctx.spec
    if spec.is_line:
        return _ring(ctx, spec.line, block_wavelets(spec)[0], "both")
    b1, b2 = block_wavelets(spec)
    r = spec.region
    rs = _ring(ctx, Line(r, "x"), b1, "rs")
    mid = _ring(ctx, Line(r, "y"), b2, "both", first_deps=_barrier(rs))
    return _ring(ctx, Line(r, "x"), b1, "ag", first_deps=_barrier(mid))


def _build(ctx: _Ctx) -> list[int]:
    kind = ctx.spec.kind
    if kind == "broadcast":
        return _broadcast(ctx)
    if kind in ("reduce-chain", "reduce-star", "reduce-tree", "reduce-two-level"):
        return _build_reduce(ctx)
    if kind in ("allreduce-reduce-broadcast", "allreduce-two-level"):
        return _broadcast(ctx, after=_build_reduce(ctx))
    if kind == "allreduce-ring":
        return _build_ring(ctx)
    return _all_to_all(ctx, ctx.spec.line, block_wavelets(ctx.spec)[0])


def _closed_form(spec: Spec, hw: HardwareConfig) -> int | None:
    return _cf(spec, hw)


# ---- the public API ----------------------------------------------------------------------------

def build_collective(kind: str, hw: HardwareConfig, *, pes: int | None = None,
                     rows: int | None = None, cols: int | None = None,
                     region: Region | None = None, wavelets: int, root: str = "corner",
                     dtype: str = "fp32", arity: int = 2, group: int | None = None) -> Program:
    """The Program of collective `kind` (see KINDS) over a line of `pes` cores (row 0 from
    x = 0), a rows x cols region at the origin, or a given `region`, on `wavelets` 32-bit
    wavelets per core. `arity`: children per node of reduce-tree; `group`: cores per group of
    the two-level kinds (default about sqrt(P)). Raises ValueError (one line, naming the
    argument) on anything out of range."""
    spec = _check(kind, hw, pes, rows, cols, region, wavelets, root, dtype, arity, group)
    ctx = _Ctx(spec, hw)
    finals = _build(ctx)
    ctx.pb.alloc("vector", spec.region, 4 * spec.wavelets)
    extra = sram_bytes_per_core(spec) - 4 * spec.wavelets
    if extra:
        ctx.pb.alloc("recv", spec.region, extra)
    r = spec.region
    meta = {
        "kind": kind, "P": spec.P, "B": spec.wavelets, "root": root_core(spec),
        "root_rule": None if kind in ROOTLESS else spec.root, "rows": r.rows, "cols": r.cols,
        "region": (r.x, r.y, r.cols, r.rows), "dtype": dtype, "final_tasks": tuple(finals),
        "closed_form_cycles": _closed_form(spec, hw),
    }
    if kind == "reduce-tree":
        meta["arity"] = spec.arity
    if kind.endswith("two-level"):
        meta["group"] = (two_level_groups(spec.line.n, spec.group)[0] if spec.is_line else
                         tuple(two_level_groups(n, spec.group)[0] for n in (r.cols, r.rows)))
    if kind in ("allreduce-ring", "all-to-all"):
        meta["block_wavelets"] = block_wavelets(spec)
    return ctx.pb.build(dtype=dtype, cores_used=spec.P, meta=meta)


def closed_form_cycles(kind: str, hw: HardwareConfig, *, pes: int | None = None,
                       rows: int | None = None, cols: int | None = None,
                       region: Region | None = None, wavelets: int, root: str = "corner",
                       dtype: str = "fp32", arity: int = 2, group: int | None = None) -> int | None:
    """Cycles of build_collective(same arguments) under our timing rules with no contention
    beyond what the schedule itself implies; None where no closed form holds."""
    spec = _check(kind, hw, pes, rows, cols, region, wavelets, root, dtype, arity, group)
    return _closed_form(spec, hw)


def _builder(kind: str):
    def build(hw: HardwareConfig, **kwargs) -> Program:
        return build_collective(kind, hw, **kwargs)

    build.__name__ = build.__qualname__ = kind.replace("-", "_")
    build.__doc__ = f"build_collective({kind!r}, hw, ...): see mapper.collectives."
    return build


KINDS = {k: _builder(k) for k in _IMPL}
