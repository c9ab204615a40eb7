"""Tests for mixture-of-experts configs: MoEConfig validation, the [moe] TOML table, and the
total and active parameter counts of the MoE zoo against the published ones."""

from __future__ import annotations

import dataclasses

import pytest

from workloads.models import GPTConfig, list_models, load_model, model_info
from workloads.moe import MoEConfig, balanced_expert_tokens, check_expert_tokens

MOE_ZOO = [
    "mixtral-8x7b",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
    "gpt-oss-120b",
    "deepseek-v3-gqa",
    "tiny-moe",
]

# Published (total, active per token, whether the active count includes the embedding table).
PUBLISHED = {
    # Mistral AI, "Mixtral of experts" (mistral.ai/news/mixtral-of-experts, Dec 2023): "46.7B
    # total parameters but only uses 12.9B parameters per token".
    "mixtral-8x7b": (46.7e9, 12.9e9, True),
    # Qwen/Qwen3-30B-A3B model card: "30.5B in total and 3.3B activated" (Qwen3 Technical
    # Report, arXiv:2505.09388, Table 2 lists the same).
    "qwen3-30b-a3b": (30.5e9, 3.3e9, True),
    # Qwen/Qwen3-235B-A22B model card: "235B in total and 22B activated".
    "qwen3-235b-a22b": (235e9, 22e9, True),
    # OpenAI, gpt-oss-120b & gpt-oss-20b Model Card (arXiv:2508.10925): 116.8B total, 5.1B
    # active; its active count leaves out the embedding table (the unembedding counts).
    "gpt-oss-120b": (116.8e9, 5.1e9, False),
    # DeepSeek-AI, DeepSeek-V3 Technical Report (arXiv:2412.19437): "671B total parameters
    # with 37B activated for each token" (MLA replaced by GQA of equal size here).
    "deepseek-v3-gqa": (671e9, 37e9, True),
}

BASE = dict(
    name="m",
    n_layers=3,
    d_model=64,
    n_heads=4,
    n_kv_heads=2,
    d_ffn=192,
    vocab_size=512,
    max_context=128,
    activation="swiglu",
    positions="rope",
    norm="rmsnorm",
    tied_embeddings=False,
)
MOE = dict(n_experts=8, top_k=2, d_expert=32)


def test_zoo_lists_the_moe_models():
    assert set(MOE_ZOO) <= set(list_models())
    assert [n for n in list_models() if load_model(n).is_moe] == sorted(MOE_ZOO)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_counts_within_2_percent_of_published(name):
    total, active, with_table = PUBLISHED[name]
    cfg, info = load_model(name), model_info(name)
    assert (info["published_params"], info["published_active_params"]) == (total, active)
    assert info["source"]
    got_active = cfg.active_param_count(count_embedding_table=with_table)
    assert abs(cfg.param_count() / total - 1) <= 0.02, f"{name}: {cfg.param_count():,}"
    assert abs(got_active / active - 1) <= 0.02, f"{name}: {got_active:,}"


def test_exact_counts():
    # Mixtral-8x7B's released checkpoint holds 46,702,792,704 parameters.
    assert load_model("mixtral-8x7b").param_count() == 46_702_792_704
    # tiny-moe by hand: layer 0 dense, layers 1-2 with 8 + 1 experts of width 32.
    d, V, attn = 64, 512, 64 * (64 + 32 + 32) + 64 * 64
    expert = 3 * d * 32
    dense_layer = attn + 3 * d * 192 + 2 * d
    moe_layer = attn + d * 8 + 9 * expert + 2 * d
    total = dense_layer + 2 * moe_layer + d + 2 * V * d
    active = total - 2 * 6 * expert
    cfg = load_model("tiny-moe")
    assert (cfg.param_count(), cfg.active_param_count()) == (total, active) == (251_328, 177_600)
    assert cfg.active_param_count(count_embedding_table=False) == active - V * d
    info = model_info("tiny-moe")
    assert (info["published_params"], info["published_active_params"]) == (total, active)
    assert cfg.matmul_params() == active - V * d - 3 * 2 * d - d  # less the table and norms


def test_per_layer_counts():
    cfg = load_model("deepseek-v3-gqa")
    d, f = 7168, 2048
    assert [cfg.is_moe_layer(i) for i in range(4)] == [False, False, False, True]
    attn = 2 * d * (128 * 96 + 8 * 96)
    assert cfg.layer_params(0) == attn + 3 * d * 18_432 + 2 * d
    # router + its selection bias, 256 routed and 1 shared expert
    assert cfg.layer_params(3) == attn + d * 256 + 256 + 257 * 3 * d * f + 2 * d
    assert cfg.active_layer_params(3) == cfg.layer_params(3) - 248 * 3 * d * f
    assert cfg.moe_layer_weight_shapes()["w_router"] == (d, 256)
    assert cfg.expert_weight_shapes() == {"w_up": (d, f), "w_gate": (d, f), "w_down": (f, d)}
    with pytest.raises(ValueError, match="layer") as exc:
        cfg.layer_params()
    assert "\n" not in str(exc.value)


def test_dense_models_unchanged_by_moe_methods():
    for name in ("tiny", "gpt2-small", "llama3-8b"):
        cfg = load_model(name)
        assert cfg.moe is None and not cfg.is_moe and not cfg.is_moe_layer(0)
        assert cfg.active_param_count() == cfg.param_count()
        assert cfg.layer_params(1) == cfg.layer_params()
        assert model_info(name)["published_active_params"] is None
    gpt2 = load_model("gpt2-small")
    assert gpt2.active_param_count(count_embedding_table=False) == gpt2.param_count() - 1024 * 768


