"""Mixture-of-experts settings of a GPT: `MoEConfig`, held by `GPTConfig.moe`.

An MoE layer replaces the dense FFN by a router, ``n_experts`` routed experts of which each
token uses ``top_k``, and ``n_shared_experts`` experts that every token uses. Every expert
(routed or shared) is an FFN of width ``d_expert`` with the model's activation. Layers listed
in ``dense_layers`` keep the dense FFN of width ``GPTConfig.d_ffn``.

Routing of one token (logits ``z = h @ w_router``, one per routed expert), see `ROUTERS`:

- ``softmax_topk``: scores ``s = softmax(z)``; choose the k largest; weights ``s`` of those
  (Mixtral, Qwen3; with ``normalize_topk`` they are divided by their sum);
- ``topk_softmax``: choose the k largest logits; weights ``softmax`` over those k (gpt-oss); they
  already sum to 1, so ``normalize_topk`` must be true;
- ``sigmoid_topk``: scores ``s = sigmoid(z)``; choose the k largest ``s + b`` where ``b`` is a
  per-expert selection bias when ``selection_bias`` (DeepSeek-V3), else 0; weights ``s``
  (normalized when ``normalize_topk``).

Group-limited routing (DeepSeek-V3): with ``n_groups > 1`` the experts form ``n_groups``
equal groups; a group's score is the sum of its two best selection scores (its best one if a
group has one expert) and a token chooses among the experts of its ``topk_groups`` best groups.
The chosen weights are multiplied by ``routed_scale`` (DeepSeek-V3: 2.5). Ties go to the
lower expert (or group) index. No capacity limit: no token is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ROUTERS = ("softmax_topk", "topk_softmax", "sigmoid_topk")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(field: str, value: Any, allowed: str) -> None:
    raise ValueError(f"MoEConfig.{field}: got {value!r}, must be {allowed}")


@dataclass(frozen=True)
class MoEConfig:
    """Experts of the MoE layers and how tokens are routed to them; validated on construction.

    ``dense_layers`` (a list is accepted and stored as a tuple) are checked against the
    model's layer count by `GPTConfig`.
    """

    n_experts: int
    top_k: int
    d_expert: int
    n_shared_experts: int = 0
    router: str = "softmax_topk"
    normalize_topk: bool = True
    routed_scale: float = 1.0
    n_groups: int = 1
    topk_groups: int = 1
    selection_bias: bool = False
    dense_layers: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for field in ("n_experts", "d_expert", "n_groups"):
            value = getattr(self, field)
            if not _is_int(value) or value <= 0:
                _fail(field, value, "a positive integer")
        if not _is_int(self.top_k) or not 1 <= self.top_k <= self.n_experts:
            _fail("top_k", self.top_k, f"an integer in 1..n_experts ({self.n_experts})")
        if not _is_int(self.n_shared_experts) or self.n_shared_experts < 0:
            _fail("n_shared_experts", self.n_shared_experts, "a non-negative integer")
        if self.router not in ROUTERS:
            _fail("router", self.router, f"one of {', '.join(ROUTERS)}")
        for field in ("normalize_topk", "selection_bias"):
            if not isinstance(getattr(self, field), bool):
                _fail(field, getattr(self, field), "a boolean")
        if self.router == "topk_softmax" and not self.normalize_topk:
            _fail("normalize_topk", False, "true with router 'topk_softmax' (its weights sum to 1)")
        if self.selection_bias and self.router != "sigmoid_topk":
            _fail("selection_bias", True, "false unless router is 'sigmoid_topk'")
        scale = self.routed_scale
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not scale > 0:
            _fail("routed_scale", scale, "a positive number")
        self._check_groups()
        layers = self.dense_layers
        if isinstance(layers, list):
            object.__setattr__(self, "dense_layers", tuple(layers))
            layers = self.dense_layers
        if not isinstance(layers, tuple) or not all(_is_int(i) and i >= 0 for i in layers):
            _fail("dense_layers", layers, "a list of non-negative layer indices")
        if list(layers) != sorted(set(layers)):
            _fail("dense_layers", layers, "in increasing order without repeats")

    def _check_groups(self) -> None:
        if self.n_experts % self.n_groups != 0:
            _fail("n_groups", self.n_groups, f"a divisor of n_experts ({self.n_experts})")
        if not _is_int(self.topk_groups) or not 1 <= self.topk_groups <= self.n_groups:
            _fail("topk_groups", self.topk_groups, f"an integer in 1..n_groups ({self.n_groups})")
        reachable = self.topk_groups * (self.n_experts // self.n_groups)
        if self.top_k > reachable:
            _fail(
                "top_k",
                self.top_k,
                f"at most topk_groups x experts per group ({reachable}) with group-limited routing",
            )

    @property
    def experts_per_group(self) -> int:
        """Routed experts in one routing group."""
        return self.n_experts // self.n_groups

    @property
    def active_experts(self) -> int:
        """Experts that one token runs through in an MoE layer: top_k routed plus the shared."""
        return self.top_k + self.n_shared_experts


def balanced_expert_tokens(tokens: int, n_experts: int, top_k: int) -> tuple[int, ...]:
    """Tokens per expert when `tokens` tokens each choose `top_k` of `n_experts` evenly: all
    get ``tokens*top_k // n_experts``, the lowest ``tokens*top_k % n_experts`` one more."""
    base, extra = divmod(tokens * top_k, n_experts)
    return tuple(base + (e < extra) for e in range(n_experts))


def check_expert_tokens(moe: MoEConfig, tokens: int, given: Any) -> tuple[int, ...]:
    """Tokens routed to each expert of a layer of `tokens` tokens: `given` validated, or
    balanced (`balanced_expert_tokens`) when it is None."""
    n, k = moe.n_experts, moe.top_k
    if given is None:
        return balanced_expert_tokens(tokens, n, k)
    counts = tuple(given) if isinstance(given, list | tuple) else ()
    ok = len(counts) == n and all(_is_int(t) and 0 <= t <= tokens for t in counts)
    if not ok or sum(counts) != tokens * k:
        raise ValueError(
            f"expert_tokens: got {given!r}, must be {n} integers in 0..{tokens} (a token picks "
            f"an expert at most once) summing to tokens x top_k = {tokens * k}"
        )
    return counts
