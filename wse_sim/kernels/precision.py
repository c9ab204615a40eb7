"""Low-precision storage: fp16 / bf16 bit patterns <-> float32, round-to-nearest-even.

The hardware stores fp16/bf16 and accumulates in fp32; numba has no float16 type, so kernels
carry 16-bit values as ``uint16`` bit patterns. The scalar codecs below move between a float32
and its bits with a value-level bitcast (``np.float32(x).view(np.uint32)`` on a scalar), which
LLVM vectorizes; no kernel takes a ``view`` of an array (type-punning array views inside
``prange`` gave wrong results). The tests check the decoders on all 65536 bit patterns.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from wse_sim.kernels.base import check_array, check_dtype_name, pick, twins

KIND = {"fp16": 0, "bf16": 1}  # dtype name -> integer code the kernels branch on


@njit(cache=True, inline="always")
def decode_fp16(b):
    """fp16 bit pattern -> float32, exact (subnormals, +-inf, nan).

    Normals rebias the exponent (15 -> 127) in the integer bits; subnormals are
    mantissa * 2**-24, a normal float32, so no denormal arithmetic (safe under FTZ/DAZ).
    """
    h = np.uint32(b)
    e = h & 0x7C00
    u = np.uint32((h & 0x7FFF) << 13)
    if e == 0:
        f = np.float32(h & 0x3FF) * np.float32(5.960464477539063e-08)  # 2**-24
    elif e == 0x7C00:
        f = np.uint32(u | 0x7F800000).view(np.float32)
    else:
        f = np.uint32(u + 0x38000000).view(np.float32)
    return -f if (h & 0x8000) else f


@njit(cache=True, inline="always")
def decode_bf16(b):
    """bf16 bit pattern -> float32, exact: bf16 is the top half of a float32."""
    return np.uint32(np.uint32(b) << 16).view(np.float32)


@njit(cache=True, inline="always")
def decode(b, kind):
    """Decode a 16-bit pattern of dtype code ``kind`` (0 fp16, 1 bf16) to float32."""
    if kind == 0:
        return decode_fp16(b)
    return decode_bf16(b)


@njit(cache=True)
def encode_fp16(x):
    """float32 -> fp16 bit pattern, round to nearest even, integer arithmetic on the bits.

    Overflow (>= 65520) gives inf; nan stays nan (quiet, payload's top bits kept).
    """
    u = np.int64(np.float32(x).view(np.uint32))
    sign = (u >> 16) & 0x8000
    a = u & 0x7FFFFFFF
    if a >= 0x7F800000:  # inf or nan
        if a > 0x7F800000:
            return np.uint16(sign | 0x7E00 | ((a >> 13) & 0x3FF))
        return np.uint16(sign | 0x7C00)
    if a >= 0x477FF000:  # 65520: halfway to 2**16, ties-to-even rounds up to inf
        return np.uint16(sign | 0x7C00)
    if a >= 0x38800000:  # >= 2**-14: normal; rebias exponent 127 -> 15, round 23 -> 10 bits
        h = a - 0x38000000
        h = (h + 0xFFF + ((h >> 13) & 1)) >> 13
        return np.uint16(sign | h)
    if a < 0x33000000:  # < 2**-25: rounds to zero
        return np.uint16(sign)
    e = a >> 23
    m = (a & 0x7FFFFF) | 0x800000  # value = m * 2**(e - 150); fp16 subnormal unit is 2**-24
    shift = 126 - e
    q = m >> shift
    rem = m & ((1 << shift) - 1)
    half = 1 << (shift - 1)
    if rem > half or (rem == half and (q & 1) == 1):
        q += 1  # q == 0x400 is the smallest normal, which is the right bit pattern
    return np.uint16(sign | q)


@njit(cache=True)
def encode_bf16(x):
    """float32 -> bf16 bit pattern, round to nearest even; nan stays nan (quiet)."""
    u = np.int64(np.float32(x).view(np.uint32))
    if (u & 0x7FFFFFFF) > 0x7F800000:
        return np.uint16((u >> 16) | 0x40)
    return np.uint16((u + 0x7FFF + ((u >> 16) & 1)) >> 16)


@njit(cache=True, inline="always")
def encode(x, kind):
    """Encode a float32 to the 16-bit pattern of dtype code ``kind`` (0 fp16, 1 bf16)."""
    if kind == 0:
        return encode_fp16(x)
    return encode_bf16(x)


def _encode_body(x, kind, out):
    for i in prange(x.size):
        out[i] = encode(x[i], kind)


def _decode_body(bits, kind, out):
    for i in prange(bits.size):
        out[i] = decode(bits[i], kind)


def _round_body(x, kind, out):
    for i in prange(x.size):
        out[i] = decode(encode(x[i], kind), kind)


_ENCODE = twins(_encode_body)
_DECODE = twins(_decode_body)
_ROUND = twins(_round_body)


def to_bits(x: np.ndarray, dtype: str, parallel: bool = True) -> np.ndarray:
    """float32 array -> uint16 fp16/bf16 bit patterns of the same shape (RNE)."""
    kind = KIND[check_dtype_name("dtype", dtype)]
    x = check_array("x", x, np.float32)
    out = np.empty(x.shape, np.uint16)
    pick(_ENCODE, parallel)(x.reshape(-1), kind, out.reshape(-1))
    return out


def from_bits(bits: np.ndarray, dtype: str, parallel: bool = True) -> np.ndarray:
    """uint16 fp16/bf16 bit patterns -> float32 array of the same shape (exact)."""
    kind = KIND[check_dtype_name("dtype", dtype)]
    bits = check_array("bits", bits, np.uint16)
    out = np.empty(bits.shape, np.float32)
    pick(_DECODE, parallel)(bits.reshape(-1), kind, out.reshape(-1))
    return out


def round_to(x: np.ndarray, dtype: str, parallel: bool = True) -> np.ndarray:
    """Round float32 values to ``dtype`` (RNE); the result is float32 but exactly representable.

    ``"fp32"`` returns a copy. Used at tile boundaries, where the hardware stores results.
    """
    dtype = check_dtype_name("dtype", dtype, ("fp32", "fp16", "bf16"))
    x = check_array("x", x, np.float32)
    if dtype == "fp32":
        return x.copy()
    out = np.empty(x.shape, np.float32)
    pick(_ROUND, parallel)(x.reshape(-1), KIND[dtype], out.reshape(-1))
    return out
