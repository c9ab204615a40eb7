"""Plain numpy GPT: the oracle that functional simulation is checked against.

Conventions:
- Weights are stored as (K, N) matrices, activations are row vectors: ``y = x @ W``.
- No biases (GPT-2 style models have them in `GPTConfig.param_count`, not here); LayerNorm
  has gain and bias, RMSNorm a gain only; eps = 1e-5 for both.
- GELU is the tanh approximation ``0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3)))``.
- RoPE uses the "rotate half" layout (pairs are (i, i + hd/2)), base ``cfg.rope_theta``.
- Attention is causal; when the queries are the last Sq of Sk positions (KV cache), query i
  sees keys 0 .. Sk - Sq + i. GQA: query head h uses KV head ``h // (n_heads // n_kv_heads)``.
- Computation runs in the dtype of the weights (float32 by default; float64 for grad checks).
- Mixture of experts (`GPTConfig.moe`, rules in `workloads.moe`): an MoE layer's FFN is
  `moe_ffn`: `route` picks each token's experts and weights from ``h @ L{i}.w_router``, the
  chosen experts (stacked weights ``L{i}.experts.w_up`` (n_experts, d, d_expert), ``w_gate``,
  ``w_down``) run on the tokens routed to them, their outputs are summed with the weights, and
  the shared experts (``L{i}.shared.*``, stacked the same way) are added. The selection bias
  is ``L{i}.router_bias``. The reference has no MoE backward (`loss_and_grads` refuses).
"""

from __future__ import annotations

import numpy as np

from workloads.models import GPTConfig
from workloads.moe import MoEConfig

EPS = 1e-5
_GELU_C = float(np.sqrt(2.0 / np.pi))
_GELU_A = 0.044715


# ---- building blocks ----------------------------------------------------------------------
def layernorm(x: np.ndarray, g: np.ndarray, b: np.ndarray, eps: float = EPS) -> np.ndarray:
    """LayerNorm over the last axis."""
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * g + b


def rmsnorm(x: np.ndarray, g: np.ndarray, eps: float = EPS) -> np.ndarray:
    """RMSNorm over the last axis."""
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * g


