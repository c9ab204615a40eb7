"""Loops in the Program IR and their exact fast-forward on the fast engine.

The fast engine skips a loop's iterations once two in a row repeat moved by one delta
(`wse_sim.engine.fast_loops`); the reference simulates every iteration. Every counter, the
per-op breakdown, the critical path and every instance's span must be equal, whether the
fast-forward triggers or not.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_fast import assert_same

from mapper.gemm import build_gemm
from wse_sim.engine.fast import simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.hardware import load_preset
from wse_sim.program import (
    Compute,
    Dep,
    LineStream,
    Loop,
    Program,
    ProgramBuilder,
    ProgramError,
    Region,
    Unicast,
)

R = Region
HW = load_preset("mesh16")


def same(program, hw=HW, path="step"):
    ref = simulate_reference(program, hw)
    fast = simulate_fast(program, hw, path=path, spans=True)
    assert_same(ref, fast)
    assert ref.loop_iterations == fast.loop_iterations == sum(lp.count for lp in program.loops)
    assert ref.loop_iterations_skipped == 0
    return fast


# ---- the IR ------------------------------------------------------------------------------------

def chain_program(count: int, flops=(4000, 4000), wavelets=16, outer_late=0, aside=0,
                  post=True):
    """Before the loop: a compute on (0, 0) (and a long one on (3, 3) when outer_late, and one
    of `aside` FLOPs on (5, 5) that nothing waits for); each iteration: compute on (0, 0)
    after the previous iteration's send, send it to (1, 0), compute there; the first compute
    also waits for the outer ones; after the loop (`post`), a compute after the last one."""
    b = ProgramBuilder("chain")
    first = b.add(Compute("pre", R(0, 0, 1, 1), 1000))
    late = b.add(Compute("late", R(3, 3, 1, 1), outer_late)) if outer_late else None
    if aside:
        b.add(Compute("aside", R(5, 5, 1, 1), aside))
    last: dict = {}

    def body(i):
        outer = [Dep(late, "all")] if late is not None else []
        c0 = b.add(Compute("c0", R(0, 0, 1, 1), flops[0],
                           deps=tuple([Dep(last["u"], "all")] if i else [Dep(first)]) + tuple(outer)))
        last["u"] = b.add(Unicast("u", R(0, 0, 1, 1), wavelets, dx=1, deps=(Dep(c0),)))
        b.add(Compute("c1", R(1, 0, 1, 1), flops[1], deps=(Dep(last["u"]),)))

    # iteration 0's first compute waits for `pre`, later ones for the previous send: peel it
    body(0)
    b.repeat("chain.step", count, lambda i: body(i + 1))
    if post:
        b.add(Compute("post", R(1, 0, 1, 1), 10, deps=(Dep(len(b.tasks) - 1),)))
    return b.build()


@pytest.mark.parametrize("aside", [4_000_000, 400_000])
def test_a_finish_held_outside_the_loop(aside):
    """A task outside the loop (weights streaming in, say) ends after the loop's iterations
    so far: the finish does not move with them. The loop is still skipped while no skipped
    end reaches that finish (the whole loop, or up to where it overtakes it), and the result
    is the reference's."""
    p = chain_program(200, aside=aside)
    fast = same(p)
    if aside > 1_000_000:  # held to the end: the loop skipped from its first tries
        assert fast.cycles == 2_000_000 and fast.loop_iterations_skipped == 195
    else:  # overtaken mid-loop (at 200,000 cycles): skipped once the finish moves with it
        assert fast.cycles == 408_726 and fast.loop_iterations_skipped >= 50


def test_listing_prints_a_loop_once_with_its_count():
    p = chain_program(40)
    text = p.describe()
    assert "loop chain.step x 40" in text and text.count(" c0 ") == 2  # peeled + the loop's
    assert "end loop chain.step" in text
    assert len(p.tasks) == 3 * 41 + 2


