"""A 25-point 3-D star stencil (radius 4 in x, y and z), one z-column per core, halos of 4
in x and y relayed between neighbours (Jacquelin et al. SC22 style).

u' = c0 u + sum_{k=1..4} ck (the 6 points at distance k along x, y, z), 29 FLOPs per point,
zero outside the grid. Each sweep: 4 rounds of one-hop sends to the 4 neighbours (round k
relays the column that came from k - 1 hops away), then the update (`star3d`, radius 4).

    python examples/programs/stencil25.py                        # mesh8: numpy check, both engines
    python examples/programs/stencil25.py --preset wse2 --nz 256 --iters 10 --engines fast
    python examples/programs/stencil25.py --cols 6 --rows 6 --nz 16 --iters 3 --save examples/programs/stencil25.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import star3d  # noqa: E402

RADIUS = 4
FLOPS_PER_POINT = star3d.flops_per_point(RADIUS)  # 29


def build(cols: int = 6, rows: int = 6, nz: int = 16, iters: int = 3, dtype: str = "fp32",
          coeffs: tuple | None = None):
    """`iters` sweeps on an nx = cols by ny = rows by nz grid; result in `result_buffer`."""
    return star3d.build_star("stencil25", cols, rows, nz, RADIUS, iters, dtype, coeffs)


def reference(u, iters: int, coeffs: tuple | None = None):
    """numpy, float64, on the (nx, ny, nz) grid."""
    return star3d.reference(u, RADIUS, iters, coeffs)


def check(cols=6, rows=6, nz=16, iters=3, hw=None, seed=0) -> float:
    """Max abs error of a functional run against `reference`."""
    return star3d.check("stencil25", cols, rows, nz, RADIUS, iters, hw, seed)


result_buffer = star3d.result_buffer


def sweep_cycles_closed_form(hw, nz: int, dtype: str = "fp32") -> int:
    """Cycles of one sweep: 4 rounds x 4 nz wavelets through the ramp, the last one hop away,
    then 29 nz vector FLOPs: 16 nz - 1 + 2 T_R + hop + M + 29 nz / lanes."""
    return star3d.sweep_cycles(hw, nz, RADIUS, dtype)


def main(argv=None) -> int:
    return star3d.cli("stencil25", RADIUS, argv, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
