"""Distributed GEMM (C = A B) and GEMV (y = x W) as Programs, their budgets and closed forms.

Algorithms (docs/gemm.md has the layouts, the record counts and the derivations):

- GEMM on a grid x grid region at the mesh origin: `1d` (B split by columns over the cores,
  A multicast; `layout="line"`: a line of `grid` cores), `summa` (owner broadcasts per step),
  `cannon` (skew, then 1-hop shifts whose wrap-around crosses the whole row / column) and
  `meshgemm` (Cannon on the interleaved ring: every shift is at most 2 hops).
- GEMV for decode (`mapper.gemm_gemv`): each core holds its K/P slice of x, its (K/P) x (N/P)
  tile of W and N/P values of y; x streams down the columns, partials reduce along the rows
  into column 0 (`chain`: one pipelined stream per row; `tree`: two-level), y goes back to row 0.

FLOPs (decision): the Compute records carry the FLOPs the cores execute, padding included
(a padded tile is multiplied whole: the cycles must be those of the real loop). So
`program.total_flops()` is `2 M K N` exactly whenever the tiles divide the sizes, and
`meta["padded_flops"]` otherwise; `meta["useful_flops"]` is always `2 M K N` and
`meta["padding_waste"]` the fraction of executed FLOPs spent on padding. The tree GEMV's
root additions are Compute records too (`meta["combine_flops"]`); reduce streams' adds are
stream FLOPs, outside `total_flops`.

Budgets are checked before anything is built: SRAM bytes per core (`gemm_sram_bytes`) and
colors per core (`gemm_colors`) give a one-line `MappingError` with the numbers; the built
program also passes `check_fits`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mapper.gemm_common import (
    GEMM_ALGOS,
    GEMV_ALGOS,
    Ctx,
    GemmAlgo,
    Plan,
    gemm_algo,
    gemm_algos,
    make_plan,
    register_gemm_algo,
    ring_order,
    tree_groups,
    unregister_gemm_algo,
)
from mapper.tree_reduce import reduce_end
from wse_sim.hardware import HardwareConfig
from wse_sim.program import Dep, Program, ProgramBuilder, ProgramError, check_fits
from wse_sim.timing import (
    compute_cycles,
    message_cycles,
    multicast_cycles,
    stream_beats,
    transfer_cycles,
)

FRAGMENT_ALGOS = ("summa", "cannon", "meshgemm")  # the built-in ones a layout can compose

__all__ = ["FRAGMENT_ALGOS", "GEMM_ALGOS", "GEMV_ALGOS", "GemmAlgo", "build_gemm",
           "choose_gemm_algo", "fragment_algos", "fragment_buffers", "gemm_algo", "gemm_algos",
           "gemm_fragment", "prealigned_b", "register_gemm_algo", "unregister_gemm_algo", "build_gemv", "gemm_closed_form",
           "gemm_colors", "gemm_inputs", "gemm_output", "gemm_sram_bytes", "gemv_closed_form",
           "gemv_inputs", "gemv_output", "ring_order", "tree_groups"]


def _plan_sram(kind: str, algo: str, grid: int, m: int, k: int, n: int, dtype: str,
               layout: str) -> Plan:
    if algo not in gemm_algos(kind):
        raise ValueError(f"algo: got {algo!r}, must be one of {', '.join(gemm_algos())}")
    return Plan(kind, algo, grid, m, k, n, dtype, layout)


def _kind(algo: str) -> str:
    return gemm_algo(algo).kind if algo in gemm_algos() else "gemm"


def gemm_sram_bytes(algo: str, grid: int, m: int, k: int, n: int, dtype: str = "fp32", *,
                    layout: str = "square") -> int:
    """SRAM bytes on the fullest core (every buffer; C in fp32). For a GEMV algo ('chain',
    'tree') m is ignored."""
    kind = _kind(algo)
    return _plan_sram(kind, algo, grid, m, k, n, dtype, layout).sram_bytes()


def gemm_sram_breakdown(algo: str, grid: int, m: int, k: int, n: int, dtype: str = "fp32", *,
                        layout: str = "square") -> dict[str, int]:
    kind = _kind(algo)
    return {name: v[2] for name, v in
            _plan_sram(kind, algo, grid, m, k, n, dtype, layout).buffers().items()}


def gemm_colors(algo: str) -> int:
    """Colors a core's router holds at most (GEMM or GEMV algo)."""
    kind = _kind(algo)
    return _plan_sram(kind, algo, 2, 1, 1, 1, "fp32", "square").colors()


