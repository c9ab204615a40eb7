"""GPT model configurations and the model zoo.

A `GPTConfig` is plain, validated data describing a decoder-only transformer. The zoo lives in
``workloads/zoo/<name>.toml`` (one model per file); each file also carries two metadata
fields, ``source`` (a citation) and ``published_params`` (the size the authors publish), which
`GPTConfig` ignores and `model_info` returns.

Parameter counting conventions (see `GPTConfig.layer_params` / `param_count`):

- matmul weights per layer: ``w_q, w_k, w_v, w_o, w_up, (w_gate), w_down``;
- norms: LayerNorm has a gain and a bias (2*d), RMSNorm a gain only (d); two per layer plus
  one final norm;
- biases: models with ``norm == "layernorm"`` (GPT-2 / Cerebras-GPT style) have a bias on every
  matmul (q, k, v, o, up, (gate), down); RMSNorm (llama-style) models have none. Qwen2's
  q/k/v biases (about 0.001% of its size) are not modelled;
- embeddings: token table ``vocab*d``, learned position table ``max_context*d``, and an
  untied LM head ``d*vocab`` when ``tied_embeddings`` is false.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

ACTIVATIONS = ("gelu", "swiglu")
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
METADATA_FIELDS = ("source", "published_params")

_POSITIVE_INT_FIELDS = (
    "n_layers",
    "d_model",
    "n_heads",
    "n_kv_heads",
    "d_ffn",
    "vocab_size",
    "max_context",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"GPTConfig.{field}: got {value!r}, must be {allowed}")


@dataclass(frozen=True)
class GPTConfig:
    """Shape of a decoder-only GPT; validated on construction."""

    name: str
    n_layers: int
    d_model: int
    n_heads: int
    n_kv_heads: int
    d_ffn: int
    vocab_size: int
    max_context: int
    activation: str = "gelu"
    positions: str = "learned"
    norm: str = "layernorm"
    tied_embeddings: bool = True
    head_dim: int = 0
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            _fail("name", self.name, "a non-empty string")
        for field in _POSITIVE_INT_FIELDS:
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                _fail(field, value, "a positive integer")
        if not _is_int(self.head_dim) or self.head_dim < 0:
            _fail("head_dim", self.head_dim, "a non-negative integer (0 = d_model // n_heads)")
        if self.head_dim == 0 and self.d_model % self.n_heads != 0:
            _fail(
                "head_dim",
                self.head_dim,
                f"set explicitly because d_model ({self.d_model}) is not a multiple of "
                f"n_heads ({self.n_heads})",
            )
        if self.n_heads % self.n_kv_heads != 0:
            _fail("n_kv_heads", self.n_kv_heads, f"a divisor of n_heads ({self.n_heads})")
        if self.activation not in ACTIVATIONS:
            _fail("activation", self.activation, f"one of {', '.join(ACTIVATIONS)}")
        if self.positions not in POSITIONS:
            _fail("positions", self.positions, f"one of {', '.join(POSITIONS)}")
        if self.norm not in NORMS:
            _fail("norm", self.norm, f"one of {', '.join(NORMS)}")
        if not isinstance(self.tied_embeddings, bool):
            _fail("tied_embeddings", self.tied_embeddings, "a boolean")
        theta = self.rope_theta
        if isinstance(theta, bool) or not isinstance(theta, int | float) or not theta > 0:
            _fail("rope_theta", theta, "a positive number")

    # ---- derived shapes -------------------------------------------------------------------
    @property
    def hd(self) -> int:
        """Resolved head dimension."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def q_dim(self) -> int:
        """Width of the query projection, n_heads * hd."""
        return self.n_heads * self.hd

    @property
    def kv_dim(self) -> int:
        """Width of each of the key and value projections, n_kv_heads * hd."""
        return self.n_kv_heads * self.hd

    @property
    def has_bias(self) -> bool:
        """Whether the matmuls carry biases (GPT-2 style, i.e. LayerNorm models)."""
        return self.norm == "layernorm"

    @property
    def norm_params(self) -> int:
        """Parameters of one norm layer (gain, plus bias for LayerNorm)."""
        return 2 * self.d_model if self.norm == "layernorm" else self.d_model

    def layer_weight_shapes(self) -> dict[str, tuple[int, int]]:
        """Per-layer matmul weights as name -> (K, N), in forward order."""
        d, f = self.d_model, self.d_ffn
        shapes = {
            "w_q": (d, self.q_dim),
            "w_k": (d, self.kv_dim),
            "w_v": (d, self.kv_dim),
            "w_o": (self.q_dim, d),
            "w_up": (d, f),
        }
        if self.activation == "swiglu":
            shapes["w_gate"] = (d, f)
        shapes["w_down"] = (f, d)
        return shapes

    def layer_matmul_params(self) -> int:
        """Matmul weight parameters of one layer (no biases, no norms)."""
        return sum(k * n for k, n in self.layer_weight_shapes().values())

    def layer_small_params(self) -> int:
        """Non-matmul parameters of one layer: two norms plus biases (if any)."""
        biases = sum(n for _, n in self.layer_weight_shapes().values()) if self.has_bias else 0
        return 2 * self.norm_params + biases

    def layer_params(self) -> int:
        """All parameters of one transformer layer."""
        return self.layer_matmul_params() + self.layer_small_params()

    def embedding_params(self) -> int:
        """Token table plus learned position table (if any)."""
        pos = self.max_context * self.d_model if self.positions == "learned" else 0
        return self.vocab_size * self.d_model + pos

    def lm_head_params(self) -> int:
        """Parameters of a separate LM head (0 when tied to the token embedding)."""
        return 0 if self.tied_embeddings else self.d_model * self.vocab_size

    def param_count(self, include_embeddings: bool = True) -> int:
        """Total parameters: layers + final norm (+ embeddings, position table, untied head)."""
        total = self.n_layers * self.layer_params() + self.norm_params
        if include_embeddings:
            total += self.embedding_params() + self.lm_head_params()
        return total

    def matmul_params(self) -> int:
        """Parameters used as GEMM weights per token: all layer matmuls plus the LM head."""
        return self.n_layers * self.layer_matmul_params() + self.d_model * self.vocab_size

    def with_overrides(self, **kw: Any) -> GPTConfig:
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **kw)


