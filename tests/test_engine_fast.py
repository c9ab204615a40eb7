"""The fast (numba) engine against the reference (SimPy) engine: identical results, to the cycle."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wse_sim.engine import simulate
from wse_sim.engine.fast import StepPathUnsupported, simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.hardware import load_preset
from wse_sim.program import (
    Alloc,
    Compute,
    Dep,
    IoTransfer,
    LineStream,
    Multicast,
    Program,
    ProgramError,
    Region,
    Unicast,
)

R = Region
HW16 = load_preset("mesh16")
SCALARS = ("cycles", "flops", "executed_flops", "stream_flops", "flops_by_dtype", "comm_bytes",
           "delivered_bytes", "bytes_hops", "sram_traffic_bytes", "io_bytes", "compute_cycles",
           "comm_cycles", "ops", "instances", "tokens", "dtype", "cores_used", "program", "meta")
ARRAYS = ("core_busy_cycles", "link_bytes", "link_busy_cycles", "sram_bytes", "colors")


def assert_same(ref, fast):
    assert fast.engine == "fast"
    for k in SCALARS:
        assert getattr(fast, k) == getattr(ref, k), k
    assert list(fast.ops) == list(ref.ops)
    for k in ARRAYS:
        a, b = getattr(ref, k), getattr(fast, k)
        assert a.shape == b.shape and np.array_equal(a, b), k
    assert set(fast.spans) == set(ref.spans)
    for k, v in ref.spans.items():
        assert np.array_equal(fast.spans[k], v), k


def both(program, hw, path="auto"):
    """(reference result or its ProgramError message, fast result or message)."""
    out = []
    for fn in (simulate_reference, lambda p, h: simulate_fast(p, h, path=path)):
        try:
            out.append(fn(program, hw))
        except ProgramError as e:
            out.append(str(e))
    return out


# ---- generated programs ------------------------------------------------------------------------

def anchors(t):
    """Cores where an instance of t takes its dependencies (as the reference's expand)."""
    if isinstance(t, Multicast):
        return [tuple(t.src)]
    if isinstance(t, LineStream) and not t.reduce:
        return [line[0] for line in t.lines()]
    return list(t.region.cells())


def draw_deps(draw, t, earlier, cores, cols, rows):
    """Mostly valid dependencies on tasks `earlier` in a topological order; now and then one
    that is not."""
    deps = []
    for _ in range(draw(st.integers(0, 3)) if earlier else 0):
        j = draw(st.sampled_from(earlier))
        rule = draw(st.sampled_from(["same", "same", "offset", "at", "all"]))
        if rule == "at":
            dep = Dep(j, "at", *draw(st.sampled_from(sorted(cores[j]))))
        elif rule == "offset":
            dep = Dep(j, "offset", draw(st.integers(-1, 1)), draw(st.integers(-1, 1)))
        else:
            dep = Dep(j, rule)
        if rule in ("same", "offset"):
            need = {dep.core_for(x, y) for x, y in anchors(t)}
            if not need <= cores[j] and draw(st.integers(0, 19)):
                dep = Dep(j, "all")  # mostly keep programs valid
        elif rule == "at" and draw(st.integers(0, 12)) == 0:
            dep = Dep(j, "at", draw(st.integers(0, cols - 1)), draw(st.integers(0, rows - 1)))
        deps.append(dep)
    dests = destinations(t)
    for _ in range(draw(st.integers(0, 2)) if earlier and dests else 0):  # flow control
        j = draw(st.sampled_from(earlier))
        dx, dy = draw(st.sampled_from([(0, 0), (0, 0), (1, 0), (0, -1), (-1, 1)]))
        if {(x + dx, y + dy) for x, y in dests} & cores[j]:
            deps.append(Dep(j, "offset", dx, dy, head=True) if (dx, dy) != (0, 0)
                        else Dep(j, head=True))
    return tuple(deps)


def destinations(t):
    """Cores a stream delivers to (where its head dependencies are taken); none for others."""
    if isinstance(t, Unicast):
        return {t.dest(x, y) for x, y in t.region.cells()}
    if isinstance(t, Multicast):
        return set(t.region.cells()) - {tuple(t.src)}
    if isinstance(t, LineStream) and not t.reduce:
        return set(t.region.cells()) - {line[0] for line in t.lines()}
    return set()


@st.composite
def programs(draw, in_order=False):
    """Random programs; `in_order`: every dependency names an earlier task (as the mappers
    build them), else they follow a random order of the tasks."""
    cols, rows = draw(st.integers(2, 16)), draw(st.integers(2, 16))
    hw = HW16.with_overrides({
        "mesh_cols": cols, "mesh_rows": rows,
        "ramp_latency_cycles": draw(st.integers(0, 3)),
        "hop_latency_cycles": draw(st.integers(0, 2)),
        "stream_op_latency_cycles": draw(st.integers(0, 2)),
        "fmac_lanes_fp16": draw(st.sampled_from([1, 2, 4, 8])),
        "link_bits_per_cycle": draw(st.sampled_from([32, 32, 64, 128])),
        "message_start_cycles": draw(st.sampled_from([0, 0, 1, 3])),
        "message_receive_cycles": draw(st.sampled_from([0, 1, 1, 2])),
    })

    def region(min_cols=1, min_rows=1):
        c = draw(st.integers(min_cols, cols))
        r = draw(st.integers(min_rows, rows))
        return R(draw(st.integers(0, cols - c)), draw(st.integers(0, rows - r)), c, r)

    pool = [R(0, 0, cols, rows), region(), region()]

    def pick_region(min_cols=1, min_rows=1):
        ok = [g for g in pool if g.cols >= min_cols and g.rows >= min_rows]
        if ok and draw(st.booleans()):
            return draw(st.sampled_from(ok))
        return region(min_cols, min_rows)

    tasks, cores = [], []  # cores: set of (x, y) where each task has an event
    for i in range(draw(st.integers(1, 7))):
        deps = ()  # drawn once every task exists
        kind = draw(st.sampled_from(["compute", "compute", "unicast", "unicast", "multicast",
                                     "line", "line", "io"]))
        color = draw(st.integers(0, 3))
        b = draw(st.integers(1, 40))
        if kind == "compute":
            g = pick_region()
            t = Compute(f"c{i}", g, draw(st.integers(0, 5000)),
                        draw(st.sampled_from(["fp32", "fp16", "bf16"])),
                        draw(st.sampled_from(["fmac", "vector"])),
                        draw(st.sampled_from([0.0, 0.25, 0.5, 0.9])),
                        draw(st.integers(0, 3000)), draw(st.integers(0, 1000)), deps)
            ev = list(g.cells())
        elif kind == "unicast":
            g = pick_region()
            mode = draw(st.sampled_from(["offset", "to", "wrap", "ring"]))
            outside = [(x, y) for y in range(rows) for x in range(cols) if not g.contains(x, y)]
            dx, dy = draw(st.integers(-5, 5)), draw(st.integers(-5, 5))
            if mode == "to" and outside:  # a gather (never to a core of the region itself)
                t = Unicast(f"u{i}", g, b, to=draw(st.sampled_from(outside)), color=color,
                            deps=deps)
            elif mode == "ring" and max(g.cols, g.rows) > 1:
                axis = "x" if g.cols > 1 and (g.rows == 1 or draw(st.booleans())) else "y"
                n = g.cols if axis == "x" else g.rows
                k = draw(st.integers(-n - 2, n + 2).filter(lambda v, n=n: v % n))
                t = Unicast(f"u{i}", g, b, **({"dx": k} if axis == "x" else {"dy": k}),
                            ring=axis, color=color, deps=deps)
            elif mode == "wrap" and (dx % g.cols or dy % g.rows):
                t = Unicast(f"u{i}", g, b, dx, dy, wrap=True, color=color, deps=deps)
            else:
                dx = draw(st.integers(-g.x, cols - g.x1 - 1))
                dy = draw(st.integers(-g.y, rows - g.y1 - 1))
                if dx == 0 and dy == 0:
                    g = R(0, 0, 1, 1)
                    dx = 1
                t = Unicast(f"u{i}", g, b, dx, dy, color=color, deps=deps)
            ev = list(g.cells()) + [t.dest(x, y) for x, y in g.cells()]
        elif kind == "multicast":
            g = pick_region()
            src = (draw(st.integers(0, cols - 1)), draw(st.integers(0, rows - 1)))
            if g.size == 1 and g.contains(*src):
                g = R(0, 0, cols, rows)
            t = Multicast(f"m{i}", src, g, b, color=color, deps=deps)
            ev = list(g.cells()) + [src]
        elif kind == "io":
            g = pick_region()
            t = IoTransfer(f"io{i}", g, draw(st.integers(1, 10**6)),
                           draw(st.sampled_from(["in", "out"])), deps)
            ev = list(g.cells())
        else:
            axis = draw(st.sampled_from(["x", "y"]))
            g = pick_region(2, 1) if axis == "x" else pick_region(1, 2)
            t = LineStream(f"l{i}", g, axis, draw(st.sampled_from([1, -1])), b,
                           draw(st.booleans()), draw(st.sampled_from(["fp32", "fp16", "bf16"])),
                           color, deps)
            ev = list(g.cells())
        if draw(st.integers(0, 4)) == 0:  # shared op names merge in the per-op breakdown
            t = dataclasses.replace(t, op="shared")
        tasks.append(t)
        cores.append(set(ev))
    # dependencies follow a random order of the tasks (so some point to later tasks)
    order = range(len(tasks)) if in_order else draw(st.permutations(range(len(tasks))))
    for k, i in enumerate(order):
        tasks[i] = dataclasses.replace(tasks[i], deps=draw_deps(draw, tasks[i], sorted(order[:k]),
                                                                cores, cols, rows))
    allocs = (Alloc("buf", pool[1], draw(st.integers(0, 1000))),)
    return Program("gen", tuple(tasks), allocs, tokens=draw(st.integers(0, 9)),
                   meta={"io_bytes": 5}), hw


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_generated_programs_match_reference(case):
    program, hw = case
    ref, fast = both(program, hw)
    if isinstance(ref, str):
        assert fast == ref
    else:
        assert not isinstance(fast, str), fast
        assert_same(ref, fast)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(in_order=True))
