"""Which experts each token uses in every MoE layer: the routing a mapping of an MoE model is
timed with (and, with `router`, computed with).

A `Routing` holds, per MoE layer, a (tokens, top_k) array of expert ids (each token's chosen
experts, distinct). It comes from a spec (`make_routing`):

- ``uniform``: round robin, token t chooses experts ``(t*k + j) mod n_experts`` for j < k:
  the choices are spread as evenly as they can be (the counts equal
  `workloads.moe.balanced_expert_tokens`, the op graph's default);
- ``skewed:ALPHA`` (ALPHA >= 0): a Zipf-like skew; in each layer the experts get a seeded
  random rank r (0 the most popular) and weight ``1 / (r + 1) ** ALPHA``, and each token draws
  k distinct experts with probabilities proportional to the weights (without replacement);
  ALPHA 0 is uniform at random;
- ``router``: the choices the model's own router makes (`workloads.reference.forward` on the
  weights ``init_weights(cfg, seed)`` and seeded random tokens: what a functional run of the
  same seed computes);
- a file, ``PATH.csv`` or ``PATH.json``: CSV rows ``layer,token,e0,...,e{k-1}`` (a header
  row first) or JSON ``{"layers": {"1": [[e0, e1], ...], ...}}``; every MoE layer, every token
  (t = b * prompt + s for position s of sequence b; decode: t = b) exactly once, k distinct ids in ``0..n_experts-1``. A bad value fails with one line that
  names the file, the field, the value and what is allowed.

Same spec and seed, same routing, to the bit.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workloads.models import GPTConfig

KINDS = ("uniform", "skewed:ALPHA", "router", "PATH.csv", "PATH.json")


class RoutingError(ValueError):
    """A routing spec or file that cannot be used (one line: file, field, value, allowed)."""


@dataclass(frozen=True)
class Routing:
    """Expert ids per token of every MoE layer: ``choices[layer]`` is (tokens, top_k)."""

    spec: str
    n_experts: int
    tokens: int
    choices: dict

    def __post_init__(self) -> None:
        for layer, ids in self.choices.items():
            arr = np.asarray(ids)
            if arr.ndim != 2 or arr.shape[0] != self.tokens:
                raise RoutingError(f"routing {self.spec}: layer {layer} has shape {arr.shape}, "
                                   f"must be ({self.tokens}, top_k)")
            if arr.size and (arr.min() < 0 or arr.max() >= self.n_experts):
                raise RoutingError(f"routing {self.spec}: layer {layer} has expert ids outside "
                                   f"0..{self.n_experts - 1}")

    def counts(self, layer: int) -> tuple[int, ...]:
        """Tokens routed to each expert of `layer`."""
        ids = np.asarray(self.choices[layer]).reshape(-1)
        return tuple(int(c) for c in np.bincount(ids, minlength=self.n_experts))

    def imbalance(self, layer: int) -> float:
        """The busiest expert's tokens over the mean (1.0: perfectly balanced)."""
        c = self.counts(layer)
        mean = sum(c) / len(c)
        return max(c) / mean if mean else 1.0


def uniform_choices(tokens: int, n_experts: int, top_k: int) -> np.ndarray:
    """Round robin: token t chooses ``(t*k + j) mod n_experts``."""
    picks = np.arange(tokens * top_k, dtype=np.int64) % n_experts
    return picks.reshape(tokens, top_k)


def skewed_choices(tokens: int, n_experts: int, top_k: int, alpha: float,
                   rng: np.random.Generator) -> np.ndarray:
    """k distinct experts per token, drawn with Zipf-like weights over a seeded expert rank."""
    rank = rng.permutation(n_experts)
    p = 1.0 / (rank + 1.0) ** alpha
    p /= p.sum()
    return np.stack([rng.choice(n_experts, top_k, replace=False, p=p) for _ in range(tokens)])


def make_routing(spec: str, cfg: GPTConfig, tokens: int, *, seed: int = 0,
                 router_case=None) -> Routing:
    """The routing of `tokens` tokens through every MoE layer of `cfg` (module docstring).
    `router_case`: for ``router``, a callable returning {layer: (tokens, k) ids} (the mapper
    passes the reference forward of the run's seed)."""
    if cfg.moe is None:
        raise RoutingError(f"routing: model {cfg.name} has no MoE layers")
    if not isinstance(spec, str) or not spec:
        raise RoutingError(f"routing: got {spec!r}, must be one of {', '.join(KINDS)}")
    moe = cfg.moe
    layers = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    E, k = moe.n_experts, moe.top_k
    if spec == "uniform":
        ids = uniform_choices(tokens, E, k)
        return Routing(spec, E, tokens, {i: ids for i in layers})
    if spec.startswith("skewed:"):
        alpha = _alpha(spec)
        rng = np.random.default_rng(seed)
        return Routing(spec, E, tokens,
                       {i: skewed_choices(tokens, E, k, alpha, rng) for i in layers})
    if spec == "router":
        if router_case is None:
            raise RoutingError("routing router: needs the model's weights (functional mapping)")
        got = router_case()
        return Routing(spec, E, tokens, {i: np.asarray(got[i]) for i in layers})
    if spec.endswith((".csv", ".json")):
        return Routing(spec, E, tokens, read_routing_file(spec, cfg, tokens))
    raise RoutingError(f"routing: got {spec!r}, must be one of {', '.join(KINDS)}")