# ---- zoo and TOML loading -----------------------------------------------------------------

_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig))


def _zoo_dir():
    return resources.files("workloads").joinpath("zoo")


def list_models() -> list[str]:
    """Names of the models in the zoo, sorted."""
    names = [p.name[: -len(".toml")] for p in _zoo_dir().iterdir() if p.name.endswith(".toml")]
    return sorted(names)


def _read_toml(name_or_path: str) -> tuple[dict[str, Any], str]:
    """Raw TOML table and a label (zoo name or path) for error messages."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise ValueError(f"load_model: got {name_or_path!r}, must be a zoo name or a TOML path")
    key = name_or_path.lower()
    if key in list_models():
        text = _zoo_dir().joinpath(f"{key}.toml").read_text(encoding="utf-8")
        label = f"zoo/{key}.toml"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(
                f"load_model: unknown model {name_or_path!r} (not a file); "
                f"known models: {', '.join(list_models())}"
            )
        text = path.read_text(encoding="utf-8")
        label = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{label}: invalid TOML: {exc}".replace("\n", " ")) from None
    if "name" not in data:
        data["name"] = Path(label).stem
    for field in data:
        if field not in _CONFIG_FIELDS and field not in METADATA_FIELDS:
            raise ValueError(
                f"{label}: unknown field {field!r}; allowed: "
                f"{', '.join(_CONFIG_FIELDS + METADATA_FIELDS)}"
            )
    if "source" in data and not isinstance(data["source"], str):
        raise ValueError(f"{label}: field 'source': got {data['source']!r}, must be a string")
    if "published_params" in data and (
        not _is_int(data["published_params"]) or data["published_params"] <= 0
    ):
        raise ValueError(
            f"{label}: field 'published_params': got {data['published_params']!r}, "
            "must be a positive integer"
        )
    return data, label


def _config_from(data: dict[str, Any], label: str) -> GPTConfig:
    kwargs = {k: v for k, v in data.items() if k in _CONFIG_FIELDS}
    missing = [
        f.name
        for f in dataclasses.fields(GPTConfig)
        if f.default is dataclasses.MISSING and f.name not in kwargs
    ]
    if missing:
        raise ValueError(f"{label}: missing field(s): {', '.join(missing)}")
    try:
        return GPTConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


def load_model(name_or_path: str) -> GPTConfig:
    """A zoo model by name (case-insensitive) or a model from a user TOML file."""
    data, label = _read_toml(name_or_path)
    return _config_from(data, label)


def model_info(name_or_path: str) -> dict[str, Any]:
    """All fields of a model's TOML (config + metadata) plus the computed `param_count`."""
    data, label = _read_toml(name_or_path)
    cfg = _config_from(data, label)
    info: dict[str, Any] = dataclasses.asdict(cfg)
    info["source"] = data.get("source", "")
    info["published_params"] = data.get("published_params")
    info["param_count"] = cfg.param_count()
    return info
