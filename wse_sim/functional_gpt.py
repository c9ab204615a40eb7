"""Transformer kernels of functional runs (`wse_sim.functional`): distributed norms, RoPE,
activations, sequence-split attention and its exact softmax combine.

Each kernel runs once per task over every core of the task's region (tiles stacked over the
region's rows and columns), through the batched kernels of `wse_sim.kernels` where one exists
and whole-array numpy otherwise; never a Python loop over cores. Values are decoded to float32
(fp16/bf16 tiles are bit patterns), computed in float32 (statistics in float64), and rounded
once where they are stored. Every kernel signature is (region, DataOp, out, inputs, what).

Attention (all tiles of a head row r of a region with C columns; core j holds the keys and
values of the positions p with p mod C == j, slot p div C):
- `attn_scores` (qkv, kv) -> scores: the new K/V of the core's own positions are stored into
  its KV cache tile `kv` (2, B, kvpr, S, hd) (the append; `kv` is updated in place), then
  scores = Q K^T / sqrt(hd) for every local query head against its K/V head (`head_kv`),
  -inf where the key is after the query (causal) or the slot is empty; tile (T, heads, S + 2).
- `attn_softmax` (scores) -> scores, in place: p = exp(s - m) with the local row max m, and
  m and l = sum p in the two last entries (m = -inf, l = 0 when no key is visible).
- `attn_av` (scores, kv) -> part (T, heads * (hd + 2)): per head [o = p V, m, l].
The row's reduce stream then merges the triples (`combine_softmax`).
"""

from __future__ import annotations

import numpy as np

from wse_sim import kernels as K
from wse_sim.program import ProgramError


def _par(n: int) -> bool:
    from wse_sim.functional import _par as par
    return par(n)


def _load(buf, reg, what) -> np.ndarray:
    """Tiles of `buf` on `reg` as float32 values, (rows, cols, *shape), a private copy."""
    blk = buf.block(reg, what)
    if buf.lp:
        return K.from_bits(np.ascontiguousarray(blk), buf.dtype, parallel=_par(blk.size))
    return np.array(blk, np.float32)


def _store(buf, reg, what, values: np.ndarray) -> None:
    blk = buf.block(reg, what)
    values = np.asarray(values, np.float32)
    if values.shape != blk.shape:
        raise ProgramError(f"{what}: result tiles {values.shape[2:]} do not fit buffer "
                           f"{buf.name!r} {buf.shape}")
    blk[...] = buf.encode(values)


def _arity(ins, n: int, what: str):
    if len(ins) != n:
        raise ProgramError(f"{what}: kernel needs {n} input buffer(s), got {len(ins)}")
    return ins


# ---- norms, rows, rotary, activations ----------------------------------------------------------

def norm_stats(reg, d, out, ins, what):
    """(T, n) shard -> (T, 2): its sum and sum of squares per token (padding adds zeros)."""
    (x,) = _arity(ins, 1, what)
    v = _load(x, reg, what).astype(np.float64)
    _store(out, reg, what, np.stack([v.sum(-1), (v * v).sum(-1)], axis=-1))


def norm_apply(reg, d, out, ins, what):
    """(x, stats, gain) -> x normalised with the all-reduced stats of `n` features; gain tile
    (2, shard): gain and bias; (1, shard) for RMSNorm (`rms`)."""
    x, st, g = _arity(ins, 3, what)
    n, rms, eps = int(d.param("n")), bool(d.param("rms")), float(d.param("eps"))
    v = _load(x, reg, what).astype(np.float64)
    s = _load(st, reg, what).astype(np.float64)
    gb = _load(g, reg, what).astype(np.float64)
    if s.shape[-1] != 2 or gb.shape[-2] != (1 if rms else 2):
        raise ProgramError(f"{what}: norm_apply needs stats (..., 2) and gain tiles "
                           f"({1 if rms else 2}, n): gain (and bias)")
    mean = s[..., 0:1] / n
    if rms:
        y = v / np.sqrt(s[..., 1:2] / n + eps) * gb[..., None, 0, :]
    else:
        var = np.maximum(s[..., 1:2] / n - mean * mean, 0.0)
        y = (v - mean) / np.sqrt(var + eps) * gb[..., None, 0, :] + gb[..., None, 1, :]
    _store(out, reg, what, y)


