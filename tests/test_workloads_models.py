"""Tests for workloads.models: GPTConfig validation, parameter counts, the zoo, TOML loading."""

from __future__ import annotations

import dataclasses

import pytest

from workloads.models import GPTConfig, list_models, load_model, model_info

ZOO = [
    "gpt2-small",
    "gpt2-medium",
    "gpt2-large",
    "gpt2-xl",
    "cerebras-gpt-111m",
    "cerebras-gpt-256m",
    "cerebras-gpt-590m",
    "cerebras-gpt-1.3b",
    "cerebras-gpt-2.7b",
    "cerebras-gpt-6.7b",
    "cerebras-gpt-13b",
    "llama3-8b",
    "llama2-13b",
    "codellama-34b",
    "qwen2-72b",
    "llama3.1-70b",
    "llama3.1-405b",
    "tiny",
    "tiny-llama",
    # mixture of experts (tests/test_workloads_moe.py)
    "mixtral-8x7b",
    "qwen3-30b-a3b",
    "qwen3-235b-a22b",
    "gpt-oss-120b",
    "deepseek-v3-gqa",
    "tiny-moe",
]

BASE = dict(
    name="m",
    n_layers=2,
    d_model=64,
    n_heads=4,
    n_kv_heads=4,
    d_ffn=256,
    vocab_size=512,
    max_context=128,
)


def test_zoo_lists_every_model():
    assert sorted(ZOO) == list_models()


@pytest.mark.parametrize("name", ZOO)
def test_param_count_matches_published(name):
    info = model_info(name)
    cfg = load_model(name)
    assert info["param_count"] == cfg.param_count()
    assert info["source"]
    rel = abs(cfg.param_count() / info["published_params"] - 1)
    assert rel <= 0.02, f"{name}: {cfg.param_count():,} vs {info['published_params']:,}"


def test_exact_known_counts():
    # Counts well known from the released checkpoints.
    assert load_model("gpt2-small").param_count() == 124_439_808
    assert load_model("gpt2-xl").param_count() == 1_557_611_200
    assert load_model("llama3-8b").param_count() == 8_030_261_248
    assert load_model("llama2-13b").param_count() == 13_015_864_320
    assert load_model("tiny").param_count() == 141_056


def test_shapes_gqa_swiglu():
    cfg = load_model("llama3-8b")
    assert (cfg.hd, cfg.q_dim, cfg.kv_dim) == (128, 4096, 1024)
    s = cfg.layer_weight_shapes()
    assert s == {
        "w_q": (4096, 4096),
        "w_k": (4096, 1024),
        "w_v": (4096, 1024),
        "w_o": (4096, 4096),
        "w_up": (4096, 14336),
        "w_gate": (4096, 14336),
        "w_down": (14336, 4096),
    }
    assert "w_gate" not in load_model("gpt2-small").layer_weight_shapes()
    assert cfg.layer_params() == cfg.layer_matmul_params() + 2 * 4096
    assert cfg.param_count(include_embeddings=False) == 32 * cfg.layer_params() + 4096


def test_gpt2_layer_params_include_biases():
    cfg = load_model("gpt2-small")
    d = 768
    # weights, q/k/v/o biases, up bias, down bias, two LayerNorms
    assert cfg.layer_params() == 12 * d * d + 4 * d + 3072 + d + 4 * d


def test_name_lookup_is_case_insensitive_and_overrides():
    cfg = load_model("GPT2-Small")
    assert cfg.name == "gpt2-small"
    cfg2 = cfg.with_overrides(n_layers=3)
    assert cfg2.n_layers == 3 and cfg.n_layers == 12
    with pytest.raises(ValueError, match="n_layers"):
        cfg.with_overrides(n_layers=0)


def test_explicit_head_dim():
    cfg = GPTConfig(**{**BASE, "d_model": 60, "head_dim": 16})
    assert cfg.q_dim == 64 and cfg.layer_weight_shapes()["w_o"] == (64, 60)


@pytest.mark.parametrize(
    "field, value",
    [
        ("n_layers", -1),
        ("n_layers", 0),
        ("d_model", "64"),
        ("n_heads", True),
        ("n_kv_heads", 3),
        ("d_ffn", 2.5),
        ("vocab_size", None),
        ("max_context", 0),
        ("activation", "relu"),
        ("positions", "alibi"),
        ("norm", "batchnorm"),
        ("tied_embeddings", 1),
        ("head_dim", -4),
        ("name", ""),
        ("rope_theta", 0.0),
    ],
)
def test_bad_config_raises_one_line(field, value):
    with pytest.raises(ValueError) as exc:
        GPTConfig(**{**BASE, field: value})
    msg = str(exc.value)
    assert f"GPTConfig.{field}" in msg and repr(value) in msg and "\n" not in msg


def test_head_dim_required_when_not_divisible():
    with pytest.raises(ValueError, match="head_dim"):
        GPTConfig(**{**BASE, "d_model": 66})


def test_frozen():
    cfg = load_model("tiny")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layers = 3  # type: ignore[misc]


def test_unknown_model_lists_known_names():
    with pytest.raises(ValueError) as exc:
        load_model("gpt5")
    assert "gpt2-small" in str(exc.value) and "\n" not in str(exc.value)


def _write(tmp_path, text):
    p = tmp_path / "my-model.toml"
    p.write_text(text)
    return str(p)


TOML_OK = """
n_layers = 2
d_model = 32
n_heads = 4
n_kv_heads = 2
d_ffn = 64
vocab_size = 100
max_context = 64
activation = "swiglu"
positions = "rope"
norm = "rmsnorm"
tied_embeddings = false
published_params = 1000
"""


def test_user_toml(tmp_path):
    path = _write(tmp_path, TOML_OK)
    cfg = load_model(path)
    assert cfg.name == "my-model" and cfg.n_kv_heads == 2
    assert model_info(path)["published_params"] == 1000


def test_user_toml_unknown_field(tmp_path):
    path = _write(tmp_path, TOML_OK + "n_experts = 8\n")
    with pytest.raises(ValueError, match="n_experts") as exc:
        load_model(path)
    assert path in str(exc.value)


def test_user_toml_wrong_type(tmp_path):
    path = _write(tmp_path, TOML_OK.replace("d_ffn = 64", 'd_ffn = "64"'))
    with pytest.raises(ValueError, match="d_ffn"):
        load_model(path)


def test_user_toml_missing_field(tmp_path):
    path = _write(tmp_path, TOML_OK.replace("d_ffn = 64", ""))
    with pytest.raises(ValueError, match="d_ffn"):
        load_model(path)