def _alpha(spec: str) -> float:
    text = spec.split(":", 1)[1]
    try:
        alpha = float(text)
    except ValueError:
        alpha = -1.0
    if not alpha >= 0 or alpha != alpha or alpha == float("inf"):
        raise RoutingError(f"routing: got {spec!r}, ALPHA must be a number >= 0 "
                           "(skewed:ALPHA, e.g. skewed:1.2)")
    return alpha


def _bad(path: str, field: str, value, allowed: str) -> RoutingError:
    return RoutingError(f"routing file {path}: field {field}: got {value!r}, must be {allowed}")


def _check_row(path: str, field: str, ids, E: int, k: int) -> list[int]:
    if not isinstance(ids, list | tuple) or len(ids) != k:
        raise _bad(path, field, ids, f"a list of top_k = {k} expert ids")
    out = []
    for j, e in enumerate(ids):
        if isinstance(e, str):
            e = int(e) if e.strip().lstrip("-").isdigit() else e
        if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < E:
            raise _bad(path, f"{field}[{j}]", e, f"an expert id in 0..{E - 1}")
        out.append(e)
    if len(set(out)) != k:
        raise _bad(path, field, out, f"{k} distinct expert ids (a token uses an expert once)")
    return out


def read_routing_file(path: str, cfg: GPTConfig, tokens: int) -> dict:
    """{layer: (tokens, k) ids} from a CSV or JSON routing file, validated."""
    E, k = cfg.moe.n_experts, cfg.moe.top_k
    layers = [i for i in range(cfg.n_layers) if cfg.is_moe_layer(i)]
    p = Path(path)
    if not p.is_file():
        raise _bad(path, "path", path, "an existing .csv or .json file")
    rows: dict[int, dict[int, list[int]]] = {}
    if path.endswith(".json"):
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise _bad(path, "json", str(e).splitlines()[0], "valid JSON") from None
        table = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(table, dict):
            raise _bad(path, "layers", table, "an object {layer: [[expert ids] per token]}")
        for key, per_token in table.items():
            layer = _layer(path, f"layers.{key}", key, layers)
            if not isinstance(per_token, list):
                raise _bad(path, f"layers.{key}", per_token, f"a list of {tokens} tokens")
            rows[layer] = {t: _check_row(path, f"layers.{key}[{t}]", ids, E, k)
                           for t, ids in enumerate(per_token)}
    else:
        with p.open(newline="", encoding="utf-8") as f:
            reader = list(csv.reader(f))
        for n, row in enumerate(reader[1:], start=2):
            if len(row) != 2 + k:
                raise _bad(path, f"line {n}", ",".join(row), f"layer,token and {k} expert ids")
            layer = _layer(path, f"line {n} layer", row[0], layers)
            t = row[1].strip()
            if not t.isdigit():
                raise _bad(path, f"line {n} token", row[1], f"a token index in 0..{tokens - 1}")
            rows.setdefault(layer, {})[int(t)] = _check_row(path, f"line {n} experts",
                                                             row[2:], E, k)
    return _complete(path, rows, layers, tokens)


def _layer(path: str, field: str, value, layers: list[int]) -> int:
    text = str(value).strip()
    if not text.isdigit() or int(text) not in layers:
        raise _bad(path, field, value, f"an MoE layer index, one of {layers}")
    return int(text)


def _complete(path: str, rows: dict, layers: list[int], tokens: int) -> dict:
    out = {}
    for layer in layers:
        got = rows.get(layer)
        if got is None:
            raise _bad(path, "layer", layer, f"present: every MoE layer {layers} needs a routing")
        if sorted(got) != list(range(tokens)):
            wrong = sorted(set(got) ^ set(range(tokens)))[:3]
            raise _bad(path, f"layer {layer} tokens", wrong,
                       f"each token 0..{tokens - 1} exactly once ({tokens} tokens run)")
        out[layer] = np.array([got[t] for t in range(tokens)], np.int64)
    return out