def test_layernorm_moe_counts_expert_biases():
    moe = MoEConfig(**MOE, n_shared_experts=1)
    cfg = GPTConfig(**{**BASE, "activation": "gelu", "norm": "layernorm", "moe": moe})
    d = 64
    attn_bias = 64 + 32 + 32 + 64
    expert_bias = 32 + d  # up, down
    assert cfg.layer_small_params(1) == 2 * 2 * d + attn_bias + 9 * expert_bias
    assert cfg.active_layer_params(1) == cfg.layer_params(1) - 6 * (2 * d * 32 + expert_bias)


def test_user_toml_with_moe_table(tmp_path):
    path = tmp_path / "m.toml"
    text = "\n".join(
        f"{k} = {v!r}".replace("'", '"').replace("False", "false") for k, v in BASE.items()
    )
    path.write_text(text + "\n[moe]\nn_experts = 4\ntop_k = 1\nd_expert = 16\ndense_layers = [2]\n")
    cfg = load_model(str(path))
    assert cfg.moe == MoEConfig(n_experts=4, top_k=1, d_expert=16, dense_layers=(2,))
    assert model_info(str(path))["moe"]["dense_layers"] == (2,)
    for table, word in [
        ("n_experts = 4\ntop_k = 1\nd_expert = 16\ncapacity = 2\n", "moe.capacity"),
        ("n_experts = 4\ntop_k = 1\n", "moe.d_expert"),
        ("n_experts = 4\ntop_k = 5\nd_expert = 16\n", "MoEConfig.top_k"),
        ("n_experts = 4\ntop_k = 1\nd_expert = 16\ndense_layers = [3]\n", "moe.dense_layers"),
    ]:
        path.write_text(text + "\n[moe]\n" + table)
        with pytest.raises(ValueError, match=word) as exc:
            load_model(str(path))
        assert str(path) in str(exc.value) and "\n" not in str(exc.value)
    path.write_text(text + "\nmoe = 3\n")
    with pytest.raises(ValueError, match="table"):
        load_model(str(path))


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_experts", 0),
        ("n_experts", 2.0),
        ("top_k", 0),
        ("top_k", 9),
        ("d_expert", -1),
        ("n_shared_experts", -1),
        ("router", "switch"),
        ("normalize_topk", 1),
        ("routed_scale", 0.0),
        ("routed_scale", True),
        ("n_groups", 3),
        ("topk_groups", 5),
        ("selection_bias", "yes"),
        ("dense_layers", (2, 1)),
        ("dense_layers", (1, 1)),
        ("dense_layers", (-1,)),
        ("dense_layers", "0"),
    ],
)
def test_bad_moe_config_raises_one_line(field, value):
    kw = {**MOE, "n_groups": 4, "topk_groups": 2} if field == "topk_groups" else dict(MOE)
    with pytest.raises(ValueError) as exc:
        MoEConfig(**{**kw, field: value})
    msg = str(exc.value)
    assert f"MoEConfig.{field}" in msg and repr(value) in msg and "\n" not in msg


def test_router_rules():
    with pytest.raises(ValueError, match="normalize_topk"):
        MoEConfig(**MOE, router="topk_softmax", normalize_topk=False)
    with pytest.raises(ValueError, match="selection_bias"):
        MoEConfig(**MOE, selection_bias=True)
    with pytest.raises(ValueError, match="top_k") as exc:  # 2 groups of 2 reach 4 < 5
        MoEConfig(n_experts=8, top_k=5, d_expert=4, n_groups=4, topk_groups=2)
    assert "group" in str(exc.value)
    moe = MoEConfig(**MOE, dense_layers=[0, 2])
    assert moe.dense_layers == (0, 2) and moe.active_experts == 2
    assert hash(moe) == hash(MoEConfig(**MOE, dense_layers=(0, 2)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        moe.top_k = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "moe, word",
    [
        (dict(dense_layers=(3,)), "GPTConfig.moe.dense_layers"),
        (dict(dense_layers=(0, 1, 2)), "GPTConfig.moe.dense_layers"),
    ],
)
def test_moe_checked_against_layers(moe, word):
    with pytest.raises(ValueError, match=word) as exc:
        GPTConfig(**BASE, moe=MoEConfig(**MOE, **moe))
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="GPTConfig.moe"):
        GPTConfig(**BASE, moe={"n_experts": 8})


def test_expert_tokens_balanced_and_checked():
    assert balanced_expert_tokens(5, 8, 2) == (2, 2, 1, 1, 1, 1, 1, 1)
    assert balanced_expert_tokens(1, 128, 8) == (1,) * 8 + (0,) * 120
    moe = MoEConfig(**MOE)
    assert check_expert_tokens(moe, 4, None) == (1,) * 8
    assert check_expert_tokens(moe, 4, [4, 4, 0, 0, 0, 0, 0, 0]) == (4, 4, 0, 0, 0, 0, 0, 0)
    for bad in ([5, 3, 0, 0, 0, 0, 0, 0], [1] * 7, [2] * 8, [1.0] * 8, "11111111"):
        with pytest.raises(ValueError, match="expert_tokens") as exc:
            check_expert_tokens(moe, 4, bad)
        assert "\n" not in str(exc.value)
