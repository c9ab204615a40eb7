"""The step path's task groups: a run of independent tasks is split where its parts share no
resource (`wse_sim.engine.fast_groups`). Every resource sees the same reservations in the
same order, so every counter, span and the critical path stay the reference's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_engine_fast import _mapper_programs, assert_same, both, programs

from wse_sim.engine import fast_groups
from wse_sim.engine.fast import StepPathUnsupported, simulate_fast
from wse_sim.engine.fast_step import task_groups
from wse_sim.engine.fast_tables import Tables
from wse_sim.engine.reference import simulate_reference
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset


def test_splits_only_between_parts_that_share_nothing():
    # three disjoint rows, then a column over all three, then two I/O tasks far apart
    r = np.array([[0, 0, 2, 1, 0], [0, 1, 2, 2, 0], [0, 2, 2, 3, 0], [1, 0, 2, 3, 0],
                  [5, 5, 6, 6, 1], [7, 7, 8, 8, 1]])
    assert fast_groups.disjoint_splits(r) == [4]       # the I/O channel is one resource
    assert fast_groups.disjoint_splits(r[:3]) == [1, 2]
    assert fast_groups.disjoint_splits(r[[0, 3, 1]]) == []


def _groups(program, hw, split_min=None):
    return task_groups(Tables(program, hw), split_min)


def test_the_2d_layouts_alignment_rows_are_groups_of_their_own():
    """The activation's alignment before each 2-D GEMM is one ring stream per row, each on
    its own row's links: one group per row instead of one for all."""
    hw = load_preset("mesh16")
    p = build_program(hw, "tiny-llama", phase="prefill", strategy="layer-sequential",
                      prompt=64, layout="2d", grid=16, model_set={"n_layers": 1})
    whole = _groups(p, hw, split_min=10**9)
    split = _groups(p, hw)
    assert len(split) > len(whole) + 3 * 14
    assert set(whole) <= set(split)
    ref, fast = simulate_reference(p, hw), simulate_fast(p, hw, path="step", spans=True)
    assert_same(ref, fast)


@pytest.fixture
def split_everything(monkeypatch):
    monkeypatch.setattr(fast_groups, "SPLIT_MIN_TASKS", 2)


def test_mapper_programs_split_everywhere_equal_the_reference(split_everything):
    hw = load_preset("mesh32")
    for program in _mapper_programs(hw):
        ref = simulate_reference(program, hw)
        fast = simulate_fast(program, hw, path="step")
        assert fast.fast_path == "step", program.name
        assert_same(ref, fast)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(programs(in_order=True))
def test_generated_programs_split_everywhere_equal_the_reference(split_everything, case):
    program, hw = case
    ref, _ = both(program, hw, path="event")
    if isinstance(ref, str):
        return
    try:
        step = simulate_fast(program, hw, path="step")
    except StepPathUnsupported:
        return
    assert_same(ref, step)
