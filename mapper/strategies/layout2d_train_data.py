"""The data side of a training step in the 2-D layout (`layout2d_train`): tiles, the DataOp of
every record, the kernels only it needs, the weights in and the loss and gradients out.

Layout: natural (core (x, y) holds token block y and feature block x of every activation);
each forward GEMM is its algorithm's records on natural data (C comes out natural), its
weights streamed in as the algorithm pre-aligns them on natural data
(`mapper.gemm.prealigned_b(..., natural=True)`; MeshGEMM's: logical (lx, ly) holds block
(o[lx + ly], o[lx]), which is also what the backward's `nt` product reads,
`mapper.gemm_transposed`).

Every layer's activations have tiles of their own (`L{i}.h`, ...): a recompute writes the same
values again. The streamed weights are inputs: `L{i}.<gemm>.w` for the forward, `.wb` for the
backward (the bytes of the backward's stream; the recompute's GEMMs leave them moved one place,
which the `nt` product takes as it is). Functional training runs one micro-batch.
"""

from __future__ import annotations

import math

import numpy as np

from mapper.gemm import fragment_buffers, prealigned_b
from mapper.gemm_transposed import RING_ALGO, tn_result
from mapper.strategies.layout2d_data import (
    NEG,
    Data2D,
    _blocks,
    _tokens,
    dataop,
    embedded,
    layer_matrices,
    local_cores,
)
from workloads.reference import EPS
from wse_sim.program import Region

LABELS = ("qkv_proj", "o_proj", "ffn_up", "ffn_down")


# ---- kernels ------------------------------------------------------------------------------------

def _slice_pair(call):
    """[dO | O] of one head: features [lo, lo + hd) of two (tm, n) tiles into a zero tile."""
    lo, hd = call.params["lo"], call.params["hd"]
    xs, _ = local_cores(call)
    out = np.zeros_like(call.out)
    for k, src in enumerate(call.inputs):
        nt = src.shape[-1]
        for idx in np.ndindex(xs.shape):
            a, b = max(lo, xs[idx] * nt), min(lo + hd, (xs[idx] + 1) * nt)
            if a < b:
                out[idx][:, k * hd + a - lo:k * hd + b - lo] = \
                    src[idx][:, a - xs[idx] * nt:b - xs[idx] * nt]
    return out


def _attn_d(call):
    """[dO | D | m | l]: D = rowsum(dO o O) and head h's forward row statistics."""
    doo, st = call.inputs
    hd, h = call.params["hd"], call.params["h"]
    do, o = doo[..., :hd], doo[..., hd:2 * hd]
    d = (do.astype(np.float64) * o).sum(-1, keepdims=True)
    return np.concatenate([do, d, st[..., 2 * h:2 * h + 2]], axis=-1)