def test_both_fast_paths_match_reference(case):
    """The event path always; the step path whenever it takes the program (it refuses, with
    the reason, a program it cannot order as the reference does)."""
    program, hw = case
    ref, event = both(program, hw, path="event")
    if isinstance(ref, str):
        assert event == ref
        return
    assert_same(ref, event)
    assert event.fast_path == "event"
    try:
        step = simulate_fast(program, hw, path="step")
    except StepPathUnsupported as e:
        assert "out of task order" in str(e) or "starts before its predecessor" in str(e)
        return
    assert step.fast_path == "step"
    assert_same(ref, step)


# ---- hand-written programs on larger meshes -----------------------------------------------------

def cannon(hw, steps, n, flops=20000, wavelets=64, dtype="fp16"):
    """Cannon-like 2-D GEMM on an n x n region: per step, compute, then shift A east and B
    south (torus wrap); then a reduce along every row."""
    g = R(0, 0, n, n)
    tasks = []
    for s in range(steps):
        c = len(tasks)
        deps = () if s == 0 else (Dep(c - 2), Dep(c - 1))
        tasks.append(Compute(f"mm{s}", g, flops * n * n, dtype, deps=deps))
        dep_a = (Dep(c),) if s == 0 else (Dep(c), Dep(c - 2))
        tasks.append(Unicast(f"shiftA{s}", g, wavelets, dx=1, wrap=True, color=1, deps=dep_a))
        dep_b = (Dep(c),) if s == 0 else (Dep(c), Dep(c - 1))
        tasks.append(Unicast(f"shiftB{s}", g, wavelets, dy=1, wrap=True, color=2, deps=dep_b))
    last = len(tasks) - 3
    tasks.append(LineStream("rowsum", g, "x", 1, wavelets, reduce=True, dtype=dtype, color=3,
                            deps=(Dep(last),)))
    return Program(f"cannon{n}", tuple(tasks), tokens=n)


