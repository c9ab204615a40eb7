"""8-bit kernels (int8, fp8 E4M3 / E5M2): codecs on every code, quantization and the GEMMs
against the independent numpy reference (wse_sim.kernels.quant_ref), exactly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wse_sim.kernels import gemm_q as G
from wse_sim.kernels import precision as P16
from wse_sim.kernels import quant as Q
from wse_sim.kernels import quant_ref as R

D8 = ("int8", "fp8_e4m3", "fp8_e5m2")
RNG = np.random.default_rng(7)


def enc(x, dtype):
    return np.array([Q.encode8(v, Q.KIND8[dtype]) for v in np.asarray(x, np.float32)], np.uint8)


@pytest.mark.parametrize("dtype", D8)
def test_every_code_decodes_as_the_reference(dtype):
    codes = np.arange(256, dtype=np.uint8)
    got = np.array([Q.decode8(c, Q.KIND8[dtype]) for c in codes], np.float32)
    assert np.array_equal(got, R.decode(codes, dtype), equal_nan=True)


def test_the_formats_known_values():
    """OCP OFP8: E4M3 largest 448, smallest subnormal 2**-9, nan 0x7F; E5M2 largest 57344,
    smallest subnormal 2**-16, inf 0x7C."""
    v4, v5 = R.fp8_values("fp8_e4m3"), R.fp8_values("fp8_e5m2")
    assert v4[0x7E] == 448 and v4[0x01] == 2.0 ** -9 and np.isnan(v4[0x7F]) and v4[0x08] == 2.0 ** -6
    assert v5[0x7B] == 57344 and v5[0x01] == 2.0 ** -16 and v5[0x7C] == np.inf and v5[0xFC] == -np.inf
    assert np.isnan(v5[0x7D]) and np.isfinite(v4).sum() == 254 and np.isfinite(v5).sum() == 248


@pytest.mark.parametrize("dtype", ("fp8_e4m3", "fp8_e5m2"))
def test_every_value_and_every_midpoint_encodes_as_the_reference(dtype):
    """Each finite value encodes to its own code; each midpoint between two neighbours goes to
    the even code (ties to even); just off the midpoint goes to the nearer one."""
    vals = R.fp8_values(dtype)[:128]
    fin = vals[np.isfinite(vals)]
    assert np.array_equal(enc(fin, dtype), np.flatnonzero(np.isfinite(vals)).astype(np.uint8))
    mid = ((fin[1:] + fin[:-1]) / 2).astype(np.float32)
    codes = enc(mid, dtype)
    assert np.all(codes % 2 == 0) and np.array_equal(codes, R.encode(mid, dtype))
    up = np.nextafter(mid, np.float32(np.inf))
    assert np.array_equal(enc(up, dtype), np.arange(1, len(fin), dtype=np.uint8))
    assert np.array_equal(enc(-up, dtype), np.arange(1, len(fin), dtype=np.uint8) | 0x80)


@pytest.mark.parametrize("dtype", D8)
def test_specials_and_saturation(dtype):
    x = np.array([0.0, -0.0, 1e30, -1e30, np.inf, -np.inf, np.nan, 1e-30], np.float32)
    got = enc(x, dtype)
    assert np.array_equal(got, R.encode(x, dtype))
    top = {"int8": 127, "fp8_e4m3": 0x7E, "fp8_e5m2": 0x7B}[dtype]
    assert got[2] == top and got[3] == (top | 0x80 if dtype != "int8" else 0x81)
    if dtype == "fp8_e5m2":
        assert got[4] == 0x7C and got[5] == 0xFC


@settings(max_examples=60, deadline=None)
@given(arrays(np.float32, st.integers(1, 300),
              elements=st.floats(-1e6, 1e6, width=32, allow_subnormal=False)),
       st.sampled_from(D8))
def test_encoding_matches_the_reference_anywhere(x, dtype):
    assert np.array_equal(enc(x, dtype), R.encode(x, dtype))


@pytest.mark.parametrize("dtype", D8)
@pytest.mark.parametrize("per", ("col", "row"))
def test_quantize_and_dequantize_equal_the_reference(dtype, per):
    x = (RNG.standard_normal((3, 17, 9)) * RNG.uniform(1e-3, 1e3, (3, 1, 9))).astype(np.float32)
    x[1, :, 2] = 0  # an all-zero channel: scale 1, codes 0
    x[2, 4, :] = 0
    codes, scales = Q.quantize(x, dtype, per)
    rc, rs = R.quantize(x, dtype, per)
    assert np.array_equal(codes, rc) and np.array_equal(scales, rs)
    back = Q.dequantize(codes, scales, dtype, per)
    assert np.array_equal(back, R.dequantize(rc, rs, dtype, per))
    # symmetric: the largest magnitude of every channel is (nearly) the largest code
    top = np.abs(R.decode(codes, dtype)).max(axis=2 if per == "row" else 1)
    assert np.all((top == Q.MAX_FINITE[dtype]) | (top == 0))
    ser = Q.quantize(x, dtype, per, parallel=False)
    assert np.array_equal(ser[0], codes) and np.array_equal(ser[1], scales)


@pytest.mark.parametrize("dtype", D8)
def test_int8_scale_error_is_within_half_a_step(dtype):
    x = RNG.standard_normal((2, 64, 8)).astype(np.float32)
    codes, scales = Q.quantize(x, dtype, "col")
    err = np.abs(Q.dequantize(codes, scales, dtype) - x)
    if dtype == "int8":
        assert np.all(err <= scales[:, None, :] * 0.5 * (1 + 1e-6))
    else:  # relative: half an ulp of a mb-bit mantissa, above the subnormals
        mb = 3 if dtype == "fp8_e4m3" else 2
        big = np.abs(x) > scales[:, None, :] * 2.0 ** (-6 if mb == 3 else -14)
        assert np.all(err[big] <= np.abs(x[big]) * 2.0 ** -(mb + 1) * (1 + 1e-6))


def integer_case(P, m, k, n, dtype):
    """Small integers: every product and sum is exact in fp32, so any summation order gives
    the same bits; scales are powers of two (exact too)."""
    top = {"int8": 127, "fp8_e4m3": 16, "fp8_e5m2": 8}[dtype]  # integers the format holds
    a = RNG.integers(-8, 9, (P, m, k)).astype(np.float32)
    b = RNG.integers(-top, top + 1, (P, k, n)).astype(np.float32)
    return a, b, enc(b.reshape(-1), dtype).reshape(b.shape)


@pytest.mark.parametrize("dtype", D8)
def test_w8_gemm_is_exact_on_integers(dtype):
    a, b, codes = integer_case(3, 5, 40, 7, dtype)
    scales = (2.0 ** RNG.integers(-4, 4, (3, 7))).astype(np.float32)
    got = G.gemm_tiles_w8(P16.to_bits(a, "fp16"), "fp16", codes, scales, dtype)
    want = np.matmul(a.astype(np.float64), b.astype(np.float64)) * scales[:, None, :]
    assert np.array_equal(got, want.astype(np.float32))
    assert np.array_equal(got, G.gemm_tiles_w8(P16.to_bits(a, "fp16"), "fp16", codes, scales,
                                               dtype, parallel=False))


@pytest.mark.parametrize("dtype", D8)
@pytest.mark.parametrize("acts", ("fp16", "bf16"))
def test_w8_gemm_equals_the_reference(dtype, acts):
    a = RNG.standard_normal((4, 6, 96)).astype(np.float32)
    w = RNG.standard_normal((4, 96, 10)).astype(np.float32)
    codes, scales = Q.quantize(w, dtype)
    bits = P16.to_bits(a, acts)
    got = G.gemm_tiles_w8(bits, acts, codes, scales, dtype)
    ref = R.gemm_w8(P16.from_bits(bits, acts), codes, scales, dtype)
    # the same fp32 operands; BLAS may sum in another order: fp32 bound on |a| @ |b|
    bound = 1e-5 * np.matmul(np.abs(P16.from_bits(bits, acts)), np.abs(R.decode(codes, dtype))) \
        * scales[:, None, :]
    assert np.all(np.abs(got - ref) <= bound + 1e-30)


@pytest.mark.parametrize("dtype", D8)
def test_q8_gemm_equals_the_reference(dtype):
    a = RNG.standard_normal((3, 5, 200)).astype(np.float32)
    w = RNG.standard_normal((3, 200, 11)).astype(np.float32)
    ac, as_ = Q.quantize(a, dtype, "row")
    bc, bs = Q.quantize(w, dtype, "col")
    got = G.gemm_tiles_q8(ac, as_, bc, bs, dtype)
    ref = R.gemm_q8(ac, as_, bc, bs, dtype)
    if dtype == "int8":  # int32 sums are exact: the same bits
        assert np.array_equal(got, ref)
    else:
        bound = 1e-5 * np.matmul(np.abs(R.decode(ac, dtype)), np.abs(R.decode(bc, dtype))) \
            * as_[:, :, None] * bs[:, None, :]
        assert np.all(np.abs(got - ref) <= bound + 1e-30)
    assert np.array_equal(got, G.gemm_tiles_q8(ac, as_, bc, bs, dtype, parallel=False))
    # and it is a matmul of a and w, to the quantization error
    assert np.abs(got - a @ w).max() < 0.15 * np.abs(a @ w).max()


@pytest.mark.parametrize("dtype", D8)
def test_q8_gemm_is_exact_on_integers(dtype):
    a, b, bc = integer_case(2, 4, 30, 6, dtype)
    ac = enc(a.reshape(-1), dtype).reshape(a.shape)
    one_a, one_b = np.ones((2, 4), np.float32), np.ones((2, 6), np.float32)
    got = G.gemm_tiles_q8(ac, one_a, bc, one_b, dtype)
    assert np.array_equal(got, np.matmul(a, b))


def test_bad_arguments_are_one_line_errors():
    c = np.zeros((1, 2, 3), np.uint8)
    with pytest.raises(ValueError, match="dtype: 'int4' not allowed; expected one of int8"):
        Q.quantize(np.zeros((1, 2, 3), np.float32), "int4")
    with pytest.raises(ValueError, match="per: 'tile' not allowed"):
        Q.quantize(np.zeros((1, 2, 3), np.float32), "int8", "tile")
    with pytest.raises(ValueError, match=r"scales: shape \(1, 2\) not allowed; expected \(1, 3\)"):
        Q.dequantize(c, np.ones((1, 2), np.float32), "int8")
    with pytest.raises(ValueError, match="acts_dtype: 'fp32' not allowed"):
        G.gemm_tiles_w8(np.zeros((1, 2, 2), np.uint16), "fp32", c[:, :2], np.ones((1, 3),
                        np.float32), "int8")
    with pytest.raises(ValueError, match="b_codes: shape"):
        G.gemm_tiles_q8(c, np.ones((1, 2), np.float32), c, np.ones((1, 3), np.float32), "int8")