def test_a_loop_whose_iterations_differ_is_refused():
    b = ProgramBuilder("bad")
    b.repeat("grow", 3, lambda i: b.add(Compute("c", R(0, 0, 1, 1), 100 * (i + 1))))
    with pytest.raises(ProgramError, match="task 1 .*iteration 1.*timing fields differ"):
        b.build()


def test_a_dependency_that_is_neither_outer_nor_moved_is_refused():
    b = ProgramBuilder("bad")
    b.add(Compute("a", R(0, 0, 1, 1), 10))
    b.add(Compute("b", R(0, 0, 1, 1), 10))
    b.repeat("odd", 3, lambda i: b.add(Compute("c", R(0, 0, 1, 1), 10, deps=(Dep(i % 2),))))
    with pytest.raises(ProgramError, match="iteration 2.*dependency 0 names task 0.*in every iteration"):
        b.build()


def test_uneven_iterations_and_overlapping_loops_are_refused():
    b = ProgramBuilder("bad")
    with pytest.raises(ProgramError, match="not the same number each"):
        b.repeat("uneven", 2, lambda i: [b.add(Compute("c", R(0, 0, 1, 1), 1))
                                         for _ in range(i + 1)])
    tasks = tuple(Compute("c", R(0, 0, 1, 1), 1) for _ in range(6))
    with pytest.raises(ProgramError, match="each after the last or inside it"):
        Program("p", tasks, loops=(Loop("a", 0, 1, 4), Loop("b", 2, 1, 3)))
    with pytest.raises(ProgramError, match="do not exist"):
        Program("p", tasks, loops=(Loop("a", 0, 2, 4),))
    with pytest.raises(ProgramError, match="count got 0"):
        Loop("a", 0, 1, 0)


# ---- fast-forward: exact where it triggers ------------------------------------------------------

@pytest.mark.parametrize("algo", ["cannon", "meshgemm"])
@pytest.mark.parametrize("grid,dtype", [(8, "fp16"), (12, "fp32"), (16, "fp16")])
def test_gemm_loops_fast_forward_to_the_reference_cycle(algo, grid, dtype):
    p = build_gemm(algo, HW, grid=grid, m=8 * grid, k=8 * grid, n=8 * grid, dtype=dtype)
    assert [lp.count for lp in p.loops] == [grid - 2]
    fast = same(p)
    assert fast.fast_path == "step"
    assert fast.loop_iterations_skipped == grid - 5  # settled at the first try: 3 simulated


# Under flow control the shifts couple each core to its neighbours only: the per-core times
# take a while to settle into a pure shift (or not within these short loops); skipped
# iterations measured, the result is the reference's either way.
SKIPPED_FLOW = {("cannon", 8): 1, ("cannon", 12): 7, ("cannon", 16): 9,
                ("meshgemm", 8): 0, ("meshgemm", 12): 7, ("meshgemm", 16): 0}


@pytest.mark.parametrize("algo", ["cannon", "meshgemm"])
@pytest.mark.parametrize("grid,dtype", [(8, "fp16"), (12, "fp32"), (16, "fp16")])
def test_flow_controlled_gemm_loops_equal_the_reference(algo, grid, dtype):
    p = build_gemm(algo, HW, grid=grid, m=8 * grid, k=8 * grid, n=8 * grid, dtype=dtype,
                   flow_control=True)
    fast = same(p)
    assert fast.loop_iterations_skipped == SKIPPED_FLOW[algo, grid]


def test_chain_loop_fast_forwards_exactly():
    fast = same(chain_program(50))
    assert fast.loop_iterations_skipped > 40


def test_an_outer_task_that_ends_late_delays_the_fast_forward_but_not_the_result():
    """The first iterations wait for a long compute before the loop (a fixed time that is
    the latest need: no fast-forward while it is); then the loop settles."""
    fast = same(chain_program(60, outer_late=400_000))
    assert 0 < fast.loop_iterations_skipped < 57


