"""GPT model configurations and the model zoo.

A `GPTConfig` is plain, validated data describing a decoder-only transformer. The zoo lives in
``workloads/zoo/<name>.toml`` (one model per file); each file also carries metadata fields,
``source`` (a citation), ``published_params`` (the size the authors publish) and, for an MoE
model, ``published_active_params``, which `GPTConfig` ignores and `model_info` returns.

Parameter counting conventions (see `GPTConfig.layer_params` / `param_count`):

- matmul weights per layer: ``w_q, w_k, w_v, w_o, w_up, (w_gate), w_down``;
- norms: LayerNorm has a gain and a bias (2*d), RMSNorm a gain only (d); two per layer plus
  one final norm;
- biases: models with ``norm == "layernorm"`` (GPT-2 / Cerebras-GPT style) have a bias on every
  matmul (q, k, v, o, up, (gate), down); RMSNorm (llama-style) models have none. Qwen2's
  q/k/v biases (about 0.001% of its size) are not modelled;
- embeddings: token table ``vocab*d``, learned position table ``max_context*d``, and an
  untied LM head ``d*vocab`` when ``tied_embeddings`` is false.

Mixture of experts (``moe``, a `MoEConfig`; TOML table ``[moe]``): every layer not in
``moe.dense_layers`` has the attention weights, a router ``w_router`` (d x n_experts, plus a
selection bias of n_experts when ``selection_bias``) and ``n_experts + n_shared_experts``
expert FFNs of width ``d_expert`` in place of the dense FFN. Per-layer counts take the layer
index (``layer_params(i)``); ``active_param_count`` counts what one token uses: the attention,
the router, ``top_k + n_shared_experts`` experts per MoE layer, the dense layers, the final
norm, the LM head and, unless ``count_embedding_table=False``, the embedding tables (a token
reads one row of them, and model cards differ on counting them). A zoo TOML of an MoE model
also carries ``published_active_params``.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from workloads.moe import MoEConfig

ACTIVATIONS = ("gelu", "swiglu")
POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
METADATA_FIELDS = ("source", "published_params", "published_active_params")

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
    moe: MoEConfig | None = None

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
        if self.moe is not None:
            self._check_moe()

    def _check_moe(self) -> None:
        moe = self.moe
        if not isinstance(moe, MoEConfig):
            _fail("moe", moe, "None or a MoEConfig")
        outside = [i for i in moe.dense_layers if i >= self.n_layers]
        if outside:
            _fail(
                "moe.dense_layers", moe.dense_layers, f"layer indices < n_layers ({self.n_layers})"
            )
        if len(moe.dense_layers) == self.n_layers:
            _fail("moe.dense_layers", moe.dense_layers, "leaving at least one MoE layer")

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

    @property
    def is_moe(self) -> bool:
        """Whether the model has mixture-of-experts layers."""
        return self.moe is not None

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` is an MoE layer (False for every layer of a dense model)."""
        return self.moe is not None and layer not in self.moe.dense_layers

    def ffn_weight_shapes(self, width: int) -> dict[str, tuple[int, int]]:
        """Weights of one FFN of `width` (dense or one expert): name -> (K, N)."""
        d = self.d_model
        shapes = {"w_up": (d, width)}
        if self.activation == "swiglu":
            shapes["w_gate"] = (d, width)
        shapes["w_down"] = (width, d)
        return shapes

    def attn_weight_shapes(self) -> dict[str, tuple[int, int]]:
        """Attention weights of one layer: name -> (K, N)."""
        d = self.d_model
        return {
            "w_q": (d, self.q_dim),
            "w_k": (d, self.kv_dim),
            "w_v": (d, self.kv_dim),
            "w_o": (self.q_dim, d),
        }

    def layer_weight_shapes(self) -> dict[str, tuple[int, int]]:
        """Per-layer matmul weights of a dense layer as name -> (K, N), in forward order."""
        return {**self.attn_weight_shapes(), **self.ffn_weight_shapes(self.d_ffn)}

    def moe_layer_weight_shapes(self) -> dict[str, tuple[int, int]]:
        """Matmul weights of an MoE layer outside its experts: attention and ``w_router``."""
        return {**self.attn_weight_shapes(), "w_router": (self.d_model, self._moe().n_experts)}

    def expert_weight_shapes(self) -> dict[str, tuple[int, int]]:
        """Weights of one expert (routed or shared) of an MoE layer."""
        return self.ffn_weight_shapes(self._moe().d_expert)

    def _moe(self) -> MoEConfig:
        if self.moe is None:
            raise ValueError(f"GPTConfig {self.name}: a dense model has no experts")
        return self.moe

    def _moe_check(self, layer: int | None, what: str) -> bool:
        """Whether `layer` is an MoE layer; `layer` is required when the model has them."""
        if self.moe is None:
            return False
        if not isinstance(layer, int) or not 0 <= layer < self.n_layers:
            raise ValueError(
                f"GPTConfig.{what}: got layer={layer!r}, must be a layer index in "
                f"0..{self.n_layers - 1} for the MoE model {self.name}"
            )
        return self.is_moe_layer(layer)

    def _expert_params(self) -> tuple[int, int]:
        """(matmul, bias) parameters of one expert."""
        shapes = self.expert_weight_shapes().values()
        return sum(k * n for k, n in shapes), sum(n for _, n in shapes) if self.has_bias else 0

    def layer_matmul_params(self, layer: int | None = None) -> int:
        """Matmul weight parameters of one layer (no biases, no norms); MoE: all experts."""
        if not self._moe_check(layer, "layer_matmul_params"):
            return sum(k * n for k, n in self.layer_weight_shapes().values())
        experts = self.moe.n_experts + self.moe.n_shared_experts
        routerless = sum(k * n for k, n in self.moe_layer_weight_shapes().values())
        return routerless + experts * self._expert_params()[0]

    def layer_small_params(self, layer: int | None = None) -> int:
        """Non-matmul parameters of one layer: two norms plus biases (if any); an MoE layer
        adds every expert's biases and the router's selection bias (if any)."""
        if not self._moe_check(layer, "layer_small_params"):
            biases = sum(n for _, n in self.layer_weight_shapes().values()) if self.has_bias else 0
            return 2 * self.norm_params + biases
        moe = self.moe
        attn_bias = sum(n for _, n in self.attn_weight_shapes().values()) if self.has_bias else 0
        experts = (moe.n_experts + moe.n_shared_experts) * self._expert_params()[1]
        selection = moe.n_experts if moe.selection_bias else 0
        return 2 * self.norm_params + attn_bias + experts + selection

    def layer_params(self, layer: int | None = None) -> int:
        """All parameters of one transformer layer (`layer` required for an MoE model)."""
        return self.layer_matmul_params(layer) + self.layer_small_params(layer)

    def active_layer_params(self, layer: int | None = None) -> int:
        """Parameters of one layer that a token uses: all of a dense layer; an MoE layer less
        its ``n_experts - top_k`` routed experts that the token does not run through."""
        unused = 0
        if self._moe_check(layer, "active_layer_params"):
            unused = (self.moe.n_experts - self.moe.top_k) * sum(self._expert_params())
        return self.layer_params(layer) - unused

    def embedding_params(self) -> int:
        """Token table plus learned position table (if any)."""
        pos = self.max_context * self.d_model if self.positions == "learned" else 0
        return self.vocab_size * self.d_model + pos

    def lm_head_params(self) -> int:
        """Parameters of a separate LM head (0 when tied to the token embedding)."""
        return 0 if self.tied_embeddings else self.d_model * self.vocab_size

    def param_count(self, include_embeddings: bool = True) -> int:
        """Total parameters: layers + final norm (+ embeddings, position table, untied head)."""
        if self.moe is None:
            total = self.n_layers * self.layer_params() + self.norm_params
        else:
            total = sum(self.layer_params(i) for i in range(self.n_layers)) + self.norm_params
        if include_embeddings:
            total += self.embedding_params() + self.lm_head_params()
        return total

    def active_param_count(self, count_embedding_table: bool = True) -> int:
        """Parameters one token uses (module docstring); equals `param_count()` for a dense
        model. Without the embedding table the tied or untied LM head still counts."""
        layers = sum(self.active_layer_params(i) for i in range(self.n_layers))
        head = self.d_model * self.vocab_size
        tables = self.embedding_params() - (head if self.tied_embeddings else 0)
        return layers + self.norm_params + head + (tables if count_embedding_table else 0)

    def matmul_params(self) -> int:
        """Parameters used as GEMM weights per token: all layer matmuls plus the LM head; an
        MoE layer counts its router and the ``top_k + n_shared_experts`` experts a token uses."""
        if self.moe is None:
            layers = self.n_layers * self.layer_matmul_params()
        else:
            unused = (self.moe.n_experts - self.moe.top_k) * self._expert_params()[0]
            layers = sum(
                self.layer_matmul_params(i) - (unused if self.is_moe_layer(i) else 0)
                for i in range(self.n_layers)
            )
        return layers + self.d_model * self.vocab_size

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
        try:
            is_file = path.is_file()
            text = path.read_text(encoding="utf-8") if is_file else ""
        except OSError as exc:  # e.g. a name longer than the file system allows
            raise ValueError(f"{name_or_path}: cannot read the model file "
                             f"({exc.strerror or exc})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{name_or_path}: cannot read the model file (not UTF-8 text)") \
                from None
        if not is_file:
            raise ValueError(
                f"load_model: unknown model {name_or_path!r} (not a file); "
                f"known models: {', '.join(list_models())}"
            )
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
    for field in ("published_params", "published_active_params"):
        if field in data and (not _is_int(data[field]) or data[field] <= 0):
            raise ValueError(
                f"{label}: field {field!r}: got {data[field]!r}, must be a positive integer"
            )
    return data, label