def gelu(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation."""
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + _GELU_A * x**3)))


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x)."""
    return x / (1.0 + np.exp(-x))


def swiglu(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up."""
    return silu(gate) * up


def causal_mask(sq: int, sk: int) -> np.ndarray:
    """Boolean (sq, sk) mask, True where query i may see key j (queries are the last sq)."""
    return np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)


def softmax(x: np.ndarray, *, causal: bool = False) -> np.ndarray:
    """Softmax over the last axis; with causal=True the last two axes are (queries, keys)."""
    if causal:
        x = np.where(causal_mask(x.shape[-2], x.shape[-1]), x, -np.inf)
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def rope(
    x: np.ndarray, positions: np.ndarray, theta: float = 10000.0, inverse: bool = False
) -> np.ndarray:
    """Rotary embedding of x (..., S, hd) at integer positions (S,); inverse rotates back."""
    hd = x.shape[-1]
    half = hd // 2
    freqs = theta ** (-np.arange(half, dtype=np.float64) * 2.0 / hd)
    ang = np.asarray(positions, dtype=np.float64)[:, None] * freqs[None, :]
    cos, sin = np.cos(ang).astype(x.dtype), np.sin(ang).astype(x.dtype)
    if inverse:
        sin = -sin
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool = True) -> np.ndarray:
    """softmax(q k^T / sqrt(hd)) v for q (..., Sq, hd), k and v (..., Sk, hd)."""
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1]).astype(q.dtype)
    return softmax(scores, causal=causal) @ v


# ---- weights ------------------------------------------------------------------------------
def init_weights(cfg: GPTConfig, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    """Deterministic random weights (normal, std 0.02; norm gains 1 + noise, biases noise)."""
    rng = np.random.default_rng(seed)

    def normal(*shape, std=0.02):
        return (rng.standard_normal(shape) * std).astype(dtype)

    d = cfg.d_model
    w: dict[str, np.ndarray] = {"embed": normal(cfg.vocab_size, d)}
    if cfg.positions == "learned":
        w["pos"] = normal(cfg.max_context, d)

    def norm(prefix: str) -> None:
        w[prefix + "_g"] = (1.0 + normal(d, std=0.1)).astype(dtype)
        if cfg.norm == "layernorm":
            w[prefix + "_b"] = normal(d, std=0.1)

    for i in range(cfg.n_layers):
        norm(f"L{i}.ln1")
        if cfg.is_moe_layer(i):
            _init_moe_layer(cfg, i, w, normal)
        else:
            for name, (k, n) in cfg.layer_weight_shapes().items():
                w[f"L{i}.{name}"] = normal(k, n)
        norm(f"L{i}.ln2")
    norm("ln_f")
    if not cfg.tied_embeddings:
        w["lm_head"] = normal(d, cfg.vocab_size)
    return w


def _init_moe_layer(cfg: GPTConfig, i: int, w: dict, normal) -> None:
    """Attention, router and stacked expert weights of MoE layer i (module docstring)."""
    moe = cfg.moe
    for name, (k, n) in cfg.moe_layer_weight_shapes().items():
        w[f"L{i}.{name}"] = normal(k, n)
    for group, count in (("experts", moe.n_experts), ("shared", moe.n_shared_experts)):
        for name, (k, n) in cfg.expert_weight_shapes().items() if count else ():
            w[f"L{i}.{group}.{name}"] = normal(count, k, n)
    if moe.selection_bias:
        w[f"L{i}.router_bias"] = normal(moe.n_experts)


def _norm(cfg: GPTConfig, w, prefix: str, x: np.ndarray) -> np.ndarray:
    if cfg.norm == "layernorm":
        return layernorm(x, w[prefix + "_g"], w[prefix + "_b"])
    return rmsnorm(x, w[prefix + "_g"])


def _heads(x: np.ndarray, n: int, hd: int) -> np.ndarray:
    """(B, S, n*hd) -> (B, n, S, hd)."""
    b, s, _ = x.shape
    return x.reshape(b, s, n, hd).transpose(0, 2, 1, 3)


def _merge(x: np.ndarray) -> np.ndarray:
    """(B, n, S, hd) -> (B, S, n*hd)."""
    b, n, s, hd = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, s, n * hd)


def _check_tokens(cfg: GPTConfig, tokens: np.ndarray, start_pos: int) -> np.ndarray:
    tokens = np.asarray(tokens)
    if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer):
        raise ValueError(
            f"tokens: got shape {tokens.shape} dtype {tokens.dtype}, "
            "must be a 2-D integer array (batch, seq)"
        )
    if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
        raise ValueError(f"tokens: values must be in [0, {cfg.vocab_size})")
    if start_pos < 0 or start_pos + tokens.shape[1] > cfg.max_context:
        raise ValueError(
            f"start_pos: got {start_pos} with seq {tokens.shape[1]}, "
            f"must satisfy 0 <= start_pos and start_pos + seq <= {cfg.max_context}"
        )
    return tokens


# ---- FFN and mixture of experts ---------------------------------------------------------
def ffn(cfg: GPTConfig, h: np.ndarray, w_up, w_gate, w_down) -> np.ndarray:
    """One FFN (a dense layer's or one expert's): ``act(h @ w_up [, h @ w_gate]) @ w_down``."""
    if cfg.activation == "swiglu":
        f = swiglu(h @ w_gate, h @ w_up)
    else:
        f = gelu(h @ w_up)
    return f @ w_down


def _group_limit(moe: MoEConfig, select: np.ndarray) -> np.ndarray:
    """Selection scores with the experts outside each row's `topk_groups` best groups at -inf;
    a group's score is the sum of its two best selection scores."""
    rows, per = select.shape[0], moe.experts_per_group
    grouped = select.reshape(rows, moe.n_groups, per)
    best = -np.sort(-grouped, axis=-1)[..., : min(2, per)].sum(-1)
    keep = np.argsort(-best, axis=-1, kind="stable")[:, : moe.topk_groups]
    mask = np.zeros(best.shape, dtype=bool)
    np.put_along_axis(mask, keep, True, axis=-1)
    return np.where(np.repeat(mask, per, axis=-1), select, -np.inf)


def route(
    moe: MoEConfig, logits: np.ndarray, bias: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Chosen experts (tokens, top_k), best first, and their weights, from router logits
    (tokens, n_experts) by the rules of `workloads.moe`; `bias` is the selection bias."""
    if moe.router == "softmax_topk":
        scores = softmax(logits)
    elif moe.router == "sigmoid_topk":
        scores = 1.0 / (1.0 + np.exp(-logits))
    else:
        scores = logits
    select = scores if bias is None else scores + bias
    if moe.n_groups > 1:
        select = _group_limit(moe, select)
    idx = np.argsort(-select, axis=-1, kind="stable")[:, : moe.top_k]
    weights = np.take_along_axis(scores, idx, axis=-1)
    if moe.router == "topk_softmax":
        weights = softmax(weights)
    elif moe.normalize_topk:
        weights = weights / weights.sum(-1, keepdims=True)
    return idx, weights * moe.routed_scale


def moe_ffn(cfg: GPTConfig, w: dict[str, np.ndarray], layer: int, h: np.ndarray,
            routes: dict | None = None) -> np.ndarray:
    """MoE FFN of `layer` on h (..., d): each routed expert on its tokens, weighted and summed
    (in expert order), plus every shared expert on every token. `routes`, when given, gets
    ``routes[layer] = (chosen experts, weights)`` (tokens, top_k) each."""
    moe, p = cfg.moe, f"L{layer}."
    x = h.reshape(-1, h.shape[-1])
    idx, weights = route(moe, x @ w[p + "w_router"], w.get(p + "router_bias"))
    if routes is not None:
        routes[layer] = (idx, weights)
    out = np.zeros_like(x)
    for group, count in (("experts", moe.n_experts), ("shared", moe.n_shared_experts)):
        stacks = [w.get(f"{p}{group}.{name}") for name in ("w_up", "w_gate", "w_down")]
        for e in range(count):
            up, gate, down = (None if s is None else s[e] for s in stacks)
            if group == "shared":
                out += ffn(cfg, x, up, gate, down)
                continue
            rows, slot = np.nonzero(idx == e)  # a token chooses an expert at most once
            if rows.size:
                out[rows] += weights[rows, slot, None] * ffn(cfg, x[rows], up, gate, down)
    return out.reshape(h.shape)


# ---- forward ------------------------------------------------------------------------------
def forward(
    cfg: GPTConfig,
    weights: dict[str, np.ndarray],
    tokens: np.ndarray,
    *,
    kv_cache: list[tuple[np.ndarray, np.ndarray]] | None = None,
    start_pos: int = 0,
    routes: dict | None = None,
    kv_round=None,
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Logits (batch, seq, vocab) and the KV cache extended by these tokens. `routes`, when
    given, receives each MoE layer's routing (`moe_ffn`).

    The cache is a list (one per layer) of (k, v), each (batch, n_kv_heads, positions, hd),
    with RoPE already applied to k. `start_pos` must equal the cache length. `kv_round`, when
    given, is applied to K and V (the cache and the new positions) before attention reads
    them: how the cache is stored (e.g. quantized per token and head, then dequantized;
    it must act on each (token, head) vector alone); the cache returned holds the values
    before it.
    """
    tokens = _check_tokens(cfg, tokens, start_pos)
    _, s = tokens.shape
    hd, H, KV = cfg.hd, cfg.n_heads, cfg.n_kv_heads
    if kv_cache is not None and len(kv_cache) != cfg.n_layers:
        raise ValueError(f"kv_cache: got {len(kv_cache)} layers, must be {cfg.n_layers}")
    if kv_cache is not None and kv_cache[0][0].shape[2] != start_pos:
        raise ValueError(
            f"start_pos: got {start_pos}, must equal the kv_cache length "
            f"({kv_cache[0][0].shape[2]})"
        )
    positions = np.arange(start_pos, start_pos + s)
    x = weights["embed"][tokens]
    if cfg.positions == "learned":
        x = x + weights["pos"][positions]
    new_cache = []
    for i in range(cfg.n_layers):
        p = f"L{i}."
        h = _norm(cfg, weights, p + "ln1", x)
        q = _heads(h @ weights[p + "w_q"], H, hd)
        k = _heads(h @ weights[p + "w_k"], KV, hd)
        v = _heads(h @ weights[p + "w_v"], KV, hd)
        if cfg.positions == "rope":
            q = rope(q, positions, cfg.rope_theta)
            k = rope(k, positions, cfg.rope_theta)
        if kv_cache is not None:
            k = np.concatenate([kv_cache[i][0], k], axis=2)
            v = np.concatenate([kv_cache[i][1], v], axis=2)
        new_cache.append((k, v))
        if kv_round is not None:
            k, v = kv_round(k), kv_round(v)
        g = H // KV
        a = attention(q, np.repeat(k, g, axis=1), np.repeat(v, g, axis=1), causal=True)
        x = x + _merge(a) @ weights[p + "w_o"]
        h = _norm(cfg, weights, p + "ln2", x)
        if cfg.is_moe_layer(i):
            extra = () if routes is None else (routes,)
            x = x + moe_ffn(cfg, weights, i, h, *extra)
        else:
            x = x + ffn(
                cfg, h, weights[p + "w_up"], weights.get(p + "w_gate"), weights[p + "w_down"]
            )
    x = _norm(cfg, weights, "ln_f", x)
    head = weights["embed"].T if cfg.tied_embeddings else weights["lm_head"]
    return x @ head, new_cache


# ---- backward -----------------------------------------------------------------------------
def _norm_fwd(cfg, w, prefix, x):
    """Normalized output and what its backward needs."""
    if cfg.norm == "layernorm":
        mu = x.mean(-1, keepdims=True)
        rstd = 1.0 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + EPS)
        xhat = (x - mu) * rstd
        return xhat * w[prefix + "_g"] + w[prefix + "_b"], (xhat, rstd)
    rstd = 1.0 / np.sqrt((x * x).mean(-1, keepdims=True) + EPS)
    xhat = x * rstd
    return xhat * w[prefix + "_g"], (xhat, rstd)


def _norm_bwd(cfg, w, prefix, cache, dy, grads):
    xhat, rstd = cache
    axes = tuple(range(dy.ndim - 1))
    grads[prefix + "_g"] = (dy * xhat).sum(axes)
    dxhat = dy * w[prefix + "_g"]
    proj = xhat * (dxhat * xhat).mean(-1, keepdims=True)
    if cfg.norm == "layernorm":
        grads[prefix + "_b"] = dy.sum(axes)
        return rstd * (dxhat - dxhat.mean(-1, keepdims=True) - proj)
    return rstd * (dxhat - proj)


def _mm_bwd(x, w, dy):
    """Gradients of y = x @ w wrt x and w (x is (..., K))."""
    return dy @ w.T, x.reshape(-1, x.shape[-1]).T @ dy.reshape(-1, dy.shape[-1])


def loss_and_grads(
    cfg: GPTConfig, weights: dict[str, np.ndarray], tokens: np.ndarray, targets: np.ndarray
) -> tuple[float, dict[str, np.ndarray]]:
    """Mean cross-entropy of next-token `targets` and its gradient for every weight."""
    if cfg.is_moe:
        raise ValueError(
            f"loss_and_grads: {cfg.name} is an MoE model; the reference has no MoE backward"
        )
    tokens = _check_tokens(cfg, tokens, 0)
    targets = np.asarray(targets)
    if targets.shape != tokens.shape:
        raise ValueError(f"targets: got shape {targets.shape}, must equal tokens {tokens.shape}")
    bsz, s = tokens.shape
    hd, H, KV = cfg.hd, cfg.n_heads, cfg.n_kv_heads
    grp = H // KV
    pos = np.arange(s)
    scale = 1.0 / float(np.sqrt(hd))
    mask = causal_mask(s, s)
    rope_on = cfg.positions == "rope"

    x = weights["embed"][tokens]
    if cfg.positions == "learned":
        x = x + weights["pos"][pos]
    caches = []
    for i in range(cfg.n_layers):
        p = f"L{i}."
        c: dict = {"x0": x}
        h1, c["n1"] = _norm_fwd(cfg, weights, p + "ln1", x)
        c["h1"] = h1
        q = _heads(h1 @ weights[p + "w_q"], H, hd)
        k = _heads(h1 @ weights[p + "w_k"], KV, hd)
        v = _heads(h1 @ weights[p + "w_v"], KV, hd)
        if rope_on:
            q, k = rope(q, pos, cfg.rope_theta), rope(k, pos, cfg.rope_theta)
        kr, vr = np.repeat(k, grp, axis=1), np.repeat(v, grp, axis=1)
        sc = np.where(mask, q @ np.swapaxes(kr, -1, -2) * scale, -np.inf)
        P = softmax(sc)
        a = _merge(P @ vr)
        c.update(q=q, kr=kr, vr=vr, P=P, a=a)
        x = x + a @ weights[p + "w_o"]
        c["x1"] = x
        h2, c["n2"] = _norm_fwd(cfg, weights, p + "ln2", x)
        c["h2"] = h2
        u = h2 @ weights[p + "w_up"]
        if cfg.activation == "swiglu":
            gt = h2 @ weights[p + "w_gate"]
            f = silu(gt) * u
            c["gt"] = gt
        else:
            f = gelu(u)
        c.update(u=u, f=f)
        x = x + f @ weights[p + "w_down"]
        caches.append(c)
    xf, nf = _norm_fwd(cfg, weights, "ln_f", x)
    head = weights["embed"].T if cfg.tied_embeddings else weights["lm_head"]
    logits = xf @ head
    probs = softmax(logits)
    n_tok = bsz * s
    flat = probs.reshape(n_tok, -1)
    tflat = targets.reshape(n_tok)
    loss = float(-np.log(flat[np.arange(n_tok), tflat]).mean())

    grads: dict[str, np.ndarray] = {}
    dlogits = probs.copy().reshape(n_tok, -1)
    dlogits[np.arange(n_tok), tflat] -= 1.0
    dlogits = (dlogits / n_tok).reshape(logits.shape)
    dxf, dhead = _mm_bwd(xf, head, dlogits)
    grads["embed"] = np.zeros_like(weights["embed"])
    if cfg.tied_embeddings:
        grads["embed"] += dhead.T
    else:
        grads["lm_head"] = dhead
    dx = _norm_bwd(cfg, weights, "ln_f", nf, dxf, grads)
    for i in reversed(range(cfg.n_layers)):
        p, c = f"L{i}.", caches[i]
        # FFN
        df, grads[p + "w_down"] = _mm_bwd(c["f"], weights[p + "w_down"], dx)
        if cfg.activation == "swiglu":
            gt, u = c["gt"], c["u"]
            sg = 1.0 / (1.0 + np.exp(-gt))
            du = df * silu(gt)
            dgt = df * u * sg * (1.0 + gt * (1.0 - sg))
            dh2, grads[p + "w_gate"] = _mm_bwd(c["h2"], weights[p + "w_gate"], dgt)
        else:
            u = c["u"]
            t = np.tanh(_GELU_C * (u + _GELU_A * u**3))
            du = df * (0.5 * (1 + t) + 0.5 * u * (1 - t * t) * _GELU_C * (1 + 3 * _GELU_A * u * u))
            dh2 = 0.0
        dh2_up, grads[p + "w_up"] = _mm_bwd(c["h2"], weights[p + "w_up"], du)
        dx = dx + _norm_bwd(cfg, weights, p + "ln2", c["n2"], dh2 + dh2_up, grads)
        # attention
        da, grads[p + "w_o"] = _mm_bwd(c["a"], weights[p + "w_o"], dx)
        dO = _heads(da, H, hd)
        P, q, kr, vr = c["P"], c["q"], c["kr"], c["vr"]
        dP = dO @ np.swapaxes(vr, -1, -2)
        dvr = np.swapaxes(P, -1, -2) @ dO
        dsc = P * (dP - (dP * P).sum(-1, keepdims=True)) * scale
        dq = dsc @ kr
        dkr = np.swapaxes(dsc, -1, -2) @ q
        dk = dkr.reshape(bsz, KV, grp, s, hd).sum(2)
        dv = dvr.reshape(bsz, KV, grp, s, hd).sum(2)
        if rope_on:
            dq = rope(dq, pos, cfg.rope_theta, inverse=True)
            dk = rope(dk, pos, cfg.rope_theta, inverse=True)
        dh1 = 0.0
        for name, dproj in (("w_q", dq), ("w_k", dk), ("w_v", dv)):
            dh, grads[p + name] = _mm_bwd(c["h1"], weights[p + name], _merge(dproj))
            dh1 = dh1 + dh
        dx = dx + _norm_bwd(cfg, weights, p + "ln1", c["n1"], dh1, grads)
    np.add.at(grads["embed"], tokens, dx)
    if cfg.positions == "learned":
        grads["pos"] = np.zeros_like(weights["pos"])
        grads["pos"][:s] = dx.sum(0)
    return loss, grads