def select_rows(reg, d, out, ins, what):
    """Rows `rows` of the input tile (the last token of each sequence)."""
    (x,) = _arity(ins, 1, what)
    rows = np.asarray(d.param("rows"), np.int64)
    _store(out, reg, what, _load(x, reg, what)[..., rows, :])


def rope(reg, d, out, ins, what):
    """Rotate the first `heads` head-wide groups of a (T, groups * hd) tile; token t is at
    position start + t mod sq."""
    (x,) = _arity(ins, 1, what)
    hd, heads = int(d.param("hd")), int(d.param("heads"))
    start, sq = int(d.param("start")), int(d.param("sq"))
    v = _load(x, reg, what)
    R, C, T = v.shape[:3]
    sub = v[..., :heads * hd].reshape(R, C, T, heads, hd).transpose(0, 1, 3, 2, 4)
    pos = start + np.arange(T) % sq
    rot = K.rope(np.ascontiguousarray(sub.reshape(-1, T, hd)), pos,
                 float(d.param("theta", 10000.0)), parallel=_par(sub.size))
    v[..., :heads * hd] = rot.reshape(R, C, heads, T, hd).transpose(0, 1, 3, 2, 4) \
        .reshape(R, C, T, heads * hd)
    _store(out, reg, what, v)


def gelu(reg, d, out, ins, what):
    (x,) = _arity(ins, 1, what)
    v = _load(x, reg, what)
    _store(out, reg, what, K.gelu(v, parallel=_par(v.size)))


def swiglu(reg, d, out, ins, what):
    """(T, 2 n) = [up | gate] -> (T, n) = silu(gate) * up."""
    (x,) = _arity(ins, 1, what)
    v = _load(x, reg, what)
    n = v.shape[-1] // 2
    up, gate = np.ascontiguousarray(v[..., :n]), np.ascontiguousarray(v[..., n:])
    _store(out, reg, what, K.swiglu(gate, up, parallel=_par(gate.size)))


# ---- attention ---------------------------------------------------------------------------------

def _att_params(reg, d, what):
    hd, heads = int(d.param("hd")), int(d.param("heads"))
    B, sq, start = int(d.param("batch")), int(d.param("sq")), int(d.param("start"))
    head_kv = np.asarray(d.param("head_kv"), np.int64).reshape(-1, heads)
    if head_kv.shape[0] != reg.rows:
        raise ProgramError(f"{what}: head_kv gives {head_kv.shape[0]} head rows, the region "
                           f"has {reg.rows}")
    return hd, heads, B, sq, start, head_kv


def _per_head(kv: np.ndarray, head_kv: np.ndarray) -> np.ndarray:
    """(R, C, B, kvpr, S, hd) -> (R, C, B, heads, S, hd): each local query head's K/V head."""
    R, C, B = kv.shape[:3]
    idx = np.maximum(head_kv, 0)
    return kv[np.arange(R)[:, None, None, None], np.arange(C)[None, :, None, None],
              np.arange(B)[None, None, :, None], idx[:, None, None, :]]


