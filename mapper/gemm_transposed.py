"""The backward pass's transposed products on a P x P region, Cannon-structured (docs/gemm.md,
"Transposed products"):

- `tn`: C = A^T B (A: m x k, B: m x n, C: k x n), the weight gradient dW = X^T dY: the sum
  runs over m (tokens), which the mesh splits over its rows.
- `nt`: C = A B^T (A: m x n, B: k x n, C: m x k), the activation gradient dX = dY W^T: the
  sum runs over n, split over the columns.

Every row and column is the interleaved ring 0, 2, 4, ..., 5, 3, 1 (`mapper.gemm_common.
ring_order`, MeshGEMM's): logical core (lx, ly) is physical (o[lx], o[ly]), and every shift
moves at most 2 hops. A and B sit in the natural layout (physical core (x, y) holds block
(row y, column x)); in logical terms, logical (lx, ly) holds block (o[ly], o[lx]). In either
product one operand stays (B for `tn`, A for `nt`), the other one shifts as in Cannon, and
the accumulator C moves the other way: each core adds its partial for the C block it holds
and passes the block on, so after P steps every C block has collected the P partials of its
sum.

- `tn`: A rotated along the ring (logical row ly by ly places, MeshGEMM's alignment); at step
  t logical (lx, ly) holds A(o[ly], o[m]) with m = lx + ly + t and the accumulator of
  C(o[m], o[lx]); then A moves one place back along the row ring and the accumulators one
  place back along the column ring. C(o[m], o[lx]) ends on logical (lx, m - lx + 1).
- `nt`: B pre-aligned (logical (lx, ly) holds B(o[lx + ly], o[lx]): the weights as the host
  streams them in); at step t logical (lx, ly) holds B(o[m], o[lx]) and the accumulator of
  C(o[ly], o[m]); then B moves one place back along the column ring and the accumulators
  along the row ring. C(o[ly], o[m]) ends on logical (m - ly + 1, ly); `unskew` rotates each
  row ring back by ly - 1 places: the natural layout.

A step's multiply adds to the accumulator that arrived; it waits for every accumulator's
shift of the step before (`Dep(..., "all")`): with every hop at most 2 the steps then repeat
exactly and the fast engine fast-forwards them (without it the one-hop turns of the ring make
the steps differ for ever; the wait costs at most a hop's latency per step).
The P - 2 middle steps are one loop (`ProgramBuilder.repeat`): the fast engine fast-forwards
them. Accumulators are fp32 and double-buffered (c0, c1); the moving operand too (a0/a1 or
b0/b1). The first multiply writes its accumulator, the others add to the one received.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mapper.gemm_common import ring_order
from wse_sim.hardware import DTYPE_BYTES, DTYPES, HardwareConfig
from wse_sim.program import (
    SPARSITY_ONE,
    Compute,
    DataOp,
    Dep,
    ProgramBuilder,
    Region,
    Unicast,
    wavelets_for,
)
from wse_sim.timing import compute_cycles, transfer_cycles

KINDS = ("tn", "nt")
# the forward GEMM that runs on the same rings and pre-aligns B as `nt` reads it
RING_ALGO = "meshgemm"
ACC_BYTES = 4


@dataclass(frozen=True)
class TPlan:
    """A transposed product on a grid x grid region: `tn` C = A^T B (A m x k, B m x n) or
    `nt` C = A B^T (A m x n, B k x n); C is k x n (tn) or m x k (nt)."""

    kind: str
    grid: int
    m: int
    k: int
    n: int
    dtype: str

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"transposed gemm kind: got {self.kind!r}, must be tn or nt")
        for name in ("grid", "m", "k", "n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "grid" else 1):
                raise ValueError(f"transposed gemm {name}: got {v!r}, must be an integer >= "
                                 f"{2 if name == 'grid' else 1}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype: got {self.dtype!r}, must be one of {', '.join(DTYPES)}")

    @property
    def tiles(self) -> tuple[int, int, int]:
        """Per-core (m, k, n) blocks."""
        P = self.grid
        return math.ceil(self.m / P), math.ceil(self.k / P), math.ceil(self.n / P)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Tile shape of each operand: a, b, c."""
        mt, kt, nt = self.tiles
        if self.kind == "tn":
            return {"a": (mt, kt), "b": (mt, nt), "c": (kt, nt)}
        return {"a": (mt, nt), "b": (kt, nt), "c": (mt, kt)}

    def buffers(self) -> dict[str, tuple[tuple, str, int]]:
        """name -> (tile shape, dtype, bytes): the stationary operand once, the moving one and
        the accumulator twice."""
        s, b = self.shapes(), DTYPE_BYTES[self.dtype]
        moving = "a" if self.kind == "tn" else "b"
        out = {}
        for op in ("a", "b"):
            t = (s[op], self.dtype, math.prod(s[op]) * b)
            out |= {f"{op}0": t, f"{op}1": t} if op == moving else {op: t}
        c = (s["c"], "fp32", math.prod(s["c"]) * ACC_BYTES)
        return out | {"c0": c, "c1": c}

    def tile_flops(self) -> int:
        mt, kt, nt = self.tiles
        return 2 * mt * kt * nt

    def sram(self, accumulate: bool) -> tuple[int, int]:
        s, b = self.shapes(), DTYPE_BYTES[self.dtype]
        c = math.prod(s["c"]) * ACC_BYTES
        return (math.prod(s["a"]) + math.prod(s["b"])) * b + (c if accumulate else 0), c

    def wavelets(self) -> tuple[int, int]:
        """(moving operand, accumulator) wavelets of one shift."""
        s = self.shapes()
        moving = s["a"] if self.kind == "tn" else s["b"]
        return wavelets_for(math.prod(moving), self.dtype), \
            wavelets_for(math.prod(s["c"]), "fp32")


