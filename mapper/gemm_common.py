"""Shared pieces of the GEMM / GEMV builders: the validated plan (sizes, tiles, padding), SRAM
and color budgets, and the record helpers. Public API: `mapper.gemm`."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mapper.placement import MappingError
from mapper.tree_reduce import tree_groups
from wse_sim.hardware import DTYPE_BYTES, DTYPES, HardwareConfig
from wse_sim.program import SPARSITY_ONE, DataOp, ProgramBuilder, Region, wavelets_for
from wse_sim.timing import compute_cycles

GEMM_ALGOS = ("1d", "summa", "cannon", "meshgemm")  # the built-in ones (`gemm_algos` lists all)
GEMV_ALGOS = ("chain", "tree")
LAYOUTS = ("square", "line")
ACC_BYTES = 4  # C tiles and nothing else accumulate in fp32 (FP16/BF16 multiply, FP32 accumulate)
FAMILIES = ("whole", "broadcast", "shift", "gemv")


@dataclass(frozen=True)
class GemmAlgo:
    """One algorithm of the GEMM library: everything the plan, the builders, the closed forms,
    the whole-model layouts and the CLI need to know of it. Adding an algorithm is one module
    that defines its `build(ctx)` and `closed_form(plan, hw)` and calls `register_gemm_algo`
    (docs/gemm.md, "Adding an algorithm").

    - `family`: its tiles and buffers: `shift` (a0 a1 b0 b1 c: operands move between double
      buffers, Cannon-like), `broadcast` (a b, abuf0/1 bbuf0/1, c: SUMMA-like), `whole` (1d),
      `gemv`.
    - `colors`: (flow, color) pairs: what a core's router holds at most.
    - `build`, `closed_form`: callables, or "module:function" names resolved when used.
    - `fragment`: (a, b, scratch, c) buffer roles when it composes into a layout
      (`mapper.gemm.gemm_fragment`): A's input buffer, the buffer its first multiply reads B
      from (pre-aligned), the scratch buffers, C. None: not composable.
    - `ring`: A and C live on the interleaved ring (`ring_order`), not in the natural layout.
    - `align_hops`: "line" (P - 1) or "ring" (2 (P - 1)): the farthest move of A's alignment
      (for the estimate), "" when A is not aligned.
    - `aligns` (`skew` / --no-skew applies), `flow_control` (its shifts can run under it).
    """

    name: str
    kind: str
    family: str
    colors: tuple
    build: object
    closed_form: object
    fragment: tuple | None = None
    ring: bool = False
    align_hops: str = ""
    aligns: bool = False
    flow_control: bool = False
    doc: str = ""

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"GemmAlgo.name: got {self.name!r}, must be a non-empty name")
        if self.kind not in ("gemm", "gemv"):
            raise ValueError(f"GemmAlgo.kind: got {self.kind!r}, must be gemm or gemv")
        if self.family not in FAMILIES:
            raise ValueError(f"GemmAlgo.family: got {self.family!r}, must be one of "
                             f"{', '.join(FAMILIES)}")
        if self.align_hops not in ("", "line", "ring"):
            raise ValueError(f"GemmAlgo.align_hops: got {self.align_hops!r}, must be '', "
                             "line or ring")
        if self.fragment is not None and len(self.fragment) != 4:
            raise ValueError(f"GemmAlgo.fragment: got {self.fragment!r}, must be (a, b, "
                             "scratch, c)")

    def resolve(self, what: str):
        """`build` or `closed_form` as a callable."""
        fn = getattr(self, what)
        if isinstance(fn, str):
            import importlib
            mod, _, name = fn.partition(":")
            fn = getattr(importlib.import_module(mod), name)
        return fn


_SHIFT = dict(family="shift", colors=(("a", 0), ("b", 1)), aligns=True, flow_control=True)
_ALGOS: dict[str, GemmAlgo] = {a.name: a for a in (
    GemmAlgo("1d", "gemm", "whole", (("a", 0),), "mapper.gemm_build:build_1d",
             "mapper.gemm:closed_form_1d", doc="A multicast, B split by columns"),
    GemmAlgo("summa", "gemm", "broadcast", (("a", 0), ("b", 1)),
             "mapper.gemm_build:build_summa", "mapper.gemm:closed_form_summa",
             fragment=("a", "b", ("abuf0", "abuf1", "bbuf0", "bbuf1"), "c"),
             doc="owner broadcasts along rows and columns every step"),
    GemmAlgo("cannon", "gemm", build="mapper.gemm_build:build_cannon",
             closed_form="mapper.gemm:closed_form_shift",
             fragment=("a0", "b0", ("a1", "b1"), "c"), align_hops="line",
             doc="skew, then 1-hop shifts whose wrap-around crosses the line", **_SHIFT),
    GemmAlgo("meshgemm", "gemm", build="mapper.gemm_build:build_meshgemm",
             closed_form="mapper.gemm:closed_form_shift",
             fragment=("a0", "b1", ("a1", "b0"), "c"), ring=True, align_hops="ring",
             doc="Cannon on the interleaved ring: every shift at most 2 hops", **_SHIFT),
    GemmAlgo("chain", "gemv", "gemv", (("x", 0), ("row", 1), ("y", 2)),
             "mapper.gemm_gemv:build_gemv", "mapper.gemm:closed_form_gemv"),
    GemmAlgo("tree", "gemv", "gemv", (("x", 0), ("row", 1), ("row2", 3), ("y", 2)),
             "mapper.gemm_gemv:build_gemv", "mapper.gemm:closed_form_gemv"),
)}


def register_gemm_algo(algo: GemmAlgo, replace: bool = False) -> GemmAlgo:
    """Add `algo` to the library (a name already taken is an error unless `replace`)."""
    if not isinstance(algo, GemmAlgo):
        raise ValueError(f"register_gemm_algo: got {type(algo).__name__}, must be a GemmAlgo")
    if algo.name in _ALGOS and not replace:
        raise ValueError(f"register_gemm_algo: {algo.name!r} is taken; pass replace=True")
    _ALGOS[algo.name] = algo
    return algo


def unregister_gemm_algo(name: str) -> None:
    """Remove a registered algorithm (a built-in one cannot be removed)."""
    if name in GEMM_ALGOS + GEMV_ALGOS:
        raise ValueError(f"unregister_gemm_algo: {name!r} is built in")
    _ALGOS.pop(name, None)


def gemm_algo(name: str, kind: str | None = None) -> GemmAlgo:
    """The registered algorithm `name` (of `kind`, when given); one line naming the known."""
    a = _ALGOS.get(name)
    if a is None or (kind is not None and a.kind != kind):
        raise ValueError(f"{kind or 'gemm'} algo: got {name!r}, must be one of "
                         f"{', '.join(gemm_algos(kind))}")
    return a


def gemm_algos(kind: str | None = None) -> tuple[str, ...]:
    """Names of the registered algorithms (of `kind`), built-ins first."""
    return tuple(n for n, a in _ALGOS.items() if kind is None or a.kind == kind)


def _int(name: str, v, lo: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise ValueError(f"{name}: got {v!r}, must be an integer >= {lo}")
    return v


def ring_order(n: int) -> list[int]:
    """The interleaved (folded) ring on a line: even positions out, odd ones back
    (0, 2, 4, ..., 5, 3, 1): logical neighbours are at most two cores apart."""
    return list(range(0, n, 2)) + [p for p in range(n - 1, 0, -1) if p % 2]


@dataclass(frozen=True)
class Plan:
    """A validated GEMM (C = A B, A: m x k, B: k x n) or GEMV (y = x W, x: 1 x k) on a
    grid x grid region at the mesh origin (or a line of `grid` cores for 1d `line`)."""

    kind: str          # "gemm" or "gemv"
    algo: str
    grid: int
    m: int
    k: int
    n: int
    dtype: str
    layout: str = "square"
    skew: bool = True
    flow_control: bool = False  # cannon, meshgemm: shifts wait for their destination's read

    # ---- geometry ------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return gemm_algo(self.algo).family

    @property
    def region(self) -> Region:
        if self.family == "whole" and self.layout == "line":
            return Region(0, 0, self.grid, 1)
        return Region(0, 0, self.grid, self.grid)

    @property
    def cores(self) -> int:
        return self.region.size

    @property
    def b(self) -> int:
        return DTYPE_BYTES[self.dtype]

    # ---- tiles ---------------------------------------------------------------------------
    @property
    def tiles(self) -> tuple[int, int, int]:
        """Per-core (m, k, n) of one multiply."""
        P = self.grid
        if self.kind == "gemv":  # core (x, y): W[K block x, N block y]
            return 1, math.ceil(self.k / P), math.ceil(self.n / P)
        if self.family == "whole":
            return self.m, self.k, math.ceil(self.n / self.cores)
        return math.ceil(self.m / P), math.ceil(self.k / P), math.ceil(self.n / P)

    @property
    def steps(self) -> int:
        return 1 if self.family in ("whole", "gemv") else self.grid

    @property
    def padded(self) -> tuple[int, int, int]:
        """(M, K, N) after padding every dimension to whole tiles."""
        mt, kt, nt = self.tiles
        if self.kind == "gemv":
            return 1, kt * self.grid, nt * self.grid
        if self.family == "whole":
            return mt, kt, nt * self.cores
        P = self.grid
        return mt * P, kt * P, nt * P

    @property
    def useful_flops(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def padded_flops(self) -> int:
        M, K, N = self.padded
        return 2 * M * K * N

    def tile_flops(self) -> int:
        mt, kt, nt = self.tiles
        return 2 * mt * kt * nt

    def wavelets(self, values: int) -> int:
        return wavelets_for(values, self.dtype)

    # ---- costs of one core's compute --------------------------------------------------------
    def gemm_sram(self, accumulate: bool) -> tuple[int, int]:
        """SRAM (read, write) bytes of one tile multiply: operands once, C read when it
        accumulates, C written once (fp32 accumulators; GEMV partials in the dtype)."""
        mt, kt, nt = self.tiles
        out_b = self.b if self.kind == "gemv" else ACC_BYTES
        read = (mt * kt + kt * nt) * self.b + (mt * nt * out_b if accumulate else 0)
        return read, mt * nt * out_b

    def tile_cycles(self, hw: HardwareConfig, accumulate: bool = True) -> int:
        rd, wr = self.gemm_sram(accumulate)
        return compute_cycles(hw, self.tile_flops(), self.dtype, "fmac", SPARSITY_ONE, rd, wr)

    # ---- budgets -------------------------------------------------------------------------
    def buffers(self) -> dict[str, tuple[tuple, str, int]]:
        """name -> (tile shape, dtype, bytes) on the fullest core."""
        mt, kt, nt = self.tiles
        d, b = self.dtype, self.b
        if self.kind == "gemv":  # y on row 0, the tree's receive buffers on column 0
            out = {"x": ((1, kt), d, kt * b), "w": ((kt, nt), d, kt * nt * b),
                   "part": ((1, nt), d, nt * b), "y": ((1, nt), d, nt * b)}
            for i in range(1, tree_groups(self.grid)[1] + 1 if self.algo == "tree" else 1):
                out[f"recv{i}"] = ((1, nt), d, nt * b)
            return out
        a, bb, c = ((mt, kt), d, mt * kt * b), ((kt, nt), d, kt * nt * b), \
            ((mt, nt), "fp32", mt * nt * ACC_BYTES)
        if self.family == "whole":
            return {"a": a, "b": bb, "c": c}
        if self.family == "broadcast":
            return {"a": a, "b": bb, "abuf0": a, "abuf1": a, "bbuf0": bb, "bbuf1": bb, "c": c}
        return {"a0": a, "a1": a, "b0": bb, "b1": bb, "c": c}

    def sram_bytes(self) -> int:
        return sum(v[2] for v in self.buffers().values())

    def colors(self) -> int:
        return len(gemm_algo(self.algo).colors)

    def color(self, flow: str) -> int:
        return dict(gemm_algo(self.algo).colors)[flow]

    def describe(self) -> str:
        if self.kind == "gemv":
            return f"gemv {self.algo} y = x W, K={self.k} N={self.n} {self.dtype}"
        return f"gemm {self.algo} M={self.m} K={self.k} N={self.n} {self.dtype}"


def make_plan(kind: str, algo: str, hw: HardwareConfig, *, grid, m, k, n, dtype: str,
              layout: str = "square", skew: bool = True, flow_control: bool = False) -> Plan:
    """Validate the arguments and the budgets (SRAM bytes and colors per core) before any
    record is built; every problem is one line with the numbers."""
    entry = gemm_algo(algo, kind)
    if dtype not in DTYPES:
        raise ValueError(f"dtype: got {dtype!r}, must be one of {', '.join(DTYPES)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: got {layout!r}, must be one of {', '.join(LAYOUTS)}")
    grid = _int("grid", grid, 2)
    for name, v in (("m", m), ("k", k), ("n", n)):
        _int(name, v)
    if not isinstance(hw, HardwareConfig):
        raise ValueError(f"hw: got {type(hw).__name__}, must be a HardwareConfig")
    if not isinstance(flow_control, bool):
        raise ValueError(f"flow_control: got {flow_control!r}, must be True or False")
    if flow_control and not entry.flow_control:
        raise ValueError(f"flow_control: applies to cannon and meshgemm (their shifts), not "
                         f"{algo}: a SUMMA broadcast under flow control staircases in the "
                         "window model (docs/hardware-model.md, 'Flow control')")
    plan = Plan(kind, algo, grid, m, k, n, dtype, layout, bool(skew), flow_control)
    reg = plan.region
    if reg.cols > hw.mesh_cols or reg.rows > hw.mesh_rows:
        raise MappingError(f"grid: got {grid} ({reg.cols} x {reg.rows} cores), must fit the "
                           f"{hw.mesh_cols} x {hw.mesh_rows} mesh of {hw.name}")
    need = plan.sram_bytes()
    if need > hw.sram_bytes:
        parts = ", ".join(f"{k_} {v[2]}" for k_, v in plan.buffers().items())
        raise MappingError(f"{plan.describe()} on a {reg.cols} x {reg.rows} grid does not fit: "
                           f"{need} bytes per core ({parts}) > sram_bytes {hw.sram_bytes}; "
                           "use a larger grid or smaller sizes")
    if plan.colors() > hw.colors_per_core:
        raise MappingError(f"{plan.describe()}: needs {plan.colors()} colors per core > "
                           f"colors_per_core {hw.colors_per_core}")
    return plan


class Ctx:
    """A ProgramBuilder plus the plan; DataOps and tile shapes only when functional.

    A *fragment* (`fragment(...)`) emits the GEMM into someone else's builder: its records
    are named `label`.<part>, its first records wait for `start` (what produced the operands),
    it allocates nothing (the caller budgets the SRAM) and `skew_b=False` takes B as stored
    pre-aligned (a resident weight, aligned once when it is loaded)."""

    def __init__(self, plan: Plan, hw: HardwareConfig, functional: bool):
        self.plan, self.hw, self.functional = plan, hw, functional
        self.pb = ProgramBuilder(f"{plan.kind}-{plan.algo}")
        self.P = plan.grid
        self.R = plan.region
        self.label = plan.algo
        self.start: tuple = ()
        self.skew_a = self.skew_b = plan.skew
        self.allocates = True
        self.last: list[int] = []  # the records of the last step (what a consumer waits for)

    @classmethod
    def fragment(cls, plan: Plan, hw: HardwareConfig, pb: ProgramBuilder, label: str,
                 start: tuple = (), skew_b: bool = False, names: dict | None = None) -> Ctx:
        """`names`: the caller's buffer for each of the plan's (a0, b1, c, ...); given, the
        records carry DataOps on them (a functional run)."""
        ctx = cls(plan, hw, names is not None)
        ctx.pb, ctx.label, ctx.start = pb, label, tuple(start)
        ctx.skew_a, ctx.skew_b, ctx.allocates = plan.skew, skew_b and plan.skew, False
        ctx.names = dict(names or {})
        return ctx

    def accumulates(self, step: int) -> bool:
        """Whether step `step`'s multiply adds into C: a fragment's first one writes C (its C
        buffer may hold an earlier result), a whole program's C starts at zero."""
        return self.allocates or step > 0

    def op(self, name: str) -> str:
        """A record's name: `name` is '<algo>.<part>'; a fragment's are '<label>.<part>'."""
        return f"{self.label}.{name.split('.', 1)[1]}"

    def add(self, task) -> int:
        return self.pb.add(task)

    def data(self, kernel: str, inputs: tuple, output: str, **params) -> DataOp | None:
        if not self.functional:
            return None
        names = getattr(self, "names", {})
        return DataOp(kernel, tuple(names.get(n, n) for n in inputs), names.get(output, output),
                      tuple(sorted(params.items())))

    def alloc(self, name: str, region: Region | None = None) -> None:
        if not self.allocates:
            return
        shape, dtype, nbytes = self.plan.buffers()[name]
        self.pb.alloc(name, region or self.R, nbytes, shape if self.functional else (), dtype)