def _meta(plan: Plan, hw: HardwareConfig, program_tasks: int, extra: dict) -> dict:
    mt, kt, nt = plan.tiles
    padded = plan.padded_flops
    meta = {
        "kind": plan.kind, "algo": plan.algo, "grid": plan.grid, "m": plan.m, "k": plan.k,
        "n": plan.n, "dtype": plan.dtype, "layout": plan.layout, "skew": plan.skew,
        "flow_control": plan.flow_control,
        "cores": plan.cores, "tiles": [mt, kt, nt], "padded_sizes": list(plan.padded),
        "steps": plan.steps, "useful_flops": plan.useful_flops, "padded_flops": padded,
        "padding_waste": 1.0 - plan.useful_flops / padded if padded else 0.0,
        "sram_buffers": {k_: v[2] for k_, v in plan.buffers().items()},
        "sram_bytes_per_core": plan.sram_bytes(), "colors_per_core": plan.colors(),
        "records": program_tasks, "ring": ring_order(plan.grid) if gemm_algo(plan.algo).ring
        else list(range(plan.grid)),
    }
    meta.update(extra)
    return meta


def _finish(ctx: Ctx, plan: Plan, hw: HardwareConfig, extra: dict) -> Program:
    n_tasks = len(ctx.pb.tasks)
    program = ctx.pb.build(dtype=plan.dtype, cores_used=plan.cores,
                           meta=_meta(plan, hw, n_tasks, extra))
    check_fits(program, hw)
    return program


def build_gemm(algo: str, hw: HardwareConfig, *, grid: int, m: int, k: int, n: int,
               dtype: str = "fp32", functional: bool = False, layout: str = "square",
               skew: bool = True, flow_control: bool = False) -> Program:
    """C = A B on a grid x grid region at the origin (1d `line`: grid cores of row 0).

    `skew` (cannon, meshgemm): include the initial alignment in the program; False means the
    inputs are loaded pre-aligned (gemm_inputs lays them out accordingly). `flow_control`
    (cannon, meshgemm): a shift waits for its destination's last read of the buffer under
    flow control (`Dep(..., head=True)`) instead of for every core's (docs/gemm.md).
    `functional`: attach DataOps and tile shapes so `wse_sim.functional.run_functional`
    computes C."""
    plan = make_plan("gemm", algo, hw, grid=grid, m=m, k=k, n=n, dtype=dtype, layout=layout,
                     skew=skew, flow_control=flow_control)
    ctx = Ctx(plan, hw, functional)
    gemm_algo(algo).resolve("build")(ctx)
    cf = gemm_closed_form(algo, hw, grid=grid, m=m, k=k, n=n, dtype=dtype, layout=layout,
                          skew=skew)
    return _finish(ctx, plan, hw, {"closed_form": cf, "closed_form_cycles": cf["cycles"]})


def gemm_fragment(pb: ProgramBuilder, algo: str, hw: HardwareConfig, *, grid: int, m: int,
                  k: int, n: int, dtype: str, label: str, start: tuple = (),
                  skew_b: bool = False, names: dict | None = None) -> tuple[Plan, tuple[Dep, ...]]:
    """C = A B emitted into `pb` as part of a larger program (a whole-model layout): the same
    records as `build_gemm` on the grid x grid region at the origin, named `label`.<part>,
    the first ones waiting for `start`; nothing allocated (the caller budgets the SRAM: the
    plan's `buffers()`), B taken as stored pre-aligned unless `skew_b` (a resident weight is
    aligned once, when it is loaded; A, an activation, is aligned every time). Returns the
    plan and the dependencies that a consumer of C on the whole region waits for (the last
    step's multiply; SUMMA's last step is up to four quadrant records: all of each). The
    first step's multiply writes C rather than adding to it (C may hold an earlier result).
    `names` (a functional run): the caller's buffer for each of the plan's buffers (`a0`,
    `b1`, `c`, ...; `fragment_weight_buffer` says which one holds the pre-aligned B)."""
    if algo not in fragment_algos():
        raise ValueError(f"gemm algo: got {algo!r}, must be one of {', '.join(fragment_algos())}")
    plan = Plan("gemm", algo, grid, m, k, n, dtype)
    ctx = Ctx.fragment(plan, hw, pb, label, start, skew_b, names)
    gemm_algo(algo).resolve("build")(ctx)
    if len(ctx.last) == 1:
        return plan, (Dep(ctx.last[0]),)
    return plan, tuple(Dep(t, "all") for t in ctx.last)


