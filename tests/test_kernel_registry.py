"""User kernels in functional mode (wse_sim.kernels.registry): registered by name, run on every
core of a Compute's region, the built-in kernels behind the same registry."""

import numba
import numpy as np
import pytest

from wse_sim.engine import simulate
from wse_sim.functional import decode, run_functional
from wse_sim.hardware import load_preset
from wse_sim.kernels import gpt as functional_gpt
from wse_sim.kernels.registry import (
    KernelCall,
    kernel_names,
    register_kernel,
    unregister_kernel,
)
from wse_sim.program import Alloc, Compute, DataOp, Dep, Program, ProgramError, Region, Unicast

HW = load_preset("mesh8")


@pytest.fixture
def registered():
    """Names registered by a test, removed afterwards."""
    names = []
    yield names
    for n in names:
        unregister_kernel(n)


def _alloc(name, reg, shape, dtype="fp32"):
    return Alloc(name, reg, int(np.prod(shape)) * (4 if dtype == "fp32" else 2), shape, dtype)


def test_builtins_are_in_the_registry():
    names = kernel_names()
    for k in ("gemm", "gemm_acc", "add", "copy", "zero", *functional_gpt.KERNELS):
        assert k in names


def test_user_numpy_kernel_end_to_end(registered):
    """Shift every core's tile east (wrap), then a user kernel: out = a * scale + core x."""
    seen = {}

    def scale_plus_x(call: KernelCall):
        seen["call"] = call
        xs, _ = call.cores()
        (a,) = call.inputs
        return a * call.params["scale"] + xs[:, :, None]

    register_kernel("scale_plus_x", scale_plus_x)
    registered.append("scale_plus_x")
    reg = Region(1, 2, 3, 2)
    p = Program("user", (
        Unicast("shift", reg, 4, dx=1, wrap=True, data=DataOp("copy", ("a",), "b")),
        Compute("k", reg, 24, kind="vector", deps=(Dep(0),),
                data=DataOp("scale_plus_x", ("b",), "c", (("scale", 2.0),)))),
        (_alloc("a", reg, (4,)), _alloc("b", reg, (4,)), _alloc("c", reg, (4,))))
    a = np.random.default_rng(0).uniform(-1, 1, (2, 3, 4)).astype(np.float32)
    res = simulate(p, HW, engine="reference", functional={"a": a})
    want = np.roll(a, 1, axis=1) * 2.0 + np.arange(1, 4)[None, :, None]
    np.testing.assert_allclose(res.buffers["c"], want, rtol=1e-6)
    call = seen["call"]
    assert call.region == reg and call.out.shape == (2, 3, 4) and call.what == "task 1 (k)"
    assert call.inputs[0].dtype == np.float32


@numba.njit(cache=False)
def _axpy(a, b, alpha):
    return alpha * a + b


def test_user_numba_kernel_accumulates_into_fp16(registered):
    """A numba kernel behind a one-line wrapper; `call.out` is the output's current tiles and
    the fp16 result is rounded where it is stored."""
    register_kernel("axpy_acc", lambda call: _axpy(call.inputs[0], call.out, 0.5))
    registered.append("axpy_acc")
    reg = Region(0, 0, 2, 2)
    p = Program("numba", (Compute("k", reg, 16, dtype="fp16",
                                  data=DataOp("axpy_acc", ("x",), "y")),),
                (_alloc("x", reg, (2, 2), "fp16"), _alloc("y", reg, (2, 2), "fp16")))
    x = np.full((2, 2, 2, 2), 1.0 / 3.0, np.float32)
    y = np.ones((2, 2, 2, 2), np.float32)
    out = decode(p, run_functional(p, HW, {"x": x, "y": y}), "y")
    want = (0.5 * x.astype(np.float16).astype(np.float32) + 1.0).astype(np.float16)
    np.testing.assert_array_equal(out, want.astype(np.float32))


def test_wrong_result_shape_is_one_line(registered):
    register_kernel("bad_shape", lambda call: np.zeros(3))
    registered.append("bad_shape")
    reg = Region(0, 0, 2, 1)
    p = Program("b", (Compute("k", reg, 1, data=DataOp("bad_shape", (), "y")),),
                (_alloc("y", reg, (2,)),))
    with pytest.raises(ProgramError, match=r"task 0 \(k\): kernel 'bad_shape' returned shape "
                                           r"\(3,\), buffer 'y' needs \(1, 2, 2\)") as e:
        run_functional(p, HW)
    assert "\n" not in str(e.value)


def test_names_are_checked(registered):
    with pytest.raises(ProgramError, match="name is taken"):
        register_kernel("gemm", lambda call: call.out)
    with pytest.raises(ProgramError, match="must be callable"):
        register_kernel("nope", 3)
    with pytest.raises(ProgramError, match="non-empty name"):
        register_kernel(" ", lambda call: call.out)

    @register_kernel("twice")
    def first(call):
        return call.out + 1

    registered.append("twice")
    register_kernel("twice", lambda call: call.out + 2, replace=True)
    reg = Region(0, 0, 1, 1)
    p = Program("t", (Compute("k", reg, 1, data=DataOp("twice", (), "y")),),
                (_alloc("y", reg, (1,)),))
    assert run_functional(p, HW)["y"].item() == 2.0


def test_unknown_kernel_names_the_registry():
    reg = Region(0, 0, 1, 1)
    p = Program("u", (Compute("k", reg, 1, data=DataOp("not_there", (), "y")),),
                (_alloc("y", reg, (1,)),))
    with pytest.raises(ProgramError, match="kernel 'not_there' is not one of .*register_kernel"):
        run_functional(p, HW)


def test_a_failing_user_kernel_is_one_line(registered):
    register_kernel("needs_param", lambda call: call.out * call.params["missing"])
    registered.append("needs_param")
    reg = Region(0, 0, 1, 1)
    p = Program("f", (Compute("k", reg, 1, data=DataOp("needs_param", (), "y")),),
                (_alloc("y", reg, (1,)),))
    with pytest.raises(ProgramError, match=r"task 0 \(k\): kernel 'needs_param' failed: "
                                           r"KeyError: 'missing'"):
        run_functional(p, HW)