@pytest.mark.parametrize("outer_late", [0, 400_000])
def test_a_try_from_the_peeled_iteration_then_later_ones(monkeypatch, outer_late):
    """The chain's iteration 0 is peeled off before its loop: with the peeled try allowed
    (here at any size), the first try compares from iteration 0; when it fails (the late
    outer compute is the latest need), the next tries start where the run stands, never
    behind it, and the result is the reference's."""
    from wse_sim.engine import fast_loops
    monkeypatch.setattr(fast_loops, "PEELED_MIN_INSTANCES", 0)
    tries = []
    try_ = fast_loops.Forward._try

    def spy(self, p, k):
        assert p.peeled == 1 and self._at(p) == k  # the state is the one before iteration k
        tries.append(k)
        return try_(self, p, k)
    monkeypatch.setattr(fast_loops.Forward, "_try", spy)
    # (no task after the loop: its last compute keeps per-core signals like the peeled one)
    fast = same(chain_program(60, outer_late=outer_late, post=False))
    assert tries[0] == 0 and tries == sorted(set(tries))
    # iteration -1 waited for `pre`, not a send: from 0 the state has not settled yet
    assert len(tries) > 1 and tries[1] == 2
    if outer_late:
        assert 0 < fast.loop_iterations_skipped < 57
    else:
        assert fast.loop_iterations_skipped > 50


def two_rates_program():
    """Two chains in one loop body, 4000 and 6000 FLOP per iteration on different cores."""
    b = ProgramBuilder("two-rates")
    b.add(Compute("a", R(0, 0, 1, 1), 4000))
    b.add(Compute("b", R(5, 5, 1, 1), 6000))

    def body(i):
        n = len(b.tasks)
        b.add(Compute("a", R(0, 0, 1, 1), 4000, deps=(Dep(n - 2),)))
        b.add(Compute("b", R(5, 5, 1, 1), 6000, deps=(Dep(n - 1),)))

    b.repeat("two", 30, body)
    return b.build()


def test_two_independent_rates_never_settle_and_run_in_full():
    """The state moves by two different amounts, so nothing is skipped; the result is exact."""
    fast = same(two_rates_program())
    assert fast.loop_iterations_skipped == 0


def test_auto_takes_the_step_path_for_loops_and_reports_them():
    p = build_gemm("cannon", HW, grid=14, m=112, k=112, n=112, dtype="fp16")
    r = simulate_fast(p, HW)
    assert r.fast_path == "step" and r.loop_iterations_skipped == 9
    s = r.summary()
    assert s["loop_iterations"] == 12 and s["loop_iterations_skipped"] == 9
    from wse_sim.report.text import format_report
    assert "loops: 12 iterations, 3 simulated, 9 fast-forwarded" in format_report(r)
    short = simulate_fast(build_gemm("cannon", HW, grid=10, m=80, k=80, n=80, dtype="fp16"), HW)
    assert short.fast_path == "event"  # 8 iterations: fewer than AUTO_STEP_COUNT (9)


# ---- generated loop programs: fast == reference, whatever happens -------------------------------

