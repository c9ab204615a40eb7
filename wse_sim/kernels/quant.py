"""8-bit storage: int8 and fp8 (OCP E4M3 and E5M2) codes <-> float32, and scaled quantization.

Every 8-bit value is carried as its bit pattern in a ``uint8`` (int8 in two's complement), the
way the hardware would store it: four to a 32-bit wavelet. Quantization is symmetric with one
float32 scale per channel (a column of a weight tile, a row of an activation tile):

- int8: ``scale = amax / 127`` (1 where amax is 0), ``code = clip(rint(x / scale), -127, 127)``
  with round-half-to-even; -128 is never produced;
- fp8: ``scale = amax / max_finite`` (448 for E4M3, 57344 for E5M2; 1 where amax is 0),
  ``code = encode(x / scale)``, round to nearest even on the bits; a finite value beyond the
  largest finite one saturates to it (the OCP "saturating" conversion); nan stays nan; E5M2
  keeps +-inf, E4M3 (no infinities) turns inf into nan.

Formats (OCP 8-bit Floating Point Specification, OFP8, rev. 1.0, 2023): E4M3 has bias 7,
subnormals, no infinities and one nan per sign (S.1111.111), largest 448; E5M2 is IEEE-like
with bias 15, +-inf (S.11111.00), nans, largest 57344. `wse_sim.kernels.quant_ref` is an
independent numpy reference; the tests check every one of the 256 codes of each format.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from wse_sim.kernels.base import check_array, pick, twins, use_parallel

KIND8 = {"int8": 0, "fp8_e4m3": 1, "fp8_e5m2": 2}  # dtype name -> integer code
MAX_FINITE = {"int8": 127.0, "fp8_e4m3": 448.0, "fp8_e5m2": 57344.0}
PER = ("col", "row")  # one scale per column of each tile (weights), or per row (activations)


# ---- scalar codecs ---------------------------------------------------------------------------
@njit(cache=True, inline="always")
def _fp8_params(kind):
    """(mantissa bits, exponent bias, largest finite code, nan code, inf code) of an fp8 kind;
    E4M3 has no inf (its inf code is the nan code)."""
    if kind == 1:
        return 3, 7, 0x7E, 0x7F, 0x7F
    return 2, 15, 0x7B, 0x7F, 0x7C


@njit(cache=True, inline="always")
def decode8(code, kind):
    """8-bit code of dtype code ``kind`` (0 int8, 1 E4M3, 2 E5M2) -> float32, exact."""
    c = np.int64(code) & 0xFF
    if kind == 0:
        return np.float32(c - 256 if c >= 128 else c)
    mb, bias, _, nan, inf = _fp8_params(kind)
    a = c & 0x7F
    if a == nan or (a > inf and kind == 2):
        f = np.float32(np.nan)
    elif a == inf and kind == 2:
        f = np.float32(np.inf)
    else:
        e = a >> mb
        m = a & ((1 << mb) - 1)
        if e == 0:  # subnormal: m * 2**(1 - bias - mb), a normal float32
            f = np.float32(m) * np.float32(2.0 ** (1 - bias - mb))
        else:
            f = np.uint32(((e - bias + 127) << 23) | (m << (23 - mb))).view(np.float32)
    return -f if c & 0x80 else f


@njit(cache=True)
def _encode_fp8(x, kind):
    """float32 -> fp8 code, round to nearest even on the bits, saturating finite overflow."""
    mb, bias, top, nan, inf = _fp8_params(kind)
    u = np.int64(np.float32(x).view(np.uint32))
    sign = (u >> 24) & 0x80
    a = u & 0x7FFFFFFF
    if a > 0x7F800000:
        return np.uint8(sign | nan)
    if a == 0x7F800000:
        return np.uint8(sign | inf)
    e = a >> 23
    shift = 23 - mb
    if e - 127 + bias >= 1:  # normal in fp8: rebias the exponent, round 23 -> mb bits
        h = a - ((127 - bias) << 23)
        h = (h + (1 << (shift - 1)) - 1 + ((h >> shift) & 1)) >> shift
        return np.uint8(sign | min(h, top))
    if e == 0:  # float32 subnormal: far below the smallest fp8 subnormal
        return np.uint8(sign)
    m = (a & 0x7FFFFF) | 0x800000  # value = m * 2**(e - 150); fp8 unit is 2**(1 - bias - mb)
    s = 151 - bias - mb - e
    if s > 25:
        return np.uint8(sign)
    q = m >> s
    rem = m & ((1 << s) - 1)
    half = 1 << (s - 1)
    if rem > half or (rem == half and (q & 1) == 1):
        q += 1  # q == 1 << mb is the smallest normal's code, which is right
    return np.uint8(sign | q)


@njit(cache=True, inline="always")
def _rint(x):
    """Round half to even (np.rint), on a float32."""
    r = np.floor(x + np.float32(0.5))
    if r - x == np.float32(0.5) and r % 2 != 0:
        r -= 1
    return r


@njit(cache=True, inline="always")
def encode8(x, kind):
    """float32 (already divided by its scale) -> 8-bit code of dtype code ``kind``."""
    if kind == 0:
        if x != x:
            return np.uint8(0)
        q = min(max(_rint(np.float32(x)), np.float32(-127)), np.float32(127))
        return np.uint8(np.int64(q) & 0xFF)
    return _encode_fp8(x, kind)


# ---- batched: quantize / dequantize tiles ----------------------------------------------------
def _quantize_body(x, kind, per_row, top, codes, scales):
    P, r, c = x.shape
    for p in prange(P):
        s = scales[p]
        s[:] = 0  # the channels' largest magnitudes first, row by row (contiguous reads)
        for i in range(r):
            for j in range(c):
                v = abs(x[p, i, j])
                ch = i if per_row else j
                if v > s[ch]:
                    s[ch] = v
        for ch in range(s.size):
            s[ch] = s[ch] / top if s[ch] > 0 else np.float32(1)
        for i in range(r):
            for j in range(c):
                codes[p, i, j] = encode8(x[p, i, j] / s[i if per_row else j], kind)


@njit(cache=True)
def decode_table(kind):
    """The float32 value of each of the 256 codes of dtype code ``kind`` (by `decode8`): the
    tile decoders look codes up in it."""
    lut = np.empty(256, np.float32)
    for c in range(256):
        lut[c] = decode8(c, kind)
    return lut


def _dequantize_body(codes, kind, per_row, scales, out):
    P, r, c = codes.shape
    lut = decode_table(kind)
    for p in prange(P):
        for i in range(r):
            for j in range(c):
                s = scales[p, i] if per_row else scales[p, j]
                out[p, i, j] = lut[codes[p, i, j]] * s


_QUANTIZE = twins(_quantize_body)
_DEQUANTIZE = twins(_dequantize_body)


def check_kind8(name: str, dtype) -> int:
    if dtype not in KIND8:
        raise ValueError(f"{name}: {dtype!r} not allowed; expected one of {', '.join(KIND8)}")
    return KIND8[dtype]


def _check_per(per) -> bool:
    if per not in PER:
        raise ValueError(f"per: {per!r} not allowed; expected one of {', '.join(PER)}")
    return per == "row"


def quantize(x, dtype: str, per: str = "col", parallel: bool = True):
    """float32 tiles (P, r, c) -> (uint8 codes (P, r, c), float32 scales): one scale per column
    (``per="col"``, scales (P, c): weights, per output channel) or per row (``"row"``, (P, r):
    activations, per token). Symmetric; see the module's docstring for the rounding."""
    kind = check_kind8("dtype", dtype)
    per_row = _check_per(per)
    x = check_array("x", x, np.float32, ndim=3)
    codes = np.empty(x.shape, np.uint8)
    scales = np.empty((x.shape[0], x.shape[1] if per_row else x.shape[2]), np.float32)
    pick(_QUANTIZE, parallel and use_parallel(x.size))(x, kind, per_row, np.float32(MAX_FINITE[dtype]), codes, scales)
    return codes, scales


