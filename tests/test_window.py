"""The fast engine's window path (`fast_window`): pipelines the step path cannot order run
with the step path's memory and give the reference's result to the cycle."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from test_engine_fast import assert_same, both, programs

import wse_sim.engine.fast as fast_mod
from wse_sim.engine import fast_rows as R
from wse_sim.engine import fast_window as W
from wse_sim.engine import fast_window_run as WR
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
    monkeypatch.setattr(fast_mod, "estimate_bytes", lambda tables, mesh: 1 << 60)  # no events
    res = simulate_fast(p, hw, spans=True)
    assert res.fast_path == "window"
    assert "out of task order" in res.fast_path_reason
    assert_same(ref, res)


def _grown_arrays(monkeypatch):
    """Start every window array at its least; record what grew."""
    grown = []
    real = WR.WindowRun.grow

    def spy(self, tables):
        grown.append(int(self.state[W.W_NEED]))
        real(self, tables)

    monkeypatch.setattr(WR, "CAP0", 1)
    monkeypatch.setattr(WR, "FREE0", 1)
    monkeypatch.setattr(WR.WindowRun, "grow", spy)
    return grown


@pytest.mark.parametrize("model, strategy, phase, chunks", PIPELINES[:3])
def test_the_ring_the_store_and_the_free_list_grow_without_changing_the_result(
        monkeypatch, model, strategy, phase, chunks):
    p = build_program(MESH16, model, phase=phase, strategy=strategy, prompt=32, chunks=chunks)
    grown = _grown_arrays(monkeypatch)
    tables = fast_mod.Tables(p, MESH16)
    wr, why = WR.run_windowed(tables, MESH16.mesh_cols * MESH16.mesh_rows, True, rows=1)
    assert wr is not None, why
    assert {W.NEED_RING, W.NEED_ROWS, W.NEED_FREE} <= set(grown)
    res = simulate_fast(p, MESH16, path="window", spans=True)
    assert_same(simulate_reference(p, MESH16), res)
    assert wr.critical_path() == (res.cycles, res.compute_cycles, res.comm_cycles)


def test_a_window_that_outgrows_the_free_ram_stops_in_one_line(monkeypatch):
    """Growing an array past the free RAM is a reason, not a MemoryError: run_windowed says
    why, and `auto` (event path too big as well) refuses in one line naming it."""
    p = build_program(MESH16, "tiny-llama", phase="prefill", strategy="layer-sequential",
                      prompt=32, chunks=4)
    _grown_arrays(monkeypatch)
    tables = fast_mod.Tables(p, MESH16)
    wr, why = WR.run_windowed(tables, MESH16.mesh_cols * MESH16.mesh_rows, False, rows=1,
                              fits=lambda n: False)
    assert wr is None and why.startswith("its window outgrew the free RAM")
    monkeypatch.setattr(fast_mod, "EVENT_PREFERRED_FRACTION", 0.0)
    monkeypatch.setattr(fast_mod, "estimate_bytes", lambda tables, mesh: 1 << 60)
    monkeypatch.setattr(fast_mod, "_fits", lambda need: need < 1 << 40)  # the window starts
    monkeypatch.setattr(WR.WindowRun, "grow_bytes", lambda self: 1 << 50)  # ... then outgrows
    with pytest.raises(ValueError) as err:
        simulate_fast(p, MESH16, progress=False)
    assert "\n" not in str(err.value) and "its window outgrew the free RAM" in str(err.value)


def test_the_store_holds_only_what_the_window_still_reads():
    """A block goes back when its last reader leaves: at the end every row is free (the top
    is back at 0), and the store's high water stays below the sum of all blocks."""
    p = build_program(MESH16, "tiny", phase="prefill", strategy="layer-sequential", prompt=32,
                      chunks=4)
    tables = fast_mod.Tables(p, MESH16)
    wr, why = WR.run_windowed(tables, 256, False, rows=1)
    assert wr is not None, why
    assert int(wr.fm[1]) == 0 and int(wr.fm[0]) == 0
    blocks = tables.td[:, fast_mod.K.F_SA] + 1 - tables.td[:, fast_mod.K.F_SB]
    assert len(wr.sig) < blocks.sum()


def test_rows_taken_and_given_back_in_any_order_merge_again():
    fs, fz = np.zeros(8, np.int64), np.zeros(8, np.int64)
    fm = np.array([0, 0, 100], np.int64)
    at = [R.rows_take(fs, fz, fm, k) for k in (10, 5, 20, 5)]
    assert at == [0, 10, 15, 35] and fm[1] == 40
    assert R.rows_give(fs, fz, fm, 10, 5) and R.rows_give(fs, fz, fm, 35, 5)
    assert fm[1] == 35 and list(fs[:fm[0]]) == [10]  # the block at the top lowered it
    assert R.rows_take(fs, fz, fm, 4) == 10  # first fit
    assert R.rows_take(fs, fz, fm, 70) == -1  # 35 + 70 > 100: the caller grows the store
    for a, k in ((0, 10), (15, 20), (10, 4)):
        assert R.rows_give(fs, fz, fm, a, k)
    assert fm[0] == 0 and fm[1] == 0


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