def estimate_cycles(plan: TPlan, hw: HardwareConfig, skew: bool = True,
                    unskew: bool = True) -> int:
    """A contention-free estimate (the simulation gives the real figure): P multiplies, each
    but the last followed by its accumulator's shift (the next multiply adds to what
    arrives: the shift cannot overlap it) of at most 2 hops; plus the alignment (tn: A's;
    nt: C's unskew), its farthest rotation 2 (P - 1) hops along the ring."""
    P = plan.grid
    mul = compute_cycles(hw, plan.tile_flops(), plan.dtype, "fmac", SPARSITY_ONE,
                         *plan.sram(True))
    wm, wc = plan.wavelets()
    align = skew if plan.kind == "tn" else unskew
    edge = transfer_cycles(hw, wm if plan.kind == "tn" else wc, 2 * (P - 1)) if align else 0
    return edge + P * mul + (P - 1) * transfer_cycles(hw, wc, min(2, P - 1))


class _Emit:
    def __init__(self, plan: TPlan, pb: ProgramBuilder, label: str, names: dict | None):
        self.plan, self.pb, self.label, self.names = plan, pb, label, names
        self.P = plan.grid
        self.R = Region(0, 0, self.P, self.P)

    def data(self, kernel: str, inputs: tuple, output: str, **params) -> DataOp | None:
        if self.names is None:
            return None
        n = self.names
        return DataOp(kernel, tuple(n.get(i, i) for i in inputs), n.get(output, output),
                      tuple(sorted(params.items())))

    def rotate_rows(self, part: str, buf: str, wav: int, places, color: int,
                    deps) -> list[int]:
        """Logical row ly rotated by places(ly) along its ring: one ring Unicast per row."""
        out, o = [], ring_order(self.P)
        for ly in range(self.P):
            d = places(ly) % self.P
            if d:
                out.append(self.pb.add(Unicast(
                    f"{self.label}.{part}", Region(0, o[ly], self.P, 1), wav, dx=d, ring="x",
                    color=color, deps=tuple(deps), data=self.data("copy", (buf,), buf))))
        return out

    def sync(self, part: str, tasks: list[int]) -> int:
        return self.pb.add(Compute(f"{self.label}.{part}", Region(0, 0, 1, 1), 0,
                                   self.plan.dtype, "vector",
                                   deps=tuple(Dep(t, "all") for t in tasks)))


