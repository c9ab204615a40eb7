"""Tests for the op graphs of MoE models: FLOPs pinned to closed formulas over the active
weights, expert ops and their attributes, routed token counts, the training step."""

from __future__ import annotations

import networkx as nx
import pytest

from workloads.graph import ExpertOp, build_graph, ops_in_order, summarize, total_flops
from workloads.models import GPTConfig, load_model
from workloads.moe import MoEConfig

# Per-element constants, pinned here independently of the module.
NORM = {"layernorm": 8, "rmsnorm": 4}
ACT = {"gelu": 8, "swiglu": 6}
SOFTMAX, RESIDUAL, ROPE, LOSS, EMBED, ADAM = 5, 1, 3, 5, 1, 10
ROUTE, COMBINE_ROUTED, COMBINE_SHARED = 5, 2, 1


def _ffn_parts(cfg, layer, T):
    """(GEMM, other) FLOPs of one layer's FFN over T tokens."""
    d, mats = cfg.d_model, 3 if cfg.activation == "swiglu" else 2
    moe = cfg.moe
    if moe is None or layer in moe.dense_layers:
        return 2 * T * mats * d * cfg.d_ffn, ACT[cfg.activation] * T * cfg.d_ffn
    E, k, S, f = moe.n_experts, moe.top_k, moe.n_shared_experts, moe.d_expert
    gemm = 2 * T * d * E + 2 * T * (k + S) * mats * d * f
    other = ROUTE * T * E + ACT[cfg.activation] * T * (k + S) * f
    other += T * d * (COMBINE_ROUTED * k + COMBINE_SHARED * S)
    return gemm, other


def _parts(cfg, batch, sq, sk, head_rows):
    """(GEMM flops, other flops) of the forward pass, from the closed formula."""
    L, d, V, H, hd = cfg.n_layers, cfg.d_model, cfg.vocab_size, cfg.n_heads, cfg.hd
    T = batch * sq
    attn_w = 2 * d * H * hd + 2 * d * cfg.n_kv_heads * hd
    gemm = L * (2 * T * attn_w + 4 * batch * H * sq * sk * hd) + 2 * head_rows * d * V
    per_tok = 2 * NORM[cfg.norm] * d + 2 * RESIDUAL * d
    if cfg.positions == "rope":
        per_tok += ROPE * (H + cfg.n_kv_heads) * hd
    other = L * T * per_tok + L * SOFTMAX * batch * H * sq * sk + NORM[cfg.norm] * head_rows * d
    if cfg.positions == "learned":
        other += EMBED * T * d
    for i in range(L):
        g, o = _ffn_parts(cfg, i, T)
        gemm, other = gemm + g, other + o
    return gemm, other


def prefill_formula(cfg, batch, prompt):
    return sum(_parts(cfg, batch, prompt, prompt, batch))


def decode_formula(cfg, batch, context):
    return sum(_parts(cfg, batch, 1, context + 1, batch))


def train_formula(cfg, batch, prompt):
    gemm, other = _parts(cfg, batch, prompt, prompt, batch * prompt)
    other += LOSS * batch * prompt * cfg.vocab_size
    return 3 * gemm + 2 * other + ADAM * cfg.param_count()


BASE = dict(
    name="m",
    n_layers=3,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,
    d_ffn=192,
    vocab_size=512,
    max_context=128,
)
# GPT-2 style (LayerNorm, biases, GELU, learned positions, tied head), groups and a bias
GELU_MOE = GPTConfig(
    **BASE,
    moe=MoEConfig(
        n_experts=8,
        top_k=3,
        d_expert=16,
        n_shared_experts=2,
        router="sigmoid_topk",
        n_groups=4,
        topk_groups=2,
        selection_bias=True,
        dense_layers=(1,),
    ),
)


def _cfg(name):
    return GELU_MOE if name == "gelu-moe" else load_model(name)