def check_scales(name: str, scales, codes: np.ndarray, per_row: bool) -> np.ndarray:
    want = (codes.shape[0], codes.shape[1] if per_row else codes.shape[2])
    scales = check_array(name, scales, np.float32, ndim=2)
    if scales.shape != want:
        raise ValueError(f"{name}: shape {scales.shape} not allowed; expected {want}")
    return scales


def dequantize(codes, scales, dtype: str, per: str = "col", parallel: bool = True):
    """uint8 codes (P, r, c) and their scales -> float32 values ``decode(code) * scale``."""
    kind = check_kind8("dtype", dtype)
    per_row = _check_per(per)
    codes = check_array("codes", codes, np.uint8, ndim=3)
    scales = check_scales("scales", scales, codes, per_row)
    out = np.empty(codes.shape, np.float32)
    pick(_DEQUANTIZE, parallel and use_parallel(codes.size))(codes, kind, per_row, scales, out)
    return out


def _codec_body(x, kind, out):
    for i in prange(x.size):
        out[i] = decode8(encode8(x[i], kind), kind)


_ROUND8 = twins(_codec_body)


def round_to8(x, dtype: str, parallel: bool = True) -> np.ndarray:
    """float32 values rounded to the nearest `dtype` value (no scale), as float32."""
    kind = check_kind8("dtype", dtype)
    x = check_array("x", x, np.float32)
    out = np.empty(x.shape, np.float32)
    pick(_ROUND8, parallel and use_parallel(x.size))(x.reshape(-1), kind, out.reshape(-1))
    return out
