"""examples/programs/jacobi2d.py: the 5-point Jacobi stencil with halo exchange computes what
numpy computes, and both engines time it the same (one iteration in closed form)."""

import numpy as np
import pytest
from test_programs_doc import ROOT, load_example

from wse_sim.engine import simulate
from wse_sim.hardware import load_preset
from wse_sim.program import ProgramError
from wse_sim.program_io import load_program

jacobi = load_example("jacobi2d")
HW = load_preset("mesh8")


@pytest.mark.parametrize("cols, rows, h, w, iters", [(4, 4, 8, 8, 3), (3, 5, 7, 2, 4),
                                                     (8, 2, 1, 5, 2), (2, 2, 3, 3, 6)])
def test_functional_equals_numpy(cols, rows, h, w, iters):
    assert jacobi.check(cols, rows, h, w, iters, HW, seed=cols + iters) < 1e-5


def test_check_can_fail():
    """A different update (c0 = 1) gives a different grid: the comparison sees it."""
    u = np.random.default_rng(0).uniform(-1, 1, (8, 8))
    assert np.abs(jacobi.reference(u, 2, c0=1.0) - jacobi.reference(u, 2)).max() > 0.1


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("cols, rows, h, w", [(8, 8, 8, 8), (8, 8, 4, 12), (3, 5, 7, 2)])
def test_one_iteration_in_closed_form(engine, cols, rows, h, w):
    """Four sends share a core's ramp (2h + 2w wavelets), the last arrives one hop away, then
    6 FLOPs per point on one fp32 lane."""
    tr, hop = HW.ramp_latency_cycles, HW.hop_latency_cycles
    r = simulate(jacobi.build(cols, rows, h, w, 1), HW, engine=engine)
    assert r.cycles == 2 * h + 2 * w + 2 * tr + hop - 1 + 6 * h * w


def test_engines_agree_and_report_flops():
    hw = load_preset("mesh16")
    p = jacobi.build(16, 16, 8, 8, 5)
    ref, fast = (simulate(p, hw, engine=e) for e in ("reference", "fast"))
    assert ref.cycles == fast.cycles and ref.comm_bytes == fast.comm_bytes
    assert ref.flops == 6 * (16 * 8) ** 2 * 5
    assert 0.35 < ref.peak_fraction < 0.5  # a vector compute: at most half the FMAC peak


def test_committed_file_is_the_built_program():
    assert load_program(ROOT / "examples" / "programs" / "jacobi2d.json") == jacobi.build()


def test_builder_checks_its_sizes():
    with pytest.raises(ProgramError, match="jacobi2d cols: got 1, must be an integer >= 2"):
        jacobi.build(cols=1)
