"""Tests for workloads.reference: the numpy oracle (KV cache, building blocks, gradients)."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.models import load_model
from workloads.reference import (
    attention,
    causal_mask,
    forward,
    gelu,
    init_weights,
    layernorm,
    loss_and_grads,
    rmsnorm,
    rope,
    softmax,
)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_kv_cache_decode_matches_full_forward(name):
    cfg = load_model(name)
    w = init_weights(cfg, seed=1)
    toks = np.random.default_rng(0).integers(0, cfg.vocab_size, (3, 12))
    full, cache_full = forward(cfg, w, toks)
    assert full.shape == (3, 12, cfg.vocab_size) and full.dtype == np.float32
    _, cache = forward(cfg, w, toks[:, :10])
    out, cache = forward(cfg, w, toks[:, 10:11], kv_cache=cache, start_pos=10)
    out2, cache = forward(cfg, w, toks[:, 11:12], kv_cache=cache, start_pos=11)
    np.testing.assert_allclose(out[:, 0], full[:, 10], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out2[:, 0], full[:, 11], rtol=1e-4, atol=1e-5)
    assert cache[0][0].shape == (3, cfg.n_kv_heads, 12, cfg.hd)
    np.testing.assert_allclose(cache[1][1], cache_full[1][1], rtol=1e-5, atol=1e-6)


def test_causality():
    cfg = load_model("tiny-llama")
    w = init_weights(cfg)
    toks = np.arange(10)[None, :]
    a, _ = forward(cfg, w, toks)
    toks2 = toks.copy()
    toks2[0, 7] = 99
    b, _ = forward(cfg, w, toks2)
    np.testing.assert_array_equal(a[0, :7], b[0, :7])
    assert not np.allclose(a[0, 7:], b[0, 7:])


def test_deterministic_weights():
    cfg = load_model("tiny")
    a, b = init_weights(cfg, seed=3), init_weights(cfg, seed=3)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert "pos" in a and "lm_head" not in a and "L1.ln2_b" in a
    c = init_weights(load_model("tiny-llama"))
    assert "pos" not in c and "lm_head" in c and "L0.w_gate" in c and "L0.ln1_b" not in c
    assert c["L0.w_k"].shape == (64, 32)


def test_building_blocks():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 16))
    y = layernorm(x, np.ones(16), np.zeros(16))
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.std(-1), 1, atol=1e-4)
    r = rmsnorm(x, np.ones(16))
    np.testing.assert_allclose((r * r).mean(-1), 1, atol=1e-4)
    np.testing.assert_allclose(
        gelu(np.array([0.0, 1.0, -1.0])), [0.0, 0.8411919906, -0.1588080094], atol=1e-9
    )
    p = softmax(rng.standard_normal((3, 5, 5)), causal=True)
    np.testing.assert_allclose(p.sum(-1), 1)
    assert np.all(p[..., ~causal_mask(5, 5)] == 0)
    assert causal_mask(2, 4).tolist() == [[True, True, True, False], [True] * 4]
    # RoPE is a rotation: norm-preserving, invertible, relative (q.k depends on offset only)
    q, k = rng.standard_normal((2, 8)), rng.standard_normal((2, 8))
    rq = rope(q, np.array([3, 5]))
    np.testing.assert_allclose(np.linalg.norm(rq, axis=-1), np.linalg.norm(q, axis=-1))
    np.testing.assert_allclose(rope(rq, np.array([3, 5]), inverse=True), q, atol=1e-12)
    d1 = rope(q[:1], np.array([7])) @ rope(k[:1], np.array([4])).T
    d2 = rope(q[:1], np.array([13])) @ rope(k[:1], np.array([10])).T
    np.testing.assert_allclose(d1, d2)
    # attention with a single key returns that value
    v = rng.standard_normal((1, 8))
    np.testing.assert_allclose(attention(q[:1], k[:1], v), v)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_gradients_match_finite_differences(name):
    cfg = load_model(name)
    w = init_weights(cfg, seed=2, dtype=np.float64)
    rng = np.random.default_rng(5)
    toks = rng.integers(0, cfg.vocab_size, (2, 6))
    tgt = rng.integers(0, cfg.vocab_size, (2, 6))
    loss, grads = loss_and_grads(cfg, w, toks, tgt)
    assert grads.keys() == w.keys()
    assert all(grads[k].shape == w[k].shape for k in w)
    logits, _ = forward(cfg, w, toks)
    p = softmax(logits).reshape(-1, cfg.vocab_size)
    assert loss == pytest.approx(-np.log(p[np.arange(12), tgt.reshape(-1)]).mean(), rel=1e-12)
    eps = 1e-5
    for key in w:
        for _ in range(2):
            idx = tuple(int(rng.integers(0, n)) for n in w[key].shape)
            if key == "embed":
                idx = (int(toks[0, rng.integers(6)]),) + idx[1:]
            if key == "pos":
                idx = (int(rng.integers(6)),) + idx[1:]
            old = w[key][idx]
            w[key][idx] = old + eps
            lp, _ = loss_and_grads(cfg, w, toks, tgt)
            w[key][idx] = old - eps
            lm, _ = loss_and_grads(cfg, w, toks, tgt)
            w[key][idx] = old
            fd = (lp - lm) / (2 * eps)
            assert grads[key][idx] == pytest.approx(fd, rel=1e-4, abs=1e-9), (key, idx)


def test_large_gqa_rope_shape_runs():
    cfg = load_model("tiny-llama").with_overrides(n_heads=8, n_kv_heads=2, head_dim=16)
    w = init_weights(cfg)
    logits, cache = forward(cfg, w, np.zeros((1, 5), dtype=np.int64))
    assert logits.shape == (1, 5, 512) and np.isfinite(logits).all()
    assert cache[0][0].shape == (1, 2, 5, 16)


@pytest.mark.parametrize(
    "tokens, kwargs, word",
    [
        (np.zeros((4,), dtype=int), {}, "tokens"),
        (np.full((1, 2), 512), {}, "tokens"),
        (np.zeros((1, 2), dtype=int), {"start_pos": 127}, "start_pos"),
    ],
)
def test_bad_inputs(tokens, kwargs, word):
    cfg = load_model("tiny")
    with pytest.raises(ValueError, match=word):
        forward(cfg, init_weights(cfg), tokens, **kwargs)
