"""Row-wise and elementwise per-core kernels: softmax, norms, activations, RoPE, reductions.

Inputs are float32 with a leading core axis; rows are flattened to (cores x rows, cols) and
split over threads with ``prange``. Row reductions accumulate in float64 with four independent
partial sums in a fixed order, so every result is deterministic and the parallel build equals
the serial one bit for bit. Transcendentals are evaluated in float64 and stored as float32;
``exp`` is an inlined polynomial that LLVM vectorizes (libm's scalar exp is ~4x slower, and
numpy's SIMD exp would otherwise make the fused kernels lose to plain numpy).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from wse_sim.kernels.base import check_array, check_shape, pick, row_params, twins

_BLOCK = 2048  # elements per parallel chunk in sum_tiles (8 KiB partial sums stay in L1)


@njit(cache=True, inline="always")
def _exp(v):
    """exp(v) in float64, relative error about 1e-11 (float32 needs 6e-8).

    Below -708 it returns 0 and above 709 inf (outside float32's range anyway); nan -> nan.
    """
    c = min(max(v, -708.0), 709.0)
    n = math.floor(c * 1.4426950408889634 + 0.5)
    r = (c - n * 0.6931471803691238) - n * 1.9082149292705877e-10  # Cody-Waite: |r| <= ln2/2
    p = 1.0 / 362880.0  # Taylor series to r**9, Horner form
    for k in (40320.0, 5040.0, 720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0):
        p = p * r + 1.0 / k
    two_n = np.int64((np.int64(n) + 1023) << 52).view(np.float64)  # 2**n (a scalar bitcast)
    if v < -708.0:
        return 0.0
    if v > 709.0:
        return math.inf
    return p * two_n if v == v else v


@njit(cache=True)
def _row_sum(x, lo, hi, shift):
    """sum(x[lo:hi] - shift) and sum((x - shift)**2) in float64, four lanes, fixed order."""
    s0 = s1 = s2 = s3 = 0.0
    q0 = q1 = q2 = q3 = 0.0
    j = lo
    while j + 4 <= hi:
        d0 = x[j] - shift
        d1 = x[j + 1] - shift
        d2 = x[j + 2] - shift
        d3 = x[j + 3] - shift
        s0 += d0
        s1 += d1
        s2 += d2
        s3 += d3
        q0 += d0 * d0
        q1 += d1 * d1
        q2 += d2 * d2
        q3 += d3 * d3
        j += 4
    while j < hi:
        d0 = x[j] - shift
        s0 += d0
        q0 += d0 * d0
        j += 1
    return (s0 + s1) + (s2 + s3), (q0 + q1) + (q2 + q3)


def _softmax_body(x, last, out):
    n = x.shape[1]
    for r in prange(x.shape[0]):
        hi = min(last[r], n - 1) + 1  # columns [0, hi) are visible
        xr = x[r]
        orow = out[r]
        if hi > 0:
            mx = xr[0]
            for j in range(1, hi):
                mx = max(mx, xr[j])
            for j in range(hi):
                orow[j] = _exp(float(xr[j]) - float(mx))
            s, _ = _row_sum(orow, 0, hi, 0.0)
            inv = 1.0 / s
            for j in range(hi):
                orow[j] = orow[j] * inv
        for j in range(max(hi, 0), n):
            orow[j] = 0.0


def _layernorm_body(x, g, b, rows_per_core, eps, rms, out):
    n = x.shape[1]
    for r in prange(x.shape[0]):
        gi = r // rows_per_core if g.shape[0] > 1 else 0
        xr = x[r]
        if rms:
            mean = 0.0
            _, q = _row_sum(xr, 0, n, 0.0)
        else:
            s, _ = _row_sum(xr, 0, n, 0.0)
            mean = s / n
            _, q = _row_sum(xr, 0, n, mean)  # second pass: exact variance, no cancellation
        rstd = 1.0 / math.sqrt(q / n + eps)
        for j in range(n):
            y = (xr[j] - mean) * rstd * g[gi, j]
            if not rms:
                y += b[gi, j]
            out[r, j] = y


def _gelu_body(x, out):
    c = math.sqrt(2.0 / math.pi)
    for i in prange(x.size):
        v = float(x[i])
        u = c * (v + 0.044715 * v * v * v)
        # 0.5 v (1 + tanh u) == v * sigmoid(2u): no cancellation for large negative v
        out[i] = v / (1.0 + _exp(-2.0 * u))


def _swiglu_body(gate, up, out):
    for i in prange(gate.size):
        v = float(gate[i])
        out[i] = v / (1.0 + _exp(-v)) * up[i]


def _rope_body(x, pos, inv_freq, rows_per_core, out):
    half = inv_freq.size
    for r in prange(x.shape[0]):
        pi = r // rows_per_core if pos.shape[0] > 1 else 0
        t = pos[pi, r % rows_per_core]
        for i in range(half):
            ang = t * inv_freq[i]
            c = math.cos(ang)
            s = math.sin(ang)
            x1 = float(x[r, i])
            x2 = float(x[r, i + half])
            out[r, i] = x1 * c - x2 * s
            out[r, i + half] = x1 * s + x2 * c


def _add_body(a, b, out):
    for i in prange(a.size):
        out[i] = a[i] + b[i]


def _sum_body(x, out):
    rows, size = x.shape
    for blk in prange((size + _BLOCK - 1) // _BLOCK):
        lo = blk * _BLOCK
        hi = min(size, lo + _BLOCK)
        acc = out[lo:hi]
        acc[:] = x[0, lo:hi]
        for r in range(1, rows):  # ((x0 + x1) + x2) + ... in float32, like a chain reduce
            xr = x[r, lo:hi]
            for e in range(hi - lo):
                acc[e] += xr[e]


def _combine_body(ma, la, oa, mb, lb, ob, m, lsum, o):
    d = oa.shape[1]
    for r in prange(ma.size):
        mx = max(ma[r], mb[r])
        if mx == -np.inf:
            sa = sb = 0.0
        else:
            sa = _exp(float(ma[r]) - float(mx))
            sb = _exp(float(mb[r]) - float(mx))
        m[r] = mx
        lsum[r] = la[r] * sa + lb[r] * sb
        for j in range(d):
            o[r, j] = oa[r, j] * sa + ob[r, j] * sb


_SOFTMAX = twins(_softmax_body)
_LAYERNORM = twins(_layernorm_body)
_GELU = twins(_gelu_body)
_SWIGLU = twins(_swiglu_body)
_ROPE = twins(_rope_body)
_ADD = twins(_add_body)
_SUM = twins(_sum_body)
_COMBINE = twins(_combine_body)


def _rows3(name, x):
    x = check_array(name, x, np.float32, ndim=3)
    return x, x.reshape(x.shape[0] * x.shape[1], x.shape[2])


def softmax_rows(x, causal_offset=None, parallel=True):
    """Softmax along the last axis of x (P, m, n) float32.

    With ``causal_offset`` (P,) ints, row i of core p sees columns j <= i + causal_offset[p]
    (a sequence-split tile passes its query offset minus its key offset); masked columns are
    excluded and come out 0, and a fully masked row is all zeros.
    """
    x, x2 = _rows3("x", x)
    P, m, n = x.shape
    if causal_offset is None:
        last = np.full(P * m, n - 1, np.int64)
    else:
        off = np.asarray(causal_offset)
        if off.shape != (P,) or not np.issubdtype(off.dtype, np.integer):
            raise ValueError(f"causal_offset: {off.dtype} array of shape {off.shape} not allowed; "
                             f"expected ({P},) integers")
        last = (np.arange(m, dtype=np.int64)[None, :] + off.astype(np.int64)[:, None]).ravel()
    out = np.empty_like(x)
    pick(_SOFTMAX, parallel)(x2, last, out.reshape(x2.shape))
    return out


def _norm(x, g, b, eps, rms, parallel):
    x, x2 = _rows3("x", x)
    P, m, n = x.shape
    g2 = row_params("g", g, P, n)
    b2 = g2 if b is None else row_params("b", b, P, n)
    if b2.shape != g2.shape:
        raise ValueError(f"b: shape {b.shape} not allowed; expected the shape of g {g.shape}")
    if not (isinstance(eps, float | int) and eps >= 0):
        raise ValueError(f"eps: {eps!r} not allowed; expected a number >= 0")
    out = np.empty_like(x)
    pick(_LAYERNORM, parallel)(x2, g2, b2, max(m, 1), float(eps), rms, out.reshape(x2.shape))
    return out


def layernorm_rows(x, g, b, eps=1e-5, parallel=True):
    """LayerNorm over the last axis of x (P, m, n); g, b of shape (n,) or per core (P, n)."""
    return _norm(x, g, b, eps, False, parallel)


def rmsnorm_rows(x, g, eps=1e-6, parallel=True):
    """RMSNorm over the last axis: x / sqrt(mean(x**2) + eps) * g; g (n,) or (P, n)."""
    return _norm(x, g, None, eps, True, parallel)


def gelu(x, parallel=True):
    """GELU, tanh approximation 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))), any shape float32."""
    x = check_array("x", x, np.float32)
    out = np.empty_like(x)
    pick(_GELU, parallel)(x.reshape(-1), out.reshape(-1))
    return out


def swiglu(gate, up, parallel=True):
    """SwiGLU: silu(gate) * up, elementwise over same-shape float32 arrays."""
    gate = check_array("gate", gate, np.float32)
    up = check_array("up", up, np.float32)
    check_shape("up", up, gate.shape)
    out = np.empty_like(gate)
    pick(_SWIGLU, parallel)(gate.reshape(-1), up.reshape(-1), out.reshape(-1))
    return out


def rope(x, positions, theta=10000.0, parallel=True):
    """Rotary embedding of x (P, m, hd), half-split convention (as in GPT-NeoX / HF Llama).

    x1 = x[..., :hd/2], x2 = x[..., hd/2:], angle_i = position * theta**(-2i/hd), and
    out = concat(x1 cos - x2 sin, x1 sin + x2 cos). positions: (m,) or per core (P, m).
    """
    x, x2 = _rows3("x", x)
    P, m, hd = x.shape
    if hd % 2:
        raise ValueError(f"x: head_dim {hd} not allowed; expected an even head dimension")
    pos = np.asarray(positions)
    if pos.shape not in ((m,), (P, m)) or not np.issubdtype(pos.dtype, np.number):
        raise ValueError(f"positions: shape {pos.shape} not allowed; expected ({m},) or ({P}, {m})")
    if not (isinstance(theta, float | int) and theta > 0):
        raise ValueError(f"theta: {theta!r} not allowed; expected a number > 0")
    pos = np.ascontiguousarray(pos.reshape(-1, m), dtype=np.float64)
    inv_freq = float(theta) ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    out = np.empty_like(x)
    pick(_ROPE, parallel)(x2, pos, inv_freq, max(m, 1), out.reshape(x2.shape))
    return out


def residual_add(a, b, out=None, parallel=True):
    """a + b for same-shape float32 arrays (``out`` may be ``a`` for an in-place update)."""
    a = check_array("a", a, np.float32)
    b = check_array("b", b, np.float32)
    check_shape("b", b, a.shape)
    if out is None:
        out = np.empty_like(a)
    elif not (isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == a.shape
              and out.flags.c_contiguous):
        raise ValueError(f"out: {getattr(out, 'shape', out)!r} not allowed; expected a "
                         f"C-contiguous float32 array of shape {a.shape}")
    pick(_ADD, parallel)(a.reshape(-1), b.reshape(-1), out.reshape(-1))
    return out


def sum_tiles(x, axis=0, parallel=True):
    """Sum over ``axis`` (default: the core axis) in fixed order ((x0 + x1) + x2) + ... in fp32.

    Deterministic and bit-identical to a chain reduce, as collectives on the mesh perform it.
    """
    x = check_array("x", x, np.float32, min_ndim=1)
    if not isinstance(axis, int) or not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis: {axis!r} not allowed; expected an int in [-{x.ndim}, {x.ndim})")
    xm = np.ascontiguousarray(np.moveaxis(x, axis, 0))
    rest = xm.shape[1:]
    out = np.zeros(rest, np.float32)
    if xm.shape[0] and out.size:
        pick(_SUM, parallel)(xm.reshape(xm.shape[0], -1), out.reshape(-1))
    return out


def online_softmax_combine(m_a, l_a, o_a, m_b, l_b, o_b, parallel=True):
    """Merge two partial attention results over disjoint key blocks (flash-attention style).

    Each part has row maxima m (..., r), row sums l = sum exp(s - m) (..., r) and unnormalized
    output o = sum exp(s - m) v (..., r, d); a part with m = -inf is empty. Returns merged
    (m, l, o); the attention output is o / l[..., None].
    """
    ma = check_array("m_a", m_a, np.float32, min_ndim=1)
    lead = ma.shape
    arrs = [ma]
    for name, arr in (("l_a", l_a), ("m_b", m_b), ("l_b", l_b)):
        arr = check_array(name, arr, np.float32)
        check_shape(name, arr, lead)
        arrs.append(arr)
    oa = check_array("o_a", o_a, np.float32, ndim=len(lead) + 1)
    if oa.shape[:-1] != lead:
        raise ValueError(f"o_a: shape {oa.shape} not allowed; expected {lead} + (d,)")
    ob = check_array("o_b", o_b, np.float32)
    check_shape("o_b", ob, oa.shape)
    d, rows = oa.shape[-1], ma.size
    m, lsum, o = np.empty(lead, np.float32), np.empty(lead, np.float32), np.empty_like(oa)
    flat = [a.reshape(-1) for a in arrs]
    pick(_COMBINE, parallel)(flat[0], flat[1], oa.reshape(rows, d), flat[2], flat[3],
                             ob.reshape(rows, d), m.reshape(-1), lsum.reshape(-1),
                             o.reshape(rows, d))
    return m, lsum, o
