"""`mapper.search_bound.cycles_lower_bound` works on numpy arrays over the followed cores; it
equals, to the cycle, the same rules written as a loop over every followed core of every task
(`bound_per_core`, the implementation it replaced), on generated programs and on every kind of
program the mappers build."""

import pytest
from bound_per_core import per_core_bound
from hypothesis import HealthCheck, given, settings
from test_engine_fast import programs
from test_search_speed import RUNS

from mapper.gemm import build_gemm
from mapper.search_bound import cycles_lower_bound, tracked_cores
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset

MESH8 = load_preset("mesh8")
MESH16 = load_preset("mesh16")


def _agree(program, hw) -> int:
    for most in (4096, 8, 1):  # every corner; some; the bounding box's corners only
        cores = tracked_cores(program, max_cores=most)
        got = cycles_lower_bound(program, hw, cores)
        assert got == per_core_bound(program, hw, cores), (program.name, most)
    return got


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_generated_programs_agree(case):
    _agree(*case)


@pytest.mark.parametrize("strategy, phase, opts", RUNS)
def test_whole_model_programs_agree(strategy, phase, opts):
    kw = {"context": 16} if phase == "decode" else {"prompt": 16}
    assert _agree(build_program(MESH16, "tiny", strategy=strategy, phase=phase, **kw, **opts),
                  MESH16) > 0


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("strategy", ["layer-sequential", "weight-streaming", "layer-pipelined"])
def test_two_d_training_steps_agree(model, strategy):
    assert _agree(build_program(MESH16, model, strategy=strategy, phase="train", prompt=16,
                                batch=2, micro_batches=2, layout="2d"), MESH16) > 0


@pytest.mark.parametrize("algo, flow", [("summa", False), ("cannon", True), ("meshgemm", True),
                                        ("meshgemm", False)])
def test_gemms_agree(algo, flow):
    assert _agree(build_gemm(algo, MESH8, grid=4, m=16, k=16, n=16, flow_control=flow),
                  MESH8) > 0


def test_programs_on_a_mesh_with_defects_agree():
    hw = load_preset("mesh16", {"spare_cols": 2, "spare_rows": 2, "defect_fraction": 0.02,
                                "defect_seed": 3})
    assert _agree(build_program(hw, "tiny", strategy="layer-sequential", phase="decode",
                                context=16, reduce_algo="tree"), hw) > 0
