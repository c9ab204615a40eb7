"""The backward's transposed products (`mapper.gemm_transposed`): functional == numpy, fast ==
reference on every counter with the middle steps fast-forwarded, and the input checks."""

from __future__ import annotations

import numpy as np
import pytest
from test_engine_fast import assert_same

from mapper.gemm_transposed import (
    TPlan,
    build_transposed,
    estimate_cycles,
    transposed_inputs,
    transposed_output,
)
from wse_sim.engine.fast import simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.functional import run_functional
from wse_sim.hardware import load_preset

HW = load_preset("mesh16")


def _operands(kind, m, k, n, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "tn":
        A, B = rng.standard_normal((m, k)), rng.standard_normal((m, n))
        return A, B, A.T @ B
    A, B = rng.standard_normal((m, n)), rng.standard_normal((k, n))
    return A, B, A @ B.T


@pytest.mark.parametrize("kind", ["tn", "nt"])
@pytest.mark.parametrize("P,m,k,n", [(2, 3, 3, 3), (3, 7, 5, 10), (4, 8, 12, 8), (5, 9, 11, 6)])
def test_functional_equals_numpy(kind, P, m, k, n):
    p = build_transposed(kind, HW, grid=P, m=m, k=k, n=n, functional=True)
    plan = TPlan(kind, P, m, k, n, "fp32")
    A, B, ref = _operands(kind, m, k, n)
    C = transposed_output(plan, run_functional(p, HW, transposed_inputs(plan, A, B)))
    assert C.shape == ref.shape
    np.testing.assert_allclose(C, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["tn", "nt"])
def test_functional_catches_a_wrong_tile(kind):
    P, m, k, n = 3, 6, 6, 6
    p = build_transposed(kind, HW, grid=P, m=m, k=k, n=n, functional=True)
    plan = TPlan(kind, P, m, k, n, "fp32")
    A, B, ref = _operands(kind, m, k, n)
    ins = transposed_inputs(plan, A, B)
    moving = "a0" if kind == "tn" else "b0"
    ins[moving][1, 2] += 1.0
    C = transposed_output(plan, run_functional(p, HW, ins))
    assert np.abs(C - ref).max() > 0.5


@pytest.mark.parametrize("kind", ["tn", "nt"])
@pytest.mark.parametrize("P", [4, 9])
def test_fast_equals_reference_and_skips(kind, P):
    p = build_transposed(kind, HW, grid=P, m=24 * P, k=8 * P, n=6 * P, dtype="fp16")
    ref = simulate_reference(p, HW)
    fast = simulate_fast(p, HW, path="step", spans=True)
    assert_same(ref, fast)
    assert fast.loop_iterations == ref.loop_iterations == P - 2
    # the contention-free estimate is near the simulated figure
    assert 0.7 * fast.cycles <= p.meta["estimate_cycles"] <= 1.05 * fast.cycles
    assert p.total_flops() == 2 * (24 * P) * (8 * P) * (6 * P)


@pytest.mark.parametrize("kind", ["tn", "nt"])
@pytest.mark.parametrize("mkn", [(512, 64, 64), (1024, 128, 128), (32, 32, 32)])
def test_fast_forward_skips_on_a_big_grid(kind, mkn):
    """Compute-bound or not, the steps settle (every hop at most 2, the accumulators' wait)."""
    p = build_transposed(kind, HW, grid=16, m=mkn[0], k=mkn[1], n=mkn[2], dtype="fp16")
    fast = simulate_fast(p, HW, path="step")
    assert fast.loop_iterations == 14 and fast.loop_iterations_skipped >= 9


def test_bad_input_one_line():
    with pytest.raises(ValueError, match="transposed gemm kind: got 'tt'"):
        TPlan("tt", 4, 1, 1, 1, "fp16")
    with pytest.raises(ValueError, match="transposed gemm grid: got 1"):
        TPlan("tn", 1, 1, 1, 1, "fp16")
    with pytest.raises(ValueError, match="dtype: got 'fp64'"):
        TPlan("nt", 2, 1, 1, 1, "fp64")
    assert estimate_cycles(TPlan("nt", 2, 4, 4, 4, "fp16"), HW) > 0
