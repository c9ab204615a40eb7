"""Loops fast-forwarded on the fast engine's window path (`fast_window_loops`): pipelines the
step path cannot order (chunks in two layers at once) skip their repeated layers, and every
counter stays the reference's to the cycle. (Generated loop programs on the window path:
tests/test_loops.py.)"""

import pytest
from test_engine_fast import assert_same
from test_loops import R, chain_program, same, two_rates_program

from wse_sim.engine.fast import StepPathUnsupported, simulate_fast
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset
from wse_sim.program import Compute, Dep, ProgramBuilder

MESH32 = load_preset("mesh32")


# (model, strategy, chunks, loop, its count, period): layer-sequential's blocks go in pipeline
# beats, an iteration two layers' worth (mapper.strategies.single_region.beat_order); weight
# streaming's layer by layer (layers 2 .. 19, chunks in the body), where with 4 chunks the
# moment the next layer's first task enters alternates between two places in the layer
CHUNKED = [("tiny", "layer-sequential", 2, "layer-pairs", 9, 1),
           ("tiny", "weight-streaming", 4, "layers", 18, 2),
           ("tiny-llama", "layer-sequential", 4, "layer-pairs", 9, 1),
           ("tiny-llama", "weight-streaming", 2, "layers", 18, 1)]


@pytest.mark.parametrize("model, strategy, chunks, loop, count, period", CHUNKED)
def test_chunked_prefills_skip_layers_on_the_window_path(model, strategy, chunks, loop, count,
                                                         period):
    p = build_program(MESH32, model, phase="prefill", strategy=strategy, layout="top-row",
                      prompt=64, chunks=chunks, model_set={"n_layers": 20})
    (lp,) = p.loops
    assert (lp.name, lp.count) == (loop, count)
    with pytest.raises(StepPathUnsupported, match="out of task order"):
        simulate_fast(p, MESH32, path="step")
    fast = same(p, MESH32, path="window")
    assert fast.fast_path == "window"
    assert fast.loop_iterations_skipped >= 4 and fast.loop_iterations_skipped % period == 0


def test_the_window_path_without_fast_forward_gives_the_same_result():
    p = build_program(MESH32, "tiny", phase="prefill", strategy="layer-sequential",
                      layout="top-row", prompt=64, chunks=2, model_set={"n_layers": 14})
    on = simulate_fast(p, MESH32, path="window", spans=True)
    off = simulate_fast(p, MESH32, path="window", spans=True, fast_forward=False)
    assert on.loop_iterations_skipped > 0 and off.loop_iterations_skipped == 0
    assert_same(off, on)


def test_a_chain_loop_on_the_window_path_fast_forwards_exactly():
    fast = same(chain_program(50), path="window")
    assert fast.loop_iterations_skipped > 40


def test_an_outer_task_that_ends_late_delays_the_window_fast_forward():
    fast = same(chain_program(60, outer_late=400_000), path="window")
    assert 0 < fast.loop_iterations_skipped < 57


def test_two_independent_rates_never_settle_on_the_window_path():
    assert same(two_rates_program(), path="window").loop_iterations_skipped == 0


def test_a_task_after_the_loop_reading_an_inner_iteration_stops_the_skip_before_it():
    """A task after the loop reads iteration 30 of 40: the skip ends at or before it (that
    iteration is simulated, its signals real), and the result is the reference's."""
    b = ProgramBuilder("reads-inside")
    first = b.add(Compute("pre", R(0, 0, 1, 1), 1000))
    ends = []

    def body(i):
        c = b.add(Compute("c", R(0, 0, 1, 1), 3000, deps=(Dep(ends[-1] if ends else first, "all"),)))
        ends.append(b.add(Compute("d", R(1, 0, 1, 1), 2000, deps=(Dep(c, "all"),))))

    body(0)
    b.repeat("steps", 40, lambda i: body(i + 1))
    b.add(Compute("post", R(2, 0, 1, 1), 10, deps=(Dep(ends[31], "all"),)))
    fast = same(b.build(), path="window")
    assert 0 < fast.loop_iterations_skipped <= 30 - 3


def test_a_try_whose_copy_does_not_fit_the_free_ram_runs_the_loop_in_full(monkeypatch):
    from wse_sim.engine import fast_window_loops as WL
    monkeypatch.setattr(WL, "free_bytes", lambda: 1 << 10)
    fast = same(chain_program(50), path="window")
    assert fast.loop_iterations_skipped == 0
