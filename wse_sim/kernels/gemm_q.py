"""Batched GEMM tiles with 8-bit operands (int8, fp8 E4M3 / E5M2), fp32 accumulation.

Two cases, as in `wse_sim.precision`:

- `gemm_tiles_w8`: 16-bit activations (fp16/bf16 bit patterns) times 8-bit weight codes with
  one scale per output column. Both operands are decoded exactly to float32 (every fp16, bf16,
  int8 and fp8 value is a float32), multiplied and summed in fp32 (``np.dot``), and each column
  of the sum is multiplied by its scale: ``out = (dec(a) @ dec(b)) * s_b``.
- `gemm_tiles_q8`: both operands 8-bit of one dtype, per-row scales on the activations and
  per-column scales on the weights. int8 sums its products in int32, exactly (the hardware's
  integer accumulate); fp8 decodes to float32 and sums in fp32. Then
  ``out = (sum * s_a[i]) * s_b[j]`` in float32.

`quant_ref.gemm_w8` / `gemm_q8` are the numpy references.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from wse_sim.kernels.base import (
    BLAS_THREADED_MACS,
    check_array,
    check_dtype_name,
    pick,
    twins,
    use_parallel,
)
from wse_sim.kernels.gemm import _chunk, _chunks, _decode_tile
from wse_sim.kernels.precision import KIND
from wse_sim.kernels.quant import check_kind8, check_scales, decode_table


@njit(cache=True)
def _decode8_tile(codes, lut, dst):
    """Decode one 2-D tile of 8-bit codes into float32 ``dst`` through the code's value table
    (`quant.decode_table`, made by the bit-level decoder)."""
    src = codes.reshape(codes.size)
    flat = dst.reshape(dst.size)
    for i in range(src.size):
        flat[i] = lut[src[i]]


@njit(cache=True)
def _int8_tile(codes, dst):
    """int8 codes (two's complement in uint8) -> int32 values."""
    src = codes.reshape(codes.size)
    flat = dst.reshape(dst.size)
    for i in range(src.size):
        c = np.int32(src[i])
        flat[i] = c - 256 if c >= 128 else c


def _w8_body(a_bits, a_kind, b_codes, b_kind, b_scales, out, sa, sb):
    chunks = sa.shape[0]
    n = b_codes.shape[2]
    lut = decode_table(b_kind)
    for c in prange(chunks):
        lo, hi = _chunk(c, chunks, a_bits.shape[0])
        af = sa[c]
        bf = sb[c]
        for p in range(lo, hi):
            _decode_tile(a_bits[p], a_kind, af)
            _decode8_tile(b_codes[p], lut, bf)
            np.dot(af, bf, out[p])
            for i in range(out.shape[1]):
                for j in range(n):
                    out[p, i, j] *= b_scales[p, j]


def _q8_body(a_codes, a_scales, b_codes, b_scales, kind, out, sa, sb, si, sbi, acc):
    chunks = sa.shape[0]
    m, k, n = a_codes.shape[1], a_codes.shape[2], b_codes.shape[2]
    lut = decode_table(kind)
    for c in prange(chunks):
        lo, hi = _chunk(c, chunks, a_codes.shape[0])
        for p in range(lo, hi):
            if kind == 0:
                ai, bi, row = si[c], sbi[c], acc[c]
                _int8_tile(a_codes[p], ai)
                _int8_tile(b_codes[p], bi)
                for i in range(m):
                    row[:] = 0
                    for kk in range(k):
                        v = ai[i, kk]
                        if v != 0:
                            for j in range(n):
                                row[j] += v * bi[kk, j]
                    for j in range(n):
                        out[p, i, j] = np.float32(row[j])
            else:
                _decode8_tile(a_codes[p], lut, sa[c])
                _decode8_tile(b_codes[p], lut, sb[c])
                np.dot(sa[c], sb[c], out[p])
            for i in range(m):
                for j in range(n):
                    out[p, i, j] = (out[p, i, j] * a_scales[p, i]) * b_scales[p, j]


_W8 = twins(_w8_body)
_Q8 = twins(_q8_body)


def _parallel(parallel: bool, P: int, m: int, k: int, n: int) -> bool:
    """The parallel build only for enough work (`base.use_parallel`) and tiles below BLAS's
    own threading (as `gemm.gemm_tiles_lp`); the results are the same bits either way."""
    return parallel and use_parallel(P * m * k * n) and m * k * n < BLAS_THREADED_MACS


def _shapes(an: str, a, bn: str, b) -> tuple:
    if b.shape[:2] != (a.shape[0], a.shape[2]):
        raise ValueError(f"{bn}: shape {b.shape} not allowed; expected ({a.shape[0]}, "
                         f"{a.shape[2]}, n) to match {an} {a.shape}")
    return a.shape + (b.shape[2],)


def gemm_tiles_w8(a_bits, acts_dtype: str, b_codes, b_scales, weights_dtype: str,
                  parallel: bool = True) -> np.ndarray:
    """Per-core GEMM of fp16/bf16 activations (uint16 bit patterns (P, m, k)) by 8-bit weights
    (uint8 codes (P, k, n), float32 scales (P, n) per column); fp32 accumulate. -> (P, m, n)."""
    a_kind = KIND[check_dtype_name("acts_dtype", acts_dtype)]
    b_kind = check_kind8("weights_dtype", weights_dtype)
    a_bits = check_array("a_bits", a_bits, np.uint16, ndim=3)
    b_codes = check_array("b_codes", b_codes, np.uint8, ndim=3)
    P, m, k, n = _shapes("a_bits", a_bits, "b_codes", b_codes)
    b_scales = check_scales("b_scales", b_scales, b_codes, per_row=False)
    out = np.zeros((P, m, n), np.float32)
    if k == 0 or P * m * n == 0:
        return out
    parallel = _parallel(parallel, P, m, k, n)
    c = _chunks(parallel, P)
    sa, sb = np.empty((c, m, k), np.float32), np.empty((c, k, n), np.float32)
    pick(_W8, parallel)(a_bits, a_kind, b_codes, b_kind, b_scales, out, sa, sb)
    return out


def gemm_tiles_q8(a_codes, a_scales, b_codes, b_scales, dtype: str,
                  parallel: bool = True) -> np.ndarray:
    """Per-core GEMM with both operands 8-bit `dtype`: a (P, m, k) codes with per-row scales
    (P, m), b (P, k, n) codes with per-column scales (P, n). int8: int32 accumulate; fp8: fp32.
    -> (P, m, n) float32."""
    kind = check_kind8("dtype", dtype)
    a_codes = check_array("a_codes", a_codes, np.uint8, ndim=3)
    b_codes = check_array("b_codes", b_codes, np.uint8, ndim=3)
    P, m, k, n = _shapes("a_codes", a_codes, "b_codes", b_codes)
    a_scales = check_scales("a_scales", a_scales, a_codes, per_row=True)
    b_scales = check_scales("b_scales", b_scales, b_codes, per_row=False)
    out = np.zeros((P, m, n), np.float32)
    if k == 0 or P * m * n == 0:
        return out
    parallel = _parallel(parallel, P, m, k, n)
    c = _chunks(parallel, P)
    f32 = (c, m, k), (c, k, n)
    i32 = ((c, m, k), (c, k, n), (c, n)) if kind == 0 else ((c, 0, 0), (c, 0, 0), (c, 0))
    if kind == 0:
        f32 = (c, 0, 0), (c, 0, 0)
    sa, sb = (np.empty(s, np.float32) for s in f32)
    si, sbi, acc = (np.empty(s, np.int32) for s in i32)
    pick(_Q8, parallel)(a_codes, a_scales, b_codes, b_scales, kind, out, sa, sb, si, sbi, acc)
    return out
