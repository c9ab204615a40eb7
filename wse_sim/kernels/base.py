"""Shared plumbing for the per-core kernels: parallel/serial twins and argument checks.

Every kernel body is written once and compiled twice (``parallel=True`` and serial) so the
parallel build can be tested bit-for-bit against the serial one. Wrappers validate their
arguments here and raise a one-line ``ValueError`` naming the argument, the value and what is
allowed. Nothing is compiled at import time.
"""

from __future__ import annotations

import types

import numpy as np
from numba import njit

DTYPES_LP = ("fp16", "bf16")
DTYPES = ("fp32", *DTYPES_LP)

# OpenBLAS (scipy's, which numba's np.dot calls) multithreads a GEMM above roughly 2**20
# multiply-adds; calling it from prange threads then oversubscribes the cores and runs ~10x
# slower (measured). Tiles at or above this size loop over cores serially and let BLAS thread.
BLAS_THREADED_MACS = 1 << 19


def twins(fn):
    """Compile ``fn`` as (parallel, serial) njit dispatchers with separate cache entries.

    numba's on-disk cache keys on the function's qualified name, not on ``parallel``, so the
    serial twin is a copy of the function under a distinct ``__qualname__``.
    """
    par = njit(parallel=True, cache=True)(fn)
    ser_fn = types.FunctionType(
        fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__, fn.__closure__
    )
    ser_fn.__qualname__ = fn.__qualname__ + "_serial"
    ser_fn.__doc__ = fn.__doc__
    ser = njit(parallel=False, cache=True)(ser_fn)
    return par, ser


def pick(pair, parallel: bool):
    """The parallel or the serial member of a ``twins`` pair."""
    return pair[0] if parallel else pair[1]


def check_dtype_name(name: str, value, allowed=DTYPES_LP) -> str:
    """Validate a dtype name such as ``"fp16"``."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}: {value!r} not allowed; expected one of {', '.join(allowed)}")
    return value


def check_array(name: str, x, dtype, ndim=None, min_ndim=None) -> np.ndarray:
    """Require an ndarray of exactly ``dtype`` (and rank); return it C-contiguous."""
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name}: {type(x).__name__} not allowed; expected a numpy array")
    if x.dtype != np.dtype(dtype):
        raise ValueError(f"{name}: dtype {x.dtype} not allowed; expected {np.dtype(dtype)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: shape {x.shape} not allowed; expected {ndim}-D")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name}: shape {x.shape} not allowed; expected at least {min_ndim}-D")
    return np.ascontiguousarray(x)


def check_shape(name: str, x: np.ndarray, shape: tuple) -> None:
    """Require ``x.shape == shape``."""
    if x.shape != tuple(shape):
        raise ValueError(f"{name}: shape {x.shape} not allowed; expected {tuple(shape)}")


def check_out(out, shape: tuple, accumulate: bool) -> np.ndarray:
    """Validate or allocate a float32 C-contiguous output of ``shape``."""
    if out is None:
        if accumulate:
            raise ValueError("out: None not allowed with accumulate=True; expected an array")
        return np.empty(shape, np.float32)
    if not isinstance(out, np.ndarray) or out.dtype != np.float32:
        what = getattr(out, "dtype", type(out).__name__)
        raise ValueError(f"out: {what} not allowed; expected a float32 numpy array")
    check_shape("out", out, shape)
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError("out: non-contiguous or read-only array not allowed; "
                         "expected a writeable C-contiguous array")
    return out


def row_params(name: str, g, cores: int, n: int) -> np.ndarray:
    """Per-row parameters (gamma, beta) of shape (n,) or (cores, n) -> (1 or cores, n)."""
    g = check_array(name, g, np.float32)
    if g.shape == (n,):
        return g.reshape(1, n)
    if g.shape == (cores, n):
        return g
    raise ValueError(f"{name}: shape {g.shape} not allowed; expected ({n},) or ({cores}, {n})")


# Below this many element operations per call the kernels run their serial twin: the parallel
# build costs a fixed ~15-20 ms per call on small hosts (measured on 2 CPUs), far more than the
# work of a small phase. Results are bit-identical either way (the kernels' contract).
PARALLEL_MIN_WORK = 1 << 22


def use_parallel(work: int) -> bool:
    """Whether a call with `work` element operations should take the parallel build."""
    return work >= PARALLEL_MIN_WORK