def fragment_algos() -> tuple[str, ...]:
    """The registered GEMM algorithms that compose into a layout (`GemmAlgo.fragment`)."""
    return tuple(n for n in gemm_algos("gemm") if gemm_algo(n).fragment is not None)


def fragment_buffers(algo: str) -> dict[str, str]:
    """A fragment's buffers by role: `a` (A, aligned in place or into a scratch one), `b` (the
    pre-aligned B its first multiply reads), the `scratch` ones and `c`."""
    a, b, scratch, c = gemm_algo(algo, "gemm").fragment
    return {"a": a, "b": b, "scratch": tuple(scratch), "c": c}


def prealigned_b(algo: str, Bt: np.ndarray, natural: bool = False) -> np.ndarray:
    """B's blocks Bt[K block, N block] (P, P, kt, nt) as the cores hold them for a fragment
    (`skew_b=False`): [row y, column x] of the grid; SUMMA natural, Cannon and MeshGEMM
    pre-aligned (logical (lx, ly) holds B(lx + ly, lx), on MeshGEMM's rings). `natural`: for
    a fragment on natural data (A and C in the natural layout, as a 2-D training step keeps
    them): logical (lx, ly) holds B(o[lx + ly], o[lx]) (o: the ring order, or the identity)."""
    P = Bt.shape[0]
    entry = gemm_algo(algo, "gemm")
    if not entry.align_hops:  # no alignment: B in the natural layout
        return np.ascontiguousarray(Bt)
    o = np.array(ring_order(P) if entry.ring else list(range(P)))
    ly, lx = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    b = np.empty_like(Bt)
    b[o[ly], o[lx]] = Bt[o[(lx + ly) % P], o[lx]] if natural else Bt[(lx + ly) % P, lx]
    return b


def gemm_estimate_cycles(algo: str, hw: HardwareConfig, *, grid: int, m: int, k: int, n: int,
                         dtype: str) -> int:
    """A contention-free estimate of a fragment's cycles (operands ready, B pre-aligned), to
    choose an algorithm (`auto`): P steps of max(multiply, a step's data latency), plus for
    Cannon and MeshGEMM the alignment of A (its farthest rotation: P - 1 hops for Cannon,
    2 (P - 1) along MeshGEMM's ring). The simulation gives the real figure."""
    cf = gemm_closed_form(algo, hw, grid=grid, m=m, k=k, n=n, dtype=dtype, skew=False)
    steps = grid * max(cf["step_cycles"], cf["latency"])
    reach = gemm_algo(algo, "gemm").align_hops
    if not reach:
        return steps
    plan = Plan("gemm", algo, grid, m, k, n, dtype)
    wa = plan.wavelets(plan.tiles[0] * plan.tiles[1])
    far = grid - 1 if reach == "line" else 2 * (grid - 1)
    return steps + transfer_cycles(hw, wa, far)


def choose_gemm_algo(hw: HardwareConfig, *, grid: int, m: int, k: int, n: int, dtype: str,
                     algos=None) -> str:
    """The algorithm of `algos` (default every fragment algorithm) with the least
    `gemm_estimate_cycles`; ties go to the earlier one."""
    algos = tuple(algos or fragment_algos())
    est = {a: gemm_estimate_cycles(a, hw, grid=grid, m=m, k=k, n=n, dtype=dtype) for a in algos}
    return min(algos, key=lambda a: (est[a], algos.index(a)))