@pytest.mark.parametrize("name", ["tiny-moe", "gelu-moe", "mixtral-8x7b", "qwen3-30b-a3b"])
def test_prefill_flops_exact(name):
    cfg = _cfg(name)
    g = build_graph(cfg, "prefill", batch=3, prompt=20)
    assert total_flops(g) == prefill_formula(cfg, 3, 20)


@pytest.mark.parametrize(
    "name", ["tiny-moe", "gelu-moe", "mixtral-8x7b", "gpt-oss-120b", "deepseek-v3-gqa"]
)
def test_decode_flops_exact(name):
    cfg = _cfg(name)
    g = build_graph(cfg, "decode", batch=5, context=77)
    assert total_flops(g) == decode_formula(cfg, 5, 77)


@pytest.mark.parametrize("name", ["tiny-moe", "gelu-moe", "qwen3-30b-a3b"])
def test_train_flops_exact(name):
    cfg = _cfg(name)
    g = build_graph(cfg, "train", batch=2, prompt=8)
    assert total_flops(g) == train_formula(cfg, 2, 8)
    assert summarize(g)["flops_by_phase"]["update"] == ADAM * cfg.param_count()
    adam = [op for op in ops_in_order(g) if op.kind == "optimizer"]
    assert sum(op.elements for op in adam) == cfg.param_count()


@pytest.mark.parametrize("name", ["tiny-moe", "gelu-moe", "qwen3-235b-a22b", "deepseek-v3-gqa"])
def test_matmul_flops_follow_active_weights(name):
    cfg = _cfg(name)
    batch, context = 4, 31
    s = summarize(build_graph(cfg, "decode", batch=batch, context=context))
    layers = cfg.matmul_params() - cfg.d_model * cfg.vocab_size
    assert s["flops_by_kind"]["matmul"] == 2 * batch * layers
    # the same per token whatever the number of tokens (no expert runs for nothing)
    s2 = summarize(build_graph(cfg, "decode", batch=1, context=context))
    assert s2["flops_by_kind"]["matmul"] * batch == s["flops_by_kind"]["matmul"]


def test_expert_ops_carry_expert_and_tokens():
    cfg = load_model("tiny-moe")
    g = build_graph(cfg, "prefill", batch=1, prompt=5)
    ops = {op.name: op for op in ops_in_order(g)}
    assert g.graph["expert_tokens"] == (2, 2, 1, 1, 1, 1, 1, 1)  # 5 tokens x top-2
    assert not any(isinstance(op, ExpertOp) for op in ops.values() if op.layer == 0)
    assert "L0.ffn_up" in ops and "L1.ffn_up" not in ops
    for i in (1, 2):
        ups = [ops[f"L{i}.expert{e}.ffn_up"] for e in range(8)]
        assert [op.expert for op in ups] == list(range(8))
        assert [op.tokens for op in ups] == [op.m for op in ups] == [2, 2, 1, 1, 1, 1, 1, 1]
        assert not any(op.shared for op in ups) and ups[0].weight == "w_up"
        sh = ops[f"L{i}.shared0.ffn_down"]
        assert (sh.shared, sh.expert, sh.tokens, sh.m, sh.k, sh.n) == (True, 0, 5, 5, 32, 64)
        act = ops[f"L{i}.expert1.act"]
        assert isinstance(act, ExpertOp) and act.elements == 2 * 32
        router, route, comb = ops[f"L{i}.router"], ops[f"L{i}.route"], ops[f"L{i}.combine"]
        assert (router.m, router.k, router.n, router.weight) == (5, 64, 8, "w_router")
        assert (route.kind, route.elements, route.flops) == ("route", 40, 200)
        assert (comb.kind, comb.flops) == ("combine", 5 * 64 * 5)
        assert g.has_edge(f"L{i}.route", f"L{i}.expert7.ffn_gate")
        assert not g.has_edge(f"L{i}.route", f"L{i}.shared0.ffn_gate")
        assert g.has_edge(f"L{i}.expert7.ffn_down", f"L{i}.combine")
        assert g.has_edge(f"L{i}.combine", f"L{i}.residual2")


