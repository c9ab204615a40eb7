"""Tests of wse_sim.kernels: each kernel against plain numpy, parallel == serial twin bit for
bit, fp16/bf16 codecs against numpy / the bit-level definition, and argument checking."""

from __future__ import annotations

import functools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wse_sim import kernels as K

RNG = np.random.default_rng(1234)


def rand(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


def bf16_ref(x):
    """Reference bf16 RNE encoding straight from the definition (top half of fp32)."""
    u = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    bits[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return bits


def assert_gemm_close(got, a, b, rtol=1e-5):
    """|got - a@b| <= rtol * (|a| @ |b|): the fp32 GEMM error bound, elementwise."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    ref = np.matmul(a64, b64)
    bound = rtol * np.matmul(np.abs(a64), np.abs(b64)) + 1e-30
    assert got.dtype == np.float32 and got.shape == ref.shape
    assert np.all(np.abs(got - ref) <= bound), np.max(np.abs(got - ref) / bound)


def same_bits(x, y):
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(
        x.view(np.uint8), y.view(np.uint8))


# --------------------------------------------------------------------------- precision

@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_decode_every_bit_pattern(dtype):
    bits = np.arange(65536, dtype=np.uint16)
    if dtype == "fp16":
        ref = bits.view(np.float16).astype(np.float32)
    else:
        ref = (bits.astype(np.uint32) << 16).view(np.float32)
    for par in (True, False):
        got = K.from_bits(bits, dtype, parallel=par)
        nan = np.isnan(ref)
        assert np.array_equal(np.isnan(got), nan)
        assert same_bits(got[~nan], ref[~nan])
        # every non-nan value is representable, so it round-trips exactly
        assert np.array_equal(K.to_bits(got[~nan], dtype, parallel=par), bits[~nan])
        assert same_bits(K.round_to(got[~nan], dtype, parallel=par), got[~nan])


def test_scalar_codecs_match_kernels():
    for b in (0, 1, 0x3FF, 0x400, 0x3C00, 0x7BFF, 0x7C00, 0xFC00, 0x8001):
        assert K.decode_fp16(np.uint16(b)) == np.uint16(b).view(np.float16).astype(np.float32)
    assert K.decode_bf16(np.uint16(0x3F80)) == 1.0
    assert K.encode_fp16(np.float32(1.0)) == 0x3C00
    assert K.encode_bf16(np.float32(-2.0)) == 0xC000


def test_round_to_nearest_even_ties():
    one_plus = lambda frac: np.float32(1 + frac)  # noqa: E731
    # fp16: ulp(1) = 2**-10; halfway cases go to the even neighbour
    x = np.array([one_plus(2**-11), one_plus(3 * 2**-11), 2.0**-25, 3 * 2.0**-25, 65520.0,
                  65519.0, -(2.0**-25) * 1.5], np.float32)
    assert list(K.to_bits(x, "fp16")) == [0x3C00, 0x3C02, 0x0000, 0x0002, 0x7C00, 0x7BFF, 0x8001]
    with np.errstate(over="ignore"):
        assert np.array_equal(K.to_bits(x, "fp16"), x.astype(np.float16).view(np.uint16))
    # bf16: ulp(1) = 2**-7
    x = np.array([one_plus(2**-8), one_plus(3 * 2**-8), one_plus(2**-8 + 2**-20),
                  3.4e38, -np.inf, 0.0, -0.0], np.float32)
    assert list(K.to_bits(x, "bf16")) == [0x3F80, 0x3F82, 0x3F81, 0x7F80, 0xFF80, 0x0000, 0x8000]


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_nan_stays_nan(dtype):
    x = np.array([np.nan, -np.nan, np.float32(1).view(np.uint32) * 0], np.float32)
    x[2] = np.uint32(0x7F800001).view(np.float32)  # signalling nan with a low payload
    assert np.isnan(K.from_bits(K.to_bits(x, dtype), dtype)).all()


finite32 = st.floats(width=32, allow_nan=False)


# serial twins here (cheap calls); parallel == serial is checked on large arrays below
@settings(max_examples=300, deadline=None)
@given(arrays(np.float32, st.integers(1, 64), elements=finite32))
def test_fp16_encode_matches_numpy(x):
    with np.errstate(over="ignore"):
        ref = x.astype(np.float16)
    assert np.array_equal(K.to_bits(x, "fp16", parallel=False), ref.view(np.uint16))
    assert same_bits(K.round_to(x, "fp16", parallel=False), ref.astype(np.float32))


@settings(max_examples=300, deadline=None)
@given(arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32)))
def test_bf16_encode_matches_definition(x):
    assert np.array_equal(K.to_bits(x, "bf16", parallel=False), bf16_ref(x))
    ref = K.from_bits(bf16_ref(x), "bf16", parallel=False)
    assert same_bits(K.round_to(x, "bf16", parallel=False), ref)


def test_random_bit_patterns_parallel_equals_serial():
    x = RNG.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    finite = x[~np.isnan(x)]
    with np.errstate(over="ignore"):
        assert np.array_equal(K.to_bits(finite, "fp16"), finite.astype(np.float16).view(np.uint16))
    for dtype in ("fp16", "bf16"):
        bits = K.to_bits(x, dtype)
        assert np.array_equal(bits, K.to_bits(x, dtype, parallel=False))
        assert same_bits(K.round_to(x, dtype), K.round_to(x, dtype, parallel=False))
    assert same_bits(K.round_to(x, "fp32"), x)


# --------------------------------------------------------------------------- GEMM

GEMM_SHAPES = [(5, 7, 9, 6), (3, 1, 16, 1), (2, 64, 128, 64)]  # the last takes the BLAS path


@pytest.mark.parametrize("P,m,k,n", GEMM_SHAPES)
def test_gemm_tiles(P, m, k, n):
    a, b = rand(P, m, k), rand(P, k, n)
    got = K.gemm_tiles(a, b)
    assert_gemm_close(got, a, b)
    assert same_bits(got, K.gemm_tiles(a, b, parallel=False))
    out = rand(P, m, n)
    base = out.copy()
    res = K.gemm_tiles(a, b, out=out, accumulate=True)
    assert res is out
    assert np.allclose(out, base + got, rtol=1e-6, atol=1e-6)
    out2 = base.copy()
    K.gemm_tiles(a, b, out=out2, accumulate=True, parallel=False)
    assert same_bits(out, out2)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_gemm_lp_decodes_every_bit_pattern(dtype):
    a_bits = np.arange(65536, dtype=np.uint16).reshape(1, 65536, 1)
    one = K.to_bits(np.ones((1, 1, 1), np.float32), dtype)
    ref = K.from_bits(a_bits, dtype)
    for par in (True, False):
        got = K.gemm_tiles_lp(a_bits, one, dtype, parallel=par)
        nan = np.isnan(ref)
        assert np.array_equal(np.isnan(got), nan) and np.array_equal(got[~nan], ref[~nan])


def test_gemm_tiles_empty_k():
    a, b = np.ones((2, 3, 0), np.float32), np.ones((2, 0, 4), np.float32)
    assert np.array_equal(K.gemm_tiles(a, b), np.zeros((2, 3, 4), np.float32))


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("P,m,k,n", GEMM_SHAPES)
def test_gemm_tiles_lp(dtype, P, m, k, n):
    ab, bb = K.to_bits(rand(P, m, k), dtype), K.to_bits(rand(P, k, n), dtype)
    a, b = K.from_bits(ab, dtype), K.from_bits(bb, dtype)
    got = K.gemm_tiles_lp(ab, bb, dtype)
    assert_gemm_close(got, a, b)  # fp32 accumulate of exactly decoded inputs
    assert same_bits(got, K.gemm_tiles_lp(ab, bb, dtype, parallel=False))
    stored = K.round_to(got, dtype)  # what the hardware writes back: within half an ulp
    eps = 2.0**-11 if dtype == "fp16" else 2.0**-8
    ref = np.matmul(a.astype(np.float64), b)
    assert np.all(np.abs(stored - ref) <= eps * np.abs(ref) + 1e-5 * np.matmul(
        np.abs(a.astype(np.float64)), np.abs(b)) + 1e-30)
    out = rand(P, m, n)
    base = out.copy()
    K.gemm_tiles_lp(ab, bb, dtype, out=out, accumulate=True)
    assert np.allclose(out, base + got, rtol=1e-6, atol=1e-6)


def test_sparse_gemm_matches_dense():
    P, m, k, n = 6, 9, 20, 11
    a = rand(P, m, k)
    b = rand(P, k, n)
    for frac in (0.0, 0.5, 0.9, 1.0):
        bs = np.where(RNG.random(b.shape) < frac, 0.0, b).astype(np.float32)
        bs[2] = 0.0  # a core with no weights at all
        vals, colptr, rowidx = K.csc_tiles(bs)
        got = K.sparse_gemm_tiles(a, vals, colptr, rowidx)
        assert_gemm_close(got, a, bs)
        assert same_bits(got, K.sparse_gemm_tiles(a, vals, colptr, rowidx, parallel=False))
        dense_again = np.zeros_like(bs)
        for p in range(P):
            for j in range(n):
                sl = slice(colptr[p, j], colptr[p, j + 1])
                dense_again[p, rowidx[p, sl], j] = vals[p, sl]
        assert np.array_equal(dense_again, bs)
        assert K.count_nonzero_macs(a.shape, bs) == m * np.count_nonzero(bs)
        per_core = K.count_nonzero_macs(a.shape, bs, per_core=True)
        assert per_core.tolist() == [m * np.count_nonzero(bs[p]) for p in range(P)]
        out = rand(P, m, n)
        base = out.copy()
        K.sparse_gemm_tiles(a, vals, colptr, rowidx, out=out, accumulate=True)
        assert np.allclose(out, base + got, rtol=1e-6, atol=1e-6)
    assert K.count_nonzero_macs((4, 3), np.eye(3, 5)) == 12


# --------------------------------------------------------------------------- rows

def softmax_ref(x, last=None):
    x = x.astype(np.float64)
    if last is not None:
        cols = np.arange(x.shape[-1])
        x = np.where(cols[None, None, :] <= last[:, :, None], x, -np.inf)
    mx = np.max(x, axis=-1, keepdims=True)
    e = np.exp(x - np.where(np.isfinite(mx), mx, 0))
    s = e.sum(-1, keepdims=True)
    return np.divide(e, s, out=np.zeros_like(e), where=s > 0)


def test_softmax_rows():
    x = rand(4, 6, 33, scale=5)
    got = K.softmax_rows(x)
    assert np.allclose(got, softmax_ref(x), rtol=1e-5, atol=1e-7)
    assert same_bits(got, K.softmax_rows(x, parallel=False))


def test_softmax_causal_mask():
    P, m, n = 4, 5, 8
    x = rand(P, m, n, scale=3)
    off = np.array([0, 3, -2, -9])  # core 2: first rows fully masked; core 3: all masked
    last = np.arange(m)[None, :] + off[:, None]
    got = K.softmax_rows(x, causal_offset=off)
    assert np.allclose(got, softmax_ref(x, last), rtol=1e-5, atol=1e-7)
    assert same_bits(got, K.softmax_rows(x, causal_offset=off, parallel=False))
    cols = np.arange(n)
    assert np.all(got[cols[None, None, :] > last[:, :, None]] == 0)
    assert np.all(got[3] == 0) and np.all(got[2, :2] == 0)
    assert np.allclose(got[0].sum(-1), 1, atol=1e-6)


@pytest.mark.parametrize("per_core", [False, True])
def test_layernorm_and_rmsnorm(per_core):
    P, m, n = 3, 4, 50
    x = rand(P, m, n, scale=3) + 2
    g = rand(P, n) if per_core else rand(n)
    b = rand(P, n) if per_core else rand(n)
    gb = g[:, None, :] if per_core else g
    bb = b[:, None, :] if per_core else b
    x64 = x.astype(np.float64)
    mu, var = x64.mean(-1, keepdims=True), x64.var(-1, keepdims=True)
    ref = (x64 - mu) / np.sqrt(var + 1e-5) * gb + bb
    got = K.layernorm_rows(x, g, b)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert same_bits(got, K.layernorm_rows(x, g, b, parallel=False))
    ref = x64 / np.sqrt((x64**2).mean(-1, keepdims=True) + 1e-6) * gb
    got = K.rmsnorm_rows(x, g)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-5)
    assert same_bits(got, K.rmsnorm_rows(x, g, parallel=False))


def test_gelu_and_swiglu():
    x = np.concatenate([rand(3, 7, 11, scale=4).ravel(), [-30, -11, -5, 0, 5, 30, 1e-3]])
    x = x.astype(np.float32)
    x64 = x.astype(np.float64)
    u = np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)
    ref = 0.5 * x64 * (1 + np.tanh(u))  # cancels to 0 in float64 for x < -8 or so
    got = K.gelu(x)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-15)
    with np.errstate(over="ignore"):
        ref = x64 / (1 + np.exp(-2 * u))  # the same function, accurate for large negative x
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-30)
    assert same_bits(got, K.gelu(x, parallel=False))
    up = rand(x.size)
    ref = x64 / (1 + np.exp(-x64)) * up
    got = K.swiglu(x, up)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-30)
    assert same_bits(got, K.swiglu(x, up, parallel=False))


@pytest.mark.parametrize("per_core_pos", [False, True])
def test_rope(per_core_pos):
    P, m, hd = 3, 5, 8
    x = rand(P, m, hd)
    pos = RNG.integers(0, 4096, (P, m) if per_core_pos else (m,))
    got = K.rope(x, pos, theta=500.0)
    inv = 500.0 ** (-np.arange(0, hd, 2) / hd)
    ang = np.broadcast_to(pos, (P, m))[..., None] * inv
    x1, x2 = x[..., : hd // 2].astype(np.float64), x[..., hd // 2:].astype(np.float64)
    ref = np.concatenate([x1 * np.cos(ang) - x2 * np.sin(ang),
                          x1 * np.sin(ang) + x2 * np.cos(ang)], -1)
    assert np.allclose(got, ref, rtol=1e-5, atol=1e-6)
    assert same_bits(got, K.rope(x, pos, theta=500.0, parallel=False))
    assert np.array_equal(K.rope(x, np.zeros(m, int)), x)  # position 0 is the identity


def test_residual_add_and_sum_tiles():
    a, b = rand(4, 3, 5), rand(4, 3, 5)
    assert same_bits(K.residual_add(a, b), a + b)
    K.residual_add(a, b, out=a, parallel=False)
    assert same_bits(a, K.residual_add(a - b, b))  # float32 add, in place
    x = rand(7, 3, 5000)  # several parallel blocks
    chain = functools.reduce(np.add, list(x))  # ((x0 + x1) + x2) + ... in float32
    assert same_bits(K.sum_tiles(x), chain)
    assert same_bits(K.sum_tiles(x, parallel=False), chain)
    assert same_bits(K.sum_tiles(x, axis=-1), functools.reduce(np.add, list(np.moveaxis(x, -1, 0))))
    assert np.array_equal(K.sum_tiles(np.zeros((0, 3), np.float32)), np.zeros(3, np.float32))


def test_online_softmax_combine_reconstructs_attention():
    P, r, n, d = 3, 4, 10, 6
    s, v = rand(P, r, n, scale=3), rand(P, n, d)
    full = np.matmul(softmax_ref(s), v.astype(np.float64))

    def part(lo, hi):
        if lo == hi:
            return (np.full((P, r), -np.inf, np.float32), np.zeros((P, r), np.float32),
                    np.zeros((P, r, d), np.float32))
        blk = s[..., lo:hi].astype(np.float64)
        mx = blk.max(-1)
        e = np.exp(blk - mx[..., None])
        return (mx.astype(np.float32), e.sum(-1).astype(np.float32),
                np.matmul(e, v[:, lo:hi].astype(np.float64)).astype(np.float32))

    for cut in (0, 3, 10):
        m, lsum, o = K.online_softmax_combine(*part(0, cut), *part(cut, n))
        assert np.allclose(o / lsum[..., None], full, rtol=1e-5, atol=1e-6)
        m2, l2, o2 = K.online_softmax_combine(*part(0, cut), *part(cut, n), parallel=False)
        assert same_bits(m, m2) and same_bits(lsum, l2) and same_bits(o, o2)
    m, lsum, o = K.online_softmax_combine(*part(0, 0), *part(5, 5))
    assert np.all(m == -np.inf) and np.all(lsum == 0) and np.all(o == 0)


# --------------------------------------------------------------------------- bad input

A3, B3 = np.ones((2, 3, 4), np.float32), np.ones((2, 4, 5), np.float32)
U3 = np.ones((2, 3, 4), np.uint16)


@pytest.mark.parametrize("call,arg", [
    (lambda: K.gemm_tiles(A3.astype(np.float64), B3), "a"),
    (lambda: K.gemm_tiles(A3, B3[:, :3]), "b"),
    (lambda: K.gemm_tiles(A3[0], B3[0]), "a"),
    (lambda: K.gemm_tiles([[1.0]], B3), "a"),
    (lambda: K.gemm_tiles(A3, B3, accumulate=True), "out"),
    (lambda: K.gemm_tiles(A3, B3, out=np.zeros((2, 3, 4), np.float32)), "out"),
    (lambda: K.gemm_tiles(A3, B3, out=np.zeros((2, 5, 3), np.float32).transpose(0, 2, 1)),
     "out"),
    (lambda: K.gemm_tiles_lp(U3, U3.transpose(0, 2, 1).copy(), "fp8"), "dtype"),
    (lambda: K.gemm_tiles_lp(A3, B3, "fp16"), "a_bits"),
    (lambda: K.to_bits(A3, "fp32"), "dtype"),
    (lambda: K.to_bits(U3, "fp16"), "x"),
    (lambda: K.from_bits(A3, "bf16"), "bits"),
    (lambda: K.round_to(A3, "int8"), "dtype"),
    (lambda: K.sparse_gemm_tiles(A3, np.ones((2, 1), np.float32), np.zeros((2, 6), np.int64),
                                 np.full((2, 1), 9, np.int32)), "b_rowidx"),
    (lambda: K.sparse_gemm_tiles(A3, np.ones((2, 1), np.float32), np.full((2, 6), 3, np.int64),
                                 np.zeros((2, 1), np.int32)), "b_colptr"),
    (lambda: K.count_nonzero_macs((2, 3, 4), np.ones((2, 5, 5))), "mask"),
    (lambda: K.softmax_rows(A3, causal_offset=[0, 1, 2]), "causal_offset"),
    (lambda: K.softmax_rows(A3, causal_offset=[0.5, 1.0]), "causal_offset"),
    (lambda: K.layernorm_rows(A3, np.ones(3, np.float32), np.ones(4, np.float32)), "g"),
    (lambda: K.layernorm_rows(A3, np.ones(4, np.float32), np.ones(4, np.float32), eps=-1), "eps"),
    (lambda: K.rmsnorm_rows(A3, np.ones((3, 4), np.float32)), "g"),
    (lambda: K.swiglu(A3, B3), "up"),
    (lambda: K.rope(np.ones((2, 3, 5), np.float32), np.arange(3)), "x"),
    (lambda: K.rope(A3, np.arange(4)), "positions"),
    (lambda: K.residual_add(A3, B3), "b"),
    (lambda: K.sum_tiles(A3, axis=3), "axis"),
    (lambda: K.online_softmax_combine(*[A3[0, :, 0]] * 2, A3[0], *[A3[0, :, 0]] * 2, B3[0]),
     "o_b"),
])
def test_bad_input_raises_value_error(call, arg):
    with pytest.raises(ValueError, match=f"^{arg}: ") as err:
        call()
    assert "\n" not in str(err.value)


# --------------------------------------------------------------------------- regressions

def test_serial_twin_loaded_from_cache_runs_first():
    """A serial kernel loaded from numba's cache must work before any parallel kernel ran."""
    code = ("import numpy as np; from wse_sim import kernels as K; a = np.ones((3, 4, 4), "
            "np.float32); b = K.to_bits(a, 'bf16'); "
            "assert K.gemm_tiles(a, a, parallel=False).sum() == 192; "
            "assert K.gemm_tiles(a, a, out=np.zeros_like(a), accumulate=True, "
            "parallel=False).sum() == 192; "
            "assert K.gemm_tiles_lp(b, b, 'bf16', parallel=False).sum() == 192; "
            "assert K.sparse_gemm_tiles(a, *K.csc_tiles(a), parallel=False).sum() == 192")
    exec(code, {})  # compiles (if needed) and fills numba's cache in this process
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
