"""Tests for the numpy MoE reference (workloads.reference.route / moe_ffn / forward) against
an independent per-token loop, in fp32, float64 and with fp16-rounded weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workloads import reference
from workloads.models import GPTConfig, load_model
from workloads.moe import MoEConfig
from workloads.reference import forward, init_weights, loss_and_grads, moe_ffn, route

TINY = load_model("tiny-moe")
VARIANTS = {
    "tiny-moe": TINY,
    # gpt-oss style: top-k of the logits then softmax, no shared expert, every layer MoE
    "topk-softmax": TINY.with_overrides(
        moe=MoEConfig(n_experts=8, top_k=3, d_expert=32, router="topk_softmax")
    ),
    # DeepSeek-V3 style: sigmoid, selection bias, groups, scaled weights, 2 shared experts
    "sigmoid-groups": TINY.with_overrides(
        moe=MoEConfig(
            n_experts=8,
            top_k=3,
            d_expert=16,
            n_shared_experts=2,
            router="sigmoid_topk",
            routed_scale=2.5,
            n_groups=4,
            topk_groups=2,
            selection_bias=True,
            dense_layers=(0,),
        )
    ),
    # softmax weights used as they are (not renormalized)
    "unnormalized": TINY.with_overrides(
        moe=MoEConfig(n_experts=4, top_k=2, d_expert=32, normalize_topk=False)
    ),
    # GPT-2 style: GELU experts, LayerNorm, learned positions, tied head
    "gelu": GPTConfig(
        name="gelu-moe",
        n_layers=2,
        d_model=64,
        n_heads=4,
        n_kv_heads=4,
        d_ffn=256,
        vocab_size=512,
        max_context=128,
        moe=MoEConfig(n_experts=4, top_k=1, d_expert=48, n_shared_experts=1),
    ),
}


# ---- an independent, straightforward implementation: one token at a time ------------------
def _act(cfg, x, gate=None):
    if cfg.activation == "swiglu":
        return np.array([g / (1.0 + math.exp(-g)) * u for g, u in zip(gate, x, strict=True)])
    c = math.sqrt(2.0 / math.pi)
    return np.array([0.5 * v * (1.0 + math.tanh(c * (v + 0.044715 * v**3))) for v in x])


def _expert(cfg, w, name, e, x):
    up = x @ w[name + ".w_up"][e].astype(np.float64)
    gate = x @ w[name + ".w_gate"][e].astype(np.float64) if cfg.activation == "swiglu" else None
    return _act(cfg, up, gate) @ w[name + ".w_down"][e].astype(np.float64)


def loop_choice(moe, z, bias):
    """(chosen experts best first, their weights) of one token's router logits z."""
    E, per = moe.n_experts, moe.n_experts // moe.n_groups
    if moe.router == "softmax_topk":
        top = max(z)
        scores = [math.exp(v - top) / sum(math.exp(u - top) for u in z) for v in z]
    elif moe.router == "sigmoid_topk":
        scores = [1.0 / (1.0 + math.exp(-v)) for v in z]
    else:
        scores = list(z)
    sel = [scores[e] + (float(bias[e]) if bias is not None else 0.0) for e in range(E)]
    allowed = list(range(E))
    if moe.n_groups > 1:
        group_score = [sum(sorted(sel[g * per : (g + 1) * per])[-2:]) for g in range(moe.n_groups)]
        best = sorted(range(moe.n_groups), key=lambda g: (-group_score[g], g))[: moe.topk_groups]
        allowed = [e for e in range(E) if e // per in best]
    chosen = sorted(allowed, key=lambda e: (-sel[e], e))[: moe.top_k]
    wts = [scores[e] for e in chosen]
    if moe.router == "topk_softmax":
        top = max(wts)
        wts = [math.exp(v - top) / sum(math.exp(u - top) for u in wts) for v in wts]
    elif moe.normalize_topk:
        wts = [v / sum(wts) for v in wts]
    return chosen, [v * moe.routed_scale for v in wts]


def loop_moe_ffn(cfg, w, layer, h):
    """MoE FFN of `layer`, token by token, in float64."""
    moe, p = cfg.moe, f"L{layer}."
    flat = h.reshape(-1, h.shape[-1]).astype(np.float64)
    out = np.zeros_like(flat)
    for t, x in enumerate(flat):
        z = [float(x @ w[p + "w_router"][:, e].astype(np.float64)) for e in range(moe.n_experts)]
        chosen, wts = loop_choice(moe, z, w.get(p + "router_bias"))
        for e, wt in zip(chosen, wts, strict=True):
            out[t] += wt * _expert(cfg, w, p + "experts", e, x)
        for j in range(moe.n_shared_experts):
            out[t] += _expert(cfg, w, p + "shared", j, x)
    return out.reshape(h.shape).astype(h.dtype)


# ---- tests -----------------------------------------------------------------------------------
def _tokens(cfg, shape, seed=0):
    return np.random.default_rng(seed).integers(0, cfg.vocab_size, shape)


def _fp16_rounded(w):
    return {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}


@pytest.mark.parametrize("storage", ["fp32", "fp16"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_moe_ffn_matches_loop(name, storage):
    cfg = VARIANTS[name]
    w = init_weights(cfg, seed=3)
    if storage == "fp16":
        w = _fp16_rounded(w)
    layer = cfg.n_layers - 1
    h = np.random.default_rng(1).standard_normal((2, 9, cfg.d_model)).astype(np.float32)
    moe = cfg.moe
    idx, wts = route(moe, h.reshape(-1, cfg.d_model) @ w[f"L{layer}.w_router"],
                     w.get(f"L{layer}.router_bias"))  # fmt: skip
    for t, x in enumerate(h.reshape(-1, cfg.d_model).astype(np.float64)):
        z = x @ w[f"L{layer}.w_router"].astype(np.float64)
        chosen, want = loop_choice(moe, list(z), w.get(f"L{layer}.router_bias"))
        assert idx[t].tolist() == chosen
        np.testing.assert_allclose(wts[t], want, rtol=1e-5)
    got = moe_ffn(cfg, w, layer, h)
    assert got.shape == h.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, loop_moe_ffn(cfg, w, layer, h), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("storage", ["fp32", "fp16", "fp64"])
@pytest.mark.parametrize("name", list(VARIANTS))
def test_logits_match_loop_model(name, storage, monkeypatch):
    cfg = VARIANTS[name]
    w = init_weights(cfg, seed=5, dtype=np.float64 if storage == "fp64" else np.float32)
    if storage == "fp16":
        w = _fp16_rounded(w)
    toks = _tokens(cfg, (2, 7))
    want_dtype = np.float64 if storage == "fp64" else np.float32
    got, _ = forward(cfg, w, toks)
    monkeypatch.setattr(reference, "moe_ffn", loop_moe_ffn)
    want, _ = forward(cfg, w, toks)
    assert got.dtype == want_dtype and np.isfinite(got).all()
    tol = dict(rtol=1e-10, atol=1e-12) if storage == "fp64" else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(got, want, **tol)
    assert np.abs(got - want).max() < 1e-3 * np.abs(got).max()


def test_route_exact_values():
    soft = MoEConfig(n_experts=4, top_k=2, d_expert=1)
    z = np.log(np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 1.0, 5.0]]))
    idx, w = route(soft, z)
    assert idx.tolist() == [[3, 2], [0, 1]]  # ties: lower index first
    np.testing.assert_allclose(w, [[4 / 7, 3 / 7], [0.5, 0.5]])
    idx, w = route(MoEConfig(n_experts=4, top_k=2, d_expert=1, normalize_topk=False), z[:1])
    np.testing.assert_allclose(w, [[0.4, 0.3]])
    idx, w = route(MoEConfig(n_experts=4, top_k=2, d_expert=1, router="topk_softmax"), z[:1])
    assert idx.tolist() == [[3, 2]]
    np.testing.assert_allclose(w, [[4 / 7, 3 / 7]])
    # groups {0, 1} and {2, 3}: sums 1.0 and 1.1, so the best expert (0) is not reachable
    grouped = MoEConfig(n_experts=4, top_k=2, d_expert=1, router="sigmoid_topk",
                        n_groups=2, topk_groups=1, routed_scale=2.5)  # fmt: skip
    s = np.array([[0.9, 0.1, 0.6, 0.5]])
    idx, w = route(grouped, np.log(s / (1 - s)))
    assert idx.tolist() == [[2, 3]]
    np.testing.assert_allclose(w, [[2.5 * 6 / 11, 2.5 * 5 / 11]])
    # a selection bias changes the choice, not the weights
    biased = MoEConfig(n_experts=4, top_k=1, d_expert=1, router="sigmoid_topk",
                       selection_bias=True)  # fmt: skip
    idx, w = route(biased, np.log(s / (1 - s)), bias=np.array([0.0, 0.0, 0.0, 0.5]))
    assert idx.tolist() == [[3]] and w.tolist() == [[1.0]]


