"""A 2-D 5-point Jacobi stencil with halo exchange, written against `wse_sim.program`.

The N_y x N_x grid (zero outside: a Dirichlet boundary) is tiled over a cols x rows region,
one h x w tile per core. One iteration, on every core at once:

1. each core copies its four edges into send buffers (`jacobi_edge`, no cost: the hardware
   sends straight from the tile with a strided read);
2. four unicasts move each edge one hop to the neighbour's halo buffer (east edges become the
   east neighbour's west halo, ...); a send waits until the neighbour has used the previous
   halo (a `Dep` with rule `offset` on the neighbour's last update);
3. `jacobi_update`: u' = c0 u + c1 (N + S + E + W), 6 FLOPs per point (3 adds for the
   neighbours, 2 multiplies, 1 add), a `vector` compute (one FLOP per lane-cycle), into the
   other of two tiles (ping-pong).

    python examples/programs/jacobi2d.py                    # mesh8: numpy check, both engines
    python examples/programs/jacobi2d.py --preset mesh32 --cols 32 --rows 32 --tile 16 --iters 10
    python examples/programs/jacobi2d.py --save examples/programs/jacobi2d.json

docs/programs.md explains the records and the cost of an iteration.
"""

from __future__ import annotations

import argparse

import numpy as np

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
)

FLOPS_PER_POINT = 6
# side: (edge sent, neighbour offset dx, dy, halo it fills at the neighbour)
SIDES = {"e": (1, 0, "halo_w"), "w": (-1, 0, "halo_e"), "s": (0, 1, "halo_n"),
         "n": (0, -1, "halo_s")}


@register_kernel("jacobi_edge", replace=True)
def jacobi_edge(call):
    """The tile's edge on `side` (e, w: a column of h values; n, s: a row of w values)."""
    (u,) = call.inputs
    side = call.params["side"]
    return {"e": u[..., :, -1], "w": u[..., :, 0], "n": u[..., 0, :], "s": u[..., -1, :]}[side]


@register_kernel("jacobi_update", replace=True)
def jacobi_update(call):
    """u' = c0 u + c1 (N + S + E + W), the halos standing in past the tile's edges."""
    u, hw_, he, hn, hs = call.inputs
    rows, cols, h, w = u.shape
    p = np.zeros((rows, cols, h + 2, w + 2), np.float32)
    p[..., 1:-1, 1:-1] = u
    p[..., 1:-1, 0], p[..., 1:-1, -1] = hw_, he
    p[..., 0, 1:-1], p[..., -1, 1:-1] = hn, hs
    nsew = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, 2:] + p[..., 1:-1, :-2]
    return call.params["c0"] * u + call.params["c1"] * nsew


def _check(name, v, low):
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ProgramError(f"jacobi2d {name}: got {v!r}, must be an integer >= {low}")


def _exchange(pb, grid: Region, tile: tuple, cur: str, last: int | None) -> list[int]:
    """Edges out of `cur`, one hop each way; returns the four unicasts' task indices."""
    sends = []
    for side, (dx, dy, halo) in SIDES.items():
        src = Region(max(0, -dx), max(0, -dy), grid.cols - abs(dx), grid.rows - abs(dy))
        wait = (Dep(last),) if last is not None else ()
        edge = pb.add(Compute(f"edge.{side}", src, 0, kind="vector", deps=wait,
                              data=DataOp("jacobi_edge", (cur,), f"send_{side}",
                                          (("side", side),))))
        used = (Dep(last, "offset", dx, dy),) if last is not None else ()
        size = tile[0] if dx else tile[1]
        sends.append(pb.add(Unicast(f"halo.{side}", src, size, dx=dx, dy=dy, color=len(sends),
                                    deps=(Dep(edge), *used),
                                    data=DataOp("copy", (f"send_{side}",), halo))))
    return sends


