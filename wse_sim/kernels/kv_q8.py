"""The KV cache of the attention kernels (`gpt.attn_scores`, `gpt.attn_av`) in any dtype.

A float cache (fp32, fp16, bf16) is one tile (2 [K, V], B, kvpr, S, hd) per core, values
rounded to its dtype where they are stored. An 8-bit cache (int8, fp8_e4m3, fp8_e5m2) holds
uint8 codes in that tile and, in a second fp32 tile (2, B, kvpr, S) given as the kernel's third
input, one scale per stored vector: per token, per K/V head, for K and V apart (the hd values
of one head of one position, all on the core that holds the position). A new vector is
quantized where `attn_scores` appends it (`quant.quantize`, ``per="row"``: scale = amax /
largest code value, symmetric, round to nearest even); both kernels read the cache dequantized
to float32 (code value x scale), then compute as for a float cache.
"""

from __future__ import annotations

import numpy as np

from wse_sim.kernels.base import use_parallel as _par
from wse_sim.kernels.quant import dequantize, quantize
from wse_sim.program import ProgramError


def kv_inputs(ins: list, n: int, reg, what: str) -> tuple:
    """The kernel's `n` inputs (the last the cache) and the cache's scale tiles (a view,
    (R, C, 2, B, kvpr, S), written in place) or None for a float cache."""
    if len(ins) not in (n, n + 1):
        raise ProgramError(f"{what}: kernel needs {n} input buffer(s) (an 8-bit KV cache one "
                           f"more: its scales), got {len(ins)}")
    kvb = ins[n - 1]
    if not kvb.q8:
        if len(ins) != n:
            raise ProgramError(f"{what}: a {kvb.dtype} KV cache {kvb.name!r} takes no scales")
        return (*ins, None)
    want = kvb.shape[:-1]
    sb = ins[n] if len(ins) == n + 1 else None
    if sb is None or sb.dtype != "fp32" or sb.shape != want:
        got = "none" if sb is None else f"{sb.name!r} {sb.dtype} {sb.shape}"
        raise ProgramError(f"{what}: the {kvb.dtype} KV cache {kvb.name!r} needs an fp32 scale "
                           f"tile {want} (one per token, K/V head and K or V), got {got}")
    return (*ins[:n], sb.block(reg, what))


def encode_new(kvb, new: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """New K/V vectors (..., hd) float32 -> (what the cache tile stores, their scales (...)
    or None for a float cache)."""
    if not kvb.q8:
        return kvb.encode(new), None
    hd = new.shape[-1]
    flat = np.ascontiguousarray(new, np.float32).reshape(1, -1, hd)
    codes, scales = quantize(flat, kvb.dtype, per="row", parallel=_par(flat.size))
    return codes.reshape(new.shape), scales.reshape(new.shape[:-1])


def load(kvb, scales: np.ndarray | None, reg, what: str) -> np.ndarray:
    """The cache's tiles on `reg` as float32 values (R, C, 2, B, kvpr, S, hd), a copy."""
    blk = kvb.block(reg, what)
    if not kvb.q8:
        return np.array(kvb.as_f32(np.ascontiguousarray(blk)), np.float32)
    hd = blk.shape[-1]
    codes = np.ascontiguousarray(blk).reshape(1, -1, hd)
    vals = dequantize(codes, np.ascontiguousarray(scales, np.float32).reshape(1, -1),
                      kvb.dtype, per="row", parallel=_par(codes.size))
    return vals.reshape(blk.shape)