def _moe_from(table: Any, label: str) -> MoEConfig:
    """The `[moe]` table of a model TOML as a MoEConfig."""
    if not isinstance(table, dict):
        raise ValueError(f"{label}: field 'moe': got {table!r}, must be a table ([moe])")
    allowed = tuple(f.name for f in dataclasses.fields(MoEConfig))
    for field in table:
        if field not in allowed:
            raise ValueError(f"{label}: unknown field 'moe.{field}'; allowed: {', '.join(allowed)}")
    missing = _missing(MoEConfig, table)
    if missing:
        raise ValueError(f"{label}: missing field(s): {', '.join('moe.' + m for m in missing)}")
    try:
        return MoEConfig(**table)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


def _missing(cls, given: dict) -> list[str]:
    """Fields of dataclass `cls` without a default that `given` lacks."""
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.name not in given]


def _config_from(data: dict[str, Any], label: str) -> GPTConfig:
    kwargs = {k: v for k, v in data.items() if k in _CONFIG_FIELDS}
    missing = _missing(GPTConfig, kwargs)
    if missing:
        raise ValueError(f"{label}: missing field(s): {', '.join(missing)}")
    if "moe" in kwargs:
        kwargs["moe"] = _moe_from(kwargs["moe"], label)
    try:
        return GPTConfig(**kwargs)
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