def test_init_weights_moe_layout():
    w = init_weights(TINY, seed=0)
    assert w["L0.w_up"].shape == (64, 192) and "L1.w_up" not in w
    assert w["L1.w_router"].shape == (64, 8)
    assert w["L1.experts.w_gate"].shape == (8, 64, 32)
    assert w["L2.experts.w_down"].shape == (8, 32, 64)
    assert w["L2.shared.w_up"].shape == (1, 64, 32) and "L1.router_bias" not in w
    assert sum(v.size for v in w.values()) == TINY.param_count()  # RMSNorm: no biases
    w2 = init_weights(VARIANTS["sigmoid-groups"], seed=0)
    assert w2["L1.router_bias"].shape == (8,) and w2["L1.shared.w_up"].shape == (2, 64, 16)
    assert "shared" not in " ".join(init_weights(VARIANTS["topk-softmax"]))
    again = init_weights(TINY, seed=0)
    assert all(np.array_equal(w[k], again[k]) for k in w)


def test_deterministic_and_decode_matches_prefill():
    w = init_weights(TINY, seed=1)
    toks = _tokens(TINY, (3, 12), seed=2)
    full, cache_full = forward(TINY, w, toks)
    again, _ = forward(TINY, w, toks)
    assert np.array_equal(full, again)
    _, cache = forward(TINY, w, toks[:, :10])
    out, cache = forward(TINY, w, toks[:, 10:11], kv_cache=cache, start_pos=10)
    out2, cache = forward(TINY, w, toks[:, 11:12], kv_cache=cache, start_pos=11)
    np.testing.assert_allclose(out[:, 0], full[:, 10], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out2[:, 0], full[:, 11], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cache[2][0], cache_full[2][0], rtol=1e-5, atol=1e-6)


def test_routing_uses_several_experts():
    # the tiny model is not degenerate: its tokens spread over the experts
    w = init_weights(TINY, seed=0)
    h = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    idx, wts = route(TINY.moe, h @ w["L1.w_router"])
    assert len(set(idx.ravel().tolist())) == 8
    np.testing.assert_allclose(wts.sum(-1), 1.0, rtol=1e-6)


def test_no_moe_backward():
    w = init_weights(TINY)
    toks = _tokens(TINY, (1, 4))
    with pytest.raises(ValueError, match="MoE") as exc:
        loss_and_grads(TINY, w, toks, toks)
    assert "\n" not in str(exc.value)
