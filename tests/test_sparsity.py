"""Weight sparsity: the timing charges only the nonzero multiply-adds, and a functional run
with real masks (through the sparse kernel) equals the dense reference with those weights
zeroed."""

import numpy as np
import pytest

from mapper.strategies.functional_model import model_output, random_case, sparsify
from workloads.models import load_model
from wse_sim.engine import simulate
from wse_sim.experiment import build_program
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import load_preset

HW = load_preset("mesh16")


@pytest.mark.parametrize("strategy", ["layer-pipelined", "weight-streaming"])
def test_sparse_functional_run_equals_reference_with_zeroed_weights(strategy):
    cfg = load_model("tiny-llama")
    p = build_program(HW, "tiny-llama", strategy=strategy, phase="decode", context=12,
                      dtype="fp32", sparsity=0.6, functional=True)
    inputs, want = random_case(p, cfg, seed=1)
    got = model_output(p, run_functional(p, HW, inputs))
    rep = error_report(got, want, "fp32")
    assert rep["ok"], rep


def test_masks_are_real_and_change_the_answer():
    cfg = load_model("tiny")
    rng = np.random.default_rng(0)
    from workloads import reference
    w = reference.init_weights(cfg, 0)
    m = sparsify(w, 0.5, rng)
    frac = float((m["L0.w_up"] == 0).mean())
    assert 0.4 < frac < 0.6 and (w["L0.w_up"] != 0).all()
    assert np.array_equal(m["embed"], w["embed"])  # only the layers' GEMM weights


def test_sparsity_cuts_gemm_cycles_by_the_density():
    dense = simulate(build_program(HW, "tiny", phase="prefill", prompt=32), HW)
    half = simulate(build_program(HW, "tiny", phase="prefill", prompt=32, sparsity=0.5), HW)
    up_dense, up_half = dense.ops["L0.ffn_up"]["busy_cycles"], half.ops["L0.ffn_up"]["busy_cycles"]
    assert up_half == pytest.approx(up_dense / 2, rel=0.02)
    assert half.flops == dense.flops and half.executed_flops < dense.executed_flops