def build_gemv(algo: str, hw: HardwareConfig, *, grid: int, k: int, n: int, dtype: str = "fp32",
               functional: bool = False) -> Program:
    """y = x W (x: 1 x k, W: k x n) on a grid x grid region at the origin."""
    plan = make_plan("gemv", algo, hw, grid=grid, m=1, k=k, n=n, dtype=dtype)
    ctx = Ctx(plan, hw, functional)
    gemm_algo(algo, "gemv").resolve("build")(ctx)
    cf = gemv_closed_form(algo, hw, grid=grid, k=k, n=n, dtype=dtype)
    g, m_, _ = tree_groups(grid)
    combine = 0 if algo == "chain" else m_ * plan.tiles[2] * grid  # the row roots' adds
    extra = {"closed_form": cf, "closed_form_cycles": cf["cycles"], "combine_flops": combine,
             "group": g if algo == "tree" else None}
    return _finish(ctx, plan, hw, extra)


# ---- closed forms ------------------------------------------------------------------------------

def gemm_closed_form(algo: str, hw: HardwareConfig, *, grid: int, m: int, k: int, n: int,
                     dtype: str = "fp32", layout: str = "square", skew: bool = True) -> dict:
    """Contention-free cycles of build_gemm(...) under our timing rules (docs/gemm.md): the
    algorithm's own closed form (`GemmAlgo.closed_form`).

    Returns {"cycles": exact int or None, "lower_bound": int, "step_cycles": c (one tile
    multiply), "steady_state_cycles": P c for the stepped algorithms, "compute_bound": bool,
    "latency": L (a step's worst data latency), "note": str}."""
    plan = _plan_sram("gemm", algo, grid, m, k, n, dtype, layout)
    plan = dataclasses.replace(plan, skew=skew)
    return gemm_algo(algo, "gemm").resolve("closed_form")(plan, hw)


def closed_form_1d(plan: Plan, hw: HardwareConfig) -> dict:
    """The multicast of A to the farthest core, then one local GEMM."""
    c = plan.tile_cycles(hw, accumulate=False)
    wa = plan.wavelets(plan.m * plan.k)
    far = 2 * (plan.grid - 1) if plan.layout == "square" else plan.grid - 1
    cyc = multicast_cycles(hw, wa, far) + c
    return {"cycles": cyc, "lower_bound": cyc, "step_cycles": c, "steady_state_cycles": c,
            "compute_bound": True, "latency": multicast_cycles(hw, wa, far),
            "note": "multicast of A to the farthest core, then one local GEMM"}


def closed_form_summa(plan: Plan, hw: HardwareConfig) -> dict:
    """A bound: the first broadcast, then P multiplies."""
    mt, kt, nt = plan.tiles
    c, P = plan.tile_cycles(hw), plan.grid
    wa, wb = plan.wavelets(mt * kt), plan.wavelets(kt * nt)
    first = multicast_cycles(hw, wa + wb, P - 1)
    lat = 4 * stream_beats(hw, max(wa, wb)) + 2 * hw.ramp_latency_cycles \
        + (P - 1) * hw.hop_latency_cycles + message_cycles(hw)
    return {"cycles": None, "lower_bound": P * c + first, "step_cycles": c,
            "steady_state_cycles": P * c, "compute_bound": lat <= c, "latency": lat,
            "note": "no closed form: the owner's ramp carries 2 half-streams per operand and "
                    "the diagonal core owns both; bound = first broadcast + P c"}


