"""Tests for workloads.graph: exact FLOP formulas, structure, validation."""

from __future__ import annotations

import networkx as nx
import pytest

from workloads.graph import (
    OP_KINDS,
    Op,
    build_graph,
    layer_ops,
    ops_in_order,
    summarize,
    total_flops,
)
from workloads.models import load_model

# Per-element constants, pinned here independently of the module.
NORM = {"layernorm": 8, "rmsnorm": 4}
ACT = {"gelu": 8, "swiglu": 6}
SOFTMAX, RESIDUAL, ROPE, LOSS, EMBED, ADAM = 5, 1, 3, 5, 1, 10


def _parts(cfg, batch, sq, sk, head_rows):
    """(GEMM flops, other flops) of the forward pass, from the closed formula."""
    L, d, V = cfg.n_layers, cfg.d_model, cfg.vocab_size
    T = batch * sq
    mm_per_token = sum(k * n for k, n in cfg.layer_weight_shapes().values())
    gemm = 2 * T * L * mm_per_token + L * 4 * batch * cfg.n_heads * sq * sk * cfg.hd
    gemm += 2 * head_rows * d * V
    per_tok = 2 * NORM[cfg.norm] * d + 2 * RESIDUAL * d + ACT[cfg.activation] * cfg.d_ffn
    if cfg.positions == "rope":
        per_tok += ROPE * (cfg.q_dim + cfg.kv_dim)
    other = L * T * per_tok + L * SOFTMAX * batch * cfg.n_heads * sq * sk
    other += NORM[cfg.norm] * head_rows * d
    if cfg.positions == "learned":
        other += EMBED * T * d
    return gemm, other


def prefill_formula(cfg, batch, prompt):
    gemm, other = _parts(cfg, batch, prompt, prompt, batch)
    return gemm + other


def decode_formula(cfg, batch, context):
    gemm, other = _parts(cfg, batch, 1, context + 1, batch)
    return gemm + other


def train_formula(cfg, batch, prompt):
    gemm, other = _parts(cfg, batch, prompt, prompt, batch * prompt)
    other += LOSS * batch * prompt * cfg.vocab_size
    return 3 * gemm + 2 * other + ADAM * cfg.param_count()


MODELS = ["tiny", "tiny-llama", "gpt2-small", "llama3-8b"]


@pytest.mark.parametrize("name", MODELS)
def test_prefill_flops_exact(name):
    cfg = load_model(name)
    g = build_graph(cfg, "prefill", batch=3, prompt=100)
    assert total_flops(g) == prefill_formula(cfg, 3, 100)


@pytest.mark.parametrize("name", MODELS)
def test_decode_flops_exact(name):
    cfg = load_model(name)
    g = build_graph(cfg, "decode", batch=5, context=77)
    assert total_flops(g) == decode_formula(cfg, 5, 77)


@pytest.mark.parametrize("name", MODELS)
def test_train_flops_exact(name):
    cfg = load_model(name)
    g = build_graph(cfg, "train", batch=2, prompt=64)
    assert total_flops(g) == train_formula(cfg, 2, 64)
    s = summarize(g)
    assert s["flops_by_phase"]["update"] == ADAM * cfg.param_count()


@pytest.mark.parametrize("name", ["gpt2-small", "cerebras-gpt-1.3b", "llama3-8b"])
def test_train_flops_per_token_near_6n(name):
    cfg = load_model(name)
    seq = min(2048, cfg.max_context)
    batch = 8
    g = build_graph(cfg, "train", batch=batch, prompt=seq)
    per_token = total_flops(g) / (batch * seq)
    approx = 6 * cfg.matmul_params() + 12 * cfg.n_layers * cfg.q_dim * seq
    assert abs(per_token / approx - 1) < 0.03


def test_prefill_forward_about_2n():
    cfg = load_model("cerebras-gpt-111m")
    g = build_graph(cfg, "prefill", batch=1, prompt=2048)
    gemm = summarize(g)["flops_by_kind"]["matmul"]
    assert gemm == 2 * 2048 * cfg.n_layers * cfg.layer_matmul_params()
    attn = sum(summarize(g)["flops_by_kind"][k] for k in ("attn_qk", "attn_av"))
    assert attn == 4 * cfg.n_layers * 2048 * 2048 * cfg.d_model


def test_conservation_and_summary():
    g = build_graph(load_model("tiny-llama"), "train", batch=2, prompt=16)
    s = summarize(g)
    assert sum(data["op"].flops for _, data in g.nodes(data=True)) == total_flops(g)
    assert sum(s["flops_by_kind"].values()) == total_flops(g) == s["flops"]
    assert sum(s["flops_by_phase"].values()) == total_flops(g)
    assert s["n_ops"] == g.number_of_nodes()
    assert set(s["flops_by_kind"]) <= set(OP_KINDS)


@pytest.mark.parametrize("phase", ["prefill", "decode", "train"])
def test_topological_order_valid_and_deterministic(phase):
    cfg = load_model("tiny")
    g = build_graph(cfg, phase, batch=2, prompt=16, context=16)
    assert nx.is_directed_acyclic_graph(g)
    order = ops_in_order(g)
    pos = {op.name: i for i, op in enumerate(order)}
    assert len(order) == g.number_of_nodes()
    assert all(pos[u] < pos[v] for u, v in g.edges)
    assert [op.name for op in order] == [op.name for op in ops_in_order(g)]
    assert all(g.nodes[n]["op"].name == n for n in g.nodes)
    assert order[0].name == "embed"
    if phase == "train":
        assert order[-1].phase == "update"
        assert {op.phase for op in order} == {"fwd", "bwd", "update"}


