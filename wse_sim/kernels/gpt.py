"""Transformer kernels of functional runs (`wse_sim.functional`): distributed norms, RoPE,
activations, sequence-split attention and its exact softmax combine.

Each kernel runs once per task over every core of the task's region (tiles stacked over the
region's rows and columns), through the batched kernels of `wse_sim.kernels` where one exists
and whole-array numpy otherwise; never a Python loop over cores. Values are decoded to float32
(fp16/bf16 tiles are bit patterns), computed in float32 (statistics in float64), and rounded
once where they are stored. Every kernel signature is (region, DataOp, out, inputs, what).

Attention (all tiles of a head row r of a region with C columns; core j holds the keys and
values of the positions p with p mod C == j, slot p div C; with parameter `group` = G > 1 the
rows come in head groups of G rows (`head_kv` alike on a group's rows) and core (j, r) holds
the positions with p mod C == j and (p div C) mod G == r mod G, slot p div (G C); with
parameter `offsets` (one per sequence) position p of sequence b sits where index p + offset b
would, so caches of several layers and sequences start on different cores):
- `attn_scores` (qkv, kv) -> scores: the new K/V of the core's own positions are stored into
  its KV cache tile `kv` (2, B, kvpr, S, hd) (the append; `kv` is updated in place), then
  scores = Q K^T / sqrt(hd) for every local query head against its K/V head (`head_kv`),
  -inf where the key is after the query (causal) or the slot is empty; tile (T, heads, S + 2).
- `attn_softmax` (scores) -> scores, in place: p = exp(s - m) with the local row max m, and
  m and l = sum p in the two last entries (m = -inf, l = 0 when no key is visible).
- `attn_av` (scores, kv) -> part (T, heads * (hd + 2)): per head [o = p V, m, l].
An 8-bit KV cache (int8, fp8) holds uint8 codes and comes with a third input, its fp32 scale
tile (2, B, kvpr, S): one scale per token, K/V head and K or V (`kv_q8`); `attn_scores`
quantizes what it appends, both kernels read the cache dequantized.
The row's reduce stream then merges the triples (`combine_softmax`; with G > 1 the row keeps
the merged triple, `combine_softmax_partial`, and the group's column merges those).
"""

from __future__ import annotations

import numpy as np

from wse_sim import kernels as K
from wse_sim.kernels import kv_q8
from wse_sim.kernels.base import use_parallel as _par
from wse_sim.program import ProgramError


def _load(buf, reg, what) -> np.ndarray:
    """Tiles of `buf` on `reg` as float32 values, (rows, cols, *shape), a private copy."""
    blk = buf.block(reg, what)
    if buf.q8:
        raise ProgramError(f"{what}: buffer {buf.name!r} holds {buf.dtype} codes; this kernel "
                           "takes float tiles (8-bit: the KV cache of attn_scores / attn_av)")
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
    position start + t mod sq (`inverse`: rotate back, the backward of RoPE)."""
    (x,) = _arity(ins, 1, what)
    hd, heads = int(d.param("hd")), int(d.param("heads"))
    start, sq = int(d.param("start")), int(d.param("sq"))
    v = _load(x, reg, what)
    R, C, T = v.shape[:3]
    sub = v[..., :heads * hd].reshape(R, C, T, heads, hd).transpose(0, 1, 3, 2, 4)
    pos = start + np.arange(T) % sq
    if d.param("inverse"):  # the backward: rotate back
        pos = -pos
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

def _group(reg, d, what) -> int:
    g = int(d.param("group", 1))
    if g < 1 or reg.rows % g:
        raise ProgramError(f"{what}: {reg.rows} rows are not head groups of {g}")
    return g


def _offsets(d, B: int, what: str) -> np.ndarray:
    """Where each sequence's cache starts (parameter `offsets`, one per sequence; 0s)."""
    offs = np.asarray(d.param("offsets", (0,) * B), np.int64)
    if offs.shape != (B,) or (offs < 0).any():
        raise ProgramError(f"{what}: offsets {tuple(offs.tolist())} must be {B} indices >= 0")
    return offs


