"""A GPT phase (prefill, decode, train step) as an op graph.

`build_graph` returns a networkx DiGraph whose node keys are op names and whose node attribute
``op`` is an `Op`; edges are data dependencies. FLOPs are exact integers:

- GEMM-like ops (matmul, lm_head, attn_qk, attn_av): ``2*m*k*n*batch``. Attention is counted
  over the FULL score matrix (no causal halving). Bias adds are not counted.
- Per-element constants (`FLOPS_PER_ELEMENT`): layernorm 8, rmsnorm 4, softmax 5, gelu 8,
  swiglu 6 (per output element), residual 1, rope 3 (per rotated q/k element), loss 5 (per
  logit), embedding 1 per output element for the learned-position add (0 for RoPE models;
  the token gather itself is free), optimizer (Adam) 10 per parameter.
- Backward: every forward GEMM gets two GEMMs of the same FLOPs (``.bwd_data`` /
  ``.bwd_weight`` for weight matmuls, ``.bwd_q``/``.bwd_k`` for attn_qk and ``.bwd_p``/
  ``.bwd_v`` for attn_av); every other forward op gets one ``.bwd`` op with the same elements
  and FLOPs as the forward op. The GQA reduction of dK/dV over query heads is not counted.
- Update: one ``optimizer`` op per weight tensor (``L{i}.w_q.adam`` ..., ``L{i}.small.adam``
  for the layer's norms and biases, ``embed.adam`` (+position table), ``ln_f.adam``,
  ``lm_head.adam`` when untied), fp32, ``elements`` = parameters; total = 10 * param_count().

Mixture of experts (`GPTConfig.moe`): an MoE layer's FFN is ``L{i}.router`` (a matmul by
``w_router``, T x d x n_experts), ``L{i}.route`` (kind ``route``: scores and top-k, 5 FLOPs
per router logit; the selection's comparisons are not counted), per routed expert e the ops
``L{i}.expert{e}.ffn_up / ffn_gate / act / ffn_down`` over the tokens routed to it, per shared
expert j ``L{i}.shared{j}.*`` over all T tokens, and ``L{i}.combine`` (kind ``combine``: 2
FLOPs per token, feature and chosen expert, 1 per token, feature and shared expert). Expert
ops are `ExpertOp`s: they carry ``expert``, ``shared`` and ``tokens``. Tokens per routed
expert (the same in every MoE layer) are `build_graph`'s ``expert_tokens``, by default
balanced (`workloads.moe.balanced_expert_tokens`): of the T*top_k choices every expert gets
the same number give or take one, the lower ids the extra ones. Every expert has its ops,
even with 0 tokens. The backward and the optimizer follow the general rules (``L{i}.expert{e}.w_up.adam``, ...).
Forward FLOPs thus follow `GPTConfig.matmul_params` (the active weights), not all of them.

Bytes: ``bytes_in``/``bytes_out`` are activation-side bytes in the op's dtype (token ids and
targets are 4 bytes); ``weight_bytes`` is the full size of the tensor named by ``weight`` (for
``embedding``: token table + position table). For the optimizer, in/out also count the fp32
master weight and Adam moments (12 bytes per parameter). A tied LM head names ``weight="embed"``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from dataclasses import replace as _replace

import networkx as nx

from workloads.models import GPTConfig
from workloads.moe import check_expert_tokens

OP_KINDS = (
    "embedding",
    "norm",
    "matmul",
    "attn_qk",
    "softmax",
    "attn_av",
    "act",
    "residual",
    "lm_head",
    "loss",
    "optimizer",
    "rope",
    "route",
    "combine",
)
GEMM_KINDS = ("matmul", "lm_head", "attn_qk", "attn_av")
PHASES = ("prefill", "decode", "train")
OP_PHASES = ("fwd", "bwd", "update")
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
WEIGHT_NAMES = (
    "w_q",
    "w_k",
    "w_v",
    "w_o",
    "w_up",
    "w_gate",
    "w_down",
    "embed",
    "lm_head",
    "w_router",
)

FLOPS_PER_ELEMENT = {
    "layernorm": 8,
    "rmsnorm": 4,
    "softmax": 5,
    "gelu": 8,
    "swiglu": 6,
    "residual": 1,
    "rope": 3,
    "loss": 5,
    "embedding": 1,
    "optimizer": 10,
    "route": 5,
    "combine_routed": 2,
    "combine_shared": 1,
}
ADAM_STATE_BYTES = 12  # fp32 master weight + two moments, per parameter
TOKEN_BYTES = 4
_INT_FIELDS = ("m", "k", "n", "batch", "elements", "flops", "bytes_in", "bytes_out", "weight_bytes")
_OP_DEFAULTS = dict(m=0, k=0, n=0, batch=1, elements=0, flops=0, bytes_in=0, bytes_out=0)


@dataclass(frozen=True)
class Op:
    """One node of the op graph: shapes, dtype, FLOPs and bytes."""

    name: str
    kind: str
    layer: int | None
    phase: str
    m: int
    k: int
    n: int
    batch: int
    elements: int
    dtype: str
    flops: int
    bytes_in: int
    bytes_out: int
    weight_bytes: int
    weight: str | None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Op.name: got {self.name!r}, must be a non-empty string")
        if self.kind not in OP_KINDS:
            raise ValueError(f"Op.kind: got {self.kind!r}, must be one of {', '.join(OP_KINDS)}")
        if self.phase not in OP_PHASES:
            raise ValueError(f"Op.phase: got {self.phase!r}, must be one of {', '.join(OP_PHASES)}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"Op.dtype: got {self.dtype!r}, must be one of "
                             f"{', '.join(DTYPE_BYTES)}")
        if self.weight is not None and self.weight not in WEIGHT_NAMES:
            raise ValueError(f"Op.weight: got {self.weight!r}, must be None or a weight name")
        for field in _INT_FIELDS:
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"Op.{field}: got {value!r}, must be a non-negative integer")
        if self.kind in GEMM_KINDS and self.flops != 2 * self.m * self.k * self.n * self.batch:
            raise ValueError(f"Op.flops: got {self.flops}, must be 2*m*k*n*batch for a GEMM")

    @property
    def is_gemm(self) -> bool:
        """True for matmul-like ops (shape in m, k, n, batch)."""
        return self.kind in GEMM_KINDS


@dataclass(frozen=True)
class ExpertOp(Op):
    """An op of one expert of an MoE layer: routed expert ``expert`` (0..n_experts-1) or,
    with ``shared``, shared expert ``expert``; ``tokens`` routed to it (its GEMMs' m)."""

    expert: int
    shared: bool
    tokens: int

    def __post_init__(self) -> None:
        super().__post_init__()
        for field in ("expert", "tokens"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ExpertOp.{field}: got {value!r}, must be a non-negative integer")
        if not isinstance(self.shared, bool):
            raise ValueError(f"ExpertOp.shared: got {self.shared!r}, must be a boolean")


def _op(name: str, kind: str, layer: int | None, phase: str, dtype: str, **kw) -> Op:
    """An Op with zero defaults for the fields not given (an ExpertOp when `expert` is)."""
    fields = {**_OP_DEFAULTS, "weight_bytes": 0, "weight": None, **kw}
    cls = ExpertOp if "expert" in fields else Op
    return cls(name=name, kind=kind, layer=layer, phase=phase, dtype=dtype, **fields)


class _Builder:
    """Accumulates ops and edges in insertion order."""

    def __init__(self, cfg: GPTConfig, dtype: str, expert_tokens: tuple[int, ...] = (),
                 weights_dtype: str | None = None, kv_dtype: str | None = None) -> None:
        self.cfg = cfg
        self.dtype = dtype
        self.b = DTYPE_BYTES[dtype]
        self.wb = DTYPE_BYTES[weights_dtype or dtype]  # bytes per weight-matrix value
        self.kvb = DTYPE_BYTES[kv_dtype or dtype]  # bytes per KV-cache value
        self.g = nx.DiGraph()
        self.expert_tokens = expert_tokens  # tokens per routed expert (MoE layers)
        self.tokens = 0  # tokens through each layer, set by _forward

    def add(self, op: Op, preds: tuple[str, ...] = ()) -> str:
        if op.name in self.g:
            raise AssertionError(f"duplicate op {op.name}")
        self.g.add_node(op.name, op=op, order=self.g.number_of_nodes())
        for p in preds:
            self.g.add_edge(p, op.name)
        return op.name

    def gemm(self, name, kind, layer, mkn, *, batch=1, act_in=None, kv_in=0, preds=(),
             **kw) -> str:
        """A forward GEMM; act_in = activation input elements (default m*k*batch), kv_in =
        input elements read from the KV cache (in its dtype)."""
        m, k, n = mkn
        act_in = m * k * batch if act_in is None else act_in
        flops = 2 * m * k * n * batch
        bytes_in, bytes_out = act_in * self.b + kv_in * self.kvb, m * n * batch * self.b
        kw.update(m=m, k=k, n=n, batch=batch, flops=flops, bytes_in=bytes_in, bytes_out=bytes_out)
        return self.add(_op(name, kind, layer, "fwd", self.dtype, **kw), preds)

    def proj(self, layer: int, name: str, w: str, rows: int, preds: tuple[str, ...]) -> str:
        """A weight matmul of layer `layer`: (rows x K) @ W[K x N]."""
        cfg = self.cfg
        k, n = (cfg.moe_layer_weight_shapes() if w == "w_router" else cfg.layer_weight_shapes())[w]
        return self.gemm(
            f"L{layer}.{name}",
            "matmul",
            layer,
            (rows, k, n),
            weight=w,
            weight_bytes=k * n * self.wb,
            preds=preds,
        )

    def elementwise(
        self,
        name,
        kind,
        layer,
        elements,
        per_element,
        *,
        el_in=None,
        el_out=None,
        extra_in=0,
        preds=(),
        **kw,
    ) -> str:
        """A forward non-GEMM op of `elements` elements at `per_element` FLOPs each."""
        el_in = elements if el_in is None else el_in
        el_out = elements if el_out is None else el_out
        kw.update(elements=elements, flops=per_element * elements)
        kw.update(bytes_in=el_in * self.b + extra_in, bytes_out=el_out * self.b)
        return self.add(_op(name, kind, layer, "fwd", self.dtype, **kw), preds)


def _validate(cfg, phase, batch, prompt, context, dtype, tensors=()) -> None:
    if not isinstance(cfg, GPTConfig):
        raise ValueError(f"build_graph.cfg: got {type(cfg).__name__}, must be a GPTConfig")
    if phase not in PHASES:
        raise ValueError(f"build_graph.phase: got {phase!r}, must be one of {', '.join(PHASES)}")
    for arg, value in (("batch", batch), ("prompt", prompt), ("context", context)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"build_graph.{arg}: got {value!r}, must be a positive integer")
    for arg, value in (("dtype", dtype), *tensors):  # tensors: (weights_dtype, ...), (kv_dtype, ...)
        if value not in DTYPE_BYTES or (phase == "train" and value != dtype):
            must = f"the run's dtype {dtype!r} with phase train" if value in DTYPE_BYTES else \
                f"one of {', '.join(DTYPE_BYTES)}"
            raise ValueError(f"build_graph.{arg}: got {value!r}, must be {must}")
    if phase == "decode" and context + 1 > cfg.max_context:
        raise ValueError(
            f"build_graph.context: got {context}, must be < max_context ({cfg.max_context}) "
            "for decode (context + 1 new token)"
        )
    if phase != "decode" and prompt > cfg.max_context:
        raise ValueError(
            f"build_graph.prompt: got {prompt}, must be <= max_context ({cfg.max_context})"
        )


def _forward(bld: _Builder, phase: str, batch: int, prompt: int, context: int) -> None:
    """Add the forward ops of one phase."""
    cfg = bld.cfg
    d, hd, H, V, f = cfg.d_model, cfg.hd, cfg.n_heads, cfg.vocab_size, cfg.d_ffn
    b = bld.b
    sq, sk = (1, context + 1) if phase == "decode" else (prompt, prompt)
    T = batch * sq
    bld.tokens = T
    c = FLOPS_PER_ELEMENT
    emb_c = c["embedding"] if cfg.positions == "learned" else 0
    norm = {"per_element": c[cfg.norm], "weight_bytes": cfg.norm_params * b}
    x = bld.elementwise(
        "embed",
        "embedding",
        None,
        T * d,
        emb_c,
        el_in=0,
        extra_in=T * TOKEN_BYTES,
        weight="embed",
        weight_bytes=cfg.embedding_params() * bld.wb,
    )
    for i in range(cfg.n_layers):
        p = f"L{i}."
        n1 = bld.elementwise(p + "norm1", "norm", i, T * d, preds=(x,), **norm)
        q = bld.proj(i, "q_proj", "w_q", T, (n1,))
        k = bld.proj(i, "k_proj", "w_k", T, (n1,))
        v = bld.proj(i, "v_proj", "w_v", T, (n1,))
        qk_src = (q, k)
        if cfg.positions == "rope":
            qk_src = (
                bld.elementwise(
                    p + "rope", "rope", i, T * (cfg.q_dim + cfg.kv_dim), c["rope"], preds=(q, k)
                ),
            )
        # In decode, K and V of the `context` earlier tokens come from the KV cache.
        s = bld.gemm(
            p + "attn_qk",
            "attn_qk",
            i,
            (sq, hd, sk),
            batch=batch * H,
            act_in=batch * sq * cfg.q_dim,
            kv_in=batch * sk * cfg.kv_dim,
            preds=qk_src,
        )
        sm = bld.elementwise(
            p + "softmax", "softmax", i, batch * H * sq * sk, c["softmax"], preds=(s,)
        )
        a = bld.gemm(
            p + "attn_av",
            "attn_av",
            i,
            (sq, sk, hd),
            batch=batch * H,
            act_in=batch * H * sq * sk,
            kv_in=batch * sk * cfg.kv_dim,
            preds=(sm, v),
        )
        o = bld.proj(i, "o_proj", "w_o", T, (a,))
        r1 = bld.elementwise(
            p + "residual1", "residual", i, T * d, c["residual"], el_in=2 * T * d, preds=(x, o)
        )
        n2 = bld.elementwise(p + "norm2", "norm", i, T * d, preds=(r1,), **norm)
        if cfg.is_moe_layer(i):
            dn = _moe_ffn(bld, i, T, n2)
        else:
            dn = _ffn(bld, i, p, T, (n2,), f)
        x = bld.elementwise(
            p + "residual2", "residual", i, T * d, c["residual"], el_in=2 * T * d, preds=(r1, dn)
        )
    # Prefill and decode only need the last position of each sequence for the next token.
    rows = T if phase == "train" else batch
    nf = bld.elementwise("ln_f", "norm", None, rows * d, preds=(x,), **norm)
    head = bld.gemm(
        "lm_head",
        "lm_head",
        None,
        (rows, d, V),
        preds=(nf,),
        weight="embed" if cfg.tied_embeddings else "lm_head",
        weight_bytes=d * V * bld.wb,
    )
    if phase == "train":
        loss_in = T * V * b + T * TOKEN_BYTES
        loss = _op("loss", "loss", None, "fwd", bld.dtype, elements=T * V, bytes_in=loss_in)
        bld.add(_replace(loss, flops=c["loss"] * T * V, bytes_out=4), (head,))


def _ffn(bld: _Builder, layer: int, prefix: str, rows: int, preds, width: int, **kw) -> str:
    """FFN ops (up, gate, act, down) of `width` over `rows` tokens; returns the down op.
    `kw` (expert, shared, tokens) makes them ExpertOps."""
    cfg = bld.cfg
    shapes = cfg.ffn_weight_shapes(width)

    def mm(name: str, w: str, src: tuple[str, ...]) -> str:
        k, n = shapes[w]
        mkn = (rows, k, n)
        return bld.gemm(
            prefix + name, "matmul", layer, mkn, weight=w, weight_bytes=k * n * bld.wb, preds=src,
            **kw
        )

    act_preds = (mm("ffn_up", "w_up", preds),)
    if cfg.activation == "swiglu":
        act_preds += (mm("ffn_gate", "w_gate", preds),)
    el = rows * width
    per = FLOPS_PER_ELEMENT[cfg.activation]
    act = bld.elementwise(
        prefix + "act", "act", layer, el, per, el_in=len(act_preds) * el, preds=act_preds, **kw
    )
    return mm("ffn_down", "w_down", (act,))


def _moe_ffn(bld: _Builder, layer: int, T: int, src: str) -> str:
    """An MoE layer's FFN (module docstring) over T tokens from op `src`; returns combine."""
    cfg, b, c = bld.cfg, bld.b, FLOPS_PER_ELEMENT
    moe, p = cfg.moe, f"L{layer}."
    E, k, S, d = moe.n_experts, moe.top_k, moe.n_shared_experts, cfg.d_model
    router = bld.proj(layer, "router", "w_router", T, (src,))
    chosen = T * k * (b + TOKEN_BYTES)  # a weight and an expert id per choice
    route = _op(
        p + "route",
        "route",
        layer,
        "fwd",
        bld.dtype,
        elements=T * E,
        flops=c["route"] * T * E,
        bytes_in=T * E * b,
        bytes_out=chosen,
    )
    route = bld.add(route, (router,))
    outs = []
    for shared, e, tokens in _experts(bld):
        prefix = f"{p}{'shared' if shared else 'expert'}{e}."
        preds = (src,) if shared else (src, route)  # routed experts wait for the choice
        kw = dict(expert=e, shared=shared, tokens=tokens)
        outs.append(_ffn(bld, layer, prefix, tokens, preds, moe.d_expert, **kw))
    per = c["combine_routed"] * k + c["combine_shared"] * S
    combine = _op(
        p + "combine",
        "combine",
        layer,
        "fwd",
        bld.dtype,
        elements=T * d,
        flops=per * T * d,
        bytes_in=((k + S) * T * d + T * k) * b,
        bytes_out=T * d * b,
    )
    return bld.add(combine, (*outs, route))


# Backward GEMMs of attention: (suffix, and the forward fields giving its m, k, n).
_ATTN_BWD = {
    "attn_qk": (("bwd_q", "m", "n", "k"), ("bwd_k", "n", "m", "k")),
    "attn_av": (("bwd_p", "m", "n", "k"), ("bwd_v", "k", "m", "n")),
}


def _weight_key(op: Op) -> tuple:
    """Which weight tensor a matmul's weight gradient belongs to (experts share names)."""
    if isinstance(op, ExpertOp):
        return (op.layer, op.weight, op.shared, op.expert)
    return (op.layer, op.weight)


def _bwd(bld: _Builder, op: Op, suffix: str, incoming: tuple[str, ...], **changes) -> str:
    return bld.add(_replace(op, name=f"{op.name}.{suffix}", phase="bwd", **changes), incoming)


def _backward(bld: _Builder) -> None:
    """Add backward ops (reverse of the forward graph) and the optimizer updates."""
    g, b = bld.g, bld.b
    # grad_of[x] = backward nodes that produce dL/d(output of forward op x)
    grad_of: dict[str, list[str]] = defaultdict(list)
    weight_grad: dict[tuple[int | None, str | None], list[str]] = defaultdict(list)
    for op in reversed(ops_in_order(g)):
        preds = list(g.predecessors(op.name))
        incoming = (*grad_of[op.name], op.name)
        if op.kind in ("matmul", "lm_head"):
            m, k, n = op.m, op.k, op.n
            dx = _bwd(
                bld, op, "bwd_data", incoming, k=n, n=k, bytes_in=m * n * b, bytes_out=m * k * b
            )
            dw = _bwd(
                bld,
                op,
                "bwd_weight",
                incoming,
                m=k,
                k=m,
                bytes_in=(m * k + m * n) * b,
                bytes_out=k * n * b,
            )
            for p in preds:
                grad_of[p].append(dx)
            weight_grad[_weight_key(op)].append(dw)
        elif op.kind in _ATTN_BWD:
            outs = []
            for suffix, *dims in _ATTN_BWD[op.kind]:
                mm, kk, nn = (getattr(op, a) for a in dims)
                outs.append(
                    _bwd(
                        bld,
                        op,
                        suffix,
                        incoming,
                        m=mm,
                        k=kk,
                        n=nn,
                        flops=2 * mm * kk * nn * op.batch,
                        bytes_in=op.bytes_in + op.bytes_out,
                        bytes_out=mm * nn * op.batch * b,
                    )
                )
            for p in preds:  # q side -> outs[0], k/v side -> outs[1]; rope feeds both
                if p.endswith(("k_proj", "v_proj")):
                    grad_of[p].append(outs[1])
                elif p.endswith("rope"):
                    grad_of[p].extend(outs)
                else:
                    grad_of[p].append(outs[0])
        else:
            dx = _bwd(
                bld, op, "bwd", incoming, bytes_in=op.bytes_in + op.bytes_out, bytes_out=op.bytes_in
            )
            for p in preds:
                grad_of[p].append(dx)
            if op.kind == "embedding":
                weight_grad[(None, "embed")].append(dx)
            elif op.kind == "norm":
                weight_grad[(op.layer, "ln_f" if op.layer is None else "small")].append(dx)
    _optimizer(bld, weight_grad)


def _experts(bld: _Builder) -> list[tuple[bool, int, int]]:
    """(shared, expert id, tokens) of every expert of an MoE layer, routed ones first."""
    routed = [(False, e, t) for e, t in enumerate(bld.expert_tokens)]
    return routed + [(True, j, bld.tokens) for j in range(bld.cfg.moe.n_shared_experts)]


def _optimizer(bld: _Builder, weight_grad) -> None:
    cfg, b = bld.cfg, bld.b
    per_param = FLOPS_PER_ELEMENT["optimizer"]

    def adam(name, layer, params, weight, key, **kw):
        traffic = params * (b + ADAM_STATE_BYTES)
        op = _op(
            name,
            "optimizer",
            layer,
            "update",
            "fp32",
            elements=params,
            weight=weight,
            flops=per_param * params,
            bytes_in=traffic,
            bytes_out=traffic,
            weight_bytes=params * b,
            **kw,
        )
        bld.add(op, tuple(weight_grad[key]))

    for i in range(cfg.n_layers):
        moe_layer = cfg.is_moe_layer(i)
        shapes = cfg.moe_layer_weight_shapes() if moe_layer else cfg.layer_weight_shapes()
        for w, (kk, nn) in shapes.items():
            adam(f"L{i}.{w}.adam", i, kk * nn, w, (i, w))
        for shared, e, tokens in _experts(bld) if moe_layer else ():
            prefix = f"L{i}.{'shared' if shared else 'expert'}{e}."
            for w, (kk, nn) in cfg.expert_weight_shapes().items():
                kw = dict(expert=e, shared=shared, tokens=tokens)
                adam(f"{prefix}{w}.adam", i, kk * nn, w, (i, w, shared, e), **kw)
        adam(f"L{i}.small.adam", i, cfg.layer_small_params(i), None, (i, "small"))
    adam("embed.adam", None, cfg.embedding_params(), "embed", (None, "embed"))
    adam("ln_f.adam", None, cfg.norm_params, None, (None, "ln_f"))
    if not cfg.tied_embeddings:
        adam("lm_head.adam", None, cfg.lm_head_params(), "lm_head", (None, "lm_head"))


def build_graph(
    cfg: GPTConfig,
    phase: str,
    *,
    batch: int = 1,
    prompt: int = 128,
    context: int = 128,
    dtype: str = "fp16",
    expert_tokens: tuple[int, ...] | None = None,
    weights_dtype: str | None = None,
    kv_dtype: str | None = None,
) -> nx.DiGraph:
    """Op graph of one prefill, decode step or training step (see module docstring).

    `weights_dtype` (default `dtype`): the weight matrices' dtype (projections, FFN, embedding
    table, LM head; norm gains stay in `dtype`), so their ``weight_bytes``; `kv_dtype`: the KV
    cache's, so the K and V part of the attention ops' ``bytes_in`` (they are read from the
    cache in every phase). Ops keep `dtype` (the activations'); a training step takes neither.

    `expert_tokens` (MoE models): tokens routed to each expert in every MoE layer, summing to
    tokens x top_k, where tokens is batch x prompt (decode: batch); default balanced."""
    weights_dtype, kv_dtype = weights_dtype or dtype, kv_dtype or dtype
    _validate(cfg, phase, batch, prompt, context, dtype,
              (("weights_dtype", weights_dtype), ("kv_dtype", kv_dtype)))
    tokens = batch * (1 if phase == "decode" else prompt)
    if cfg.moe is None and expert_tokens is not None:
        raise ValueError(
            f"build_graph.expert_tokens: got {expert_tokens!r}, must be None for a dense model"
        )
    counts = () if cfg.moe is None else check_expert_tokens(cfg.moe, tokens, expert_tokens)
    bld = _Builder(cfg, dtype, counts, weights_dtype, kv_dtype)
    _forward(bld, phase, batch, prompt, context)
    if phase == "train":
        _backward(bld)
    bld.g.graph.update(
        model=cfg.name, phase=phase, batch=batch, prompt=prompt, context=context, dtype=dtype,
        weights_dtype=weights_dtype, kv_dtype=kv_dtype,
    )
    if cfg.is_moe:
        bld.g.graph["expert_tokens"] = bld.expert_tokens
    return bld.g


def ops_in_order(g: nx.DiGraph) -> list[Op]:
    """All ops in a deterministic topological order (ties broken by insertion order)."""
    order = nx.lexicographical_topological_sort(g, key=lambda n: (g.nodes[n].get("order", 0), n))
    return [g.nodes[n]["op"] for n in order]


def layer_ops(g: nx.DiGraph, layer: int) -> list[Op]:
    """Ops of one transformer layer (all phases), in `ops_in_order` order."""
    return [op for op in ops_in_order(g) if op.layer == layer]


def total_flops(g: nx.DiGraph) -> int:
    """Sum of the FLOPs of all ops."""
    return sum(data["op"].flops for _, data in g.nodes(data=True))


def summarize(g: nx.DiGraph) -> dict:
    """Totals: n_ops, flops, flops_by_kind, flops_by_phase, bytes_in, bytes_out."""
    by_kind: dict[str, int] = defaultdict(int)
    by_phase: dict[str, int] = defaultdict(int)
    bytes_in = bytes_out = 0
    for _, data in g.nodes(data=True):
        op: Op = data["op"]
        by_kind[op.kind] += op.flops
        by_phase[op.phase] += op.flops
        bytes_in += op.bytes_in
        bytes_out += op.bytes_out
    return {
        "n_ops": g.number_of_nodes(),
        "flops": sum(by_kind.values()),
        "flops_by_kind": dict(by_kind),
        "flops_by_phase": dict(by_phase),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }
