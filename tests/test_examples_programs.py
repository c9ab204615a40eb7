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
    m = HW.message_start_cycles + HW.message_receive_cycles
    r = simulate(jacobi.build(cols, rows, h, w, 1), HW, engine=engine)
    assert r.cycles == 2 * h + 2 * w + 2 * tr + hop - 1 + m + 6 * h * w


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


# ---- the 3-D examples: jacobi3d, stencil25, bicgstab, fft3d ------------------------------------

jacobi3d, stencil25 = load_example("jacobi3d"), load_example("stencil25")
bicgstab, fft3d = load_example("bicgstab"), load_example("fft3d")
HW16 = load_preset("mesh16")


def _both(program, hw=HW16):
    """Both engines' results; they must agree to the cycle and the byte."""
    ref, fast = (simulate(program, hw, engine=e) for e in ("reference", "fast"))
    assert (ref.cycles, ref.flops, ref.comm_bytes) == (fast.cycles, fast.flops, fast.comm_bytes)
    return ref, fast


@pytest.mark.parametrize("mod, cols, rows, nz, iters", [
    (jacobi3d, 4, 4, 16, 3), (jacobi3d, 3, 5, 7, 2), (jacobi3d, 1, 4, 5, 2),
    (stencil25, 6, 6, 16, 3), (stencil25, 3, 7, 9, 2), (stencil25, 8, 2, 12, 1)])
def test_stencils_functional_equal_numpy(mod, cols, rows, nz, iters):
    assert mod.check(cols, rows, nz, iters, HW, seed=cols + nz) < 1e-5


@pytest.mark.parametrize("mod, radius", [(jacobi3d, 1), (stencil25, 4)])
@pytest.mark.parametrize("cols, rows, nz, iters, dtype", [(16, 16, 32, 12, "fp32"),
                                                          (5, 7, 17, 4, "fp32"),
                                                          (8, 6, 24, 3, "fp16")])
