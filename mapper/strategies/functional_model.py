"""Data in and out of a whole-model program built with functional=True.

- `model_inputs(program, cfg, weights, tokens, kv_cache=None)`: the reference weights
  (`workloads.reference.init_weights` layout), the tokens (batch, new tokens) and, for decode,
  the KV cache of the prompt (`reference.forward`'s cache: per layer (k, v), each
  (batch, kv_heads, context, hd)) scattered into the per-core tiles that
  `wse_sim.functional.run_functional` starts from (layout: `functional_layout`).
- `model_output(program, buffers)`: the logits (batch, vocab) of the last token of each
  sequence, gathered from the leaders of the table regions.
- `model_kv_cache(program, cfg, buffers)`: the KV cache the run leaves (per layer (k, v),
  each (batch, kv_heads, keys, hd)), to check it or to feed a decode run.
- Training (`phase="train"`): `model_inputs(..., targets=...)` also scatters the next-token
  targets (to the LM head's leaders) and the token ids (where the tokens enter: the embedding
  gradient's scatter-add happens there, off the records, as the gather does);
  `model_loss(program, buffers)` is the mean cross-entropy and `model_grads(program,
  buffers)` the gradient of every weight (`reference.loss_and_grads`' names and shapes).
  Under GQA a K/V head kept by several head rows gets one partial gradient per row; they
  are summed here. `random_train_case(program, cfg, seed)`: (inputs, reference loss,
  reference grads). The Adam update records stay timing-only (no DataOps).
- `random_case(program, cfg, seed)`: random weights (`init_weights(cfg, seed)`) and tokens
  (seed `seed`; for decode a random prompt of `context` tokens whose cache the reference
  computes), scattered, and the reference logits to compare with (float64, from the weights
  rounded to the run's dtype, as the cores hold them).

8-bit weights or KV cache (`functional_quant`): `model_inputs` quantizes the float weights it
is given (per output channel of each matrix, per row of the tables) and the decode cache (per
token and head, from its values rounded to the activations' dtype) into codes and scale tiles;
`random_case` compares with a reference that quantizes the same way (`quantized=False`: the
unquantized float reference, to see what quantizing costs); `quantized_tensors(program)`
names what a run stores in 8 bits (or another float).

The token embedding gather happens where the tokens enter (the timing model does not simulate
it either): the gathered rows (and learned position rows) are inputs of the `embed` record.
"""

from __future__ import annotations

import numpy as np

from mapper.strategies import functional_quant as fq
from mapper.strategies.functional_layout import FLayout, LayerBufs, _cols, _pad, _zeros
from workloads import reference
from workloads.models import GPTConfig
from workloads.pruning import prune_layers
from wse_sim.kernels import dequantize, quantize
from wse_sim.program import Program, ProgramError
from wse_sim.sparsity import Sparsity


def _fmeta(program: Program) -> dict:
    meta = (program.meta or {}).get("functional")
    if meta is None:
        raise ProgramError(f"program {program.name!r} was not built with functional=True")
    return meta


def layout_of(program: Program, cfg: GPTConfig) -> FLayout:
    m = _fmeta(program)
    if cfg.name != m["model"]:
        raise ValueError(f"cfg: got model {cfg.name!r}, the program maps {m['model']!r}")
    return FLayout(cfg, m["rows"], m["cols"], m["dtype"], m["batch"], m["sq"], m["start"],
                   m["tables"], m.get("train", False), m.get("kv_layers", 1),
                   row_groups=m.get("row_groups", True),
                   weights_dtype=m.get("weights_dtype", ""), kv_dtype=m.get("kv_dtype", ""))


