"""The reference engine against the closed forms of the hardware model, to the cycle."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wse_sim import timing
from wse_sim.engine import simulate
from wse_sim.hardware import load_preset
from wse_sim.program import (
    Alloc,
    Compute,
    Dep,
    LineStream,
    Multicast,
    Program,
    ProgramError,
    Region,
    Unicast,
)

HW = load_preset("mesh16")
R = Region


def run(*tasks, allocs=(), hw=HW):
    return simulate(Program("t", tuple(tasks), tuple(allocs)), hw, engine="reference")


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 300), x=st.integers(0, 15), y=st.integers(0, 15),
       tx=st.integers(0, 15), ty=st.integers(0, 15))
def test_unicast_closed_form(b, x, y, tx, ty):
    if (x, y) == (tx, ty):
        return
    r = run(Unicast("u", R(x, y, 1, 1), b, to=(tx, ty)))
    hops = abs(tx - x) + abs(ty - y)
    assert r.cycles == timing.transfer_cycles(HW, b, hops) == b - 1 + hops + 4 + 1  # + receive
    assert r.comm_bytes == r.delivered_bytes == 4 * b
    assert r.bytes_hops == 4 * b * hops
    assert r.comm_cycles == r.cycles and r.compute_cycles == 0


@pytest.mark.parametrize("ramp,hop", [(0, 1), (2, 1), (3, 2)])
def test_closed_form_follows_hardware_fields(ramp, hop):
    hw = HW.with_overrides({"ramp_latency_cycles": ramp, "hop_latency_cycles": hop})
    r = run(Unicast("u", R(0, 0, 1, 1), 50, dx=7, dy=2), hw=hw)
    assert r.cycles == 49 + 9 * hop + 2 * ramp + 1 == timing.transfer_cycles(hw, 50, 9)


def test_multicast_tree_farthest_destination_decides():
    r = run(Multicast("m", (3, 4), R(0, 0, 16, 16), 200))
    far = max(3, 12) + max(4, 11)
    assert r.cycles == timing.multicast_cycles(HW, 200, far)
    assert r.delivered_bytes == 255 * 800 and r.comm_bytes == 800
    # Every link of the tree carries the stream once: links = cores - 1 (a spanning tree).
    assert r.bytes_hops == 255 * 800


def test_line_broadcast_and_chain_reduce():
    r = run(LineStream("b", R(0, 0, 16, 1), "x", 1, 1024))
    assert r.cycles == timing.line_broadcast_cycles(HW, 1024, 16)
    r = run(LineStream("r", R(0, 0, 16, 1), "x", -1, 1024, reduce=True))
    assert r.cycles == timing.chain_reduce_cycles(HW, 1024, 16) == 15 * 6 + 1023 + 1
    assert r.stream_flops == 15 * 1024
    # fp16 packs two values per wavelet; 4 lanes add them in one cycle: same pace.
    r16 = run(LineStream("r", R(0, 0, 1, 16), "y", 1, 64, reduce=True, dtype="fp16"))
    assert r16.cycles == timing.chain_reduce_cycles(HW, 64, 16, "fp16")


def test_line_streams_run_in_parallel_on_disjoint_rows():
    one = run(LineStream("r", R(0, 0, 16, 1), "x", 1, 500, reduce=True)).cycles
    many = run(LineStream("r", R(0, 0, 16, 16), "x", 1, 500, reduce=True)).cycles
    assert one == many


@pytest.mark.parametrize("dtype,lanes", [("fp32", 1), ("fp16", 4), ("bf16", 4)])
def test_compute_cycles_closed_form(dtype, lanes):
    r = run(Compute("c", R(0, 0, 4, 4), 16 * 2 * 1000, dtype))
    assert r.cycles == 1000 // lanes
    assert r.flops == 32000 and r.compute_cycles == r.cycles
    assert int(r.core_busy_cycles.sum()) == 16 * (1000 // lanes)


def test_compute_remainder_and_sparsity_and_sram_bound():
    r = run(Compute("c", R(0, 0, 3, 1), 7, "fp32", "vector"))
    assert r.cycles == 3 and r.flops == 7  # 3, 2, 2 FLOPs: the first core decides
    dense = run(Compute("c", R(0, 0, 1, 1), 8000, "fp16")).cycles
    sparse = run(Compute("c", R(0, 0, 1, 1), 8000, "fp16", sparsity=0.75)).cycles
    assert (dense, sparse) == (1000, 250)
    sram = run(Compute("c", R(0, 0, 1, 1), 8, "fp16", sram_read_bytes=1600)).cycles
    assert sram == 1600 // HW.sram_read_bytes_per_cycle


def test_contention_serializes_on_shared_link_by_the_right_amount():
    alone = run(Unicast("u", R(0, 0, 1, 1), 100, dx=5)).cycles
    both = run(Unicast("u", R(0, 0, 1, 1), 100, dx=5), Unicast("v", R(1, 0, 1, 1), 100, dx=3))
    # v needs link (1,0)->(2,0) at S+2; u holds it until 2+1+100: v starts at 101.
    assert both.cycles == 101 + timing.transfer_cycles(HW, 100, 3)
    assert both.cycles > alone
    apart = run(Unicast("u", R(0, 0, 1, 1), 100, dx=5), Unicast("v", R(0, 1, 1, 1), 100, dx=3))
    assert apart.cycles == alone


def test_two_sends_from_one_core_share_its_ramp():
    r = run(Unicast("a", R(5, 5, 1, 1), 100, dx=1), Unicast("b", R(5, 5, 1, 1), 100, dx=-1))
    assert r.cycles == 100 + timing.transfer_cycles(HW, 100, 1)


def test_dependencies_same_offset_at_all():
    c = Compute("c", R(0, 0, 4, 1), 4 * 200, "fp32", "vector")
    send = Unicast("s", R(0, 0, 4, 1), 10, dy=1, deps=(Dep(0),))
    after = Compute("d", R(0, 1, 4, 1), 4 * 50, "fp32", "vector", deps=(Dep(1),))
    r = run(c, send, after)
    assert r.cycles == 200 + timing.transfer_cycles(HW, 10, 1) + 50
    shifted = Compute("d", R(1, 1, 3, 1), 3 * 50, "fp32", "vector", deps=(Dep(1, "offset", -1, 0),))
    assert run(c, send, shifted).cycles == r.cycles
    at = Compute("d", R(0, 2, 4, 1), 4 * 50, "fp32", "vector", deps=(Dep(1, "at", 3, 1),))
    assert run(c, send, at).cycles == r.cycles
    alld = Compute("d", R(9, 9, 1, 1), 50, "fp32", "vector", deps=(Dep(1, "all"),))
    assert run(c, send, alld).cycles == r.cycles


def test_critical_path_splits_compute_and_comm():
    c = Compute("c", R(0, 0, 1, 1), 300, "fp32", "vector")
    s = Unicast("s", R(0, 0, 1, 1), 10, dx=3, deps=(Dep(0),))
    r = run(c, s)
    assert r.compute_cycles == 300 and r.comm_cycles == timing.transfer_cycles(HW, 10, 3)
    assert r.compute_cycles + r.comm_cycles == r.cycles


def test_conservation_bytes_and_flops():
    tasks = (Compute("c", R(0, 0, 8, 8), 123457, "fp16"),
             Unicast("u", R(0, 0, 8, 8), 7, dx=8, deps=(Dep(0),)),
             LineStream("l", R(8, 0, 8, 8), "y", 1, 9, deps=(Dep(1),)))
    r = run(*tasks)
    assert r.flops == 123457
    assert r.comm_bytes == 64 * 7 * 4 + 8 * 9 * 4
    assert r.delivered_bytes == 64 * 7 * 4 + 8 * 7 * 9 * 4
    assert int(r.link_bytes.sum()) == r.bytes_hops


def test_deterministic():
    tasks = (Compute("c", R(0, 0, 8, 8), 99999, "fp16"),
             Unicast("u", R(0, 0, 8, 8), 17, dx=3, dy=2, deps=(Dep(0),)),
             Unicast("w", R(3, 2, 8, 8), 13, to=(0, 0), deps=(Dep(1),)))
    a, b = run(*tasks), run(*tasks)
    assert a.summary() | {"wall_seconds": 0} == b.summary() | {"wall_seconds": 0}
    assert (a.link_busy_cycles == b.link_busy_cycles).all()


def test_sram_and_colors_rejected_with_numbers():
    with pytest.raises(ProgramError, match=r"core \(0,0\) needs 50000 bytes > sram_bytes 49152"):
        run(Compute("c", R(0, 0, 2, 2), 4), allocs=(Alloc("w", R(0, 0, 2, 2), 50000),))
    many = [Unicast(f"u{i}", R(0, 0, 1, 1), 1, dx=1, color=i) for i in range(25)]
    with pytest.raises(ProgramError, match="colors do not fit: core \\(0,0\\) routes 25 colors"):
        run(*many)


def test_bad_programs_rejected():
    with pytest.raises(ProgramError, match="does not fit"):
        run(Compute("c", R(10, 10, 8, 8), 1))
    with pytest.raises(ProgramError, match="cycle"):
        run(Compute("a", R(0, 0, 1, 1), 1, deps=(Dep(1),)), Compute("b", R(0, 0, 1, 1), 1, deps=(Dep(0),)))
    with pytest.raises(ProgramError, match="deadlock"):
        run(Compute("a", R(0, 0, 1, 1), 1), Compute("b", R(5, 5, 1, 1), 1, deps=(Dep(0),)))
    with pytest.raises(ProgramError, match="itself"):
        Unicast("u", R(0, 0, 1, 1), 1)
    with pytest.raises(ProgramError, match="wavelets"):
        Unicast("u", R(0, 0, 1, 1), 0, dx=1)