def test_stencil_sweeps_in_closed_form(mod, radius, cols, rows, nz, iters, dtype):
    """Every sweep is 4 r nz wavelets through the ramp, the last one hop away, then the
    (7 r + 1) nz vector FLOPs; the loop's later sweeps are fast-forwarded."""
    ref, fast = _both(mod.build(cols, rows, nz, iters, dtype))
    tr, hop, lanes = HW16.ramp_latency_cycles, HW16.hop_latency_cycles, HW16.lanes(dtype)
    wv = nz if dtype == "fp32" else -(-nz // 2)
    m = HW16.message_start_cycles + HW16.message_receive_cycles
    sweep = 4 * radius * wv - 1 + 2 * tr + hop + m - (-(7 * radius + 1) * nz // lanes)
    assert sweep == mod.sweep_cycles_closed_form(HW16, nz, dtype)
    assert ref.cycles == iters * sweep
    assert ref.flops == iters * (7 * radius + 1) * nz * cols * rows == mod.build(
        cols, rows, nz, iters, dtype).total_flops()
    if iters >= 12:
        assert fast.loop_iterations_skipped > 0


@pytest.mark.parametrize("cols, rows, nz, iters, seed", [(4, 4, 16, 2, 0), (3, 5, 8, 3, 1),
                                                         (6, 2, 10, 1, 2)])
def test_bicgstab_functional_equals_numpy(cols, rows, nz, iters, seed):
    assert bicgstab.check(cols, rows, nz, iters, HW, seed) < 1e-4


def test_bicgstab_check_can_fail():
    """Another operator gives another x: the comparison sees it."""
    b = np.random.default_rng(0).uniform(-1, 1, (4, 4, 8))
    x1, x2 = (bicgstab.reference(b, 2, c)["x"] for c in ((6.5, -1.0), (7.5, -1.0)))
    assert np.abs(x1 - x2).max() > 1e-3


@pytest.mark.parametrize("cols, rows, nz, iters, dtype", [(12, 10, 16, 8, "fp32"),
                                                          (5, 3, 9, 2, "fp16")])
def test_bicgstab_engines_agree_and_flops_are_exact(cols, rows, nz, iters, dtype):
    p = bicgstab.build(cols, rows, nz, iters, dtype)
    ref, fast = _both(p)
    assert ref.flops == bicgstab.closed_form_flops(cols, rows, nz, iters)
    assert ref.flops == iters * (36 * nz + 5) * cols * rows
    assert ref.loop_iterations == iters - 1


@pytest.mark.parametrize("cols, rows, nz", [(8, 8, 64), (4, 2, 8), (2, 8, 16), (4, 4, 4)])
def test_fft3d_functional_equals_numpy(cols, rows, nz):
    assert fft3d.check(cols, rows, nz, HW, seed=nz) < 1e-6


@pytest.mark.parametrize("cols, rows, nz", [(8, 8, 64), (16, 4, 32)])
def test_fft3d_engines_agree_and_flops_are_exact(cols, rows, nz):
    ref, _ = _both(fft3d.build(cols, rows, nz))
    n = cols * rows * nz
    assert ref.flops == fft3d.closed_form_flops(cols, rows, nz) == 5 * n * int(np.log2(n))


@pytest.mark.parametrize("name, mod", [("jacobi3d", jacobi3d), ("stencil25", stencil25),
                                       ("bicgstab", bicgstab), ("fft3d", fft3d)])
def test_committed_3d_files_are_the_built_programs(name, mod):
    assert load_program(ROOT / "examples" / "programs" / f"{name}.json") == mod.build()


@pytest.mark.parametrize("call, msg", [
    (lambda: jacobi3d.build(nz=0), "jacobi3d nz: got 0, must be an integer >= 1"),
    (lambda: stencil25.build(dtype="fp64"), "stencil25 dtype: got 'fp64', must be fp32"),
    (lambda: bicgstab.build(cols=1), "bicgstab cols: got 1, must be an integer >= 2"),
    (lambda: fft3d.build(rows=1), "fft3d rows: got 1, must be an integer >= 2"),
])
def test_3d_builders_check_their_inputs(call, msg):
    with pytest.raises(ProgramError, match=msg):
        call()


@pytest.mark.parametrize("sizes, msg", [
    ((8, 8, 48), "fft3d nz: got 48; sizes that are not powers of two .* not implemented"),
    ((8, 8, 4), "fft3d nz: got 4 < cols 8 or rows 8; .* not implemented"),
])
def test_fft3d_says_what_is_not_implemented(sizes, msg):
    with pytest.raises(NotImplementedError, match=msg):
        fft3d.build(*sizes)


def test_doc_figures_follow_from_the_closed_forms():
    """docs/programs.md quotes these sweep and iteration costs at wafer scale."""
    text = (ROOT / "docs" / "programs.md").read_text()
    wse1, wse2 = load_preset("wse1"), load_preset("wse2")
    assert jacobi3d.sweep_cycles_closed_form(wse2, 1024) == 12293 and "122,930" in text
    assert stencil25.sweep_cycles_closed_form(wse2, 512) == 23045 and "230,450" in text
    tr, hop, op, lanes = (wse1.ramp_latency_cycles, wse1.hop_latency_cycles,
                          wse1.stream_op_latency_cycles, wse1.lanes("fp16"))
    nz, P, Q = 1536, 600, 595
    spmv = 4 * (nz // 2) - 1 + 2 * tr + hop + 8 * nz // lanes
    allreduce = (P + Q - 2) * (2 * tr + 2 * hop + op) + 4 * tr
    m = wse1.message_start_cycles + wse1.message_receive_cycles
    est = 2 * (spmv + m) + 8 * nz // (2 * lanes) + 6 * 2 * nz // (2 * lanes) + 3 * (allreduce + 4 * m)
    assert est == 41227 and "41,227 of the 41,236" in text
