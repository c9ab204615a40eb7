"""Functional execution of a Program (wse_sim.functional): the DataOp semantics, against numpy."""

import numpy as np
import pytest

from wse_sim import kernels as K
from wse_sim.functional import (
    error_report,
    estimate_bytes,
    run_functional,
    topological_order,
)
from wse_sim.hardware import load_preset
from wse_sim.program import (
    Alloc,
    Compute,
    DataOp,
    Dep,
    LineStream,
    Multicast,
    Program,
    ProgramError,
    Region,
    Unicast,
)

HW = load_preset("mesh8")
R = Region
RNG = np.random.default_rng(7)


def alloc(name, region, shape, dtype="fp32"):
    item = 4 if dtype == "fp32" else 2
    return Alloc(name, region, int(np.prod(shape)) * item, tuple(shape), dtype)


def prog(tasks, allocs):
    return Program("t", tuple(tasks), tuple(allocs))


def rand(*shape):
    return RNG.uniform(-1, 1, shape).astype(np.float32)


def test_unicast_wrap_moves_every_tile_to_its_destination():
    reg = R(0, 0, 4, 3)
    p = prog([Unicast("u", reg, 4, dx=-1, dy=1, wrap=True, data=DataOp("copy", ("a",), "b"))],
             [alloc("a", reg, (2, 2)), alloc("b", reg, (2, 2))])
    a = rand(3, 4, 2, 2)
    out = run_functional(p, HW, {"a": a})
    # core (x, y) sends to ((x - 1) mod 4, (y + 1) mod 3)
    for y in range(3):
        for x in range(4):
            np.testing.assert_array_equal(out["b"][(y + 1) % 3, (x - 1) % 4], a[y, x])


def test_unicast_in_place_permutation_reads_before_it_writes():
    reg = R(0, 0, 5, 1)
    p = prog([Unicast("u", reg, 1, dx=2, wrap=True, data=DataOp("copy", ("a",), "a"))],
             [alloc("a", reg, (1,))])
    a = np.arange(5, dtype=np.float32).reshape(1, 5, 1)
    out = run_functional(p, HW, {"a": a})
    assert out["a"][0, :, 0].tolist() == [3, 4, 0, 1, 2]


def test_unicast_to_fixed_core_and_offset():
    p = prog([Unicast("u", R(2, 1, 1, 1), 2, to=(0, 3), data=DataOp("copy", ("a",), "b")),
              Unicast("v", R(0, 0, 2, 1), 2, dx=3, dy=2, data=DataOp("copy", ("a",), "b"))],
             [alloc("a", R(0, 0, 8, 8), (2,)), alloc("b", R(0, 0, 8, 8), (2,))])
    a = rand(8, 8, 2)
    out = run_functional(p, HW, {"a": a})
    np.testing.assert_array_equal(out["b"][3, 0], a[1, 2])
    np.testing.assert_array_equal(out["b"][2, 3], a[0, 0])
    np.testing.assert_array_equal(out["b"][2, 4], a[0, 1])


def test_multicast_and_line_broadcast():
    reg = R(1, 1, 4, 3)
    p = prog([Multicast("m", (2, 2), reg, 3, data=DataOp("copy", ("a",), "b")),
              LineStream("l", reg, "y", -1, 3, data=DataOp("copy", ("a",), "c"))],
             [alloc(n, reg, (3,)) for n in "abc"])
    a = rand(3, 4, 3)
    out = run_functional(p, HW, {"a": a})
    assert np.all(out["b"] == a[1, 1])                 # source (2, 2) is (1, 1) in the region
    assert np.all(out["c"] == a[2][None, :, :])        # every column from its last row (y = 3)


