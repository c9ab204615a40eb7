"""Functional runs with per-tensor dtypes: 8-bit weights and an 8-bit KV cache (issue 20).

The tiles (`FLayout.layer_tiles`, `head_tiles`) and DataOps (`layer_data`, `head_data`) of a
float run, re-typed:

- **Weights** (`--weights-dtype`): every weight matrix tile (Q, K, V or the fused Q|K|V, O, FFN
  up / gate / down) and every LM-head table tile is stored in the weights dtype. For int8 and
  fp8 it holds uint8 codes and has a scale tile of its own, `<tile>.scale` (fp32, one value
  per output column of the core's tile: (n,) beside a (k, n) tile), on the same cores. The
  scales are per output channel of the *whole* matrix (amax over all its input rows, so
  independent of the layout): a core holds the scales of the output columns it computes,
  repeated on every core that holds another input shard of those columns. The GEMM DataOps
  take the scales as a third input (`wse_sim.kernels.basic.gemm`: 8-bit codes decoded
  exactly, fp32 sums, then each output column times its scale: dequantization after the
  sum). Norm gains stay in the activations' dtype.
- **KV cache** (`--kv-dtype`): the `kv` tile in the KV dtype; for int8 / fp8 uint8 codes and
  `<kv>.scale` (fp32, (2, B, kvpr, S): one scale per token, per K/V head, for K and V apart),
  quantized where `attn_scores` appends a position and dequantized where attention reads
  it (`wse_sim.kernels.kv_q8`).

SRAM: the scale tiles are real bytes in the region's arena (`common.alloc_group`); where
they do not fit in what the timing model budgets, `sram_extra_bytes` says by how much.
`functional_model` fills the tiles (`quantized_weights`) and `reference_weights` /
`kv_rounder` make the numpy reference quantize the same way (`wse_sim.kernels.quant_ref`).
"""

from __future__ import annotations

import numpy as np

from wse_sim.program import DataOp

MATRIX_KEYS = ("wq", "wk", "wv", "wqkv", "wo", "wup", "wgate", "wdown")
Q8_DTYPES = ("int8", "fp8_e4m3", "fp8_e5m2")
SCALE = ".scale"


def is8(dtype: str) -> bool:
    return dtype in Q8_DTYPES


def scale_name(name: str) -> str:
    """The scale tile of the 8-bit tile `name`."""
    return name + SCALE


def _retype(tiles: dict, dtypes: dict) -> dict:
    """`tiles` with tile name -> dtype of `dtypes` applied, each 8-bit tile followed by its
    scale tile (the tile's shape less its last axis for the KV cache, its last axis for a
    weight matrix: `dtypes` values are (dtype, "kv" | "matrix"))."""
    out = {}
    for name, (reg, shape, dt, slot) in tiles.items():
        if name not in dtypes:
            out[name] = (reg, shape, dt, slot)
            continue
        new, kind = dtypes[name]
        out[name] = (reg, shape, new, slot)
        if is8(new):
            sshape = tuple(shape[:-1]) if kind == "kv" else (shape[-1],)
            out[scale_name(name)] = (reg, sshape, "fp32", slot)
    return out


def layer_dtypes(fl, b) -> dict:
    """Tile name -> (dtype, kind) of layer tiles `b` (a LayerBufs) whose dtype is not the
    activations'."""
    out = {}
    if fl.wdt != fl.dtype:
        out.update({b(k): (fl.wdt, "matrix") for k in MATRIX_KEYS})
    if fl.kvdt != fl.dtype:
        out[b("kv")] = (fl.kvdt, "kv")
    return out


def layer_tiles(fl, b, tiles: dict) -> dict:
    return _retype(tiles, layer_dtypes(fl, b))


def head_tiles(fl, j: int, tiles: dict) -> dict:
    if fl.wdt == fl.dtype:
        return tiles
    return _retype(tiles, {f"head{j}.table": (fl.wdt, "matrix")})


def with_scales(data: dict, names) -> dict:
    """DataOps that read an 8-bit tile of `names` also read its scale tile (the last input)."""
    names = set(names)
    out = {}
    for key, op in data.items():
        hit = [n for n in (op.inputs if op is not None else ()) if n in names]
        out[key] = op if not hit else DataOp(op.kernel, op.inputs + (scale_name(hit[0]),),
                                             op.output, op.params)
    return out


