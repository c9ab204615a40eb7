"""A 3-D 7-point Jacobi stencil, one z-column per core, halo exchange with the 4 neighbours
in x and y (Rocki et al. SC20's layout; the stencil of their BiCGStab).

u' = c0 u + c1 (u[x-1] + u[x+1] + u[y-1] + u[y+1] + u[z-1] + u[z+1]), 8 FLOPs per point, zero
outside the grid. The records and the loop are those of `star3d` with radius 1.

    python examples/programs/jacobi3d.py                         # mesh8: numpy check, both engines
    python examples/programs/jacobi3d.py --preset wse2 --nz 1024 --iters 10 --engines fast
    python examples/programs/jacobi3d.py --cols 4 --rows 4 --nz 16 --iters 3 --save examples/programs/jacobi3d.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import star3d  # noqa: E402

RADIUS = 1
FLOPS_PER_POINT = star3d.flops_per_point(RADIUS)  # 8


def build(cols: int = 4, rows: int = 4, nz: int = 16, iters: int = 3, dtype: str = "fp32",
          coeffs: tuple | None = None):
    """`iters` sweeps on an nx = cols by ny = rows by nz grid; result in `result_buffer`."""
    return star3d.build_star("jacobi3d", cols, rows, nz, RADIUS, iters, dtype, coeffs)


def reference(u, iters: int, coeffs: tuple | None = None):
    """numpy, float64, on the (nx, ny, nz) grid."""
    return star3d.reference(u, RADIUS, iters, coeffs)


def check(cols=4, rows=4, nz=16, iters=3, hw=None, seed=0) -> float:
    """Max abs error of a functional run against `reference`."""
    return star3d.check("jacobi3d", cols, rows, nz, RADIUS, iters, hw, seed)


result_buffer = star3d.result_buffer


def sweep_cycles_closed_form(hw, nz: int, dtype: str = "fp32") -> int:
    """Cycles of one sweep: a core's 4 sends share its ramp (4 nz wavelets, the last arrives
    one hop away), then 8 nz vector FLOPs: 4 nz - 1 + 2 T_R + hop + M + 8 nz / lanes."""
    return star3d.sweep_cycles(hw, nz, RADIUS, dtype)


def main(argv=None) -> int:
    return star3d.cli("jacobi3d", RADIUS, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