@pytest.mark.parametrize("axis,direction", [("x", 1), ("x", -1), ("y", 1), ("y", -1)])
def test_line_reduce_sums_in_stream_order_into_the_last_core(axis, direction):
    reg = R(0, 0, 5, 4)
    p = prog([LineStream("r", reg, axis, direction, 2, reduce=True,
                         data=DataOp("copy", ("a",), "s"))],
             [alloc("a", reg, (2,)), alloc("s", reg, (2,))])
    a = rand(4, 5, 2)
    out = run_functional(p, HW, {"a": a})["s"]
    lines = a if axis == "y" else a.transpose(1, 0, 2)       # (along, across, 2)
    order = lines if direction > 0 else lines[::-1]
    want = K.sum_tiles(np.ascontiguousarray(order))          # ((x0 + x1) + x2) + ...
    got = (out if axis == "y" else out.transpose(1, 0, 2))
    got = got[-1] if direction > 0 else got[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(want, order.sum(0), rtol=1e-6)


def test_compute_kernels_batched_over_the_region():
    reg = R(0, 0, 3, 2)
    c = R(0, 0, 2, 2)  # a sub-region
    p = prog([Compute("g", reg, 1, data=DataOp("gemm", ("a", "b"), "c")),
              Compute("ga", c, 1, deps=(Dep(0),), data=DataOp("gemm_acc", ("a", "b"), "c")),
              Compute("add", reg, 1, deps=(Dep(1),), data=DataOp("add", ("c", "c", "d"), "e")),
              Compute("cp", reg, 1, deps=(Dep(2),), data=DataOp("copy", ("e",), "f")),
              Compute("z", R(2, 1, 1, 1), 1, deps=(Dep(3),), data=DataOp("zero", (), "f"))],
             [alloc("a", reg, (3, 4)), alloc("b", reg, (4, 5)), alloc("c", reg, (3, 5)),
              alloc("d", reg, (3, 5)), alloc("e", reg, (3, 5)), alloc("f", reg, (3, 5))])
    a, b, d = rand(2, 3, 3, 4), rand(2, 3, 4, 5), rand(2, 3, 3, 5)
    out = run_functional(p, HW, {"a": a, "b": b, "d": d})
    ab = a @ b
    want_c = ab.copy()
    want_c[:, :2] += ab[:, :2]
    np.testing.assert_allclose(out["c"], want_c, rtol=1e-6)
    np.testing.assert_allclose(out["e"], 2 * want_c + d, rtol=1e-6)
    want_f = out["e"].copy()
    want_f[1, 2] = 0
    np.testing.assert_array_equal(out["f"], want_f)


def test_low_precision_buffers_hold_bit_patterns_and_accumulate_in_fp32():
    reg = R(0, 0, 2, 2)
    p = prog([Compute("g", reg, 1, "fp16", data=DataOp("gemm", ("a", "b"), "c")),
              Compute("h", reg, 1, "bf16", data=DataOp("gemm", ("a", "b"), "h"))],
             [alloc("a", reg, (3, 8), "fp16"), alloc("b", reg, (8, 2), "fp16"),
              alloc("c", reg, (3, 2)), alloc("h", reg, (3, 2), "bf16")])
    a, b = rand(2, 2, 3, 8), rand(2, 2, 8, 2)
    out = run_functional(p, HW, {"a": a, "b": b})
    assert out["a"].dtype == np.uint16 and out["c"].dtype == np.float32
    ar, br = K.round_to(a, "fp16"), K.round_to(b, "fp16")
    want = ar.astype(np.float64) @ br.astype(np.float64)
    np.testing.assert_allclose(out["c"], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out["h"], K.to_bits(want.astype(np.float32), "bf16"))


def test_a_k_block_slices_a_broadcast_vector_by_rank():
    reg = R(0, 0, 2, 2)
    p = prog([Compute("v", reg, 1, data=DataOp("gemm", ("x", "w"), "y", (("a_k_block", 3),)))],
             [alloc("x", reg, (1, 12)), alloc("w", reg, (3, 4)), alloc("y", reg, (1, 4))])
    x = np.broadcast_to(rand(1, 12), (2, 2, 1, 12)).copy()
    w = rand(2, 2, 3, 4)
    y = run_functional(p, HW, {"x": x, "w": w})["y"]
    for r in range(4):
        yy, xx = divmod(r, 2)
        np.testing.assert_allclose(y[yy, xx], x[0, 0][:, 3 * r:3 * r + 3] @ w[yy, xx], rtol=1e-6)


def test_order_follows_dependencies_not_record_order():
    reg = R(0, 0, 2, 1)
    p = prog([Compute("late", reg, 1, deps=(Dep(1),), data=DataOp("copy", ("a",), "b")),
              Compute("first", reg, 1, data=DataOp("zero", (), "a"))],
             [alloc("a", reg, (1,)), alloc("b", reg, (1,))])
    assert topological_order(p) == [1, 0]
    out = run_functional(p, HW, {"a": np.ones((1, 2, 1))})
    assert np.all(out["b"] == 0)


def test_tasks_without_data_are_skipped():
    reg = R(0, 0, 2, 2)
    p = prog([Unicast("u", reg, 1, dx=1, wrap=True)], [alloc("a", reg, (1,))])
    out = run_functional(p, HW, {"a": np.ones((2, 2, 1))})
    assert np.all(out["a"] == 1)


def _one_line_error(p, match, **kw):
    with pytest.raises(ProgramError, match=match) as e:
        run_functional(p, HW, **kw)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_unknown_buffer_is_a_one_line_error():
    reg = R(0, 0, 2, 2)
    p = prog([Compute("g", reg, 1, data=DataOp("gemm", ("a", "nope"), "a"))],
             [alloc("a", reg, (2, 2))])
    msg = _one_line_error(p, "nope")
    assert "task 0 (g)" in msg


def test_unknown_kernel_is_rejected_before_anything_runs():
    reg = R(0, 0, 2, 2)
    p = prog([Compute("z", reg, 1, data=DataOp("zero", (), "a")),
              Compute("s", reg, 1, deps=(Dep(0),), data=DataOp("softmax", ("a",), "a"))],
             [alloc("a", reg, (2, 2))])
    _one_line_error(p, "task 1 \\(s\\): kernel 'softmax' is not one of")


def test_tile_larger_than_its_sram_is_rejected():
    reg = R(0, 0, 2, 2)
    p = prog([], [Alloc("a", reg, 12, (2, 2), "fp32")])
    _one_line_error(p, "16 bytes > its bytes_per_core 12")


def test_flow_with_too_few_wavelets_is_rejected():
    reg = R(0, 0, 2, 1)
    p = prog([Unicast("u", reg, 3, dx=1, wrap=True, data=DataOp("copy", ("a",), "a"))],
             [alloc("a", reg, (4,))])
    _one_line_error(p, "needs 4 wavelets, the task carries 3")


def test_memory_guard_says_the_estimate():
    p = prog([], [alloc("a", R(0, 0, 8, 8), (64, 64))])
    assert estimate_bytes(p) == 64 * 64 * 64 * 4
    msg = _one_line_error(p, "GiB", max_bytes=1 << 19)
    assert "needs about 1,048,576 bytes" in msg and "524,288" in msg
    run_functional(p, HW, max_bytes=1 << 20)  # at the limit: fine


def test_bad_inputs_are_rejected():
    reg = R(0, 0, 2, 2)
    p = prog([], [alloc("a", reg, (2,))])
    _one_line_error(p, "shape", inputs={"a": np.zeros((2, 2, 3))})
    _one_line_error(p, "no shaped buffer", inputs={"b": np.zeros((2, 2, 2))})


def test_sram_budget_is_enforced_before_running():
    reg = R(0, 0, 2, 2)
    p = prog([], [Alloc("a", reg, 60_000, (2,), "fp32")])
    _one_line_error(p, "SRAM does not fit")


def test_error_report():
    ref = np.array([[1.0, -2.0]])
    rep = error_report(ref + 1e-6, ref, "fp32")
    assert rep["ok"] and rep["checked_against"] == "numpy"
    assert rep["max_abs_error"] == pytest.approx(1e-6)
    assert rep["max_rel_error"] == pytest.approx(5e-7)
    assert not error_report(ref * 1.01, ref, "fp32")["ok"]
    assert error_report(ref * 1.001, ref, "fp16")["ok"]
    assert not error_report(np.array([[np.nan, 1.0]]), ref, "bf16")["ok"]


def test_simulate_has_a_functional_switch():
    import numpy as np

    from mapper.gemm import build_gemm, gemm_inputs, gemm_output
    from wse_sim.engine import simulate
    p = build_gemm("cannon", HW, grid=4, m=16, k=16, n=16, dtype="fp32", functional=True)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((16, 16), np.float32), rng.standard_normal((16, 16), np.float32)
    timed = simulate(p, HW, engine="reference")
    both = simulate(p, HW, engine="reference", functional=gemm_inputs(p, a, b))
    assert timed.buffers is None and both.cycles == timed.cycles
    np.testing.assert_allclose(gemm_output(p, both.buffers), a @ b, rtol=1e-5, atol=1e-5)