def build(cols: int = 4, rows: int = 4, tile_h: int = 8, tile_w: int = 8, iters: int = 2,
          c0: float = 0.0, c1: float = 0.25) -> Program:
    """`iters` Jacobi sweeps of a (rows tile_h) x (cols tile_w) grid on cores [0, cols) x
    [0, rows); the result is in buffer `result_buffer(iters)`."""
    for name, v, low in (("cols", cols, 2), ("rows", rows, 2), ("tile_h", tile_h, 1),
                         ("tile_w", tile_w, 1), ("iters", iters, 1)):
        _check(name, v, low)
    grid = Region(0, 0, cols, rows)
    pb = ProgramBuilder("jacobi2d")
    pts = tile_h * tile_w
    for name in ("u0", "u1"):
        pb.alloc(name, grid, 4 * pts, shape=(tile_h, tile_w))
    for side, (dx, _, halo) in SIDES.items():
        n = tile_h if dx else tile_w
        pb.alloc(f"send_{side}", grid, 4 * n, shape=(n,))
        pb.alloc(halo, grid, 4 * n, shape=(n,))
    last = None
    for k in range(iters):
        cur, nxt = f"u{k % 2}", f"u{(k + 1) % 2}"
        sends = _exchange(pb, grid, (tile_h, tile_w), cur, last)
        last = pb.add(Compute(f"update{k}", grid, FLOPS_PER_POINT * pts * grid.size,
                              kind="vector", sram_read_bytes=5 * 4 * pts * grid.size,
                              sram_write_bytes=4 * pts * grid.size,
                              deps=tuple(Dep(s) for s in sends),
                              data=DataOp("jacobi_update", (cur, "halo_w", "halo_e", "halo_n",
                                                            "halo_s"), nxt,
                                          (("c0", float(c0)), ("c1", float(c1))))))
    return pb.build(cores_used=grid.size)


def result_buffer(iters: int) -> str:
    return f"u{iters % 2}"


def to_tiles(u: np.ndarray, cols: int, rows: int) -> np.ndarray:
    """A (rows h, cols w) grid as per-core tiles (rows, cols, h, w)."""
    h, w = u.shape[0] // rows, u.shape[1] // cols
    return u.reshape(rows, h, cols, w).transpose(0, 2, 1, 3)


def from_tiles(t: np.ndarray) -> np.ndarray:
    rows, cols, h, w = t.shape
    return t.transpose(0, 2, 1, 3).reshape(rows * h, cols * w)


def reference(u: np.ndarray, iters: int, c0: float = 0.0, c1: float = 0.25) -> np.ndarray:
    """numpy, float64: the same sweeps with zeros outside the grid."""
    u = u.astype(np.float64)
    for _ in range(iters):
        p = np.pad(u, 1)
        u = c0 * u + c1 * (p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, 2:] + p[1:-1, :-2])
    return u


def check(cols=4, rows=4, tile_h=8, tile_w=8, iters=3, hw=None, seed=0) -> float:
    """Max abs error of a functional run against `reference` (random grid)."""
    from wse_sim.functional import run_functional
    from wse_sim.hardware import load_preset
    hw = hw or load_preset("mesh8")
    u = np.random.default_rng(seed).uniform(-1, 1, (rows * tile_h, cols * tile_w))
    prog = build(cols, rows, tile_h, tile_w, iters)
    out = run_functional(prog, hw, {"u0": to_tiles(u.astype(np.float32), cols, rows)})
    return float(np.abs(from_tiles(out[result_buffer(iters)]) - reference(u, iters)).max())


def main(argv=None) -> int:
    from wse_sim.engine import simulate
    from wse_sim.hardware import load_preset
    from wse_sim.program_io import save_program
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mesh8")
    ap.add_argument("--cols", type=int, default=None, help="default: the mesh's columns")
    ap.add_argument("--rows", type=int, default=None, help="default: the mesh's rows")
    ap.add_argument("--tile", type=int, default=8, help="tile_h = tile_w")
    ap.add_argument("--iters", type=int, default=4)
    ap.add_argument("--engines", default="reference,fast")
    ap.add_argument("--save", metavar="FILE", help="write the program file")
    args = ap.parse_args(argv)
    hw = load_preset(args.preset)
    cols, rows = args.cols or hw.mesh_cols, args.rows or hw.mesh_rows
    prog = build(cols, rows, args.tile, args.tile, args.iters)
    if args.save:
        print(f"wrote {save_program(prog, args.save)}")
    if cols * rows <= 32 * 32:
        print(f"functional: max abs error vs numpy {check(cols, rows, args.tile, args.tile, args.iters, hw):.2g}")
    for engine in args.engines.split(","):
        r = simulate(prog, hw, engine=engine)
        print(f"{engine:9} {r.cycles:,} cycles = {r.seconds * 1e6:.2f} us, "
              f"{r.flops_per_s / 1e12:.3f} TFLOP/s = {100 * r.peak_fraction:.2f} % of the "
              f"{cols} x {rows} cores' fp32 peak (wall {r.wall_seconds:.2f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
