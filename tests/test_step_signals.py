"""The step path's signal store (`wse_sim.engine.fast_step.store_plan`): a block of rows per
task, live from its own task group to the last group that reads it, so that its memory
follows the signals still needed, not the distance between a producer and its consumers.
Every counter must equal the reference engine's."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_fast import assert_same

from wse_sim.engine import fast_step
from wse_sim.engine.fast import simulate_fast
from wse_sim.engine.fast_tables import Tables
from wse_sim.engine.reference import simulate_reference
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset
from wse_sim.program import Compute, Dep, ProgramBuilder, Region, Unicast

R = Region
HW = load_preset("mesh8")


def far_program(distance: int, loop: bool = False):
    """`w` (a 4 x 4 compute, as a weight load) is read core by core and as a whole
    `distance` steps later; in between, a chain of steps on the 4 x 4 cores beside it, each
    after the previous one core by core (a loop of them when `loop`: fast-forwarded on the
    step path)."""
    b = ProgramBuilder("far")
    w = b.add(Compute("w", R(4, 4, 4, 4), 704))
    prev = b.add(Compute("a", R(0, 0, 4, 4), 320))
    last = {"t": prev}

    def step(i):
        u = b.add(Unicast("s", R(0, 0, 4, 4), 8, dx=1, deps=(Dep(last["t"]),)))
        last["t"] = b.add(Compute("c", R(0, 0, 4, 4), 192, deps=(Dep(u, "offset", 1, 0),)))

    if loop:
        step(0)  # the first step waits for `a`, later ones for the previous step: peeled
        b.repeat("steps", distance - 1, lambda i: step(i + 1))
    else:
        for i in range(distance):
            step(i)
    end = b.add(Compute("use", R(0, 0, 4, 4), 96, deps=(Dep(w, "offset", 4, 4),
                                                                  Dep(last["t"]))))
    b.add(Compute("sum", R(4, 4, 2, 2), 48, deps=(Dep(w, "all"), Dep(end, "all"))))
    return b.build()


@pytest.mark.parametrize("distance,loop", [(3, False), (40, False), (40, True)])
def test_a_far_dependency_runs_on_the_step_path_equal_to_the_reference(distance, loop):
    p = far_program(distance, loop)
    fast = simulate_fast(p, HW, path="step", spans=True)
    assert fast.fast_path == "step"
    assert_same(simulate_reference(p, HW), fast)
    if loop:
        assert fast.loop_iterations_skipped > 0


def test_the_store_does_not_grow_with_the_distance():
    rows = set()
    for distance in (3, 10, 100):
        tables = Tables(far_program(distance), HW)
        groups, n, _off = fast_step.plan(tables)
        rows.add(n)
        assert n == fast_step.ring_size(tables, groups)
    # while a step's task runs: `w` (16 cores + its whole-task slot: 17 rows), a compute
    # (17) and a unicast (33: its 16 cores, its 16 destinations and the whole-task slot),
    # the same rows reused from step to step; then the one-row blocks of the tasks no one
    # waits for core by core: `use` and `sum`, live at once
    assert rows == {17 + 17 + 33 + 2}


def test_every_row_is_held_by_one_live_task_at_a_time():
    """Two tasks whose live groups overlap never share a row."""
    tables = Tables(far_program(30), HW)
    groups, n, off = fast_step.plan(tables)
    first, last = fast_step.live_groups(tables, groups)
    td = tables.td
    lo = td[:, fast_step.F_SB] + off
    hi = td[:, fast_step.F_SA] + off + 1
    assert lo.min() >= 0 and hi.max() <= n
    for a in range(len(td)):
        for b in range(a):
            if first[a] <= last[b] and first[b] <= last[a]:
                assert hi[a] <= lo[b] or hi[b] <= lo[a], (a, b)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 1, 2, 5, 17]), st.integers(0, 3),
                          st.integers(0, 6)), min_size=1, max_size=40))
def test_allocate_keeps_live_blocks_apart_and_within_the_store(spec):
    size = np.array([s for s, _, _ in spec], np.int64)
    first = np.cumsum([g for _, g, _ in spec]).astype(np.int64)
    last = first + np.array([k for _, _, k in spec], np.int64)
    row, n = fast_step.allocate(size, first, last)
    assert (row >= 0).all() and (row + size <= n).all()
    for a in range(len(size)):
        for b in range(a):
            if first[a] <= last[b] and first[b] <= last[a]:
                assert row[a] + size[a] <= row[b] or row[b] + size[b] <= row[a]
    # the one-row blocks are a stack (they never fragment); at most the live ones at a time
    live = [(size[(first <= g) & (g <= last)]).sum() for g in range(int(last.max()) + 1)]
    ones = [((size == 1) & (first <= g) & (g <= last)).sum() for g in range(int(last.max()) + 1)]
    assert (size == 1).sum() == 0 or n - row[size == 1].min() <= max(ones)
    assert n >= max(live)


def test_two_d_weight_streaming_equals_the_reference():
    """The weights of a layer (an I/O transfer) are read by the layer's GEMMs, far apart."""
    p = build_program(HW, "tiny-llama", layout="2d", strategy="weight-streaming", prompt=32,
                      gemm_algo="cannon")
    fast = simulate_fast(p, HW, path="step", spans=True)
    assert fast.fast_path == "step"
    assert_same(simulate_reference(p, HW), fast)