def fragment(pb: ProgramBuilder, kind: str, hw: HardwareConfig, *, grid: int, m: int, k: int,
             n: int, dtype: str, label: str, start: tuple = (), skew: bool = True,
             unskew: bool = True, names: dict | None = None,
             b_offset: int = 0) -> tuple[TPlan, tuple[Dep, ...]]:
    """The product emitted into `pb` (module docstring); records `label`.<part>, the first
    ones after `start`; nothing allocated (the caller budgets `TPlan.buffers()`). `skew`
    (tn): rotate A into place first (False: A is stored skewed); `unskew` (nt): rotate C back
    to the natural layout at the end. `names`: the caller's buffer for each of a0/a1/b,
    a/b0/b1, c0/c1 (a functional run). `b_offset` (nt): B sits moved that many places along
    the column rings (where a MeshGEMM that read it left it: -1), which only changes where C
    ends, so the unskew. Returns the plan and what a consumer of C waits for."""
    plan = TPlan(kind, grid, m, k, n, dtype)
    e = _Emit(plan, pb, label, names)
    P, R, tn = e.P, e.R, kind == "tn"
    wm, wc = plan.wavelets()
    start = list(start)
    if tn and skew:
        moves = e.rotate_rows("align_a", "a0", wm, lambda ly: -ly, 0, start)
        if moves:
            start = [Dep(e.sync("sync", moves), "all")]
    mov = "a" if tn else "b"
    ids: dict[int, tuple] = {}
    kern = "gemm_tn" if tn else "gemm_bt"  # wse_sim.kernels.gpt: a^T b, a b^T

    def step(s: int) -> None:
        q = s % 2
        prev = ids.get(s - 1)
        deps = start if prev is None else [Dep(prev[1]), Dep(prev[2], "all"), Dep(prev[0])]
        rd, wr = plan.sram(s > 0)
        ins = (f"a{q}", "b") if tn else ("a", f"b{q}")
        comp = pb.add(Compute(f"{label}.gemm", R, plan.tile_flops() * R.size, dtype, "fmac",
                              sram_read_bytes=rd * R.size, sram_write_bytes=wr * R.size,
                              deps=tuple(deps),
                              data=e.data(kern, ins, f"c{q}", accumulate=s > 0)))
        if s == P - 1:
            ids[s] = (comp,)
            return
        # the destination's other buffers: read by its last multiply, sent by its last shift
        war = [] if prev is None else [Dep(prev[0], "all")]
        war_c = [] if prev is None else [Dep(prev[2], "all")]
        ax, cx = ("x", "y") if tn else ("y", "x")
        sm = pb.add(Unicast(f"{label}.shift_{mov}", R, wm, ring=ax, color=0,
                            deps=tuple((start if prev is None else [Dep(prev[1])]) + war),
                            data=e.data("copy", (f"{mov}{q}",), f"{mov}{1 - q}"),
                            **{"d" + ax: -1}))
        sc = pb.add(Unicast(f"{label}.shift_c", R, wc, ring=cx, color=1,
                            deps=(Dep(comp),) + tuple(war_c),
                            data=e.data("copy", (f"c{q}",), f"c{1 - q}"), **{"d" + cx: -1}))
        ids[s] = (comp, sm, sc)

    step(0)
    if P > 2:
        pb.repeat(f"{label}.step", P - 2, lambda i: step(i + 1))
    step(P - 1)
    last = ids[P - 1][0]
    cq = f"c{(P - 1) % 2}"
    if not tn and unskew:  # C(o[ly], o[m]) sits on logical (m - ly + 1, ly)
        rows = e.rotate_rows("unskew_c", cq, wc, lambda ly: ly - 1 + b_offset, 1,
                             (Dep(last, "all"),))
        if rows:
            return plan, (Dep(e.sync("done", rows), "all"),)
    return plan, (Dep(last),)