def _key_positions(R: int, C: int, S: int, G: int) -> np.ndarray:
    """(R, C, S): the index (position + the cache's offset) of slot s of core (column j,
    row r)."""
    g = (np.arange(R) % G)[:, None, None]
    return np.arange(S)[None, None, :] * (G * C) + g * C + np.arange(C)[None, :, None]


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
    qkv, kvb, kvs = kv_q8.kv_inputs(ins, 2, reg, what)
    hd, H, B, sq, start, head_kv = _att_params(reg, d, what)
    q = _load(qkv, reg, what)
    R, C, T, _ = q.shape
    kvt = kvb.block(reg, what)  # stored tiles, (R, C, 2, B, kvpr, S, hd)
    kvpr, S = kvt.shape[4], kvt.shape[5]
    if T != B * sq or q.shape[3] != (H + 2 * kvpr) * hd:
        raise ProgramError(f"{what}: qkv tile {qkv.shape} does not match {B} x {sq} tokens and "
                           f"{H} + 2 x {kvpr} heads of {hd}")
    G = _group(reg, d, what)
    offs = _offsets(d, B, what)
    if start + sq + offs.max() > S * C * G:
        raise ProgramError(f"{what}: positions up to {start + sq - 1} (from index "
                           f"{int(offs.max())}) do not fit {S} slots x {C} columns x {G} rows "
                           f"of {kvb.name!r}")
    q = q.reshape(R, C, B, sq, H + 2 * kvpr, hd)
    # (R, C, B, sq, 2 kvpr, hd) as stored, and an 8-bit cache's scales (R, C, B, sq, 2 kvpr)
    new, new_s = kv_q8.encode_new(kvb, np.ascontiguousarray(q[..., H:, :]))
    for b in range(B):  # the append: position p of sequence b at index v = p + offset b:
        for s in range(sq):  # column v mod C, row (v div C) mod G of each group, slot v div GC
            v = start + s + int(offs[b])
            j, g, slot = v % C, (v // C) % G, v // (C * G)
            for t, at in ((0, slice(None, kvpr)), (1, slice(kvpr, None))):  # K, then V
                kvt[g::G, j, t, b, :, slot] = new[g::G, j, b, s, at]
                if kvs is not None:
                    kvs[g::G, j, t, b, :, slot] = new_s[g::G, j, b, s, at]
    keys = _per_head(kv_q8.load(kvb, kvs, reg, what)[:, :, 0], head_kv)  # (R, C, B, H, S, hd)
    qh = q[..., :H, :].transpose(0, 1, 2, 4, 3, 5)  # (R, C, B, H, sq, hd)
    n = R * C * B * H
    sc = K.gemm_tiles(np.ascontiguousarray(qh.reshape(n, sq, hd)),
                      np.ascontiguousarray(keys.reshape(n, S, hd).transpose(0, 2, 1)),
                      parallel=_par(n * sq * S * hd))
    sc = sc.reshape(R, C, B, H, sq, S) / np.float32(np.sqrt(hd))
    kpos = _key_positions(R, C, S, G)[:, :, None, :] - offs[None, None, :, None]  # (R, C, B, S)
    qpos = start + np.arange(sq)
    visible = (kpos[:, :, :, None, :] <= qpos[:, None]) & (kpos[:, :, :, None, :] >= 0)
    visible = visible[:, :, :, None] & (head_kv >= 0)[:, None, None, :, None, None]
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
    sb, kvb, kvs = kv_q8.kv_inputs(ins, 2, reg, what)
    hd, H, B, sq, start, head_kv = _att_params(reg, d, what)
    v = _load(sb, reg, what)  # (R, C, T, H, S + 2)
    R, C, T = v.shape[:3]
    S = v.shape[-1] - 2
    vals = _per_head(kv_q8.load(kvb, kvs, reg, what)[:, :, 1], head_kv)  # (R, C, B, H, S, hd)
    p = v[..., :S].reshape(R, C, B, sq, H, S).transpose(0, 1, 2, 4, 3, 5)
    n = R * C * B * H
    o = K.gemm_tiles(np.ascontiguousarray(p.reshape(n, sq, S)),
                     np.ascontiguousarray(vals.reshape(n, S, hd)), parallel=_par(n * sq * S * hd))
    o = o.reshape(R, C, B, H, sq, hd).transpose(0, 1, 2, 4, 3, 5).reshape(R, C, T, H, hd)
    res = np.concatenate([o, v[..., S:]], axis=-1)  # [o, m, l] per head
    _store(out, reg, what, res.reshape(R, C, T, H * (hd + 2)))


def _merge(vals: np.ndarray, heads: int, what: str):
    """Per-head (o, m, l) triples (vals (L, ..., heads * (n + 2))) merged along axis 0 in
    stream order with the online-softmax rule: (o unnormalised, m, l)."""
    width = vals.shape[-1]
    if heads < 1 or width % heads or width // heads < 3:
        raise ProgramError(f"{what}: combine softmax of {width} values in {heads} heads")
    t = vals.reshape(*vals.shape[:-1], heads, width // heads)
    o, m, lsum = t[0, ..., :-2].copy(), t[0, ..., -2].copy(), t[0, ..., -1].copy()
    for k in range(1, t.shape[0]):  # a short loop along the line, batched over every line
        m, lsum, o = K.online_softmax_combine(
            m, lsum, o, np.ascontiguousarray(t[k, ..., -2]), np.ascontiguousarray(t[k, ..., -1]),
            np.ascontiguousarray(t[k, ..., :-2]), parallel=_par(o.size))
    return o, m, lsum


def combine_softmax(vals: np.ndarray, heads: int, what: str) -> np.ndarray:
    """Merge per-head (o, m, l) triples along axis 0 (stream order) with the online-softmax
    rule; returns o / l (0 where no key was visible). vals (L, ..., heads * (n + 2))."""
    o, _, lsum = _merge(vals, heads, what)
    safe = np.where(lsum > 0, lsum, 1.0)[..., None]
    res = np.where(lsum[..., None] > 0, o / safe, 0.0).astype(np.float32)
    return res.reshape(*res.shape[:-2], -1)


def combine_softmax_partial(vals: np.ndarray, heads: int, what: str) -> np.ndarray:
    """`combine_softmax` that keeps the merged triple [o (unnormalised, in the merged max's
    frame), m, l] per head, for a further combine."""
    o, m, lsum = _merge(vals, heads, what)
    res = np.concatenate([o, m[..., None], lsum[..., None]], axis=-1).astype(np.float32)
    return res.reshape(*res.shape[:-2], -1)


KERNELS = {"norm_stats": norm_stats, "norm_apply": norm_apply, "select_rows": select_rows,
           "rope": rope, "gelu": gelu, "swiglu": swiglu, "attn_scores": attn_scores,
           "attn_softmax": attn_softmax, "attn_av": attn_av}


def combine_softmax_stats(vals: np.ndarray, heads: int, what: str):
    """`combine_softmax`, and also the merged (m, l) per head: (..., heads, 2)."""
    width = vals.shape[-1]
    t = vals.reshape(*vals.shape[:-1], heads, width // heads)
    m, lsum = t[0, ..., -2].copy(), t[0, ..., -1].copy()
    for k in range(1, t.shape[0]):
        mk, lk = t[k, ..., -2], t[k, ..., -1]
        mn = np.maximum(m, mk)
        safe = np.where(np.isfinite(mn), mn, 0.0)
        lsum = np.where(np.isfinite(m), lsum * np.exp(m - safe), 0.0) + \
            np.where(np.isfinite(mk), lk * np.exp(mk - safe), 0.0)
        m = mn
    return combine_softmax(vals, heads, what), np.stack([m, lsum], axis=-1).astype(np.float32)


# ---- backward (training) -----------------------------------------------------------------------
# Every backward kernel runs on one task's region like the forward ones. Weight gradients are
# local GEMMs; the partial input gradients are summed by the streams of the mapping.

def gemm_bt(reg, d, out, ins, what):
    """(a, w) -> a[:, o:o + n] @ w^T, w a (k, n) tile (`a_offset` = o); `accumulate`: out +=."""
    a, w = _arity(ins, 2, what)
    av, wv = _load(a, reg, what), _load(w, reg, what)
    o, n = int(d.param("a_offset", 0)), wv.shape[-1]
    if av.shape[-1] < o + n:
        raise ProgramError(f"{what}: columns {o}..{o + n} of {a.name!r} {a.shape} do not exist")
    r = np.matmul(av[..., o:o + n], np.swapaxes(wv, -1, -2))
    if d.param("accumulate"):
        r = r + _load(out, reg, what)
    _store(out, reg, what, r)


def gemm_tn(reg, d, out, ins, what):
    """(x, g) -> x^T @ g[:, o:o + n] (a weight gradient; n from the out tile, `b_offset` o);
    `accumulate`: out += (a later micro-batch's share of the gradient)."""
    x, g = _arity(ins, 2, what)
    xv, gv = _load(x, reg, what), _load(g, reg, what)
    o, n = int(d.param("b_offset", 0)), out.shape[-1]
    if gv.shape[-1] < o + n:
        raise ProgramError(f"{what}: columns {o}..{o + n} of {g.name!r} {g.shape} do not exist")
    r = np.matmul(np.swapaxes(xv, -1, -2), gv[..., o:o + n])
    if d.param("accumulate"):
        r = r + _load(out, reg, what)
    _store(out, reg, what, r)


def gelu_bwd(reg, d, out, ins, what):
    """(u, dy) -> dy * gelu'(u) (tanh approximation)."""
    u, dy = (_load(b, reg, what).astype(np.float64) for b in _arity(ins, 2, what))
    c, k = np.sqrt(2.0 / np.pi), 0.044715
    t = np.tanh(c * (u + k * u ** 3))
    _store(out, reg, what, dy * (0.5 * (1 + t) + 0.5 * u * (1 - t * t) * c * (1 + 3 * k * u * u)))


def swiglu_bwd(reg, d, out, ins, what):
    """([up | gate], dy) -> [d up | d gate]."""
    v, dy = (_load(b, reg, what).astype(np.float64) for b in _arity(ins, 2, what))
    n = v.shape[-1] // 2
    up, gate = v[..., :n], v[..., n:]
    sg = 1.0 / (1.0 + np.exp(-gate))
    _store(out, reg, what, np.concatenate(
        [dy * gate * sg, dy * up * sg * (1.0 + gate * (1.0 - sg))], axis=-1))


def _norm_parts(reg, d, x, st, g, what):
    n, rms, eps = int(d.param("n")), bool(d.param("rms")), float(d.param("eps"))
    v = _load(x, reg, what).astype(np.float64)
    s = _load(st, reg, what).astype(np.float64)
    gain = _load(g, reg, what).astype(np.float64)[..., None, 0, :]
    dc = v.shape[-1]
    valid = (np.arange(reg.cols)[:, None] * dc + np.arange(dc)[None, :]) < n
    valid = valid[None, :, None, :]
    if rms:
        rstd = 1.0 / np.sqrt(s[..., 1:2] / n + eps)
        xhat = v * rstd
    else:
        mean = s[..., 0:1] / n
        rstd = 1.0 / np.sqrt(np.maximum(s[..., 1:2] / n - mean * mean, 0.0) + eps)
        xhat = (v - mean) * rstd
    return n, rms, rstd, xhat * valid, gain * valid, valid


def norm_bwd_stats(reg, d, out, ins, what):
    """(dy, x, stats, gain) -> (T, 2): the shard's sums of dxhat and dxhat * xhat
    (dxhat = dy * gain; x and its forward stats give xhat). Column j of the region holds the
    d-shard j (padding excluded)."""
    dy, x, st, g = _arity(ins, 4, what)
    _, _, _, xhat, gain, _ = _norm_parts(reg, d, x, st, g, what)
    dxh = _load(dy, reg, what).astype(np.float64) * gain
    _store(out, reg, what, np.stack([dxh.sum(-1), (dxh * xhat).sum(-1)], axis=-1))


def norm_bwd_apply(reg, d, out, ins, what):
    """(dy, x, stats, gain, bstats, ggain) -> dx = rstd (dxhat - mean dxhat - xhat mean(dxhat
    xhat)) (no mean dxhat for RMSNorm) from the all-reduced `bstats`; `accumulate`: out += dx.
    Also writes the gain (and bias) gradient of the shard, summed over tokens, into `ggain`
    (in place; `accumulate_gain`: added to what it holds)."""
    dy, x, st, g, bs, gg = _arity(ins, 6, what)
    n, rms, rstd, xhat, gain, valid = _norm_parts(reg, d, x, st, g, what)
    dyv = _load(dy, reg, what).astype(np.float64) * valid
    b = _load(bs, reg, what).astype(np.float64)
    dxh = dyv * gain
    dx = dxh - xhat * b[..., 1:2] / n
    if not rms:
        dx = dx - b[..., 0:1] / n
    dx = rstd * dx * valid
    if d.param("accumulate"):
        dx = dx + _load(out, reg, what)
    grads = np.stack([(dyv * xhat).sum(-2)] + ([] if rms else [dyv.sum(-2)]), axis=-2)
    if d.param("accumulate_gain"):
        grads = grads + _load(gg, reg, what)
    _store(gg, reg, what, grads)
    _store(out, reg, what, dx)


def _global_p(reg, d, sb, gb, what):
    """The attention probabilities of the core's keys, (R, C, T, H, S): the local p = exp(s -
    m) rescaled by the row's merged (M, L) that the forward combine left in `gb`."""
    hd, H = int(d.param("hd")), int(d.param("heads"))
    sc = _load(sb, reg, what).astype(np.float64)
    g = _load(gb, reg, what).astype(np.float64)
    S = sc.shape[-1] - 2
    st = g[..., H * hd:H * hd + 2 * H].reshape(*g.shape[:-1], H, 2)
    m, big_m, big_l = sc[..., S], st[..., 0], st[..., 1]
    ok = np.isfinite(m) & (big_l > 0)
    scale = np.where(ok, np.exp(np.where(ok, m - big_m, 0.0)) / np.where(ok, big_l, 1.0), 0.0)
    return sc[..., :S] * scale[..., None], g[..., :H * hd]


def _kv_onehot(head_kv: np.ndarray, kvpr: int) -> np.ndarray:
    return (head_kv[..., None] == np.arange(kvpr)).astype(np.float64)  # (R, H, kvpr)


def _scatter_keys(out, reg, what, dkv: np.ndarray, col: int, sq: int) -> None:
    """Write per-slot gradients dkv (R, C, B, kvpr, S, hd) into columns [col, col + kvpr hd)
    of the (T, *) tile `out`: position p (column p mod C, slot p div C) is token b sq + p;
    tokens the core does not hold get zeros."""
    R, C, B, kvpr, S, hd = dkv.shape
    res = np.zeros((R, C, B, sq, kvpr, hd))
    for p in range(sq):
        res[:, p % C, :, p] = dkv[:, p % C, :, :, p // C]
    cur = _load(out, reg, what)
    cur[..., col:col + kvpr * hd] = res.reshape(R, C, B * sq, kvpr * hd)
    _store(out, reg, what, cur)


def _bwd_params(reg, d, what):
    if np.any(_offsets(d, int(d.param("batch")), what)):
        raise NotImplementedError(f"{what}: attention backward of caches that start past "
                                  "the first core is not implemented")
    if _group(reg, d, what) > 1:
        raise NotImplementedError(f"{what}: attention backward over head groups of "
                                  f"{d.param('group')} rows is not implemented")
    hd, H, B, sq, start, head_kv = _att_params(reg, d, what)
    if start:
        raise ProgramError(f"{what}: attention backward needs the queries from position 0")
    return hd, H, B, sq, head_kv


def attn_bwd_dp(reg, d, out, ins, what):
    """(gattn, kv) -> dP = dO V^T of the core's keys, (T, H, S)."""
    gb, kvb = _arity(ins, 2, what)
    hd, H, B, sq, head_kv = _bwd_params(reg, d, what)
    g = _load(gb, reg, what)
    R, C, T = g.shape[:3]
    d_o = g[..., :H * hd].reshape(R, C, B, sq, H, hd)
    v = _per_head(_load(kvb, reg, what)[:, :, 1], head_kv)  # (R, C, B, H, S, hd)
    dp = np.einsum("rcbqhd,rcbhsd->rcbqhs", d_o, v)
    _store(out, reg, what, dp.reshape(R, C, T, H, -1))


def attn_bwd_dv(reg, d, out, ins, what):
    """(scores, gattn) -> dV = P^T dO of the core's keys, summed over the query heads of each
    K/V head, into the V columns of the (T, qkv) tile `out` at the tokens the core holds."""
    sb, gb = _arity(ins, 2, what)
    hd, H, B, sq, head_kv = _bwd_params(reg, d, what)
    p, d_o = _global_p(reg, d, sb, gb, what)
    R, C, T, _, S = p.shape
    kvpr = int(d.param("kvpr"))
    dvh = np.einsum("rcbqhs,rcbqhd->rcbhsd", p.reshape(R, C, B, sq, H, S),
                    d_o.reshape(R, C, B, sq, H, hd))
    dv = np.einsum("rcbhsd,rhk->rcbksd", dvh, _kv_onehot(head_kv, kvpr))
    _scatter_keys(out, reg, what, dv, (H + kvpr) * hd, sq)


def attn_bwd_softmax(reg, d, out, ins, what):
    """(dP, scores, gattn, ao) -> dS = P (dP - rowsum(dO O)) / sqrt(hd), in place of dP."""
    gs, sb, gb, ob = _arity(ins, 4, what)
    hd, H, B, sq, head_kv = _bwd_params(reg, d, what)
    p, d_o = _global_p(reg, d, sb, gb, what)
    R, C, T = p.shape[:3]
    o = _load(ob, reg, what).astype(np.float64)
    dd = (d_o.reshape(R, C, T, H, hd) * o.reshape(R, C, T, H, hd)).sum(-1)
    dp = _load(gs, reg, what).astype(np.float64)
    _store(out, reg, what, p * (dp - dd[..., None]) / np.sqrt(hd))


def attn_bwd_dq(reg, d, out, ins, what):
    """(dS, kv) -> the core's part of dQ = dS K, into the Q columns of `out`."""
    gs, kvb = _arity(ins, 2, what)
    hd, H, B, sq, head_kv = _bwd_params(reg, d, what)
    ds = _load(gs, reg, what)
    R, C, T, _, S = ds.shape
    k = _per_head(_load(kvb, reg, what)[:, :, 0], head_kv)
    dq = np.einsum("rcbqhs,rcbhsd->rcbqhd", ds.reshape(R, C, B, sq, H, S), k)
    cur = _load(out, reg, what)
    cur[..., :H * hd] = dq.reshape(R, C, T, H * hd)
    _store(out, reg, what, cur)


def attn_bwd_dk(reg, d, out, ins, what):
    """(dS, qkv) -> dK = dS^T Q of the core's keys (per K/V head), into the K columns."""
    gs, qb = _arity(ins, 2, what)
    hd, H, B, sq, head_kv = _bwd_params(reg, d, what)
    ds = _load(gs, reg, what)
    R, C, T, _, S = ds.shape
    kvpr = int(d.param("kvpr"))
    q = _load(qb, reg, what)[..., :H * hd].reshape(R, C, B, sq, H, hd)
    dkh = np.einsum("rcbqhs,rcbqhd->rcbhsd", ds.reshape(R, C, B, sq, H, S), q)
    dk = np.einsum("rcbhsd,rhk->rcbksd", dkh, _kv_onehot(head_kv, kvpr))
    _scatter_keys(out, reg, what, dk, H * hd, sq)


def _vocab(reg, d, logits, targets, what):
    """Logits (R, 1, T, vr) of a lead column whose row r holds vocabulary shard base + r, the
    mask of real entries and the one-hot of the targets."""
    z = _load(logits, reg, what).astype(np.float64)
    R, _, T, vr = z.shape
    idx = (int(d.param("base")) + np.arange(R))[:, None] * vr + np.arange(vr)[None, :]
    valid = (idx < int(d.param("vocab")))[:, None, None, :]
    tgt = _load(targets, reg, what)[..., 0].astype(np.int64)  # (R, 1, T)
    hot = idx[:, None, None, :] == tgt[..., None]
    return z, valid, hot


def loss_stats(reg, d, out, ins, what):
    """(logits, targets) -> (T, 3) = [max M, sum exp(z - M), target logit] over the whole
    vocabulary, at every core of the lead column. NOTE: this combines the column's shards
    (2 values per token each way) inside the task: the timing model has no record for that
    all-reduce (its traffic is negligible next to the logits)."""
    lg, tg = _arity(ins, 2, what)
    z, valid, hot = _vocab(reg, d, lg, tg, what)
    zm = np.where(valid, z, -np.inf)
    m = zm.max(axis=(0, -1))  # (1, T)
    lsum = np.exp(zm - m[None, ..., None]).sum(axis=(0, -1))
    zt = np.where(hot, z, 0.0).sum(axis=(0, -1))
    res = np.stack([m, lsum, zt], axis=-1)
    _store(out, reg, what, np.broadcast_to(res[None], (z.shape[0], *res.shape)))


def loss_bwd(reg, d, out, ins, what):
    """(logits, loss stats, targets) -> dlogits = (softmax - onehot) / `count` on the shard."""
    lg, st, tg = _arity(ins, 3, what)
    z, valid, hot = _vocab(reg, d, lg, tg, what)
    s = _load(st, reg, what).astype(np.float64)
    p = np.exp(z - s[..., 0:1]) / s[..., 1:2]
    _store(out, reg, what, np.where(valid, p - hot, 0.0) / int(d.param("count")))


KERNELS.update({"gemm_bt": gemm_bt, "gemm_tn": gemm_tn, "gelu_bwd": gelu_bwd,
                "swiglu_bwd": swiglu_bwd, "norm_bwd_stats": norm_bwd_stats,
                "norm_bwd_apply": norm_bwd_apply, "attn_bwd_dp": attn_bwd_dp,
                "attn_bwd_dv": attn_bwd_dv, "attn_bwd_softmax": attn_bwd_softmax,
                "attn_bwd_dq": attn_bwd_dq, "attn_bwd_dk": attn_bwd_dk,
                "loss_stats": loss_stats, "loss_bwd": loss_bwd})