def closed_form_shift(plan: Plan, hw: HardwareConfig) -> dict:
    """Cannon-like shifts: a step's latency is both operands' shift (P - 1 hops across the
    wrap, or 2 on the interleaved ring); exact when pre-aligned and compute-bound."""
    mt, kt, nt = plan.tiles
    c, P = plan.tile_cycles(hw), plan.grid
    wa, wb = plan.wavelets(mt * kt), plan.wavelets(kt * nt)
    hops = min(2, P - 1) if gemm_algo(plan.algo).ring else P - 1
    lat = stream_beats(hw, wa) + stream_beats(hw, wb) + 2 * hw.ramp_latency_cycles \
        + hops * hw.hop_latency_cycles - 1 + message_cycles(hw)
    bound = lat <= c
    cyc = P * c if (bound and not plan.skew) else None
    note = ("pre-aligned inputs, compute-bound (L <= c): P c exactly" if cyc is not None else
            "the alignment's contention has no closed form: cycles = alignment end + P c when "
            "compute-bound" if bound else "communication-bound (L > c): no closed form")
    return {"cycles": cyc, "lower_bound": P * c, "step_cycles": c, "steady_state_cycles": P * c,
            "compute_bound": bound, "latency": lat, "note": note}


def gemv_closed_form(algo: str, hw: HardwareConfig, *, grid: int, k: int, n: int,
                     dtype: str = "fp32") -> dict:
    """Cycles of build_gemv(...): the algorithm's own closed form (`GemmAlgo.closed_form`)."""
    plan = _plan_sram("gemv", algo, grid, 1, k, n, dtype, "square")
    return gemm_algo(algo, "gemv").resolve("closed_form")(plan, hw)


def closed_form_gemv(plan: Plan, hw: HardwareConfig) -> dict:
    """Cycles of build_gemv(...) (docs/gemm.md "GEMV"), exact for both algorithms: row y's
    cores hold their x slice at `arrive[y]` (the column streams), multiply (c), reduce along
    the row (`mapper.tree_reduce.reduce_end`: chain, or the tree's traced schedule), then
    core (0, y) sends y block y over 2 y hops to (y, 0) (row 0: a local copy). The rows never
    share a link, so the end is the latest row's."""
    algo, P, dtype = plan.algo, plan.grid, plan.dtype
    _, kt, nt = plan.tiles
    wx, wn = plan.wavelets(kt), plan.wavelets(nt)
    c = plan.tile_cycles(hw, accumulate=False)
    # row 0 sends the column streams: its event is its ramp-on done
    arrive = [hw.message_start_cycles + hw.ramp_latency_cycles + stream_beats(hw, wx) - 1]
    arrive += [transfer_cycles(hw, wx, y) for y in range(1, P)]
    row_end = [reduce_end(algo, hw, [arrive[y] + c] * P, wn, nt, dtype) for y in range(P)]
    copy = compute_cycles(hw, 0, dtype, "vector", sram_read=nt * plan.b,
                          sram_write=nt * plan.b)
    ends = [row_end[0] + copy] + [row_end[j] + transfer_cycles(hw, wn, 2 * j)
                                  for j in range(1, P)]
    last = max(range(P), key=lambda j: (ends[j], j))
    parts = {"bcast_x": arrive[last], "local": c,
             "row_reduce": row_end[last] - arrive[last] - c,
             "y_to_row0": ends[last] - row_end[last]}
    return {"cycles": ends[last], "parts": parts, "critical_row": last, "exact": True}


# ---- data in and out (functional runs) ---------------------------------------------------------

def _meta_of(program: Program) -> dict:
    meta = program.meta or {}
    if meta.get("kind") not in ("gemm", "gemv"):
        raise ProgramError(f"program {program.name!r} was not built by mapper.gemm")
    return meta