# fields a run may override (`--model-set FIELD=VALUE`): the shape, not the name or the MoE table
OVERRIDABLE = tuple(f for f in _CONFIG_FIELDS if f not in ("name", "moe"))


def load_model(name_or_path: str, overrides: dict | None = None) -> GPTConfig:
    """A zoo model by name (case-insensitive) or a model from a user TOML file, with
    `overrides` (field -> value, e.g. {"n_layers": 1}) applied and validated as the file's own
    values are; an unknown field or a bad value is a one-line ValueError naming it."""
    data, label = _read_toml(name_or_path)
    for k, v in (overrides or {}).items():
        if k not in OVERRIDABLE:
            raise ValueError(f"model_set.{k}: not a model field one can set; known: "
                             f"{', '.join(OVERRIDABLE)}")
        data[k] = v
    if overrides:
        label += " with " + ", ".join(f"{k}={v}" for k, v in overrides.items())
    return _config_from(data, label)


def model_info(name_or_path: str) -> dict[str, Any]:
    """All fields of a model's TOML (config + metadata) plus the computed `param_count` and
    `active_param_count` (`GPTConfig.active_param_count()`)."""
    data, label = _read_toml(name_or_path)
    cfg = _config_from(data, label)
    info: dict[str, Any] = dataclasses.asdict(cfg)
    info["source"] = data.get("source", "")
    info["published_params"] = data.get("published_params")
    info["param_count"] = cfg.param_count()
    info["active_param_count"] = cfg.active_param_count()
    info["published_active_params"] = data.get("published_active_params")
    return info