def round_to(x: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values rounded to fp16 / bf16 (nearest even), as float32."""
    x = np.asarray(x, np.float32)
    if dtype == "fp16":
        return x.astype(np.float16).astype(np.float32)
    if dtype == "bf16":
        u = x.view(np.uint32).astype(np.uint64)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
        return u.astype(np.uint32).view(np.float32)
    return x.copy()


def decode(program: Program, buffers: dict, name: str) -> np.ndarray:
    """A tile buffer of a functional run as float32 values (fp16/bf16 bit patterns decoded;
    int8 / fp8 codes times their scales, from the tile `name + ".scale"`)."""
    alloc = next((a for a in program.allocs if a.name == name and a.shape), None)
    if alloc is None:
        raise ProgramError(f"program {program.name!r} has no tile {name!r}")
    arr = np.ascontiguousarray(buffers[name])
    if fq.is8(alloc.dtype):
        s = np.asarray(buffers[fq.scale_name(name)], np.float32)
        last = arr.shape[-1]
        vals = dequantize(arr.reshape(1, -1, last), np.ones((1, last), np.float32),
                          alloc.dtype).reshape(arr.shape)
        if s.shape == arr.shape[:-1]:  # one scale per vector along the last axis (KV cache)
            return vals * s[..., None]
        return vals * s[..., None, :]  # one per column of a weight tile
    if alloc.dtype == "fp16":
        return arr.view(np.float16).astype(np.float32)
    if alloc.dtype == "bf16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def _head_cols(w: np.ndarray, heads: list[int], slots: int, hd: int) -> np.ndarray:
    """Columns of `heads` (hd each) of w, in slot order; missing slots are zero."""
    out = np.zeros((w.shape[0], slots * hd), np.float32)
    for k, h in enumerate(heads):
        out[:, k * hd:(k + 1) * hd] = w[:, h * hd:(h + 1) * hd]
    return out


def _layer_inputs(program, fl: FLayout, w: dict, i: int, b: LayerBufs, out: dict,
                  kv_cache) -> None:
    cfg, hd = fl.cfg, fl.hd
    p = f"L{i}."
    for key, norm in (("ln1", "ln1"), ("ln2", "ln2")):
        arr = _zeros(program, b(key))
        arr[0, :, 0] = _cols(w[p + norm + "_g"][None], fl, 1)[:, 0]
        if cfg.norm == "layernorm":
            arr[0, :, 1] = _cols(w[p + norm + "_b"][None], fl, 1)[:, 0]
        out[b(key)] = arr
    if fl.G > 1:
        _group_attention_inputs(program, fl, w, p, b, out)
    else:
        for key, name, per in (("wq", "w_q", None), ("wk", "w_k", "kv"), ("wv", "w_v", "kv")):
            arr = _zeros(program, b(key))
            for r in range(fl.ra):
                heads = fl.row_kv[r] if per else fl.row_heads(r)
                slots = fl.kvpr if per else fl.hpr
                arr[r] = _cols(_head_cols(w[p + name], list(heads), slots, hd), fl, 0)
            out[b(key)] = arr
        arr = _zeros(program, b("wo"))
        for r in range(fl.ra):  # W_o rows of the row's heads, d-shard j
            rows = _head_cols(w[p + "w_o"].T, fl.row_heads(r), fl.hpr, hd).T
            arr[r] = _cols(rows, fl, 1)
        out[b("wo")] = arr
    if cfg.is_moe_layer(i):
        from mapper.strategies.moe_functional import moe_inputs
        moe_inputs(program, fl, w, i, b, out)
    else:
        _ffn_inputs(program, fl, w, p, b, out)
    if kv_cache is None:  # nothing cached yet: the KV tiles start at zero
        return
    _kv_inputs(program, fl, i, b, out, kv_cache)


def _ffn_inputs(program, fl: FLayout, w: dict, p: str, b: LayerBufs, out: dict) -> None:
    cfg, C, R = fl.cfg, fl.cols, fl.rows
    F = fl.fr * R
    names = [("wup", "w_up")] + ([("wgate", "w_gate")] if cfg.activation == "swiglu" else [])
    for key, name in names:  # core (j, r): W[d-shard j, f-shard r]
        wp = _pad(w[p + name], (C * fl.dc, F)).reshape(C, fl.dc, R, fl.fr)
        out[b(key)] = wp.transpose(2, 0, 1, 3)
    wp = _pad(w[p + "w_down"], (F, C * fl.dc)).reshape(R, fl.fr, C, fl.dc)
    out[b("wdown")] = wp.transpose(0, 2, 1, 3)


def _kv_inputs(program, fl: FLayout, i: int, b: LayerBufs, out: dict, kv_cache) -> None:
    cfg, C, hd = fl.cfg, fl.cols, fl.hd
    arr = _zeros(program, b("kv"))
    ks, vs = kv_cache[i]
    for t, src in ((0, ks), (1, vs)):
        src = np.asarray(src, np.float32)
        if src.shape != (fl.batch, cfg.n_kv_heads, fl.start, hd):
            raise ValueError(f"kv_cache[{i}]: shape {src.shape}, the program expects "
                             f"{(fl.batch, cfg.n_kv_heads, fl.start, hd)}")
        # position p of sequence b at index v = p + offset b: row (v div C) mod G of
        # each group, column v mod C, slot v div (G C)
        G = fl.G
        sp = np.zeros((fl.batch, cfg.n_kv_heads, fl.slots * G * C, hd), np.float32)
        for bi, o in enumerate(fl.layer_offsets(i)):
            sp[bi, :, o:o + fl.start] = src[bi]
        sp = sp.reshape(fl.batch, cfg.n_kv_heads, fl.slots, G, C, hd) \
            .transpose(3, 4, 0, 1, 2, 5)  # (G, C, B, KV, S, hd)
        for r in range(fl.ra):
            for k, g in enumerate(fl.row_kv[r]):
                arr[r * G:(r + 1) * G, :, t, :, k] = sp[:, :, :, g]
    if not fq.is8(fl.kvdt):
        out[b("kv")] = arr
        return
    # 8-bit: as the qkv tile held K and V (the activations' dtype), one scale per vector
    codes, scales = quantize(round_to(arr, fl.dtype).reshape(1, -1, hd), fl.kvdt, per="row")
    out[b("kv")] = codes.reshape(arr.shape)
    out[fq.scale_name(b("kv"))] = scales.reshape(arr.shape[:-1])


def _group_attention_inputs(program, fl: FLayout, w: dict, p: str, b: LayerBufs,
                            out: dict) -> None:
    """G > 1: row g of group r holds columns [g w, (g + 1) w) of the group's [Q | K | V]
    projection and rows [g w_o, (g + 1) w_o) of its O-projection (both padded with zeros)."""
    hd, G = fl.hd, fl.G
    qkv, wo = _zeros(program, b("wqkv")), _zeros(program, b("wo"))
    for r in range(fl.ra):
        full = np.concatenate([_head_cols(w[p + "w_q"], fl.row_heads(r), fl.hpr, hd),
                               _head_cols(w[p + "w_k"], list(fl.row_kv[r]), fl.kvpr, hd),
                               _head_cols(w[p + "w_v"], list(fl.row_kv[r]), fl.kvpr, hd)], 1)
        full = _pad(full, (full.shape[0], G * fl.w_qkv))
        rows = _head_cols(w[p + "w_o"].T, fl.row_heads(r), fl.hpr, hd).T
        rows = _pad(rows, (G * fl.w_o, rows.shape[1]))
        for g in range(G):
            qkv[r * G + g] = _cols(full[:, g * fl.w_qkv:(g + 1) * fl.w_qkv], fl, 0)
            wo[r * G + g] = _cols(rows[g * fl.w_o:(g + 1) * fl.w_o], fl, 1)
    out[b("wqkv")], out[b("wo")] = qkv, wo


def model_inputs(program: Program, cfg: GPTConfig, weights: dict, tokens,
                 kv_cache: list | None = None, targets=None) -> dict[str, np.ndarray]:
    """Per-core input arrays of every tile the run starts from (see the module docstring);
    a training step also takes the next-token `targets` (batch, tokens)."""
    fl = layout_of(program, cfg)
    tokens = np.asarray(tokens)
    if tokens.shape != (fl.batch, fl.sq) or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(f"tokens: got {tokens.shape} {tokens.dtype}, the program runs "
                         f"(batch, new tokens) = {(fl.batch, fl.sq)} integers")
    if (kv_cache is None) != (fl.start == 0):
        raise ValueError(f"kv_cache: the program {'decodes after' if fl.start else 'starts at'} "
                         f"position {fl.start}; give the cache of exactly those positions")
    out: dict[str, np.ndarray] = {}
    if not fq.is8(fl.wdt):  # the gathered rows come from a table stored in the weights dtype
        emb = {k: round_to(v, fl.wdt) if k in ("embed", "pos") else v for k, v in weights.items()}
        _embed_inputs(program, fl, emb, tokens, targets, out)
        _weight_inputs(program, fl, weights, kv_cache, out)
        return out
    # 8-bit weights: the tiles hold codes (placed as their numbers 0..255 by the same code
    # that places float weights, then made uint8) and the scale tiles the scales of their
    # columns (a matrix of each column's scale placed the same way, its largest per column:
    # padding rows are 0); the gathered table rows are dequantized (code value x scale)
    codes, scales = fq.quantized_weights(weights, fl.wdt)
    emb = dict(weights)
    for k in ("embed", "pos"):
        if k in codes:
            emb[k] = fq.code_values(codes[k], fl.wdt) * scales[k][:, None]
    _embed_inputs(program, fl, emb, tokens, targets, out)
    _weight_inputs(program, fl, weights | {k: c.astype(np.float32) for k, c in codes.items()},
                   kv_cache, out)
    spread = {k: np.broadcast_to(s[:, None] if fq.per_row(k) else s[None, :],
                                 weights[k].shape) for k, s in scales.items()}
    sc: dict[str, np.ndarray] = {}
    _weight_inputs(program, fl, weights | spread, None, sc)
    for a in program.allocs:
        if a.shape and fq.is8(a.dtype) and a.name in sc:
            out[a.name] = out[a.name].astype(np.uint8)
            out[fq.scale_name(a.name)] = sc[a.name].max(axis=-2)
    return out


def _embed_inputs(program, fl: FLayout, w: dict, tokens, targets, out: dict) -> None:
    """The gathered token (and position) rows of each chunk or micro-batch (and, training,
    its targets and token ids)."""
    for sfx, b0, nb, s0, ns in parts(program):  # each chunk's or micro-batch's own tokens
        tk = tokens[b0:b0 + nb, s0:s0 + ns]
        rows = w["embed"][tk.reshape(-1)]  # (T, d): the gather where the tokens enter
        out["embed.rows" + sfx] = _cols(rows, fl, 1)[None]
        if fl.cfg.positions == "learned":
            pos = w["pos"][fl.start + s0 + np.arange(tk.size) % ns]
            out["embed.pos" + sfx] = _cols(pos, fl, 1)[None]
        if fl.train:
            tg = _check_targets(targets, tokens)[b0:b0 + nb, s0:s0 + ns]
            _train_inputs(program, tk, tg, sfx, out)


def _weight_inputs(program, fl: FLayout, w: dict, kv_cache, out: dict) -> None:
    """Every layer's weights (and KV cache), the final norm and the LM head's table."""
    cfg, m = fl.cfg, _fmeta(program)
    for i, lay in enumerate(m["layers"]):
        _layer_inputs(program, fl, w, i, LayerBufs(lay["w"], lay["a"]), out, kv_cache)
    arr = _zeros(program, "lnf.g")
    arr[0, :, 0] = _cols(w["ln_f_g"][None], fl, 1)[:, 0]
    if cfg.norm == "layernorm":
        arr[0, :, 1] = _cols(w["ln_f_b"][None], fl, 1)[:, 0]
    out["lnf.g"] = arr
    table = w["embed"].T if cfg.tied_embeddings else w["lm_head"]  # (d, V)
    R, k = fl.rows, fl.tables
    tp = _pad(table, (fl.cols * fl.dc, k * R * fl.vr)).reshape(fl.cols, fl.dc, k, R, fl.vr)
    for j in range(k):  # core (j_col, r) of table region h: table[d-shard, shard h R + r]
        out[f"head{j}.table"] = tp[:, :, j].transpose(2, 0, 1, 3)


def model_output(program: Program, buffers: dict) -> np.ndarray:
    """Logits (batch, vocab) from the leaders (column 0) of every table region."""
    m = _fmeta(program)
    parts = []
    for j in range(len(m["heads"])):
        lg = decode(program, buffers, f"head{j}.logits")  # (R, C, lm, vr)
        parts.extend(lg[r, 0] for r in range(lg.shape[0]))
    return np.concatenate(parts, axis=-1)[:, :m["vocab"]]


def model_kv_cache(program: Program, cfg: GPTConfig, buffers: dict) -> list:
    """The KV cache the run leaves: per layer (k, v), each (batch, kv_heads, keys, hd)."""
    m = _fmeta(program)
    fl = layout_of(program, cfg)
    out = []
    for i, lay in enumerate(m["layers"]):
        kv = decode(program, buffers, LayerBufs(lay["w"], lay["a"])("kv"))
        # (Ra G, C, 2, B, kvpr, S, hd) -> (2, B, KV, S * G * C, hd) by index
        # v = (slot G + row in group) C + column; position p of sequence b = v - offset b
        G = fl.G
        full = np.zeros((2, fl.batch, cfg.n_kv_heads, fl.slots, G, fl.cols, fl.hd), np.float32)
        for r in range(fl.ra - 1, -1, -1):  # a K/V head kept by several rows: the first one
            for k, g in enumerate(fl.row_kv[r]):
                full[:, :, g] = kv[r * G:(r + 1) * G, :, :, :, k].transpose(2, 3, 4, 0, 1, 5)
        full = full.reshape(2, fl.batch, cfg.n_kv_heads, fl.slots * G * fl.cols, fl.hd)
        full = np.stack([full[:, bi, :, o:o + fl.keys]
                         for bi, o in enumerate(fl.layer_offsets(i))], axis=1)
        out.append((full[0], full[1]))
    return out


def sparsify(weights: dict, sparsity: float, rng, meta: dict | None = None) -> dict:
    """Zero a `sparsity` fraction of every layer GEMM weight at random (real masks: the mapped
    run skips those multiply-adds, the reference multiplies by the zeros). A program's `meta`
    with a compressed `sparse_format` or a fraction per layer (`sparsity_layers`) prunes by
    magnitude instead, per layer (`workloads.pruning`; docs/sparsity.md)."""
    meta = meta or {}
    fmt, per_layer = meta.get("sparse_format", "dense"), meta.get("sparsity_layers")
    if fmt != "dense" or per_layer:
        sp = Sparsity(fmt, 0.0 if per_layer else sparsity, tuple(per_layer or ()))
        return prune_layers(weights, sp.of_layer, sp.nm if sp.kind == "nm" else None)
    if sparsity <= 0:
        return weights
    out = dict(weights)
    for k, v in weights.items():
        if k.startswith("L") and ".w_" in k:
            out[k] = np.where(rng.random(v.shape) < sparsity, 0, v).astype(v.dtype)
    return out


def quantized_tensors(program: Program) -> str:
    """What a functional run stores outside the activations' dtype ("weights int8, kv
    fp8_e4m3"), or "" for a one-dtype run."""
    m = _fmeta(program)
    return ", ".join(f"{k} {m[k + '_dtype']}" for k in ("weights", "kv")
                     if m.get(k + "_dtype", m["dtype"]) != m["dtype"])


def random_case(program: Program, cfg: GPTConfig, seed: int = 0, *,
                quantized: bool = True) -> tuple[dict, np.ndarray]:
    """(inputs for run_functional, reference logits (batch, vocab)) for random weights and
    tokens; see the module docstring. The reference stores the tensors as the run does:
    weights and KV cache in their dtypes, 8-bit ones quantized the same way
    (`functional_quant.reference_weights`, `kv_rounder`); `quantized=False`: the float
    reference instead (every tensor in the activations' dtype), to see what quantizing
    costs."""
    fl = layout_of(program, cfg)
    if fl.train:
        raise ValueError(f"program {program.name!r} is a training step: use random_train_case, "
                         "model_loss and model_grads")
    weights = reference.init_weights(cfg, seed)
    rng = np.random.default_rng(seed)
    weights = sparsify(weights, float(program.meta.get("sparsity", 0.0)), rng, program.meta)
    wdt, kvdt = (fl.wdt, fl.kvdt) if quantized else (fl.dtype, fl.dtype)
    w64 = fq.reference_weights(weights, wdt, fl.dtype, round_to)
    kv_round = fq.kv_rounder(fl.dtype, kvdt, round_to)
    kv = None
    if fl.start:
        prompt = rng.integers(0, cfg.vocab_size, (fl.batch, fl.start))
        _, kv = reference.forward(cfg, w64, prompt, kv_round=kv_round)
    tokens = rng.integers(0, cfg.vocab_size, (fl.batch, fl.sq))
    logits, _ = reference.forward(cfg, w64, tokens, kv_cache=kv, start_pos=fl.start,
                                  kv_round=kv_round)
    return model_inputs(program, cfg, weights, tokens, kv), logits[:, -1]


# ---- training -----------------------------------------------------------------------------------

def _check_targets(targets, tokens: np.ndarray) -> np.ndarray:
    targets = np.asarray(targets) if targets is not None else None
    if targets is None or targets.shape != tokens.shape or \
            not np.issubdtype(targets.dtype, np.integer):
        raise ValueError(f"targets: a training step needs integer targets of the tokens' shape "
                         f"{tokens.shape}, got {None if targets is None else targets.shape}")
    return targets


def _train_inputs(program, tokens, targets, sfx: str, out: dict) -> None:
    """One micro-batch's targets (at the LM head's leaders) and token ids (where they enter)."""
    arr = _zeros(program, "loss.targets" + sfx)
    arr[...] = targets.reshape(1, 1, -1, 1)
    out["loss.targets" + sfx] = arr
    arr = _zeros(program, "embed.ids" + sfx)
    arr[...] = tokens.reshape(1, 1, -1, 1)
    out["embed.ids" + sfx] = arr


def _shards(g: np.ndarray, n: int) -> np.ndarray:
    """(C, dc, ...) d-shards -> (d, ...)."""
    return g.reshape(-1, *g.shape[2:])[:n]


def _layer_grads(program, fl: FLayout, buffers: dict, i: int, b: LayerBufs, out: dict) -> None:
    cfg, hd, d, R = fl.cfg, fl.hd, fl.cfg.d_model, fl.rows
    p, F = f"L{i}.", cfg.d_ffn
    for key, norm in (("gln1", "ln1"), ("gln2", "ln2")):
        g = decode(program, buffers, b(key))[0]  # (C, gain, dc)
        out[p + norm + "_g"] = g[:, 0].reshape(-1)[:d]
        if cfg.norm == "layernorm":
            out[p + norm + "_b"] = g[:, 1].reshape(-1)[:d]
    for key, name, per in (("gwq", "w_q", False), ("gwk", "w_k", True), ("gwv", "w_v", True)):
        g = decode(program, buffers, b(key))  # (Ra, C, dc, slots hd)
        full = np.zeros((d, (cfg.n_kv_heads if per else cfg.n_heads) * hd), np.float32)
        for r in range(fl.ra):
            for k, h in enumerate(fl.row_kv[r] if per else fl.row_heads(r)):
                full[:, h * hd:(h + 1) * hd] += _shards(g[r, :, :, k * hd:(k + 1) * hd], d)
        out[p + name] = full
    g = decode(program, buffers, b("gwo"))  # (Ra, C, hpr hd, dc)
    full = np.zeros((cfg.n_heads * hd, d), np.float32)
    for r in range(fl.ra):
        for k, h in enumerate(fl.row_heads(r)):
            full[h * hd:(h + 1) * hd] = _shards(g[r, :, k * hd:(k + 1) * hd].transpose(0, 2, 1),
                                                d).T
    out[p + "w_o"] = full
    names = [("gwup", "w_up")] + ([("gwgate", "w_gate")] if cfg.activation == "swiglu" else [])
    for key, name in names:  # core (j, r): W[d-shard j, f-shard r]
        g = decode(program, buffers, b(key)).transpose(1, 2, 0, 3)
        out[p + name] = g.reshape(fl.cols * fl.dc, R * fl.fr)[:d, :F]
    g = decode(program, buffers, b("gwdown")).transpose(0, 2, 1, 3)
    out[p + "w_down"] = g.reshape(R * fl.fr, fl.cols * fl.dc)[:F, :d]


def parts(program: Program) -> list[tuple]:
    """The chunks or micro-batches of a functional program: (tile suffix, first sequence,
    sequences, first position, positions); one part with suffix "" when it is not split."""
    m = _fmeta(program)
    if "parts" in m:
        return [tuple(p) for p in m["parts"]]
    return [("", 0, m["batch"], 0, m["sq"])]


def model_loss(program: Program, buffers: dict) -> float:
    """Mean cross-entropy of a training step, from the loss statistics [M, L, z_target] (of
    every micro-batch)."""
    st = np.concatenate([decode(program, buffers, "loss.stats" + p[0])[0, 0]
                         for p in parts(program)]).astype(np.float64)  # (T, 3)
    return float(np.mean(np.log(st[:, 1]) + st[:, 0] - st[:, 2]))


def model_grads(program: Program, buffers: dict, cfg: GPTConfig | None = None) -> dict:
    """The gradient of every weight after a training step (`reference.loss_and_grads`' names
    and shapes), gathered from the gradient tiles."""
    m = _fmeta(program)
    if not m.get("train"):
        raise ProgramError(f"program {program.name!r} is not a functional training step")
    if cfg is None:
        from workloads.models import load_model
        cfg = load_model(m["model"])
    fl = layout_of(program, cfg)
    d, out = cfg.d_model, {}
    for i, lay in enumerate(m["layers"]):
        _layer_grads(program, fl, buffers, i, LayerBufs(lay["w"], lay["a"], lay["g"]), out)
    g = decode(program, buffers, "lnf.gg")[0]
    out["ln_f_g"] = g[:, 0].reshape(-1)[:d]
    if cfg.norm == "layernorm":
        out["ln_f_b"] = g[:, 1].reshape(-1)[:d]
    g = decode(program, buffers, "head0.gtable").transpose(1, 2, 0, 3)  # (C, dc, R, vr)
    table = g.reshape(fl.cols * fl.dc, fl.rows * fl.vr)[:d, :cfg.vocab_size]
    embed = np.zeros((cfg.vocab_size, d), np.float32)
    pos = np.zeros((cfg.max_context, d), np.float32)
    for sfx, _, nb, _, ns in parts(program):  # every micro-batch's rows
        eg = decode(program, buffers, "embed.grad" + sfx)[0].transpose(1, 0, 2)
        eg = eg.reshape(nb * ns, -1)[:, :d]
        ids = decode(program, buffers, "embed.ids" + sfx)[0, 0, :, 0].astype(np.int64)
        np.add.at(embed, ids, eg)  # the scatter-add where the tokens entered
        pos[:ns] += eg.reshape(nb, ns, d).sum(0)
    if cfg.tied_embeddings:
        embed += table.T
    else:
        out["lm_head"] = table
    out["embed"] = embed
    if cfg.positions == "learned":
        out["pos"] = pos
    return out


def random_train_case(program: Program, cfg: GPTConfig, seed: int = 0):
    """(inputs, reference loss, reference grads) of a training step on random weights,
    tokens and targets; the reference runs in float64 on the weights rounded to the run's
    dtype."""
    fl = layout_of(program, cfg)
    if not fl.train:
        raise ValueError(f"program {program.name!r} is not a training step; use random_case")
    weights = reference.init_weights(cfg, seed)
    rng = np.random.default_rng(seed)
    w64 = {k: round_to(v, fl.dtype).astype(np.float64) for k, v in weights.items()}
    tokens = rng.integers(0, cfg.vocab_size, (fl.batch, fl.sq))
    targets = rng.integers(0, cfg.vocab_size, (fl.batch, fl.sq))
    loss, grads = reference.loss_and_grads(cfg, w64, tokens, targets)
    return model_inputs(program, cfg, weights, tokens, targets=targets), loss, grads