@st.composite
def loop_programs(draw):
    """A prologue, a loop of 1-3 tasks on an 8 x 8 corner with carried, same-iteration and
    outer dependencies, and an epilogue reading the last iteration."""
    b = ProgramBuilder("gen")
    pro = [b.add(Compute("pro", R(0, 0, 4, 4), draw(st.integers(0, 20000))))]
    size = draw(st.integers(1, 3))
    specs = []
    for j in range(size):
        kind = draw(st.sampled_from(["compute", "shift", "line"]))
        x, y = draw(st.integers(0, 3)), draw(st.integers(0, 3))
        region = R(x, y, draw(st.integers(2, 4)), draw(st.integers(2, 4)))
        carried = draw(st.lists(st.integers(0, size - 1), max_size=2))
        same_it = draw(st.lists(st.integers(0, max(0, j - 1)), max_size=1)) if j else []
        outer = draw(st.booleans())
        specs.append((kind, region, draw(st.integers(1, 40)), carried, same_it, outer))
    count = draw(st.integers(5, 14))

    def body(i):
        base = len(b.tasks)
        for kind, region, amount, carried, same_it, outer in specs:
            deps = [Dep(base - size + c, "all") for c in carried if i]
            deps += [Dep(base + c, "all") for c in same_it]
            if outer:
                deps.append(Dep(pro[0], "all"))
            if not i:  # the first iteration: the prologue stands in for the carried ones
                deps += [Dep(pro[0], "all")] * len(carried)
            if kind == "compute":
                t = Compute("c", region, amount * 500, deps=tuple(deps))
            elif kind == "shift":
                t = Unicast("u", region, amount, dx=1, wrap=True, deps=tuple(deps))
            else:
                t = LineStream("l", region, "x", 1, amount, reduce=amount % 2 == 0,
                               deps=tuple(deps))
            b.add(t)

    body(0)
    b.repeat("gen", count, lambda i: body(i + 1))
    b.add(Compute("epi", R(0, 0, 2, 2), 100, deps=(Dep(len(b.tasks) - 1, "all"),)))
    return b.build()


@pytest.mark.parametrize("path", ["auto", "window"])  # window: tests/test_window_loops.py
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(program=loop_programs())
def test_generated_loops_fast_equals_reference(path, program):
    ref = simulate_reference(program, HW)
    fast = simulate_fast(program, HW, path=path, spans=True)
    assert_same(ref, fast)


def test_loops_round_trip_through_the_program_file(tmp_path):
    from wse_sim.program_io import load_program, save_program
    p = build_gemm("cannon", HW, grid=8, m=64, k=64, n=64, dtype="fp16")
    save_program(p, tmp_path / "cannon.json")
    q = load_program(tmp_path / "cannon.json")
    assert q.loops == p.loops and q.tasks == p.tasks


# ---- nested loops: steps inside layers ------------------------------------------------------------

def gemm_chain(layers: int, algo: str = "cannon", grid: int = 8, flops_scale: int = 8):
    """A chain of `layers` GEMMs on a grid x grid region, each waiting for the one before:
    the first outside the loop, the rest one loop around each GEMM's own step loop."""
    from mapper.gemm import gemm_fragment
    b = ProgramBuilder("gemm-chain")
    prev: list = []
    n = flops_scale * grid

    def layer(i: int) -> None:
        _, end = gemm_fragment(b, algo, HW, grid=grid, m=n, k=n, n=n, dtype="fp16",
                               label=f"g{i}", start=tuple(prev[-1:]))
        prev.append(Dep(end[0].task, "all"))

    layer(0)
    b.repeat("layers", layers - 1, lambda i: layer(i + 1))
    return b.build()


def test_nested_loops_are_checked_and_listed():
    p = gemm_chain(4)
    outer = [lp for lp in p.loops if lp.name == "layers"]
    assert len(outer) == 1 and outer[0].count == 3
    inner = [lp for lp in p.loops if lp.name.endswith(".step")]
    assert len(inner) == 4 and all(outer[0].first <= lp.first and lp.end <= outer[0].end
                                   for lp in inner[1:])
    text = p.describe()
    assert "  loop layers x 3" in text and "    loop g1.step x 6" in text
    assert text.count("loop g1.step") == 2 and "g2.step" not in text  # iteration 0 once


def test_three_deep_and_crossing_loops_are_refused():
    b = ProgramBuilder("deep")

    def inner(_):
        b.repeat("c", 2, lambda j: b.add(Compute("x", R(0, 0, 1, 1), 1)))

    with pytest.raises(ProgramError, match="two deep"):
        b.repeat("a", 2, lambda i: b.repeat("b", 2, inner))
    tasks = tuple(Compute("c", R(0, 0, 1, 1), 1) for _ in range(8))
    with pytest.raises(ProgramError, match="spans two iterations"):
        Program("p", tasks, loops=(Loop("a", 0, 4, 2), Loop("b", 2, 1, 4)))


