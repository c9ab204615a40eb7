"""Flow control (issue 22): a head dependency lets a stream start when its first wavelet can be
taken at each destination. Both engines equal the closed form (`timing.flow_controlled_arrival`)
and each other; the IR refuses head dependencies where they mean nothing."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_fast import assert_same

from wse_sim.engine.fast import simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.hardware import load_preset
from wse_sim.program import (
    Compute,
    Dep,
    IoTransfer,
    LineStream,
    Multicast,
    ProgramBuilder,
    ProgramError,
    Region,
    Unicast,
)
from wse_sim.timing import compute_cycles, flow_controlled_arrival, head_lead_cycles

HW = load_preset("mesh16")


def _hw(tr, hop, start, recv, width):
    return HW.with_overrides({"ramp_latency_cycles": tr, "hop_latency_cycles": hop,
                              "message_start_cycles": start, "message_receive_cycles": recv,
                              "link_bits_per_cycle": width})


def _start(res, task):
    """The first start of a task's instances."""
    return int(res.spans["start"][res.spans["task"] == task].min())


def _all_engines(program, hw):
    ref = simulate_reference(program, hw)
    for path in ("event", "step"):
        assert_same(ref, simulate_fast(program, hw, path=path, spans=True))
    return ref


hw_params = st.tuples(st.integers(0, 3), st.integers(0, 2), st.integers(0, 3),
                      st.integers(0, 2), st.sampled_from([32, 64, 128]))


@settings(max_examples=40, deadline=None)
@given(hw_params, st.integers(1, 12), st.integers(1, 300), st.integers(0, 4000))
def test_unicast_arrives_when_the_destination_frees_whatever_the_distance(p, hops, wavelets,
                                                                          flops):
    """Core (hops, 0) computes; a unicast from (0, 0) into it may start so that its head
    arrives as the compute ends: the data is in beats - 1 + receive cycles after the end."""
    hw = _hw(*p)
    b = ProgramBuilder("ping")
    work = b.add(Compute("work", Region(hops, 0, 1, 1), flops))
    send = b.add(Unicast("send", Region(0, 0, 1, 1), wavelets, dx=hops,
                         deps=(Dep(work, head=True),)))
    ref = _all_engines(b.build(), hw)
    end = compute_cycles(hw, flops, "fp32")
    assert _start(ref, send) == max(0, end - head_lead_cycles(hw, hops))
    assert ref.cycles == max(end, flow_controlled_arrival(hw, wavelets, hops, end))


@settings(max_examples=30, deadline=None)
@given(hw_params, st.integers(2, 16), st.integers(1, 200), st.integers(0, 3000))
def test_line_broadcast_starts_for_its_nearest_destination(p, cores, wavelets, flops):
    """Every destination of a line frees at the same cycle: the nearest one (1 hop) decides
    the start, and the far end receives it P - 1 hops later."""
    hw = _hw(*p)
    b = ProgramBuilder("line")
    work = b.add(Compute("work", Region(0, 0, cores, 1), flops * cores))
    line = b.add(LineStream("bcast", Region(0, 0, cores, 1), "x", 1, wavelets,
                            deps=(Dep(work, head=True),)))
    ref = _all_engines(b.build(), hw)
    end = compute_cycles(hw, flops, "fp32")
    start = max(0, end - head_lead_cycles(hw, 1))
    assert _start(ref, line) == start
    assert ref.cycles == max(end, flow_controlled_arrival(hw, wavelets, cores - 1, end,
                                                          granted_at=start))


def test_the_grant_bounds_an_early_start():
    """A head need is never met before the grant of the task it names: a long route's lead
    cannot reach back before the producer was granted."""
    hw = _hw(2, 1, 0, 1, 32)
    b = ProgramBuilder("grant")
    first = b.add(Compute("first", Region(0, 0, 1, 1), 200))       # 100 cycles on (0, 0)
    work = b.add(Compute("work", Region(15, 0, 1, 1), 2, deps=(Dep(first, "at", 0, 0),)))
    send = b.add(Unicast("send", Region(0, 0, 1, 1), 8, dx=15, deps=(Dep(work, head=True),)))
    ref = _all_engines(b.build(), hw)
    # work: granted at 100, ends at 101; the lead (4 + 15) would start the send at 82
    assert _start(ref, send) == 100
    assert ref.cycles == flow_controlled_arrival(hw, 8, 15, 101, granted_at=100)


def test_destinations_without_the_named_event_impose_nothing():
    b = ProgramBuilder("part")
    late = b.add(Compute("late", Region(2, 0, 1, 1), 2000))  # only on (2, 0)
    line = b.add(LineStream("bcast", Region(0, 0, 4, 1), "x", 1, 4, deps=(Dep(late, head=True),)))
    ref = _all_engines(b.build(), HW)
    assert _start(ref, line) == 1000 - head_lead_cycles(HW, 2)


@pytest.mark.parametrize("make, why", [
    (lambda: Dep(0, "all", head=True), "rule must be 'same' or 'offset'"),
    (lambda: Compute("c", Region(0, 0, 1, 1), 1, deps=(Dep(0, head=True),)), "not a Compute"),
    (lambda: IoTransfer("io", Region(0, 0, 1, 1), 8, "in", deps=(Dep(0, head=True),)),
     "not a IoTransfer"),
    (lambda: LineStream("r", Region(0, 0, 2, 1), "x", 1, 1, reduce=True,
                        deps=(Dep(0, head=True),)), "not a reducing LineStream"),
    (lambda: Dep(0, head=1), "Dep.head: got 1"),
])
def test_head_dependencies_where_they_mean_nothing_are_refused(make, why):
    with pytest.raises(ProgramError, match=why):
        make()


def test_a_head_dependency_that_names_no_destination_is_refused():
    b = ProgramBuilder("void")
    far = b.add(Compute("far", Region(10, 10, 1, 1), 10))
    b.add(Multicast("m", (0, 0), Region(0, 0, 2, 2), 4, deps=(Dep(far, head=True),)))
    with pytest.raises(ProgramError, match="names no destination core"):
        b.build()


def test_the_listing_and_the_file_keep_head_dependencies(tmp_path):
    from wse_sim.program_io import load_program, save_program
    b = ProgramBuilder("io")
    work = b.add(Compute("work", Region(1, 0, 1, 1), 10))
    b.add(Unicast("send", Region(0, 0, 1, 1), 4, dx=1, deps=(Dep(work, head=True),)))
    p = b.build()
    assert "deps[0:head]" in p.describe()
    save_program(p, tmp_path / "p.json")
    assert load_program(tmp_path / "p.json").tasks[1].deps == (Dep(work, head=True),)