def mixed(hw):
    """Contention and every dependency rule on a whole mesh."""
    c, r = hw.mesh_cols, hw.mesh_rows
    g = R(0, 0, c, r)
    half = R(0, 0, c // 2, r)
    return Program("mixed", (
        Compute("a", g, 7 * c * r + 5, "fp32", "vector"),
        Unicast("east", half, 33, dx=c // 2, deps=(Dep(0),), color=1),
        Unicast("gather", R(0, 0, c, 2), 9, to=(c - 1, r - 1), deps=(Dep(0),), color=2),
        LineStream("colb", R(c // 2, 0, c // 2, r), "y", -1, 50, deps=(Dep(1),), color=3),
        LineStream("rowr", R(c // 2, 0, c // 2, r), "x", 1, 20, reduce=True, dtype="bf16",
                   deps=(Dep(3, "offset", 0, 0), Dep(2, "all")), color=4),
        Multicast("bcast", (c // 3, r // 3), g, 40, deps=(Dep(4, "at", c - 1, 5),), color=5),
        Compute("b", g, 3 * c * r, "fp16", sparsity=0.5, sram_read_bytes=64 * c * r,
                deps=(Dep(5), Dep(4, "at", c - 1, r - 1))),
        IoTransfer("load", R(0, 0, c, r // 2), 4 * c * r, deps=(Dep(6),)),
        IoTransfer("store", R(0, 0, c // 2, r // 2), 2 * c * r, "out",
                   deps=(Dep(7), Dep(1, "all"))),
    ))


@pytest.mark.parametrize("size", [32, 64])
def test_hand_written_programs_match_reference(size):
    hw = load_preset(f"mesh{size}")
    for program in (cannon(hw, 3 if size == 32 else 2, size), mixed(hw)):
        ref, fast = both(program, hw)
        assert not isinstance(ref, str), ref
        assert_same(ref, fast)


def test_cannon_on_a_subregion_with_contention():
    hw = load_preset("mesh32")
    p = cannon(hw, 4, 24, flops=300, wavelets=200)
    extra = Unicast("cross", R(0, 0, 1, 24), 500, to=(31, 31), color=5, deps=(Dep(3),))
    p = Program(p.name, p.tasks + (extra,))
    ref, fast = both(p, hw)
    assert_same(ref, fast)
    assert fast.compute_cycles + fast.comm_cycles <= fast.cycles


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 300), min_size=1, max_size=12), st.integers(0, 2**32 - 1),
       st.sampled_from(["shuffle", "interleave", "rotate", "reverse"]))
def test_round_sort_orders_by_task_then_index(sizes, seed, pattern):
    """A round's instances are sorted by id whatever order they were woken in (grouping by
    task, merging runs, insertion sort and heapsort all get exercised)."""
    from wse_sim.engine import fast_queue
    rng = np.random.default_rng(seed)
    ib = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    tblk = (np.searchsorted(ib, np.arange(0, ib[-1], 1 << fast_queue.TB), side="right")
            - 1).astype(np.int64)
    ids = np.unique(rng.integers(0, ib[-1], size=rng.integers(1, ib[-1] + 1)))
    if pattern == "shuffle":
        a = rng.permutation(ids)
    elif pattern == "interleave":  # tasks woken alternately, each in order
        a = ids[np.argsort(ids - ib[np.searchsorted(ib, ids, side="right") - 1], kind="stable")]
    elif pattern == "rotate":
        a = np.roll(ids, int(rng.integers(0, len(ids))))
    else:
        a = ids[::-1].copy()
    a = a.astype(np.int64)
    tmp = np.empty_like(a)
    tscr = np.full(4 * len(sizes), -1, np.int64)
    fast_queue._sort_batch(a, tmp, len(a), ib, tblk, tscr)
    assert np.array_equal(a, ids) and (tscr[:len(sizes)] == -1).all()


# ---- errors ------------------------------------------------------------------------------------

def test_cycle_and_deadlock_raise_in_both():
    hw = load_preset("mesh8")
    cyc = Program("cyc", (Compute("a", R(0, 0, 1, 1), 1, deps=(Dep(1),)),
                          Compute("b", R(0, 0, 1, 1), 1, deps=(Dep(0),))))
    dead = Program("dead", (Compute("a", R(0, 0, 1, 1), 1),
                            Compute("b", R(5, 5, 1, 1), 1, deps=(Dep(0),))))
    out = Program("out", (Compute("a", R(0, 0, 2, 2), 1),
                          Compute("b", R(0, 0, 2, 2), 1, deps=(Dep(0, "offset", -1, 0),))))
    for program, match in ((cyc, "dependency cycle"), (dead, "deadlock: task 1 \\(b\\) waits"),
                           (out, "outside the 8 x 8 mesh")):
        ref, fast = both(program, hw)
        assert isinstance(ref, str) and ref == fast
        with pytest.raises(ProgramError, match=match):
            simulate_fast(program, hw)


def test_static_checks_run_first():
    hw = load_preset("mesh8")
    with pytest.raises(ProgramError, match="does not fit"):
        simulate_fast(Program("p", (Compute("c", R(4, 4, 8, 8), 1),)), hw)


def test_dispatch_and_empty_program():
    hw = load_preset("mesh8")
    r = simulate(Program("p", (Compute("c", R(0, 0, 8, 8), 64 * 100, "fp32", "vector"),)), hw,
                 engine="fast")
    assert r.engine == "fast" and r.cycles == 100 and r.compute_cycles == 100
    empty = Program("e", ())
    assert_same(simulate_reference(empty, hw), simulate_fast(empty, hw))


def test_chunked_run_gives_the_same_result(monkeypatch):
    """With a progress bar the scheduler stops every CHUNK grants (even inside a round) and
    resumes: nothing may change."""
    import wse_sim.engine.fast as fast_mod
    hw = load_preset("mesh32")
    program = mixed(hw)
    whole = simulate_fast(program, hw, progress=False)
    monkeypatch.setattr(fast_mod, "CHUNK", 7)
    assert_same(whole, simulate_fast(program, hw, progress=True))


@pytest.mark.parametrize("wheel", [64, 128])
def test_small_timing_wheel_gives_the_same_result(monkeypatch, wheel):
    """Ready times beyond the timing wheel's span go through the radix queue: a wheel of a
    few dozen cycles sends most of them there."""
    import wse_sim.engine.fast as fast_mod
    hw = load_preset("mesh32")
    programs = (mixed(hw), cannon(hw, 3, 24, flops=3000, wavelets=200))
    results = [simulate_fast(p, hw) for p in programs]
    monkeypatch.setattr(fast_mod, "WHEEL", wheel)
    for program, whole in zip(programs, results, strict=True):
        assert_same(whole, simulate_fast(program, hw))


def test_progress_bar_only_when_asked_or_large(capsys):
    hw = load_preset("mesh8")
    p = Program("p", (Compute("c", R(0, 0, 8, 8), 640),))
    simulate_fast(p, hw)
    assert "inst" not in capsys.readouterr().err
    r = simulate_fast(p, hw, progress=True)
    err = capsys.readouterr().err
    assert "inst" in err and "skip ahead" not in err and r.cycles == 5


def test_progress_bar_of_a_program_with_loops_says_it_may_jump(capsys):
    from wse_sim.program import ProgramBuilder
    b = ProgramBuilder("looped")
    b.add(Compute("c", R(0, 0, 8, 8), 640))
    b.repeat("steps", 4, lambda i: b.add(Compute("c", R(0, 0, 8, 8), 640,
                                                   deps=(Dep(len(b.tasks) - 1, "all"),))))
    simulate_fast(b.build(), load_preset("mesh8"), progress=True)
    assert "fast engine (loops may skip ahead)" in capsys.readouterr().err


def test_memory_guard_refuses_up_front_with_the_estimate(monkeypatch):
    import os

    import pytest

    from wse_sim.engine.fast import simulate_fast, warm_up
    from wse_sim.hardware import load_preset
    from wse_sim.program import Compute, Program, ProgramError, Region
    warm_up()  # compile first: the warm-up runs are tiny but would be refused too
    hw = load_preset("mesh64")
    p = Program("big", (Compute("c", Region(0, 0, 64, 64), 64 * 64 * 10),))
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda k: 1 if k == "SC_AVPHYS_PAGES" else real(k))
    with pytest.raises(ProgramError, match=r"needs about .* GiB .* RAM is free \(the step "
                                           r"path cannot run it: needs about"):
        simulate_fast(p, hw)


# ---- the step path ------------------------------------------------------------------------------

def _mapper_programs(hw):
    from mapper.collectives import build_collective
    from mapper.gemm import build_gemm, build_gemv
    from wse_sim.experiment import build_program
    progs = [build_gemm(a, hw, grid=8, m=32, k=32, n=32, dtype="fp16")
             for a in ("1d", "summa", "cannon", "meshgemm")]
    progs += [build_gemv(a, hw, grid=8, k=64, n=64) for a in ("chain", "tree")]
    progs += [build_collective(k, hw, pes=8, wavelets=16)
              for k in ("allreduce-ring", "reduce-two-level", "all-to-all")]
    progs += [build_program(hw, "tiny", strategy=s, phase="prefill", prompt=16)
              for s in ("layer-pipelined", "layer-sequential", "weight-streaming")]
    return progs


def test_step_path_takes_the_regular_programs():
    """GEMMs, collectives, whole-model prefill and the Cannon benchmark run on the step path
    (tasks granted whole) and give the reference's result to the cycle."""
    hw = load_preset("mesh32")
    for program in _mapper_programs(hw) + [cannon(hw, 3, 32)]:
        ref = simulate_reference(program, hw)
        fast = simulate_fast(program, hw, path="step")
        assert fast.fast_path == "step", program.name
        assert_same(ref, fast)


def test_step_path_refuses_what_it_cannot_order_and_auto_falls_back():
    """u3 (a later group) would reserve core (0, 0)'s ramp before u1 in the reference (it is
    ready far earlier): the step path sees it and the event path runs instead."""
    hw = load_preset("mesh8")
    p = Program("order", (
        Compute("long", R(0, 0, 1, 1), 10_000, "fp32", "vector"),
        Unicast("u1", R(0, 0, 1, 1), 8, dx=3, deps=(Dep(0),)),
        Compute("short", R(1, 1, 1, 1), 10, "fp32", "vector"),
        Unicast("u3", R(0, 0, 1, 1), 8, dy=3, deps=(Dep(2, "at", 1, 1),)),
    ))
    with pytest.raises(StepPathUnsupported, match="out of task order"):
        simulate_fast(p, hw, path="step")
    import wse_sim.engine.fast as fast_mod
    assert simulate_fast(p, hw).fast_path == "event"  # small: the faster path
    old = fast_mod.EVENT_PREFERRED_FRACTION
    try:
        fast_mod.EVENT_PREFERRED_FRACTION = 0.0  # as if memory were short: step first
        auto = simulate_fast(p, hw)
    finally:
        fast_mod.EVENT_PREFERRED_FRACTION = old
    assert auto.fast_path == "event" and "out of task order (task 3)" in auto.fast_path_reason
    assert_same(simulate_reference(p, hw), auto)


def test_step_path_memory_does_not_grow_with_steps():
    from wse_sim.engine import fast_step
    from wse_sim.engine.fast_tables import Tables
    hw = load_preset("mesh16")
    small, big = (Tables(cannon(hw, s, 16), hw) for s in (3, 30))
    assert big.n_instances > 9 * small.n_instances
    rings = [fast_step.ring_size(t, fast_step.task_groups(t)) for t in (small, big)]
    assert rings[0] == rings[1] <= 8 * 16 * 16
    assert (fast_step.estimate_bytes(big, hw.cores, spans=False)
            == fast_step.estimate_bytes(small, hw.cores, spans=False))


def test_step_path_in_slices_and_bad_path():
    import wse_sim.engine.fast as fast_mod
    from wse_sim.hardware import ConfigError
    hw = load_preset("mesh32")
    program = cannon(hw, 3, 24, flops=3000, wavelets=200)
    whole = simulate_fast(program, hw, path="step", progress=False)
    old = fast_mod.CHUNK
    try:
        fast_mod.CHUNK = 7
        assert_same(whole, simulate_fast(program, hw, path="step", progress=True))
    finally:
        fast_mod.CHUNK = old
    with pytest.raises(ConfigError, match="path: got 'fastest'"):
        simulate_fast(program, hw, path="fastest")