@pytest.mark.parametrize("algo", ["cannon", "meshgemm"])
def test_nested_loops_fast_forward_at_both_levels_to_the_reference_cycle(algo):
    p = gemm_chain(10, algo)
    fast = same(p)
    # the inner loops alone could skip at most 3 of each GEMM's 6 steps
    assert fast.loop_iterations_skipped > 10 * 3
    assert simulate_fast(p, HW, path="event").cycles == fast.cycles


def test_latency_bound_ring_steps_have_a_fractional_rate():
    """MeshGEMM with tiny tiles is paced by its operands going round the interleaved rings
    (two hops between neighbours, one at the ends): 79 cycles per 8 steps, a one-cycle dip
    travelling round the ring. No iteration repeats the one before moved by an integer delta,
    so nothing is skipped (docs/hardware-model.md, "Why some latency-bound ring steps never
    settle"); the result is the reference's."""
    hw = load_preset("wse2")
    p = build_gemm("meshgemm", hw, grid=16, m=64, k=32, n=32, dtype="fp16")
    fast = same(p, hw)
    assert fast.loop_iterations_skipped == 0
    lp, s = p.loops[0], fast.spans
    firsts = [int(s["start"][s["task"] == lp.task(i, 0)].min()) for i in range(lp.count)]
    steps = [b - a for a, b in zip(firsts, firsts[1:], strict=False)]
    assert steps == ([10] * 7 + [9]) + ([10] * 5)


@pytest.mark.parametrize("grid,m,k,n", [(16, 48, 48, 48), (15, 45, 45, 45), (16, 48, 48, 144),
                                         (21, 63, 63, 63)])
def test_latency_bound_steps_of_period_two_are_skipped_by_pairs(grid, m, k, n):
    """MeshGEMM with 3 x 3 x 3 (and 3 x 3 x 9) tiles: the steps take 11 and 12 cycles in turn
    and the whole state repeats every pair of steps (an odd delta: no single step is the one
    before moved), so the engine skips whole pairs (docs/hardware-model.md, "Period two"),
    in step with the loop's end (odd and even counts); every counter and span is the
    reference's."""
    hw = load_preset("wse2")
    p = build_gemm("meshgemm", hw, grid=grid, m=m, k=k, n=n, dtype="fp16")
    fast = same(p, hw)
    assert fast.loop_iterations_skipped >= 2 and fast.loop_iterations_skipped % 2 == 0
    lp, s = p.loops[0], fast.spans
    firsts = [int(s["start"][s["task"] == lp.task(i, 0)].min()) for i in range(lp.count)]
    pairs = {b - a for a, b in zip(firsts[4::2], firsts[6::2], strict=False)}
    assert len(pairs) == 1  # one pace per pair of steps from step 4 on
    if n == k:  # 3 x 3 x 3: 23 cycles a pair, so no step is the one before moved
        assert pairs.pop() == 23


def test_iteration_rows_copied_from_iteration_0_equal_rows_built_from_the_records(monkeypatch):
    """The fast engine's table copies a loop iteration's rows from iteration 0's (the loop
    check makes their timing fields equal); built record by record they are the same."""
    import numpy as np

    from wse_sim.engine import fast_tables
    from wse_sim.experiment import build_program
    hw = load_preset("mesh16")
    programs = [build_program(hw, "tiny-llama", strategy="weight-streaming", layout="2d",
                              phase="train", prompt=64, grid=16, model_set={"n_layers": 5}),
                build_gemm("cannon", hw, grid=16, m=64, k=64, n=64, flow_control=True)]
    copied = [fast_tables.Tables(p, hw) for p in programs]
    monkeypatch.setattr(fast_tables, "iteration_roots", lambda nt, loops: np.arange(nt))
    for p, a in zip(programs, copied, strict=True):
        b = fast_tables.Tables(p, hw)
        for f in ("td", "deps", "rdeps", "ib"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert a.n_signals == b.n_signals