def _probs(call):
    """(P, dO, D, q, k, v): the recomputed probabilities of the core's query x key block."""
    q, kv, pk = (v.astype(np.float64) for v in call.inputs[:3])
    p = call.params
    hd, tm, sq, T = p["hd"], p["tm"], p["prompt"], p["tokens"]
    xs, ys = local_cores(call)
    s = np.einsum("...id,...jd->...ij", q, kv[..., :hd]) / math.sqrt(hd)
    tq, tk = _tokens(ys, tm)[..., :, None], _tokens(xs, tm)[..., None, :]
    ok = (tk <= tq) & (tk // sq == tq // sq) & (tk < T) & (tq < T)
    m, lsum = pk[..., hd + 1:hd + 2], pk[..., hd + 2:hd + 3]
    good = ok & (lsum > 0)
    prob = np.where(good, np.exp(np.where(good, s - m, 0.0)) / np.where(lsum > 0, lsum, 1.0),
                    0.0)
    return prob, pk[..., :hd], pk[..., hd:hd + 1], q, kv[..., :hd], kv[..., hd:]


def _attn_dq(call):
    """dQ of the core's query block from its key block: dS K / sqrt(hd)."""
    prob, do, dd, _, k, v = _probs(call)
    ds = prob * (np.einsum("...id,...jd->...ij", do, v) - dd)
    return np.einsum("...ij,...jd->...id", ds, k) / math.sqrt(call.params["hd"])


def _attn_dkv(call):
    """[dK | dV] of the core's key block from its query block, added to what the tile holds
    (its first query head writes: `first`)."""
    prob, do, dd, q, _, v = _probs(call)
    ds = prob * (np.einsum("...id,...jd->...ij", do, v) - dd)
    dk = np.einsum("...ij,...id->...jd", ds, q) / math.sqrt(call.params["hd"])
    dv = np.einsum("...ij,...id->...jd", prob, do)
    new = np.concatenate([dk, dv], axis=-1)
    return new if call.params["first"] else call.inputs[3] + new


def _rope_bwd(call):
    """The inverse rotation of the first `hd` columns (RoPE is orthogonal), at the tokens of
    the core's row block (`by` = "row") or column block ("col")."""
    p = call.params
    xs, ys = local_cores(call)
    v = call.inputs[0].astype(np.float64)
    hd, half = p["hd"], p["hd"] // 2
    pos = _tokens(ys if p["by"] == "row" else xs, p["tm"]) % p["prompt"]
    freqs = p["theta"] ** (-np.arange(half, dtype=np.float64) * 2.0 / hd)
    ang = pos[..., None] * freqs
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = v[..., :half].copy(), v[..., half:hd].copy()
    v[..., :half], v[..., half:hd] = x1 * cos + x2 * sin, x2 * cos - x1 * sin
    return v


def _place_segs(call):
    """Columns [at, at + w) of the source into features [lo, lo + w) of each core's block."""
    xs, _ = local_cores(call)
    src, out = call.inputs[0], call.out.copy()
    nt = out.shape[-1]
    for lo, w, at in call.params["segs"]:
        for idx in np.ndindex(xs.shape):
            a, b = max(lo, xs[idx] * nt), min(lo + w, (xs[idx] + 1) * nt)
            if a < b:
                out[idx][:, a - xs[idx] * nt:b - xs[idx] * nt] = src[idx][:, at + a - lo:at + b - lo]
    return out


def _vocab_mask(call):
    p = call.params
    xs, ys = local_cores(call)
    lg = call.inputs[0].astype(np.float64)
    vt = lg.shape[-1]
    vid = xs[..., None] * vt + np.arange(vt)                       # (rows, cols, vt)
    tok = _tokens(ys, p["tm"])                                      # (rows, cols, tm)
    valid = (vid[..., None, :] < p["vocab"]) & (tok[..., :, None] < p["tokens"])
    tgt = call.inputs[1][..., 0].astype(np.int64)                   # (rows, cols, tm)
    hot = valid & (vid[..., None, :] == tgt[..., :, None])
    return lg, valid, hot


def _loss_part(call):
    """[0 | m | l]: the core's max and sum of exponentials of its vocabulary block."""
    lg, valid, _ = _vocab_mask(call)
    z = np.where(valid, lg, NEG)
    m = z.max(-1, keepdims=True)
    e = np.where(valid, np.exp(np.where(valid, z - m, 0.0)), 0.0).sum(-1, keepdims=True)
    return np.concatenate([np.zeros_like(m), m, e], axis=-1)


def _loss_target(call):
    """The target's logit where it is in the core's block (0 elsewhere)."""
    lg, _, hot = _vocab_mask(call)
    return np.where(hot, lg, 0.0).sum(-1, keepdims=True)


def _loss_bwd(call):
    """(softmax - one-hot) / tokens from the row's merged [m, l, target logit]."""
    lg, valid, hot = _vocab_mask(call)
    st = call.inputs[2].astype(np.float64)
    lsum = np.where(st[..., 1:2] > 0, st[..., 1:2], 1.0)
    prob = np.where(valid, np.exp(np.where(valid, lg - st[..., 0:1], 0.0)) / lsum, 0.0)
    return (prob - hot) / call.params["tokens"]


KERNELS = {"l2t_slice_pair": _slice_pair, "l2t_attn_d": _attn_d, "l2t_attn_dq": _attn_dq,
           "l2t_attn_dkv": _attn_dkv, "l2t_rope_bwd": _rope_bwd, "l2t_place": _place_segs,
           "l2t_loss_part": _loss_part, "l2t_loss_target": _loss_target,
           "l2t_loss_bwd": _loss_bwd}


def register_kernels() -> None:
    from mapper.strategies import layout2d_data, layout2d_optimizer
    from wse_sim.kernels.registry import register_kernel
    layout2d_data.register_kernels()
    layout2d_optimizer.register_kernels()
    for name, fn in KERNELS.items():
        register_kernel(name, fn, replace=True)


# ---- tiles and DataOps --------------------------------------------------------------------------

class TrainData2D(Data2D):
    """Tile names and shapes of a functional training step, and every record's DataOp."""

    A_IN = {"qkv_proj": "h", "o_proj": "ao", "ffn_up": "h2", "ffn_down": "hf"}
    C_OUT = {"qkv_proj": "cq", "o_proj": "co", "ffn_up": "cu", "ffn_down": "cd"}
    DC = {"qkv_proj": "gcq", "o_proj": "gx", "ffn_up": "gcu", "ffn_down": "gx"}

    def __init__(self, run, t, algos: dict[str, str], recompute: bool,
                 optimizer: str = "offwafer"):
        super().__init__(run, t, algos)  # each forward projection's
        self.perm = tuple(range(t.P))  # natural: every GEMM on natural data
        self.train, self.recompute, self.i, self.backward = True, recompute, 0, False
        self.optimizer = optimizer  # onwafer: the Adam state tiles (`layout2d_optimizer`)

    def a(self, i: int, name: str) -> str:
        """Layer i's activation tile: its own, or (recompute) one set that every layer's
        recompute fills again just before its backward reads it."""
        return f"A.{name}" if self.recompute else f"L{i}.{name}"

    def tiles(self, gemm_tiles: dict) -> dict:
        cfg, t, P, dt = self.cfg, self.t, self.P, self.run.dtype
        reg = Region(0, 0, P, P)
        hd, tm, f32, g = cfg.hd, t.tm, "fp32", (1 if self.rms else 2)
        vt = math.ceil(cfg.vocab_size / P)
        out = {"kvs": (tm, 2 * hd, dt), "kvc": (tm, 2 * hd, dt), "qs": (tm, hd, dt),
               "s": (tm, tm + 2, f32), "pt": (tm, hd + 2, dt), "o0": (tm, hd, dt),
               "gx": (tm, t.d, f32), "gcq": (tm, t.qkv, f32), "gcu": (tm, t.ffn, f32),
               "bst": (tm, 2, f32), "gg": (g, t.d, f32), "dos": (tm, 2 * hd, dt),
               "pk": (tm, hd + 3, f32), "dqp": (tm, hd, f32), "dkv": (tm, 2 * hd, f32),
               "dkvp": (tm, 2 * hd, f32), "dkvr": (tm, 2 * hd, f32),
               "lnfh": (tm, t.d, dt), "lnf.st": (tm, 2, f32), "lnf.g": (g, t.d, dt),
               "lnf.gg": (g, t.d, f32), "head.ain": (tm, t.d, dt), "head.a1": (tm, t.d, dt),
               "head.w": (t.d, vt, dt), "head.b0": (t.d, vt, dt), "lg": (tm, vt, f32),
               "dlg": (tm, vt, dt), "lsp": (tm, 3, f32), "lso": (tm, 1, f32),
               "lzt": (tm, 1, f32), "lst": (tm, 3, f32), "tgt": (tm, 1, f32),
               "embed.grad": (tm, t.d, f32), "head.dw0": (t.d, vt, f32),
               "head.dw1": (t.d, vt, f32), "head.ta1": (tm, t.d, dt),
               "lm_head.gc0": (tm, t.d, f32), "lm_head.gc1": (tm, t.d, f32)}
        widths = t.weights()
        for label, (kt, _) in widths.items():
            out |= {f"{label}.ain": (tm, kt, dt), f"{label}.gc0": (tm, kt, f32),
                    f"{label}.gc1": (tm, kt, f32), f"{label}.ta1": (tm, kt, dt)}
        for label, shapes in gemm_tiles.items():
            for name, shape in shapes.items():
                out[f"{label}.{name}"] = (*shape, dt)
        for i in range(cfg.n_layers + 1):
            out[f"L{i}.x"] = (tm, t.d, dt)
        if self.optimizer == "onwafer":
            from mapper.strategies.layout2d_optimizer import state_tiles
            out |= state_tiles(self)
        acts = {"h": (tm, t.d, dt), "st": (tm, 2, f32), "cq": (tm, t.qkv, f32),
                "co": (tm, t.d, f32), "ao": (tm, t.q, dt), "r1": (tm, t.d, dt),
                "st2": (tm, 2, f32), "h2": (tm, t.d, dt), "cu": (tm, t.ffn, f32),
                "hf": (tm, t.f, dt), "cd": (tm, t.d, f32), "ast": (tm, 2 * cfg.n_heads, f32)}
        for i in range(cfg.n_layers):
            p = f"L{i}."
            out |= {self.a(i, k): v for k, v in acts.items()}
            out |= {p + "g1": (g, t.d, dt), p + "g2": (g, t.d, dt),
                    p + "gg1": (g, t.d, f32), p + "gg2": (g, t.d, f32)}
            for label, (kt, nt) in widths.items():
                out |= {f"{p}{label}.w": (kt, nt, dt), f"{p}{label}.wb": (kt, nt, dt),
                        f"{p}{label}.dw0": (kt, nt, f32), f"{p}{label}.dw1": (kt, nt, f32)}
        return {k: (reg, (a, b), d, None) for k, (a, b, d) in out.items()}

    # ---- the forward ----------------------------------------------------------------------------
    def gemm_names(self, i: int, label: str, algo: str) -> dict:
        """`algo`'s roles: A a copy of the input (the GEMM consumes it), B the layer's weight
        tile (the backward's copy when recomputing), C the layer's own."""
        roles = fragment_buffers(algo)
        w = f"L{i}.{label}.w" + ("b" if self.backward else "")
        return {roles["a"]: f"{label}.ain", roles["b"]: w, "c": self.a(i, self.C_OUT[label])
                } | {r: f"{label}.{r}" for r in roles["scratch"]}

    def keep(self, i: int, label: str):
        return dataop("copy", (self.a(i, self.A_IN[label]),), f"{label}.ain")

    def norm(self, key: str, gain: str, x: str = "x", st: str = "st", h: str = "h") -> dict:
        return {key + ".stats": dataop("norm_stats", (x,), st),
                key + ".allreduce": dataop("reduce", (st,), st),
                key + ".bcast": dataop("bcast", (st,), st),
                key: dataop("norm_apply", (x, st, gain), h, n=self.cfg.d_model,
                            rms=self.rms, eps=EPS)}

    def layer(self, i: int) -> dict:
        self.i = i
        p, a = f"L{i}.", lambda n: self.a(i, n)
        act = "swiglu" if self.cfg.activation == "swiglu" else "gelu"
        return (self.norm("norm1", p + "g1", p + "x", a("st"), a("h"))
                | self.norm("norm2", p + "g2", a("r1"), a("st2"), a("h2"))
                | {"checkpoint": None,
                   "residual1": dataop("add", (p + "x", a("co")), a("r1")),
                   "act": dataop(act, (a("cu"),), a("hf")),
                   "residual2": dataop("add", (a("r1"), a("cd")), f"L{i + 1}.x")}
                | {f"{label}.keep": self.keep(i, label) for label in LABELS})

    def attention(self, g: int, j: int) -> dict:
        """The forward's attention DataOps on layer `self.i`'s tiles, with each head's row
        statistics kept (the backward's)."""
        d = super().attention(g, j)
        i, h = self.i, g * (self.cfg.n_heads // self.cfg.n_kv_heads) + j
        ren = {"cq": self.a(i, "cq"), "ao": self.a(i, "ao")}
        out = {}
        for k, op in d.items():
            if op is None:
                out[k] = None
                continue
            ins = tuple(ren.get(n, n) for n in op.inputs)
            params = dict(op.params)
            if k == "o_reduce":
                params |= {"stats": self.a(i, "ast"), "stats_offset": 2 * h}
            out[k] = dataop(op.kernel, ins, ren.get(op.output, op.output), **params)
        return out

    # ---- the backward ---------------------------------------------------------------------------
    def nt_names(self, i: int | None, label: str, moved: bool) -> dict:
        """The `nt` product's buffers: B where the GEMM that read it last left it (`moved`:
        in buffer P mod 2 of its pair), else the backward's fresh copy."""
        if label == "lm_head":
            w, scratch = "head.w", "head.b0"
        else:
            w, scratch = f"L{i}.{label}.wb", f"{label}.b0"
        pair = (w, scratch) if not moved or self.P % 2 else (scratch, w)
        dc = "dlg" if label == "lm_head" else self.DC[label]
        return {"a": dc, "b0": pair[0], "b1": pair[1], "c0": f"{label}.gc0",
                "c1": f"{label}.gc1"}

    def tn_names(self, i: int | None, label: str) -> dict:
        if label == "lm_head":
            return {"a0": "lnfh", "a1": "head.ta1", "b": "dlg", "c0": "head.dw0",
                    "c1": "head.dw1"}
        p = f"L{i}."
        return {"a0": self.a(i, self.A_IN[label]), "a1": f"{label}.ta1", "b": self.DC[label],
                "c0": p + f"{label}.dw0", "c1": p + f"{label}.dw1"}

    def out_of(self, label: str) -> str:
        return f"{label}.gc{(self.P - 1) % 2}"

    def norm_bwd(self, key: str, dy: str, x: str, st: str, gain: str, gg: str,
                 accumulate: bool) -> dict:
        kw = dict(n=self.cfg.d_model, rms=self.rms, eps=EPS)
        return {key + ".sums": dataop("norm_bwd_stats", (dy, x, st, gain), "bst", **kw),
                key + ".allreduce": dataop("reduce", ("bst",), "bst"),
                key + ".bcast": dataop("bcast", ("bst",), "bst"),
                key + ".apply": dataop("norm_bwd_apply", (dy, x, st, gain, "bst", "gg"), "gx",
                                       accumulate=accumulate, **kw),
                key + ".dgain": dataop("reduce", ("gg",), gg)}

    def layer_bwd(self, i: int) -> dict:
        p, a = f"L{i}.", lambda n: self.a(i, n)
        act = "swiglu_bwd" if self.cfg.activation == "swiglu" else "gelu_bwd"
        return ({"act.bwd": dataop(act, (a("cu"), self.out_of("ffn_down")), "gcu")}
                | self.norm_bwd("norm2.bwd", self.out_of("ffn_up"), a("r1"), a("st2"),
                                p + "g2", p + "gg2", True)
                | self.norm_bwd("norm1.bwd", self.out_of("qkv_proj"), p + "x", a("st"),
                                p + "g1", p + "gg1", True))

    def attention_bwd(self, i: int, g: int, j: int) -> dict:
        cfg, t = self.cfg, self.t
        hd, nq = cfg.hd, cfg.n_heads // cfg.n_kv_heads
        h = g * nq + j
        kv_lo = cfg.q_dim + g * hd
        self.i = i
        d = {k: v for k, v in self.attention(g, j).items() if k.startswith(("kv_", "q_"))}
        blk = dict(hd=hd, tm=t.tm, prompt=self.run.prompt, tokens=self.run.tokens)
        rope = dict(hd=hd, tm=t.tm, prompt=self.run.prompt, theta=float(cfg.rope_theta))
        rot = cfg.positions == "rope"
        return d | {
            "do_slice": dataop("l2t_slice_pair", (self.out_of("o_proj"), self.a(i, "ao")),
                               "dos", lo=h * hd, hd=hd),
            "do_gather": dataop("reduce", ("dos",), "dos"),
            "D": dataop("l2t_attn_d", ("dos", self.a(i, "ast")), "pk", hd=hd, h=h),
            "do_bcast": dataop("bcast", ("pk",), "pk"),
            "dq": dataop("l2t_attn_dq", ("qs", "kvc", "pk"), "dqp", **blk),
            "dkv": dataop("l2t_attn_dkv", ("qs", "kvc", "pk", "dkv"), "dkv", first=j == 0,
                          **blk),
            "dq_reduce": dataop("reduce", ("dqp",), "dqp"),
            "dq_rope": dataop("l2t_rope_bwd", ("dqp",), "dqp", by="row", **rope) if rot
            else None,
            "dq_bcast": dataop("bcast", ("dqp",), "dqp"),
            "dq_place": dataop("l2t_place", ("dqp",), "gcq", segs=((h * hd, hd, 0),)),
            "dkv_reduce": dataop("reduce", ("dkv",), "dkvp"),
            "dk_rope": dataop("l2t_rope_bwd", ("dkvp",), "dkvp", by="col", **rope) if rot
            else None,
            "dkv_row": dataop("copy", ("dkvp",), "dkvr"),
            "dkv_place": dataop("l2t_place", ("dkvr",), "gcq",
                                segs=((kv_lo, hd, 0), (kv_lo + cfg.kv_dim, hd, hd)))}

    def head(self) -> dict:
        L, t = self.cfg.n_layers, self.t
        vocab = dict(tm=t.tm, vocab=self.cfg.vocab_size, tokens=self.run.tokens)
        return (self.norm("ln_f", "lnf.g", f"L{L}.x", "lnf.st", "lnfh")
                | {"keep": dataop("copy", ("lnfh",), "head.ain"),
                   "loss.stats": dataop("l2t_loss_part", ("lg", "tgt"), "lsp", **vocab),
                   "loss.target": dataop("l2t_loss_target", ("lg", "tgt"), "lzt", **vocab),
                   "loss.lse": dataop("reduce", ("lsp",), "lso", combine="softmax", heads=1,
                                      stats="lst", stats_offset=0),
                   "loss.zt": dataop("reduce", ("lzt",), "lst", out_offset=2),
                   "loss.bcast": dataop("bcast", ("lst",), "lst"),
                   "loss.bwd": dataop("l2t_loss_bwd", ("lg", "tgt", "lst"), "dlg", **vocab),
                   "embed.bwd": dataop("copy", ("gx",), "embed.grad")}
                | self.norm_bwd("ln_f.bwd", self.out_of("lm_head"), f"L{L}.x", "lnf.st",
                                "lnf.g", "lnf.gg", False))

    def head_gemm_names(self) -> dict:
        return {"a0": "head.ain", "b1": "head.w", "c": "lg", "a1": "head.a1", "b0": "head.b0"}


def functional_allocs(pb, run, t, algos: dict, recompute: bool, optimizer: str,
                      region: Region, buffers: dict) -> tuple:
    """A functional step's SRAM on `region`: one arena of `buffers`' bytes with every tile of
    the 2-D layout (`TrainData2D.tiles`) a view into it, each core
    holding its own; (the TrainData2D, the meta it adds)."""
    from mapper.gemm_common import Plan
    from mapper.strategies.common import alloc_group
    from mapper.strategies.layout2d import gemm_plans, scratch_tiles
    register_kernels()
    P = t.P
    fd = TrainData2D(run, t, algos, recompute, optimizer)
    plans = {label: (plan, Plan("gemm", RING_ALGO, P, plan.m, plan.k, plan.n, plan.dtype))
             for label, plan in gemm_plans(run, P, algos, run.chunk_tokens).items()}
    tiles = {k: (region, *rest) for k, (_, *rest) in fd.tiles(scratch_tiles(plans)).items()}
    views, extra_bytes = alloc_group(pb, "", region, buffers, tiles)
    return fd, {"views": views, "sram_extra_bytes": extra_bytes,
                "functional_2d_train": {"algos": algos, "tm": t.tm}}


# ---- weights in, loss and gradients out ---------------------------------------------------------

def _prealigned(m: np.ndarray, kt: int, nt: int, P: int, algo: str = RING_ALGO) -> np.ndarray:
    """Weight m (K x N) as `algo` on natural data stores it (MeshGEMM's: as `nt` reads it)."""
    return prealigned_b(algo, _blocks(m, kt, nt, P), natural=True)


def _gain(cfg, w, prefix: str, d_t: int, P: int) -> np.ndarray:
    parts = [w[prefix + "_g"]] + ([] if cfg.norm == "rmsnorm" else [w[prefix + "_b"]])
    g = np.zeros((len(parts), d_t * P), np.float32)
    for k, v in enumerate(parts):
        g[k, :cfg.d_model] = v
    return np.broadcast_to(g.reshape(len(parts), P, d_t).transpose(1, 0, 2)[None],
                           (P, P, len(parts), d_t)).copy()


def train_inputs(program, cfg, weights: dict, tokens: np.ndarray, targets: np.ndarray) -> dict:
    """The buffers a functional training step starts from: the embedded tokens, both copies
    of every weight (the forward's and the backward's stream), the gains, the targets."""
    t = program.meta["tiles"]
    P = program.meta["region_cols"]
    algos = program.meta["functional_2d_train"]["algos"]
    tm, d_t, f_t = t["tokens"], t["d_model"], t["ffn_k"]
    B, S = tokens.shape
    out = {"L0.x": _blocks(embedded(cfg, weights, tokens), tm, d_t, P)}
    for i in range(cfg.n_layers):
        for label, m in layer_matrices(cfg, weights, i, f_t, P).items():
            kt = math.ceil(m.shape[0] / P)
            nt = math.ceil(m.shape[1] / P) if label != "ffn_up" else t["ffn"]
            out[f"L{i}.{label}.w"] = _prealigned(m, kt, nt, P, algos[label])
            out[f"L{i}.{label}.wb"] = _prealigned(m, kt, nt, P)
        out[f"L{i}.g1"] = _gain(cfg, weights, f"L{i}.ln1", d_t, P)
        out[f"L{i}.g2"] = _gain(cfg, weights, f"L{i}.ln2", d_t, P)
    out["lnf.g"] = _gain(cfg, weights, "ln_f", d_t, P)
    head = weights["embed"].T if cfg.tied_embeddings else weights["lm_head"]
    out["head.w"] = _prealigned(head, d_t, math.ceil(cfg.vocab_size / P), P)
    tg = np.full(tm * P, -1.0, np.float32)
    tg[:B * S] = targets.reshape(-1)
    out["tgt"] = np.broadcast_to(tg.reshape(P, 1, tm, 1), (P, P, tm, 1)).copy()
    return _spread(program, out)


def _squares(program) -> list | None:
    """A layer-pipelined step's regions' origins (layer i's, then the LM head's), or None."""
    return program.meta["functional_2d_train"].get("origins")


def _spread(program, tiles: dict) -> dict:
    """Layer-pipelined: each (P, P, ...) input into every square of the tiles' bounding box
    (a square reads its own layer's; the rest are never read)."""
    origins = _squares(program)
    if not origins:
        return tiles
    P = program.meta["region_cols"]
    cols, rows = (max(o[k] for o in origins) + P for k in (0, 1))
    out = {}
    for name, a in tiles.items():
        full = np.zeros((rows, cols, *a.shape[2:]), a.dtype)
        for x, y in origins:
            full[y:y + P, x:x + P] = a
        out[name] = full
    return out


def _own_squares(program, buffers: dict, n_layers: int) -> dict:
    """Layer-pipelined: each buffer's tiles on the square that owns it (layer i's tiles
    `L{i}.*` on layer i's, `embed.grad` on layer 0's, the rest on the LM head's)."""
    origins = _squares(program)
    if not origins:
        return buffers
    P = program.meta["region_cols"]

    def owner(name: str) -> int:
        head, _, _ = name.partition(".")
        if name == "embed.grad":
            return 0
        return min(int(head[1:]), n_layers) if head[1:].isdigit() and head[0] == "L" \
            else n_layers

    out = {}
    for name, a in buffers.items():
        x, y = origins[owner(name)]
        out[name] = a[y:y + P, x:x + P]
    return out


def _tn_matrix(program, buffers: dict, name: str, rows: int, cols: int) -> np.ndarray:
    """A `tn` product's C from its accumulator tiles."""
    from mapper.strategies.functional_model import decode
    return tn_result(decode(program, buffers, name), rows, cols)


def train_grads(program, buffers: dict, cfg, tokens: np.ndarray) -> tuple[float, dict]:
    """(loss, the gradient of every weight, `reference.loss_and_grads`' names)."""
    from mapper.strategies.functional_model import decode
    buffers = _own_squares(program, buffers, cfg.n_layers)
    t, P, d = program.meta["tiles"], program.meta["region_cols"], cfg.d_model
    f_t, q = t["ffn_k"], (P - 1) % 2
    out = {}
    for i in range(cfg.n_layers):
        p = f"L{i}."
        qkv = _tn_matrix(program, buffers, f"{p}qkv_proj.dw{q}", d, cfg.q_dim + 2 * cfg.kv_dim)
        out[p + "w_q"], out[p + "w_k"], out[p + "w_v"] = np.split(
            qkv, [cfg.q_dim, cfg.q_dim + cfg.kv_dim], axis=1)
        out[p + "w_o"] = _tn_matrix(program, buffers, f"{p}o_proj.dw{q}", cfg.q_dim, d)
        up = _tn_matrix(program, buffers, f"{p}ffn_up.dw{q}", d, t["ffn"] * P)
        if cfg.activation == "swiglu":
            blk = up.reshape(d, P, 2, f_t)
            out[p + "w_up"] = blk[:, :, 0].reshape(d, -1)[:, :cfg.d_ffn]
            out[p + "w_gate"] = blk[:, :, 1].reshape(d, -1)[:, :cfg.d_ffn]
        else:
            out[p + "w_up"] = up[:, :cfg.d_ffn]
        out[p + "w_down"] = _tn_matrix(program, buffers, f"{p}ffn_down.dw{q}", cfg.d_ffn, d)
        for k, name in ((1, "ln1"), (2, "ln2")):
            _gains(cfg, decode(program, buffers, f"{p}gg{k}"), f"{p}{name}", d, out)
    _gains(cfg, decode(program, buffers, "lnf.gg"), "ln_f", d, out)
    table = _tn_matrix(program, buffers, f"head.dw{q}", d, cfg.vocab_size)
    B, S = tokens.shape
    g = decode(program, buffers, "embed.grad")  # (P rows, P cols, tm, d_t)
    rows = g.transpose(0, 2, 1, 3).reshape(P * t["tokens"], P * t["d_model"])[:B * S, :d]
    embed = np.zeros((cfg.vocab_size, d), np.float32)
    np.add.at(embed, tokens.reshape(-1), rows)
    if cfg.positions == "learned":
        out["pos"] = np.zeros((cfg.max_context, d), np.float32)
        out["pos"][:S] = rows.reshape(B, S, d).sum(0)
    if cfg.tied_embeddings:
        embed += table.T
    else:
        out["lm_head"] = table
    out["embed"] = embed
    lst = decode(program, buffers, "lst")[:, 0]  # column 0: (P, tm, 3)
    per = lst.reshape(-1, 3)[:B * S].astype(np.float64)
    zt = per[:, 2]
    loss = float(np.mean(per[:, 0] + np.log(per[:, 1]) - zt))
    return loss, out


def _gains(cfg, gg: np.ndarray, prefix: str, d: int, out: dict) -> None:
    """Row 0's gain (and bias) gradient tiles: (P, P, parts, d_t)."""
    v = gg[0].transpose(1, 0, 2).reshape(gg.shape[2], -1)[:, :d]
    out[prefix + "_g"] = v[0]
    if cfg.norm != "rmsnorm":
        out[prefix + "_b"] = v[1]


def random_train_case(program, cfg, seed: int = 0):
    """(inputs, reference loss, reference gradients) on random weights, tokens and targets
    (float64 reference on the weights rounded to the run's dtype)."""
    from mapper.strategies.functional_model import round_to
    from workloads import reference
    meta = program.meta
    weights = reference.init_weights(cfg, seed)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (meta["batch"], meta["prompt"]))
    targets = rng.integers(0, cfg.vocab_size, (meta["batch"], meta["prompt"]))
    w64 = {k: round_to(v, meta["dtype"]).astype(np.float64) for k, v in weights.items()}
    loss, grads = reference.loss_and_grads(cfg, w64, tokens, targets)
    return train_inputs(program, cfg, weights, tokens, targets), tokens, loss, grads