def test_gemm_shapes_gqa_and_decode():
    cfg = load_model("llama3-8b")
    g = build_graph(cfg, "decode", batch=4, context=100)
    ops = {op.name: op for op in ops_in_order(g)}
    assert (ops["L0.q_proj"].m, ops["L0.q_proj"].k, ops["L0.q_proj"].n) == (4, 4096, 4096)
    assert ops["L0.k_proj"].n == 1024 and ops["L0.v_proj"].weight == "w_v"
    qk = ops["L0.attn_qk"]
    assert (qk.m, qk.k, qk.n, qk.batch) == (1, 128, 101, 4 * 32)
    av = ops["L0.attn_av"]
    assert (av.m, av.k, av.n, av.batch) == (1, 101, 128, 4 * 32)
    assert ops["lm_head"].m == 4 and ops["lm_head"].weight == "lm_head"
    assert ops["L0.ffn_gate"].weight == "w_gate" and "L0.rope" in ops
    assert ops["L0.q_proj"].weight_bytes == 4096 * 4096 * 2


def test_prefill_lm_head_last_token_only():
    cfg = load_model("gpt2-small")
    ops = {op.name: op for op in ops_in_order(build_graph(cfg, "prefill", batch=3, prompt=50))}
    assert ops["lm_head"].m == 3 and ops["lm_head"].weight == "embed"
    assert ops["L0.attn_qk"].m == 50 and ops["L0.attn_qk"].n == 50
    assert ops["L0.q_proj"].m == 150


def test_train_backward_pairs():
    g = build_graph(load_model("tiny"), "train", batch=2, prompt=8, dtype="fp32")
    ops = {op.name: op for op in ops_in_order(g)}
    fwd = ops["L1.ffn_up"]
    for suffix in ("bwd_data", "bwd_weight"):
        b = ops[f"L1.ffn_up.{suffix}"]
        assert b.flops == fwd.flops and b.phase == "bwd" and b.weight == "w_up"
    assert (ops["L1.ffn_up.bwd_data"].m, ops["L1.ffn_up.bwd_data"].n) == (fwd.m, fwd.k)
    assert (ops["L1.ffn_up.bwd_weight"].m, ops["L1.ffn_up.bwd_weight"].n) == (fwd.k, fwd.n)
    for a, (x, y) in (("attn_qk", ("bwd_q", "bwd_k")), ("attn_av", ("bwd_p", "bwd_v"))):
        assert ops[f"L0.{a}.{x}"].flops == ops[f"L0.{a}.{y}"].flops == ops[f"L0.{a}"].flops
    assert ops["L0.w_up.adam"].elements == 64 * 256
    # gradient flows back: the optimizer of w_q waits for the grad of w_q
    assert nx.has_path(g, "loss", "L0.w_q.adam")
    assert nx.has_path(g, "L0.q_proj.bwd_weight", "L0.w_q.adam")
    assert nx.has_path(g, "lm_head.bwd_weight", "embed.adam")  # tied head


def test_layer_ops():
    g = build_graph(load_model("tiny"), "prefill", prompt=8)
    ops = layer_ops(g, 1)
    assert ops and all(op.layer == 1 for op in ops)
    assert [op.name for op in ops][0] == "L1.norm1"


def test_dtype_bytes():
    cfg = load_model("tiny")
    g32 = build_graph(cfg, "prefill", prompt=8, dtype="fp32")
    g16 = build_graph(cfg, "prefill", prompt=8, dtype="bf16")
    a, b = g32.nodes["L0.ffn_up"]["op"], g16.nodes["L0.ffn_up"]["op"]
    assert a.bytes_in == 2 * b.bytes_in and a.weight_bytes == 2 * b.weight_bytes
    assert a.flops == b.flops and b.dtype == "bf16"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(phase="generate"), "phase"),
        (dict(phase="prefill", batch=0), "batch"),
        (dict(phase="prefill", batch=-2), "batch"),
        (dict(phase="prefill", batch=1.5), "batch"),
        (dict(phase="prefill", prompt=0), "prompt"),
        (dict(phase="train", prompt=129), "prompt"),
        (dict(phase="decode", context=0), "context"),
        (dict(phase="decode", context=128), "context"),
        (dict(phase="prefill", dtype="fp8"), "dtype"),
        (dict(phase="prefill", prompt=True), "prompt"),
    ],
)
def test_bad_args(kwargs, field):
    cfg = load_model("tiny")
    phase = kwargs.pop("phase")
    with pytest.raises(ValueError) as exc:
        build_graph(cfg, phase, **kwargs)
    msg = str(exc.value)
    assert field in msg and "\n" not in msg


def test_op_validation():
    with pytest.raises(ValueError, match="kind"):
        Op("x", "conv", None, "fwd", 0, 0, 0, 1, 1, "fp32", 0, 0, 0, 0, None)
    with pytest.raises(ValueError, match="flops"):
        Op("x", "matmul", None, "fwd", 2, 3, 4, 1, 0, "fp32", 1, 0, 0, 0, None)


def test_big_graph_is_fast():
    g = build_graph(load_model("llama3.1-405b"), "train", batch=1, prompt=4096)
    assert g.number_of_nodes() > 5000