def attn_scores(reg, d, out, ins, what):
    qkv, kvb = _arity(ins, 2, what)
    hd, H, B, sq, start, head_kv = _att_params(reg, d, what)
    q = _load(qkv, reg, what)
    R, C, T, _ = q.shape
    kvt = kvb.block(reg, what)  # stored tiles, (R, C, 2, B, kvpr, S, hd)
    kvpr, S = kvt.shape[4], kvt.shape[5]
    if T != B * sq or q.shape[3] != (H + 2 * kvpr) * hd:
        raise ProgramError(f"{what}: qkv tile {qkv.shape} does not match {B} x {sq} tokens and "
                           f"{H} + 2 x {kvpr} heads of {hd}")
    if start + sq > S * C:
        raise ProgramError(f"{what}: positions up to {start + sq - 1} do not fit {S} slots x "
                           f"{C} columns of {kvb.name!r}")
    q = q.reshape(R, C, B, sq, H + 2 * kvpr, hd)
    new = kvb.encode(np.ascontiguousarray(q[..., H:, :]))  # (R, C, B, sq, 2 kvpr, hd)
    for s in range(sq):  # the append: position p goes to column p mod C, slot p div C
        p = start + s
        kvt[:, p % C, 0, :, :, p // C] = new[:, p % C, :, s, :kvpr]
        kvt[:, p % C, 1, :, :, p // C] = new[:, p % C, :, s, kvpr:]
    keys = _per_head(_load(kvb, reg, what)[:, :, 0], head_kv)  # (R, C, B, H, S, hd)
    qh = q[..., :H, :].transpose(0, 1, 2, 4, 3, 5)  # (R, C, B, H, sq, hd)
    n = R * C * B * H
    sc = K.gemm_tiles(np.ascontiguousarray(qh.reshape(n, sq, hd)),
                      np.ascontiguousarray(keys.reshape(n, S, hd).transpose(0, 2, 1)),
                      parallel=_par(n * sq * S * hd))
    sc = sc.reshape(R, C, B, H, sq, S) / np.float32(np.sqrt(hd))
    kpos = np.arange(S)[None, :] * C + np.arange(C)[:, None]  # (C, S)
    qpos = start + np.arange(sq)
    visible = kpos[:, None, :] <= qpos[None, :, None]  # (C, sq, S)
    visible = visible[None, :, None, None] & (head_kv >= 0)[:, None, None, :, None, None]
    sc = np.where(visible, sc, -np.inf).astype(np.float32)
    res = np.zeros((R, C, T, H, S + 2), np.float32)
    res[..., :S] = sc.transpose(0, 1, 2, 4, 3, 5).reshape(R, C, T, H, S)
    _store(out, reg, what, res)


def attn_softmax(reg, d, out, ins, what):
    (sb,) = _arity(ins, 1, what)
    v = _load(sb, reg, what)
    s = v[..., :-2]
    m = s.max(-1, keepdims=True)
    finite = np.isfinite(m)
    p = np.where(finite, np.exp(s - np.where(finite, m, 0.0)), 0.0).astype(np.float32)
    v[..., :-2] = p
    v[..., -2] = m[..., 0]
    v[..., -1] = p.sum(-1, dtype=np.float64)
    _store(out, reg, what, v)


def attn_av(reg, d, out, ins, what):
    sb, kvb = _arity(ins, 2, what)
    hd, H, B, sq, start, head_kv = _att_params(reg, d, what)
    v = _load(sb, reg, what)  # (R, C, T, H, S + 2)
    R, C, T = v.shape[:3]
    S = v.shape[-1] - 2
    vals = _per_head(_load(kvb, reg, what)[:, :, 1], head_kv)  # (R, C, B, H, S, hd)
    p = v[..., :S].reshape(R, C, B, sq, H, S).transpose(0, 1, 2, 4, 3, 5)
    n = R * C * B * H
    o = K.gemm_tiles(np.ascontiguousarray(p.reshape(n, sq, S)),
                     np.ascontiguousarray(vals.reshape(n, S, hd)), parallel=_par(n * sq * S * hd))
    o = o.reshape(R, C, B, H, sq, hd).transpose(0, 1, 2, 4, 3, 5).reshape(R, C, T, H, hd)
    res = np.concatenate([o, v[..., S:]], axis=-1)  # [o, m, l] per head
    _store(out, reg, what, res.reshape(R, C, T, H * (hd + 2)))


def combine_softmax(vals: np.ndarray, heads: int, what: str) -> np.ndarray:
    """Merge per-head (o, m, l) triples along axis 0 (stream order) with the online-softmax
    rule; returns o / l (0 where no key was visible). vals (L, ..., heads * (n + 2))."""
    width = vals.shape[-1]
    if heads < 1 or width % heads or width // heads < 3:
        raise ProgramError(f"{what}: combine softmax of {width} values in {heads} heads")
    t = vals.reshape(*vals.shape[:-1], heads, width // heads)
    o, m, lsum = t[0, ..., :-2].copy(), t[0, ..., -2].copy(), t[0, ..., -1].copy()
    for k in range(1, t.shape[0]):  # a short loop along the line, batched over every line
        m, lsum, o = K.online_softmax_combine(
            m, lsum, o, np.ascontiguousarray(t[k, ..., -2]), np.ascontiguousarray(t[k, ..., -1]),
            np.ascontiguousarray(t[k, ..., :-2]), parallel=_par(o.size))
    safe = np.where(lsum > 0, lsum, 1.0)[..., None]
    res = np.where(lsum[..., None] > 0, o / safe, 0.0).astype(np.float32)
    return res.reshape(*res.shape[:-2], -1)


KERNELS = {"norm_stats": norm_stats, "norm_apply": norm_apply, "select_rows": select_rows,
           "rope": rope, "gelu": gelu, "swiglu": swiglu, "attn_scores": attn_scores,
           "attn_softmax": attn_softmax, "attn_av": attn_av}
