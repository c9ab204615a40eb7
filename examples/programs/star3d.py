"""3-D star stencils of any radius, one z-column per core (shared by jacobi3d, stencil25 and
bicgstab).

The nx x ny x nz grid (zero outside: a Dirichlet boundary) lies on an nx x ny region, core
(x, y) holding the column u[x, y, :] in its memory (Rocki et al. SC20; Jacquelin et al. SC22).
A sweep of radius r, on every core at once:

1. `halo_exchange`: r rounds of four one-hop `Unicast`s (east, west, south, north). Round 1
   sends the core's column into the neighbour's halo `halo_<side it came from>1`; round k
   relays the column that round k - 1 brought from the opposite side, so it lands k hops from
   its owner in `halo_<side>k`. Only neighbours talk (Jacquelin's localized communication);
   4 r nz wavelets per core share its ramp. A round-1 send waits for the column to be written
   (`Dep(ready)`), a later one for the round before it, every one for the receiver to have
   used the last halo (`Dep(used, "offset", dx, dy)`).
2. `star_update`: u' = c0 u + sum_k ck (the 6 neighbours at distance k: 4 halos, 2 in z),
   7 r + 1 FLOPs per point (per k: 5 adds, 1 multiply, 1 add; plus c0 u), a `vector` compute,
   into the other of two columns (ping-pong).

Sweeps after the first are a loop (`ProgramBuilder.repeat`): every sweep is the first moved
by whole sweeps, so the fast engine fast-forwards them (docs/hardware-model.md, "Loops").
"""

from __future__ import annotations

import numpy as np

from wse_sim.hardware import DTYPE_BYTES
from wse_sim.kernels.registry import register_kernel
from wse_sim.program import (
    Compute,
    DataOp,
    Dep,
    Program,
    ProgramBuilder,
    ProgramError,
    Region,
    Unicast,
    wavelets_for,
)

SIDES = {"e": (1, 0), "w": (-1, 0), "s": (0, 1), "n": (0, -1)}  # send direction: (dx, dy)
OPPOSITE = {"e": "w", "w": "e", "s": "n", "n": "s"}
MAX_RADIUS = 8


def flops_per_point(radius: int) -> int:
    """FLOPs of one star update of `radius` at one grid point."""
    return 7 * radius + 1