def _pad(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros((rows, cols), np.float32)
    out[:x.shape[0], :x.shape[1]] = x
    return out


def _check_operand(name: str, x, shape: tuple) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.shape != shape:
        raise ValueError(f"{name}: shape {x.shape}, the program multiplies {shape}")
    return x


def gemm_inputs(program: Program, A, B) -> dict[str, np.ndarray]:
    """Scatter A (m x k) and B (k x n) into the per-core tiles `program` starts from (padded
    with zeros; fp16/bf16 are rounded when run_functional fills the buffers). For a GEMV
    program, A is x (1 x k or k) and B is W."""
    meta = _meta_of(program)
    P, (mt, kt, nt) = meta["grid"], meta["tiles"]
    M, K, N = meta["m"], meta["k"], meta["n"]
    if meta["kind"] == "gemv":
        x = _check_operand("x", np.reshape(A, (1, -1)), (1, K))
        W = _check_operand("W", B, (K, N))
        xs = np.zeros((P, P, 1, kt), np.float32)  # [y, x]: K block i on core (i, 0)
        xs[0, :, 0, :] = _pad(x, 1, kt * P).reshape(P, kt)
        w = _pad(W, kt * P, nt * P).reshape(P, kt, P, nt).transpose(2, 0, 1, 3)  # [N blk, K blk]
        return {"x": xs, "w": np.ascontiguousarray(w)}
    A = _check_operand("A", A, (M, K))
    B = _check_operand("B", B, (K, N))
    family = gemm_algo(meta["algo"]).family
    if family == "whole":
        rows, cols = (P, P) if meta["layout"] == "square" else (1, P)
        a = np.zeros((rows, cols, M, K), np.float32)
        a[0, 0] = A
        Bp = _pad(B, K, nt * rows * cols).reshape(K, rows, cols, nt).transpose(1, 2, 0, 3)
        return {"a": a, "b": np.ascontiguousarray(Bp)}
    At = _pad(A, mt * P, kt * P).reshape(P, mt, P, kt).transpose(0, 2, 1, 3)  # [I, J]
    Bt = _pad(B, kt * P, nt * P).reshape(P, kt, P, nt).transpose(0, 2, 1, 3)
    if family == "broadcast":
        return {"a": np.ascontiguousarray(At), "b": np.ascontiguousarray(Bt)}
    o = np.array(meta["ring"])
    ly, lx = np.meshgrid(np.arange(P), np.arange(P), indexing="ij")
    a = np.empty((P, P, mt, kt), np.float32)
    b = np.empty((P, P, kt, nt), np.float32)
    if meta["skew"]:  # natural layout on the ring; the program aligns it
        a[o[ly], o[lx]] = At[ly, lx]
        b[o[ly], o[lx]] = Bt[ly, lx]
    else:             # pre-aligned: logical (lx, ly) holds A(ly, lx + ly), B(lx + ly, lx)
        a[o[ly], o[lx]] = At[ly, (lx + ly) % P]
        b[o[ly], o[lx]] = Bt[(lx + ly) % P, lx]
    return {"a0": a, "b0": b}


def gemm_output(program: Program, buffers: dict) -> np.ndarray:
    """Gather C (m x n, float32) from the per-core tiles of a functional run (GEMV: y, 1 x n,
    from row 0, where block j lands on core (j, 0))."""
    meta = _meta_of(program)
    P, (mt, _, nt) = meta["grid"], meta["tiles"]
    M, N = meta["m"], meta["n"]
    if meta["kind"] == "gemv":
        y = _decoded(program, buffers, "y")
        return y[0].reshape(1, P * nt)[:, :N]
    c = np.asarray(buffers["c"], np.float32)
    if gemm_algo(meta["algo"]).family == "whole":
        rows, cols = c.shape[:2]
        return c.transpose(2, 0, 1, 3).reshape(M, rows * cols * nt)[:, :N]
    o = np.array(meta["ring"])  # logical (I, J) lives at physical (o[J], o[I]); identity: natural
    tiles = c[o][:, o]
    return tiles.transpose(0, 2, 1, 3).reshape(mt * P, nt * P)[:M, :N]


def _decoded(program: Program, buffers: dict, name: str) -> np.ndarray:
    from wse_sim.hardware import DTYPE_BYTES
    arr = np.asarray(buffers[name])
    if arr.dtype == np.float32:
        return arr
    dtype = next(a.dtype for a in program.allocs if a.name == name)
    if DTYPE_BYTES[dtype] != 2:
        raise ProgramError(f"buffer {name!r}: unexpected storage {arr.dtype}")
    bits = arr.astype(np.uint32) << 16
    if dtype == "bf16":
        return bits.view(np.float32)
    return _fp16_to_f32(arr)


def _fp16_to_f32(bits: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(bits).view(np.float16).astype(np.float32)


gemv_inputs = gemm_inputs
gemv_output = gemm_output
