"""Batched GEMM tiles: fp32, fp16/bf16 (as bit patterns, fp32 accumulate) and weight-sparse.

All operands carry a leading core axis: ``a`` is (P, m, k), ``b`` is (P, k, n), the result is
(P, m, n). One call covers every core of a phase. Dense tiles go through ``np.dot`` inside
numba (BLAS speed); hand-written loops are ~3.5x slower. The ``prange`` runs over contiguous
chunks of cores with one scratch tile per chunk (``scratch.shape[0]`` chunks), so nothing is
allocated in a parallel body and no thread id is needed (``numba.get_thread_id`` in a serial
function loaded from numba's cache segfaults until some parallel kernel has started the
threading layer).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from wse_sim.kernels.base import (
    BLAS_THREADED_MACS,
    check_array,
    check_dtype_name,
    check_out,
    check_shape,
    pick,
    twins,
)
from wse_sim.kernels.precision import KIND, decode_bf16, decode_fp16


@njit(cache=True, inline="always")
def _chunk(c, chunks, total):
    """Cores [lo, hi) of chunk c when ``total`` cores are split into ``chunks`` parts."""
    return c * total // chunks, (c + 1) * total // chunks


def _gemm_body(a, b, out, accumulate, scratch):
    chunks = scratch.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(c, chunks, a.shape[0])
        t = scratch[c]
        for p in range(lo, hi):
            if accumulate:
                np.dot(a[p], b[p], t)
                out[p] += t
            else:
                np.dot(a[p], b[p], out[p])


@njit(cache=True)
def _decode_tile(bits, kind, dst):
    """Decode one 2-D tile of 16-bit patterns into float32 ``dst`` (a vectorized loop)."""
    src = bits.reshape(bits.size)
    flat = dst.reshape(dst.size)
    if kind == 0:
        for i in range(src.size):
            flat[i] = decode_fp16(src[i])
    else:
        for i in range(src.size):
            flat[i] = decode_bf16(src[i])


def _gemm_lp_body(a_bits, b_bits, kind, out, accumulate, sa, sb, sc):
    chunks = sa.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(c, chunks, a_bits.shape[0])
        af = sa[c]
        bf = sb[c]
        t = sc[c]
        for p in range(lo, hi):
            _decode_tile(a_bits[p], kind, af)
            _decode_tile(b_bits[p], kind, bf)
            if accumulate:
                np.dot(af, bf, t)
                out[p] += t
            else:
                np.dot(af, bf, out[p])


def _sparse_body(a, vals, colptr, rowidx, out, accumulate, sat, sct):
    m, k = a.shape[1], a.shape[2]
    n = colptr.shape[1] - 1
    chunks = sat.shape[0]
    for c in prange(chunks):
        lo, hi = _chunk(c, chunks, a.shape[0])
        at = sat[c]  # (k, m): rows of a's transpose, so the inner loop is a contiguous axpy
        ct = sct[c]  # (n, m)
        for p in range(lo, hi):
            for i in range(m):
                for kk in range(k):
                    at[kk, i] = a[p, i, kk]
            for j in range(n):
                acc = ct[j]
                for i in range(m):
                    acc[i] = 0.0
                idx, end = colptr[p, j], colptr[p, j + 1]
                while idx + 4 <= end:  # four nonzeros per pass: a quarter of the acc traffic
                    v0, v1 = vals[p, idx], vals[p, idx + 1]
                    v2, v3 = vals[p, idx + 2], vals[p, idx + 3]
                    r0, r1 = at[rowidx[p, idx]], at[rowidx[p, idx + 1]]
                    r2, r3 = at[rowidx[p, idx + 2]], at[rowidx[p, idx + 3]]
                    for i in range(m):
                        acc[i] += (v0 * r0[i] + v1 * r1[i]) + (v2 * r2[i] + v3 * r3[i])
                    idx += 4
                while idx < end:
                    v = vals[p, idx]
                    r = at[rowidx[p, idx]]
                    for i in range(m):
                        acc[i] += v * r[i]
                    idx += 1
            for i in range(m):
                for j in range(n):
                    if accumulate:
                        out[p, i, j] += ct[j, i]
                    else:
                        out[p, i, j] = ct[j, i]


_GEMM = twins(_gemm_body)
_GEMM_LP = twins(_gemm_lp_body)
_SPARSE = twins(_sparse_body)


def _chunks(parallel: bool, cores: int) -> int:
    """Chunks of cores for prange: a few per thread to balance load; one when serial."""
    return max(1, min(cores, 4 * numba.get_num_threads())) if parallel else 1


def _operands(a, b, dtype):
    an, bn = ("a", "b") if dtype == np.float32 else ("a_bits", "b_bits")
    a = check_array(an, a, dtype, ndim=3)
    b = check_array(bn, b, dtype, ndim=3)
    if b.shape[:2] != (a.shape[0], a.shape[2]):
        raise ValueError(f"{bn}: shape {b.shape} not allowed; expected ({a.shape[0]}, "
                         f"{a.shape[2]}, n) to match {an} {a.shape}")
    return a, b


def _empty_result(out, accumulate):
    if not accumulate:
        out[...] = 0.0
    return out


def gemm_tiles(a, b, out=None, accumulate=False, parallel=True):
    """Per-core fp32 GEMM: out[p] = a[p] @ b[p] (or += with ``accumulate``).

    a (P, m, k) float32, b (P, k, n) float32 -> (P, m, n) float32. ``parallel=False`` runs the
    serial twin; tiles of >= BLAS_THREADED_MACS multiply-adds always loop serially (BLAS threads).
    """
    a, b = _operands(a, b, np.float32)
    (P, m, k), n = a.shape, b.shape[2]
    out = check_out(out, (P, m, n), accumulate)
    if k == 0 or P * m * n == 0:
        return _empty_result(out, accumulate)
    parallel = parallel and m * k * n < BLAS_THREADED_MACS
    scratch = np.empty((_chunks(parallel, P), m if accumulate else 0, n), np.float32)
    pick(_GEMM, parallel)(a, b, out, accumulate, scratch)
    return out


def gemm_tiles_lp(a_bits, b_bits, dtype, out=None, accumulate=False, parallel=True):
    """Per-core fp16/bf16 GEMM with fp32 accumulate, like the hardware.

    a_bits (P, m, k) and b_bits (P, k, n) are uint16 bit patterns of ``dtype``; they are decoded
    to fp32 scratch tiles inside the kernel and multiplied with ``np.dot``. Returns fp32
    (P, m, n); round it with ``round_to(x, dtype)`` where the hardware stores the tile.
    """
    kind = KIND[check_dtype_name("dtype", dtype)]
    a_bits, b_bits = _operands(a_bits, b_bits, np.uint16)
    (P, m, k), n = a_bits.shape, b_bits.shape[2]
    out = check_out(out, (P, m, n), accumulate)
    if k == 0 or P * m * n == 0:
        return _empty_result(out, accumulate)
    parallel = parallel and m * k * n < BLAS_THREADED_MACS
    c = _chunks(parallel, P)
    sa = np.empty((c, m, k), np.float32)
    sb = np.empty((c, k, n), np.float32)
    sc = np.empty((c, m if accumulate else 0, n), np.float32)
    pick(_GEMM_LP, parallel)(a_bits, b_bits, kind, out, accumulate, sa, sb, sc)
    return out


def csc_tiles(b):
    """Dense weight tiles (P, k, n) float32 -> per-core CSC ``(vals, colptr, rowidx)``.

    Layout: core p's nonzeros of column j are ``vals[p, colptr[p, j]:colptr[p, j + 1]]`` at rows
    ``rowidx[p, same]``, rows ascending. vals (P, L) float32, colptr (P, n + 1) int64, rowidx
    (P, L) int32, with L the largest nonzero count of any core (at least 1; padding is zero).
    """
    b = check_array("b", b, np.float32, ndim=3)
    P, k, n = b.shape
    bt = b.transpose(0, 2, 1)
    pp, jj, kk = np.nonzero(bt)  # lexicographic: core, column, row
    counts = np.bincount(pp * n + jj, minlength=P * n).reshape(P, n)
    colptr = np.zeros((P, n + 1), np.int64)
    np.cumsum(counts, axis=1, out=colptr[:, 1:])
    nnz = colptr[:, -1]
    width = max(int(nnz.max()) if P else 0, 1)
    start = np.concatenate(([0], np.cumsum(nnz)[:-1]))
    pos = np.arange(pp.size) - start[pp]
    vals = np.zeros((P, width), np.float32)
    rowidx = np.zeros((P, width), np.int32)
    vals[pp, pos] = bt[pp, jj, kk]
    rowidx[pp, pos] = kk
    return vals, colptr, rowidx


def sparse_gemm_tiles(a, b_vals, b_colptr, b_rowidx, out=None, accumulate=False, parallel=True):
    """Per-core GEMM that skips zero weights: a (P, m, k) times CSC weight tiles (see csc_tiles).

    Executes m multiply-adds per stored nonzero (``count_nonzero_macs``) and returns the same
    (P, m, n) float32 as the dense product with the zeros, up to summation order.
    """
    a = check_array("a", a, np.float32, ndim=3)
    P, m, k = a.shape
    b_colptr = check_array("b_colptr", b_colptr, np.int64, ndim=2)
    if b_colptr.shape[0] != P or b_colptr.shape[1] < 1:
        raise ValueError(f"b_colptr: shape {b_colptr.shape} not allowed; expected ({P}, n + 1)")
    n = b_colptr.shape[1] - 1
    b_vals = check_array("b_vals", b_vals, np.float32, ndim=2)
    width = b_vals.shape[1]
    if b_vals.shape[0] != P:
        raise ValueError(f"b_vals: shape {b_vals.shape} not allowed; expected ({P}, nnz)")
    b_rowidx = check_array("b_rowidx", b_rowidx, np.int32, ndim=2)
    check_shape("b_rowidx", b_rowidx, b_vals.shape)
    if P and (np.any(b_colptr[:, 0] != 0) or np.any(np.diff(b_colptr, axis=1) < 0)
              or b_colptr[:, -1].max() > width):
        raise ValueError(f"b_colptr: column pointers {b_colptr.tolist()[:2]}... not allowed; "
                         f"expected each core's row to start at 0, never decrease, end <= {width}")
    if b_rowidx.size and (b_rowidx.min() < 0 or b_rowidx.max() >= k):
        raise ValueError(f"b_rowidx: values in [{b_rowidx.min()}, {b_rowidx.max()}] not allowed; "
                         f"expected 0 <= row < {k}")
    out = check_out(out, (P, m, n), accumulate)
    c = _chunks(parallel, P)
    sat = np.empty((c, k, m), np.float32)
    sct = np.empty((c, n, m), np.float32)
    pick(_SPARSE, parallel)(a, b_vals, b_colptr, b_rowidx, out, accumulate, sat, sct)
    return out


def count_nonzero_macs(a_shape, mask, per_core=False):
    """Multiply-adds a weight-sparse GEMM executes: m x (nonzeros of the weight tile).

    a_shape is (P, m, k) or (m, k); mask is the weight tile(s) (P, k, n) or (k, n) (any dtype,
    nonzero = kept). Returns the total as int, or an int64 array (P,) with ``per_core``.
    """
    a_shape = tuple(int(s) for s in a_shape)
    mask = np.asarray(mask)
    if len(a_shape) not in (2, 3) or mask.ndim != len(a_shape):
        raise ValueError(f"mask: shape {mask.shape} not allowed with a_shape {a_shape}; "
                         f"expected (P, k, n) with (P, m, k) or (k, n) with (m, k)")
    if mask.shape[-2] != a_shape[-1] or (len(a_shape) == 3 and mask.shape[0] != a_shape[0]):
        raise ValueError(f"mask: shape {mask.shape} not allowed with a_shape {a_shape}; "
                         f"expected matching cores and k")
    m = a_shape[-2]
    if mask.ndim == 2:
        nnz = np.array([np.count_nonzero(mask)], np.int64)
    else:
        nnz = np.count_nonzero(mask.reshape(mask.shape[0], mask.shape[1] * mask.shape[2]), axis=1)
    macs = m * nnz.astype(np.int64)
    return macs if per_core else int(macs.sum())
