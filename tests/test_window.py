"""The fast engine's window path (`fast_window`): pipelines the step path cannot order run
with the step path's memory and give the reference's result to the cycle."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_engine_fast import assert_same, both, programs

import wse_sim.engine.fast as fast_mod
from wse_sim.engine import fast_window as W
from wse_sim.engine.fast import StepPathUnsupported, simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset
from wse_sim.program import Compute, Dep, Program, Region, Unicast

MESH16 = load_preset("mesh16")

# (model, strategy, phase, chunks): programs whose tasks overlap out of task order (chunks in
# two layers at once; a layer's weights streaming in beside the layer before; training)
PIPELINES = [("tiny", "layer-sequential", "prefill", 4),
             ("tiny", "weight-streaming", "prefill", 4),
             ("tiny", "layer-sequential", "train", 1),
             ("tiny-llama", "weight-streaming", "prefill", 4),
             ("tiny-llama", "layer-sequential", "train", 1)]


@pytest.mark.parametrize("model, strategy, phase, chunks", PIPELINES)
def test_pipelines_the_step_path_refuses_run_on_the_window_path(model, strategy, phase, chunks):
    p = build_program(MESH16, model, phase=phase, strategy=strategy, prompt=32, chunks=chunks)
    with pytest.raises(StepPathUnsupported, match="out of task order"):
        simulate_fast(p, MESH16, path="step")
    ref = simulate_reference(p, MESH16)
    win = simulate_fast(p, MESH16, path="window", spans=True)
    assert win.fast_path == "window"
    assert_same(ref, win)


def _order_program():
    """u3 (a later task) reserves core (0, 0)'s ramp before u1 in the reference."""
    return Program("order", (
        Compute("long", Region(0, 0, 1, 1), 10_000, "fp32", "vector"),
        Unicast("u1", Region(0, 0, 1, 1), 8, dx=3, deps=(Dep(0),)),
        Compute("short", Region(1, 1, 1, 1), 10, "fp32", "vector"),
        Unicast("u3", Region(0, 0, 1, 1), 8, dy=3, deps=(Dep(2, "at", 1, 1),)),
    ))


def test_auto_takes_the_window_path_where_the_event_path_does_not_fit(monkeypatch):
    hw = load_preset("mesh8")
    p = _order_program()
    ref = simulate_reference(p, hw)
    assert simulate_fast(p, hw).fast_path == "event"  # small: the faster path
    monkeypatch.setattr(fast_mod, "EVENT_PREFERRED_FRACTION", 0.0)  # step first ...
    monkeypatch.setattr(fast_mod, "_event_fits", lambda tables, mesh: False)  # ... no events
    res = simulate_fast(p, hw, spans=True)
    assert res.fast_path == "window"
    assert "out of task order" in res.fast_path_reason
    assert_same(ref, res)


def test_a_window_longer_than_the_lag_is_planned_again(monkeypatch):
    """With a lag of one task the run stops (WINDOW) and runs again with a longer one; the
    result is the reference's."""
    p = build_program(MESH16, "tiny", phase="prefill", strategy="weight-streaming", prompt=32,
                      chunks=4)
    seen = []
    real = W.WindowRun.__init__

    def spy(self, tables, n, keep_ends, pieces, lag, cap):
        seen.append((lag, cap))
        real(self, tables, n, keep_ends, pieces, lag, cap)

    monkeypatch.setattr(W, "LAG0", 1)
    monkeypatch.setattr(W, "CAP0", 1)
    monkeypatch.setattr(W.WindowRun, "__init__", spy)
    res = simulate_fast(p, MESH16, path="window", spans=True)
    assert [lag for lag, _ in seen] == [4 ** k for k in range(len(seen))] and len(seen) > 1
    assert_same(simulate_reference(p, MESH16), res)


def test_the_ring_and_the_heap_grow_without_changing_the_result(monkeypatch):
    p = build_program(MESH16, "tiny", phase="train", strategy="layer-sequential", prompt=32)
    grown = []
    real = W.WindowRun.grow

    def spy(self, tables):
        grown.append(len(self.pend))
        real(self, tables)

    monkeypatch.setattr(W, "CAP0", 1)
    monkeypatch.setattr(W.WindowRun, "grow", spy)
    small = simulate_fast(p, MESH16, path="window", spans=True)
    assert grown  # the first ring (twice the largest task) was too small
    assert_same(simulate_reference(p, MESH16), small)


def test_the_plan_keeps_a_block_until_lag_tasks_after_its_last_reader():
    p = build_program(MESH16, "tiny", phase="prefill", strategy="weight-streaming", prompt=32,
                      chunks=4)
    tables = fast_mod.Tables(p, MESH16)
    td, deps = tables.td, tables.deps
    for lag in (1, 8, 64):
        rows, off = W.plan(tables, lag)
        first = off + td[:, fast_mod.K.F_SB]
        end = off + td[:, fast_mod.K.F_SA] + 1
        last = np.arange(len(td))
        np.maximum.at(last, deps[:, fast_mod.K.D_TASK], deps[:, fast_mod.K.D_OWNER])
        assert end.max() <= rows
        for u in range(len(td)):  # a task whose rows overlap u's starts after u's readers + lag
            later = np.flatnonzero((np.arange(len(td)) > u) & (first < end[u]) & (end > first[u]))
            assert (later > last[u] + lag).all(), (lag, u)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(in_order=True))
def test_window_path_matches_reference(case):
    """Every generated program (dependencies on earlier tasks): the reference's result, or the
    window path says why it cannot give it (a key order it cannot keep)."""
    program, hw = case
    ref, win = both(program, hw, path="window")
    if isinstance(ref, str):
        assert win == ref or "window path" in win
        return
    if isinstance(win, str):
        assert "out of task order" in win or "before its predecessor" in win, win
        return
    assert win.fast_path == "window"
    assert_same(ref, win)