def sweep_cycles(hw, nz: int, radius: int, dtype: str = "fp32") -> int:
    """Cycles of one sweep with no contention (cols, rows >= 2, nz >= 2): every round's four
    sends share the core's ramp (4 nz wavelets per round, the next round's relay is ready
    before the ramp frees), the last arrives one hop away (+ the sender's start and the
    receiver's receipt, M), then the vector update."""
    m = hw.message_start_cycles + hw.message_receive_cycles
    return (4 * radius * wavelets_for(nz, dtype) - 1 + 2 * hw.ramp_latency_cycles
            + hw.hop_latency_cycles + m - (-flops_per_point(radius) * nz // hw.lanes(dtype)))


def halo_inputs(radius: int) -> tuple:
    """The halo buffers `star_update` reads, in its order (per k: west, east, north, south)."""
    return tuple(f"halo_{s}{k}" for k in range(1, radius + 1) for s in ("w", "e", "n", "s"))


@register_kernel("star_update", replace=True)
def star_update(call):
    """u' = c0 u + sum_k ck (halos at distance k + u[z - k] + u[z + k]); zeros past z's ends."""
    u, *halos = call.inputs
    r = len(halos) // 4
    nz = u.shape[-1]
    p = np.zeros((*u.shape[:-1], nz + 2 * r), np.float32)
    p[..., r:r + nz] = u
    out = call.params["c0"] * u
    for k in range(1, r + 1):
        s = halos[4 * (k - 1)] + halos[4 * (k - 1) + 1] + halos[4 * (k - 1) + 2]
        s = s + halos[4 * (k - 1) + 3] + p[..., r - k:r - k + nz] + p[..., r + k:r + k + nz]
        out = out + call.params[f"c{k}"] * s
    return out


def check_int(example: str, name: str, v, low: int, high: int | None = None) -> None:
    """One-line error naming the field, the value and what is allowed."""
    if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
        allowed = f">= {low}" if high is None else f"in {low}..{high}"
        raise ProgramError(f"{example} {name}: got {v!r}, must be an integer {allowed}")


def check_dtype(example: str, dtype: str) -> None:
    if dtype not in ("fp32", "fp16", "bf16"):
        raise ProgramError(f"{example} dtype: got {dtype!r}, must be fp32, fp16 or bf16")


def halo_exchange(pb: ProgramBuilder, grid: Region, buf: str, radius: int, nz: int,
                  dtype: str, ready: int | None, used: int | None) -> list[int]:
    """Rounds k = 1..r of four one-hop unicasts: round 1 sends column `buf`, round k relays
    the halo that round k - 1 brought from the opposite side (Jacquelin's neighbour-only
    relay). Returns the unicasts' indices."""
    sends, prev = [], {}
    for k in range(1, radius + 1):
        for color, (side, (dx, dy)) in enumerate(SIDES.items()):
            if (dx and grid.cols < 2) or (dy and grid.rows < 2):
                continue
            src = Region(grid.x + max(0, -dx), grid.y + max(0, -dy), grid.cols - abs(dx),
                         grid.rows - abs(dy))
            deps = (Dep(prev[side]),) if k > 1 else () if ready is None else (Dep(ready),)
            deps += () if used is None else (Dep(used, "offset", dx, dy),)
            what = buf if k == 1 else f"halo_{OPPOSITE[side]}{k - 1}"
            prev[side] = pb.add(Unicast(
                f"halo.{side}{k}", src, wavelets_for(nz, dtype), dx=dx, dy=dy, color=color,
                deps=deps, data=DataOp("copy", (what,), f"halo_{OPPOSITE[side]}{k}")))
            sends.append(prev[side])
    return sends


def alloc_halos(pb: ProgramBuilder, grid: Region, radius: int, nz: int, dtype: str) -> None:
    for name in halo_inputs(radius):
        pb.alloc(name, grid, DTYPE_BYTES[dtype] * nz, shape=(nz,), dtype=dtype)


def update_task(name: str, grid: Region, radius: int, nz: int, dtype: str, src: str, dst: str,
                coeffs: tuple, deps: tuple) -> Compute:
    """The star update of every column of `grid`, reading `src` and its halos into `dst`."""
    pts, nbytes = nz * grid.size, DTYPE_BYTES[dtype]
    params = (("c0", float(coeffs[0])),) + tuple((f"c{k}", float(coeffs[k]))
                                                 for k in range(1, radius + 1))
    return Compute(name, grid, flops_per_point(radius) * pts, dtype=dtype, kind="vector",
                   sram_read_bytes=(4 * radius + 1) * nbytes * pts,
                   sram_write_bytes=nbytes * pts, deps=deps,
                   data=DataOp("star_update", (src, *halo_inputs(radius)), dst, params))


def default_coeffs(radius: int) -> tuple:
    """c0 = 0, ck = 1 / (6 r k): a smoothing average that keeps values bounded."""
    return (0.0,) + tuple(1.0 / (6 * radius * k) for k in range(1, radius + 1))


def build_star(name: str, cols: int, rows: int, nz: int, radius: int, iters: int,
               dtype: str = "fp32", coeffs: tuple | None = None) -> Program:
    """`iters` sweeps on cores [0, cols) x [0, rows); the result is in `result_buffer(iters)`."""
    for field, v, low in (("cols", cols, 1), ("rows", rows, 1), ("nz", nz, 1),
                          ("iters", iters, 1)):
        check_int(name, field, v, low)
    check_int(name, "radius", radius, 1, MAX_RADIUS)
    check_dtype(name, dtype)
    coeffs = default_coeffs(radius) if coeffs is None else tuple(coeffs)
    if len(coeffs) != radius + 1:
        raise ProgramError(f"{name} coeffs: got {len(coeffs)} values, must be radius + 1 = "
                           f"{radius + 1}")
    grid = Region(0, 0, cols, rows)
    pb = ProgramBuilder(name)
    for buf in ("u0", "u1"):
        pb.alloc(buf, grid, DTYPE_BYTES[dtype] * nz, shape=(nz,), dtype=dtype)
    alloc_halos(pb, grid, radius, nz, dtype)
    last: list = [None]

    def sweep(k: int) -> None:
        cur, nxt = f"u{k % 2}", f"u{(k + 1) % 2}"
        sends = halo_exchange(pb, grid, cur, radius, nz, dtype, last[0], last[0])
        deps = tuple(Dep(s) for s in sends) + (() if last[0] is None else (Dep(last[0]),))
        last[0] = pb.add(update_task(f"update{k}", grid, radius, nz, dtype, cur, nxt, coeffs,
                                     deps))

    sweep(0)  # the first sweep waits for nothing: peeled off the loop
    pb.repeat(f"{name}.sweep", iters - 1, lambda i: sweep(i + 1))
    return pb.build(cores_used=grid.size, dtype=dtype)


def result_buffer(iters: int) -> str:
    return f"u{iters % 2}"


def reference(u: np.ndarray, radius: int, iters: int, coeffs: tuple | None = None) -> np.ndarray:
    """numpy, float64: `iters` star sweeps of the (nx, ny, nz) grid, zeros outside."""
    c = default_coeffs(radius) if coeffs is None else coeffs
    u = u.astype(np.float64)
    nx, ny, nz = u.shape
    r = radius
    for _ in range(iters):
        p = np.pad(u, r)
        out = c[0] * u
        for k in range(1, r + 1):
            s = (p[r - k:r - k + nx, r:r + ny, r:r + nz] + p[r + k:r + k + nx, r:r + ny, r:r + nz]
                 + p[r:r + nx, r - k:r - k + ny, r:r + nz] + p[r:r + nx, r + k:r + k + ny, r:r + nz]
                 + p[r:r + nx, r:r + ny, r - k:r - k + nz] + p[r:r + nx, r:r + ny, r + k:r + k + nz])
            out = out + c[k] * s
        u = out
    return u


def to_tiles(u: np.ndarray) -> np.ndarray:
    """An (nx, ny, nz) grid as per-core columns (rows = ny, cols = nx, nz)."""
    return np.ascontiguousarray(u.transpose(1, 0, 2))


def from_tiles(t: np.ndarray) -> np.ndarray:
    return t.transpose(1, 0, 2)


def check(name: str, cols: int, rows: int, nz: int, radius: int, iters: int, hw=None,
          seed: int = 0) -> float:
    """Max abs error of a functional run against `reference` (random grid in [-1, 1])."""
    from wse_sim.functional import run_functional
    from wse_sim.hardware import load_preset
    hw = hw or load_preset("mesh8")
    u = np.random.default_rng(seed).uniform(-1, 1, (cols, rows, nz))
    prog = build_star(name, cols, rows, nz, radius, iters)
    out = run_functional(prog, hw, {"u0": to_tiles(u.astype(np.float32))})
    return float(np.abs(from_tiles(out[result_buffer(iters)]) - reference(u, radius, iters)).max())


def report(prog: Program, hw, engines: str = "reference,fast") -> list:
    """Time `prog` on each engine and print cycles, FLOP/s and % of peak; the results."""
    from wse_sim.engine import simulate
    out = []
    for engine in engines.split(","):
        r = simulate(prog, hw, engine=engine)
        skipped = getattr(r, "loop_iterations_skipped", 0)
        print(f"{engine:9} {r.cycles:,} cycles = {r.seconds * 1e6:.2f} us, "
              f"{r.flops_per_s / 1e12:.3f} TFLOP/s = {100 * r.peak_fraction:.2f} % of the "
              f"{prog.cores_used:,} cores' {prog.dtype} peak (wall {r.wall_seconds:.2f} s, "
              f"{skipped} loop iterations fast-forwarded)")
        out.append(r)
    return out


def cli(name: str, radius: int, argv=None, doc: str = "") -> int:
    """The command line of jacobi3d and stencil25."""
    import argparse

    from wse_sim.hardware import load_preset
    from wse_sim.program_io import save_program
    ap = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else name)
    ap.add_argument("--preset", default="mesh8")
    ap.add_argument("--cols", type=int, default=None, help="default: the mesh's columns")
    ap.add_argument("--rows", type=int, default=None, help="default: the mesh's rows")
    ap.add_argument("--nz", type=int, default=64, help="z values per core")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--engines", default="reference,fast")
    ap.add_argument("--save", metavar="FILE", help="write the program file")
    args = ap.parse_args(argv)
    hw = load_preset(args.preset)
    cols, rows = args.cols or hw.mesh_cols, args.rows or hw.mesh_rows
    prog = build_star(name, cols, rows, args.nz, radius, args.iters, args.dtype)
    if args.save:
        print(f"wrote {save_program(prog, args.save)}")
    if cols * rows <= 16 * 16:
        err = check(name, cols, rows, args.nz, radius, args.iters, hw)
        print(f"functional (fp32): max abs error vs numpy {err:.2g}")
    report(prog, hw, args.engines)
    return 0