def layer_data(fl, b, data: dict) -> dict:
    return with_scales(data, [n for n, (dt, _) in layer_dtypes(fl, b).items() if is8(dt)])


def head_data(fl, k: int, data: dict) -> dict:
    return with_scales(data, [f"head{j}.table" for j in range(k)] if is8(fl.wdt) else [])


# ---- the weights as the cores hold them, and the reference's -----------------------------
def matrix_names(weights: dict) -> list[str]:
    """The weight matrices a run stores in the weights dtype: the layers' projections and FFN,
    the token (and position) table and the LM head; not the norm gains and biases."""
    return [k for k in weights if k in ("embed", "pos", "lm_head") or
            (k.startswith("L") and ".w_" in k)]


def per_row(name: str) -> bool:
    """The tables are quantized per row (per token or position: an output channel of the
    tied LM head); the (k, n) matrices per output column."""
    return name in ("embed", "pos")


def quantized_weights(weights: dict, dtype: str) -> tuple[dict, dict]:
    """(codes, scales) of every matrix (`matrix_names`) by the kernels' quantizer
    (`wse_sim.kernels.quantize`): codes uint8 of the matrix's shape, scales float32 per output
    channel ((n,) per column, (rows,) per row for the tables)."""
    from wse_sim.kernels import quantize
    codes, scales = {}, {}
    for name in matrix_names(weights):
        w = np.asarray(weights[name], np.float32)
        w = w.T if per_row(name) else w
        c, s = quantize(np.ascontiguousarray(w)[None], dtype, per="col")
        codes[name] = c[0].T if per_row(name) else c[0]
        scales[name] = s[0]
    return codes, scales


def code_values(codes: np.ndarray, dtype: str) -> np.ndarray:
    """The float32 value of every code (no scale)."""
    from wse_sim.kernels import dequantize
    flat = np.ascontiguousarray(codes).reshape(1, 1, -1)
    return dequantize(flat, np.ones((1, flat.shape[2]), np.float32), dtype).reshape(codes.shape)


def reference_weights(weights: dict, weights_dtype: str, acts_dtype: str, round_to) -> dict:
    """The weights the numpy reference runs with (float64): every matrix quantized and
    dequantized by `wse_sim.kernels.quant_ref` (code value x scale, exactly) when the weights
    dtype is 8-bit, else rounded to it; the norm gains and biases rounded to the activations'
    dtype. `round_to(x, dtype)` rounds float32 to a float dtype."""
    from wse_sim.kernels import quant_ref
    mats = set(matrix_names(weights))
    out = {}
    for name, w in weights.items():
        w = np.asarray(w, np.float32)
        if name not in mats:
            out[name] = round_to(w, acts_dtype).astype(np.float64)
        elif not is8(weights_dtype):
            out[name] = round_to(w, weights_dtype).astype(np.float64)
        else:
            m = w.T if per_row(name) else w
            c, s = quant_ref.quantize(np.ascontiguousarray(m)[None], weights_dtype, "col")
            deq = quant_ref.decode(c[0], weights_dtype).astype(np.float64) * \
                s[0].astype(np.float64)[None, :]
            out[name] = deq.T if per_row(name) else deq
    return out


def kv_rounder(acts_dtype: str, kv_dtype: str, round_to):
    """What the reference does to K and V (batch, kv heads, positions, hd) before attention
    reads them, as the cores store them: rounded to the activations' dtype (the qkv tile),
    then quantized per (token, head) vector and dequantized by `quant_ref` (8-bit KV), or
    rounded to the KV dtype. None when the cache is in the activations' float dtype."""
    if kv_dtype == acts_dtype:
        return None
    from wse_sim.kernels import quant_ref

    def rounder(x: np.ndarray) -> np.ndarray:
        v = round_to(np.asarray(x, np.float32), acts_dtype)
        if not is8(kv_dtype):
            return round_to(v, kv_dtype).astype(np.float64)
        hd = v.shape[-1]
        c, s = quant_ref.quantize(v.reshape(1, -1, hd), kv_dtype, "row")
        deq = quant_ref.decode(c, kv_dtype).astype(np.float64) * s.astype(np.float64)[..., None]
        return deq.reshape(x.shape)
    return rounder
