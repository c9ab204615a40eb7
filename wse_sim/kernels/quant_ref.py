"""Plain-numpy reference for the 8-bit kernels (`quant`, `gemm_q`): the same quantization,
written another way (a table of the 256 values of each format, the nearest one by search),
so that the tests compare two independent implementations. Slow; for tests and benchmarks."""

from __future__ import annotations

import numpy as np

FP8 = {"fp8_e4m3": (4, 3, 7), "fp8_e5m2": (5, 2, 15)}  # exponent bits, mantissa bits, bias
MAX_FINITE = {"int8": 127.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}


def fp8_values(dtype: str) -> np.ndarray:
    """float64 value of each of the 256 codes (nan for nan codes, +-inf for E5M2's)."""
    eb, mb, bias = FP8[dtype]
    codes = np.arange(256)
    sign = np.where(codes & 0x80, -1.0, 1.0)
    e = (codes >> mb) & ((1 << eb) - 1)
    m = codes & ((1 << mb) - 1)
    mag = np.where(e == 0, m * 2.0 ** (1 - bias - mb),
                   (1 + m / 2.0 ** mb) * 2.0 ** (e.astype(float) - bias))
    top = e == (1 << eb) - 1
    if dtype == "fp8_e4m3":
        mag = np.where(top & (m == (1 << mb) - 1), np.nan, mag)
    else:
        mag = np.where(top, np.where(m == 0, np.inf, np.nan), mag)
    return sign * mag


def decode(codes: np.ndarray, dtype: str) -> np.ndarray:
    """uint8 codes -> float32 values."""
    if dtype == "int8":
        return codes.view(np.int8).astype(np.float32)
    return fp8_values(dtype)[codes].astype(np.float32)


def encode(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values (divided by their scale) -> uint8 codes: int8 by rint and clip; fp8 the
    nearest finite value, ties to the even code, beyond the largest finite one saturated."""
    x = np.asarray(x, np.float32)
    if dtype == "int8":
        q = np.clip(np.rint(np.nan_to_num(x, nan=0.0)), -127, 127)
        return q.astype(np.int8).view(np.uint8)
    vals = fp8_values(dtype)[:128]  # non-negative codes, values increasing with the code
    finite = np.flatnonzero(np.isfinite(vals))
    table = vals[finite]
    a = np.abs(x.astype(np.float64))
    hi = np.clip(np.searchsorted(table, a), 1, len(table) - 1)
    lo = hi - 1
    d_lo, d_hi = a - table[lo], table[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (finite[hi] % 2 == 0))
    code = np.where(pick_hi, finite[hi], finite[lo])
    code = np.where(a >= table[-1], finite[-1], code)  # saturate
    nan_code = 0x7F
    inf_code = 0x7C if dtype == "fp8_e5m2" else nan_code
    code = np.where(np.isinf(x), inf_code, np.where(np.isnan(x), nan_code, code))
    return (code | np.where(np.signbit(x), 0x80, 0)).astype(np.uint8)


def quantize(x: np.ndarray, dtype: str, per: str = "col"):
    """float32 (P, r, c) -> (codes, scales): amax per column (or row) / the largest finite."""
    axis = 2 if per == "row" else 1
    amax = np.max(np.abs(x), axis=axis) if x.shape[axis] else np.zeros(
        (x.shape[0], x.shape[1] if per == "row" else x.shape[2]), np.float32)
    scales = np.where(amax > 0, amax / np.float32(MAX_FINITE[dtype]), np.float32(1))
    scales = scales.astype(np.float32)
    s = scales[:, :, None] if per == "row" else scales[:, None, :]
    return encode(x / s, dtype), scales


def dequantize(codes: np.ndarray, scales: np.ndarray, dtype: str, per: str = "col"):
    s = scales[:, :, None] if per == "row" else scales[:, None, :]
    return decode(codes, dtype) * s


def gemm_w8(a: np.ndarray, b_codes: np.ndarray, b_scales: np.ndarray, dtype: str):
    """(P, m, k) float32 activations x 8-bit weights with per-column scales: the fp32 product
    of the decoded operands, then each column times its scale (float32)."""
    return (np.matmul(a, decode(b_codes, dtype)) * b_scales[:, None, :]).astype(np.float32)


def gemm_q8(a_codes, a_scales, b_codes, b_scales, dtype: str):
    """Both operands 8-bit (per-row scales on a, per-column on b): int8 sums in int32 (exact),
    fp8 sums of the decoded values in fp32; then times a's row scale, then b's column scale."""
    if dtype == "int8":
        acc = np.matmul(a_codes.view(np.int8).astype(np.int32),
                        b_codes.view(np.int8).astype(np.int32)).astype(np.float32)
    else:
        acc = np.matmul(decode(a_codes, dtype), decode(b_codes, dtype))
    return (acc * a_scales[:, :, None]) * b_scales[:, None, :]