def test_decode_idle_experts_keep_their_ops():
    cfg = load_model("qwen3-30b-a3b")
    g = build_graph(cfg, "decode", batch=1, context=10)
    ups = [op for op in ops_in_order(g) if op.layer == 0 and op.name.endswith("ffn_up")]
    assert len(ups) == 128 and [op.m for op in ups] == [1] * 8 + [0] * 120
    assert all(op.weight_bytes == 2048 * 768 * 2 for op in ups)


def test_skewed_expert_tokens():
    cfg = load_model("tiny-moe")
    skew = (4, 4, 1, 1, 0, 0, 0, 0)
    g = build_graph(cfg, "prefill", batch=1, prompt=5, expert_tokens=skew)
    ops = {op.name: op for op in ops_in_order(g)}
    assert [ops[f"L2.expert{e}.ffn_down"].m for e in range(8)] == list(skew)
    assert ops["L2.expert4.ffn_down"].flops == 0
    assert total_flops(g) == prefill_formula(cfg, 1, 5)
    assert g.graph["expert_tokens"] == skew


@pytest.mark.parametrize(
    "model, counts",
    [
        ("tiny", (1,) * 8),
        ("tiny-moe", (2,) * 8),  # 16 != 5 x 2
        ("tiny-moe", (6, 4, 0, 0, 0, 0, 0, 0)),  # 6 > 5 tokens
        ("tiny-moe", (2,) * 5),
    ],
)
def test_bad_expert_tokens(model, counts):
    with pytest.raises(ValueError, match="expert_tokens") as exc:
        build_graph(load_model(model), "prefill", batch=1, prompt=5, expert_tokens=counts)
    assert "\n" not in str(exc.value)


def test_train_graph_per_expert_gradients():
    cfg = load_model("tiny-moe")
    g = build_graph(cfg, "train", batch=2, prompt=4, dtype="fp32")
    assert nx.is_directed_acyclic_graph(g)
    ops = {op.name: op for op in ops_in_order(g)}
    adam = ops["L1.expert3.w_up.adam"]
    assert isinstance(adam, ExpertOp) and (adam.expert, adam.shared) == (3, False)
    assert adam.elements == 64 * 32 and adam.tokens == 2  # 8 tokens x top-2 over 8
    assert list(g.predecessors("L1.expert3.w_up.adam")) == ["L1.expert3.ffn_up.bwd_weight"]
    assert list(g.predecessors("L2.shared0.w_down.adam")) == ["L2.shared0.ffn_down.bwd_weight"]
    assert list(g.predecessors("L1.w_router.adam")) == ["L1.router.bwd_weight"]
    assert "L0.w_up.adam" in ops and "L1.w_up.adam" not in ops
    assert ops["L1.small.adam"].elements == cfg.layer_small_params(1) == 2 * 64
    bwd = ops["L2.expert5.ffn_down.bwd_data"]
    assert isinstance(bwd, ExpertOp) and bwd.expert == 5 and bwd.phase == "bwd"
    assert ops["L1.combine.bwd"].flops == ops["L1.combine"].flops
    assert nx.has_path(g, "loss", "L1.w_router.adam")


@pytest.mark.parametrize("phase", ["prefill", "decode", "train"])
def test_dense_graphs_have_no_moe_ops(phase):
    g = build_graph(load_model("tiny-llama"), phase, batch=2, prompt=8, context=8)
    kinds = {op.kind for op in ops_in_order(g)}
    assert not kinds & {"route", "combine"} and "expert_tokens" not in g.graph
    assert not any(isinstance(op, ExpertOp) for op in ops_in_order(g))


def test_expert_op_validation():
    fields = ("x", "act", 1, "fwd", 0, 0, 0, 1, 4, "fp32", 0, 0, 0, 0, None)
    assert ExpertOp(*fields, 2, False, 3).expert == 2
    with pytest.raises(ValueError, match="ExpertOp.tokens"):
        ExpertOp(*fields, 2, False, -1)
    with pytest.raises(ValueError, match="ExpertOp.shared"):
        ExpertOp(*fields, 2, 1, 3)