def output_buffer(plan: TPlan) -> str:
    """The accumulator that holds C at the end (c0 or c1)."""
    return f"c{(plan.grid - 1) % 2}"


def build_transposed(kind: str, hw: HardwareConfig, *, grid: int, m: int, k: int, n: int,
                     dtype: str = "fp32", functional: bool = False):
    """The product alone as a Program on a grid x grid region (A skewed and C unskewed by
    the program), with its estimate in `meta`: what tests and benchmarks run."""
    plan = TPlan(kind, grid, m, k, n, dtype)
    pb = ProgramBuilder(f"gemm-{kind}")
    R = Region(0, 0, grid, grid)
    for name, (shape, dt, nbytes) in plan.buffers().items():
        pb.alloc(name, R, nbytes, shape if functional else (), dt)
    fragment(pb, kind, hw, grid=grid, m=m, k=k, n=n, dtype=dtype, label=kind,
             names={} if functional else None)
    return pb.build(dtype=dtype, cores_used=R.size, meta={
        "kind": kind, "grid": grid, "m": m, "k": k, "n": n, "dtype": dtype,
        "tiles": list(plan.tiles), "estimate_cycles": estimate_cycles(plan, hw)})


def _blocks(X, rows: int, cols: int, rt: int, ct: int):
    """X padded to (rows rt, cols ct) as blocks [row block, column block, rt, ct]."""
    import numpy as np
    Xp = np.zeros((rows * rt, cols * ct), np.float32)
    Xp[:X.shape[0], :X.shape[1]] = X
    return Xp.reshape(rows, rt, cols, ct).transpose(0, 2, 1, 3)


def prealigned_nt_b(blocks):
    """B's blocks [row block, column block] (P, P, kt, nt) as `nt` reads them (and as
    MeshGEMM on natural data stores its weights): logical (lx, ly) holds block
    (o[lx + ly], o[lx]); [y, x] tiles."""
    from mapper.gemm import prealigned_b
    return prealigned_b(RING_ALGO, blocks, natural=True)


def tn_result(c, rows: int, cols: int):
    """C (rows x cols) from a `tn` product's final accumulator tiles c (P, P, rt, ct), [y, x]:
    C(o[m], o[lx]) sits on logical (lx, m - lx + 1)."""
    import numpy as np
    P = c.shape[0]
    o = np.array(ring_order(P))
    m, lx = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    blocks = np.empty_like(c)
    blocks[o[m], o[lx]] = c[o[(m - lx + 1) % P], o[lx]]  # [row block, column block]
    rt, ct = c.shape[2:]
    return blocks.transpose(0, 2, 1, 3).reshape(P * rt, P * ct)[:rows, :cols]


def transposed_inputs(plan: TPlan, A, B) -> dict:
    """A and B as the cores hold them at the start ([y, x] tiles): natural, but `nt`'s B
    pre-aligned on the rings (`prealigned_nt_b`)."""
    import numpy as np
    P = plan.grid
    s = plan.shapes()
    At = _blocks(np.asarray(A, np.float32), P, P, *s["a"])
    Bt = _blocks(np.asarray(B, np.float32), P, P, *s["b"])
    if plan.kind == "tn":
        return {"a0": At, "b": Bt}
    return {"a": At, "b0": prealigned_nt_b(Bt)}


def transposed_output(plan: TPlan, buffers: dict):
    """C from the cores' accumulators (tn: `tn_result`; nt: natural)."""
    import numpy as np
    P = plan.grid
    c = np.asarray(buffers[output_buffer(plan)], np.float32)
    if plan.kind == "tn":
        return tn_result(c, plan.k, plan.n)
    rt, ct = plan.shapes()["c"]
    return c.transpose(0, 2, 1, 3).reshape(P * rt, P * ct)[:plan.m, :plan.k]
