"""The data side of the 2-D prefill layout (`layout2d`): the tiles of a functional run, the
DataOp of every record, the kernels that only this layout needs, and the weights and logits
in and out.

Tiles. Logical token block ly and feature block lx live on physical core (o[lx], o[ly]), where
o is the identity, or MeshGEMM's interleaved ring when the layers' GEMMs are MeshGEMM (its
C comes out on the ring, so every activation lives there). Weights are scattered pre-aligned
for their projection's algorithm (`mapper.gemm.prealigned_b`). The token embeddings are an input (the
lookup is timed, not executed: it moves table rows and computes nothing).

Attention per query head h of K/V head g (`layout2d.Emitter.kv_group`):
`l2d_slice` puts the head's features of a core's Q|K|V block into a zero tile, the reduce
along the row gathers the head at column 0 (a sum of disjoint slices), `l2d_rope` rotates it
there, the broadcast gives it to the row; K|V then goes down column x from core (x, x).
`l2d_scores` (Q K^T / sqrt(hd), causal and per-sequence mask), `l2d_softmax` (the core's
max, exp and sum) and `l2d_av` make the partial triple [P V, m, l] that the row's
online-softmax reduce merges at column 0; `l2d_place` puts the head's output back into the
attention output tile of the cores that hold its features.
"""

from __future__ import annotations

import math

import numpy as np

from mapper.gemm import fragment_buffers, gemm_algo, prealigned_b, ring_order
from workloads.reference import EPS
from wse_sim.program import DataOp, Region

NEG = -1e30  # the score of a masked key (finite: exp(NEG - m) is 0, never NaN)


def dataop(kernel: str, inputs, output: str, **params) -> DataOp:
    return DataOp(kernel, tuple(inputs), output, tuple(sorted(params.items())))


def local_cores(call) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every core of the call's region inside the square the layout runs on: the
    mesh's, or a layer-pipelined region's (its origin in the DataOp's `origin` param)."""
    xs, ys = call.cores()
    ox, oy = call.params.get("origin", (0, 0))
    return xs - ox, ys - oy


def _logical(call, perm: tuple) -> tuple[np.ndarray, np.ndarray]:
    """(lx, ly): the logical feature and token block of every core of the call's region."""
    pos = np.empty(len(perm), np.int64)
    pos[np.array(perm)] = np.arange(len(perm))
    xs, ys = local_cores(call)
    return pos[xs], pos[ys]


# ---- kernels ------------------------------------------------------------------------------------

def _slice(call):
    """Zero tile with the features [lo, lo + w) of each core's block (width nt) at `at`."""
    p = call.params
    lx, _ = _logical(call, p["perm"])
    src = call.inputs[0]
    out = np.zeros_like(call.out)
    nt = src.shape[-1]
    for lo, w, at in p["segs"]:
        for idx in np.ndindex(lx.shape):
            a, b = max(lo, lx[idx] * nt), min(lo + w, (lx[idx] + 1) * nt)
            if a < b:
                out[idx][:, at + a - lo:at + b - lo] = src[idx][:, a - lx[idx] * nt:b - lx[idx] * nt]
    return out


def _place(call):
    """The head's output (tm, hd) into the features [lo, lo + hd) of each core's block."""
    p = call.params
    lx, _ = _logical(call, p["perm"])
    src, out = call.inputs[0], call.out.copy()
    nt, lo, w = out.shape[-1], p["lo"], src.shape[-1]
    for idx in np.ndindex(lx.shape):
        a, b = max(lo, lx[idx] * nt), min(lo + w, (lx[idx] + 1) * nt)
        if a < b:
            out[idx][:, a - lx[idx] * nt:b - lx[idx] * nt] = src[idx][:, a - lo:b - lo]
    return out


def _tokens(ly: np.ndarray, tm: int) -> np.ndarray:
    """(..., tm): the token index of each row of a core's block."""
    return ly[..., None] * tm + np.arange(tm)


def _rope(call):
    """Rotate the first `hd` columns (one head) of the gathered tiles at their tokens'
    positions (token t of a sequence of `prompt`: position t mod prompt), as
    workloads.reference.rope does (half-split pairs)."""
    p = call.params
    _, ly = _logical(call, p["perm"])
    v = call.inputs[0].astype(np.float64)
    hd, half = p["hd"], p["hd"] // 2
    pos = _tokens(ly, p["tm"]) % p["prompt"]
    freqs = p["theta"] ** (-np.arange(half, dtype=np.float64) * 2.0 / hd)
    ang = pos[..., None] * freqs
    cos, sin = np.cos(ang), np.sin(ang)
    x1, x2 = v[..., :half].copy(), v[..., half:hd].copy()
    v[..., :half], v[..., half:hd] = x1 * cos - x2 * sin, x2 * cos + x1 * sin
    return v.astype(np.float32)


def _scores(call):
    """[Q K^T / sqrt(hd) | 0 | 0]: query block ly (row), key block lx (column); masked where
    the key is later, of another sequence or padding."""
    p = call.params
    lx, ly = _logical(call, p["perm"])
    q, kv = call.inputs
    hd, tm, sq, T = p["hd"], p["tm"], p["prompt"], p["tokens"]
    s = np.einsum("...id,...jd->...ij", q.astype(np.float64), kv[..., :hd].astype(np.float64))
    s /= math.sqrt(hd)
    tq, tk = _tokens(ly, tm)[..., :, None], _tokens(lx, tm)[..., None, :]
    ok = (tk <= tq) & (tk // sq == tq // sq) & (tk < T) & (tq < T)
    out = np.zeros_like(call.out)
    out[..., :tm] = np.where(ok, s, NEG)
    return out


def _softmax(call):
    """[p | m | l]: the core's row max m, p = exp(s - m) over its keys, l = sum p."""
    v = call.inputs[0].astype(np.float64)
    tm = v.shape[-1] - 2
    s = v[..., :tm]
    m = s.max(-1, keepdims=True)
    e = np.where(s > NEG / 2, np.exp(s - m), 0.0)
    return np.concatenate([e, m, e.sum(-1, keepdims=True)], axis=-1).astype(np.float32)


def _av(call):
    """[p V | m | l]: the partial output of the core's keys (V: the second half of K|V)."""
    pml, kv = call.inputs
    tm, hd = pml.shape[-1] - 2, kv.shape[-1] // 2
    o = np.einsum("...ij,...jd->...id", pml[..., :tm].astype(np.float64),
                  kv[..., hd:].astype(np.float64))
    return np.concatenate([o, pml[..., tm:]], axis=-1).astype(np.float32)


def _pick(call):
    """The last token of every sequence, from the tiles its row handed to the top row."""
    rows = call.params["rows"]
    return np.stack([call.inputs[k][..., r, :] for k, r in enumerate(rows)], axis=-2)


KERNELS = {"l2d_slice": _slice, "l2d_place": _place, "l2d_rope": _rope,
           "l2d_scores": _scores, "l2d_softmax": _softmax, "l2d_av": _av, "l2d_pick": _pick}


def register_kernels() -> None:
    from wse_sim.kernels.registry import register_kernel
    for name, fn in KERNELS.items():
        register_kernel(name, fn, replace=True)


# ---- tiles and DataOps --------------------------------------------------------------------------

def block_order(algo: str, P: int) -> tuple:
    """Where logical block l lives (row and column): MeshGEMM's interleaved ring, else l."""
    return tuple(ring_order(P)) if gemm_algo(algo).ring else tuple(range(P))


def last_token_row(run, tm: int, order: tuple, b: int) -> int:
    """The physical row holding sequence b's last token (0: already on the top row)."""
    return order[(b * run.prompt + run.prompt - 1) // tm]


class Data2D:
    """Tile names and shapes of a functional run, and every record's DataOp."""

    def __init__(self, run, t, algos: dict[str, str]):
        self.run, self.cfg, self.t, self.algos = run, run.cfg, t, dict(algos)
        self.P = t.P
        # every projection's algorithm leaves C in the same order (layout2d.choose_algos)
        self.perm = block_order(next(iter(algos.values())), t.P)
        self.rms = self.cfg.norm == "rmsnorm"
        self.train = False  # emit_lm_head asks

    def tiles(self, gemm_tiles: dict) -> dict:
        """name -> (region, tile shape, dtype, None) for `common.alloc_group`."""
        cfg, t, P, dt = self.cfg, self.t, self.P, self.run.dtype
        reg, top = Region(0, 0, P, P), Region(0, 0, P, 1)
        hd, tm, f32, g = cfg.hd, t.tm, "fp32", (1 if self.rms else 2)
        vr, B = math.ceil(cfg.vocab_size / P), self.run.batch
        out = {"x": (reg, (tm, t.d), dt), "h": (reg, (tm, t.d), dt), "st": (reg, (tm, 2), f32),
               "cq": (reg, (tm, t.qkv), f32), "co": (reg, (tm, t.d), f32),
               "cu": (reg, (tm, t.ffn), f32), "cd": (reg, (tm, t.d), f32),
               "ao": (reg, (tm, t.q), dt), "hf": (reg, (tm, t.f), dt),
               "kvs": (reg, (tm, 2 * hd), dt), "kvc": (reg, (tm, 2 * hd), dt),
               "qs": (reg, (tm, hd), dt), "s": (reg, (tm, tm + 2), f32),
               "pt": (reg, (tm, hd + 2), dt), "o0": (reg, (tm, hd), dt),
               "lnf.x": (top, (B, t.d), dt), "lnf.stats": (top, (B, 2), f32),
               "lnf.g": (top, (g, t.d), dt), "head0.x": (reg, (B, t.d), dt),
               "head0.table": (reg, (t.d, vr), dt), "head0.logits": (reg, (B, vr), dt)}
        for b in range(B):
            out[f"last{b}"] = (top, (tm, t.d), dt)
        kv = self.run.precision.kv
        for i in range(cfg.n_layers):
            out |= {f"L{i}.g1": (reg, (g, t.d), dt), f"L{i}.g2": (reg, (g, t.d), dt),
                    f"L{i}.kv": (reg, (tm, t.qkv), kv)}
            for label, (kt, nt) in (("qkv_proj", (t.d, t.qkv)), ("o_proj", (t.q, t.d)),
                                    ("ffn_up", (t.d, t.ffn)), ("ffn_down", (t.f, t.d))):
                out[f"L{i}.{label}.w"] = (reg, (kt, nt), dt)
        for label, shapes in gemm_tiles.items():
            for name, shape in shapes.items():
                out[f"{label}.{name}"] = (reg, shape, dt)
        # the partial [o, m, l] lives in the gathered K|V (free once the multicasts have read
        # it), the head's output in its gathered Q (free once the scores have read it)
        slots = {"kvs": "kv", "pt": "kv", "qs": "q", "o0": "q"}
        return {k: (r, tuple(s), d, slots.get(k)) for k, (r, s, d) in out.items()}

    # ---- DataOps ------------------------------------------------------------------------------
    A_IN = {"qkv_proj": "h", "o_proj": "ao", "ffn_up": "h", "ffn_down": "hf"}
    C_OUT = {"qkv_proj": "cq", "o_proj": "co", "ffn_up": "cu", "ffn_down": "cd"}

    def gemm_names(self, i: int, label: str, algo: str) -> dict:
        """The fragment's buffers: A the activation, B the layer's weight tile, C its own."""
        roles = fragment_buffers(algo)
        out = {roles["a"]: self.A_IN[label], roles["b"]: f"L{i}.{label}.w",
               "c": self.C_OUT[label]}
        return out | {s: f"{label}.{s}" for s in roles["scratch"]}

    def norm(self, key: str, gain: str) -> dict:
        return {key + ".stats": dataop("norm_stats", ("x",), "st"),
                key + ".allreduce": dataop("reduce", ("st",), "st"),
                key + ".bcast": dataop("bcast", ("st",), "st"),
                key: dataop("norm_apply", ("x", "st", gain), "h", n=self.cfg.d_model,
                            rms=self.rms, eps=EPS)}

    def attention(self, g: int, j: int) -> dict:
        """DataOps of K/V head g's records (j = 0) and of its j-th query head's."""
        cfg, t = self.cfg, self.t
        hd, h = cfg.hd, g * (cfg.n_heads // cfg.n_kv_heads) + j
        kv_lo = cfg.q_dim + g * hd
        common = {"perm": self.perm}
        rope = dict(common, hd=hd, tm=t.tm, prompt=self.run.prompt,
                    theta=float(cfg.rope_theta))
        mask = dict(common, hd=hd, tm=t.tm, prompt=self.run.prompt, tokens=self.run.tokens)
        rot = cfg.positions == "rope"
        return {"kv_slice": dataop("l2d_slice", ("cq",), "kvs", segs=((kv_lo, hd, 0), (
                    kv_lo + cfg.kv_dim, hd, hd)), **common),
                "kv_gather": dataop("reduce", ("kvs",), "kvs"),
                "kv_rope": dataop("l2d_rope", ("kvs",), "kvs", **rope) if rot else None,
                "kv_bcast": dataop("bcast", ("kvs",), "kvs"),
                "kv_col": dataop("copy", ("kvs",), "kvc"),
                "q_slice": dataop("l2d_slice", ("cq",), "qs", segs=((h * hd, hd, 0),), **common),
                "q_gather": dataop("reduce", ("qs",), "qs"),
                "q_rope": dataop("l2d_rope", ("qs",), "qs", **rope) if rot else None,
                "q_bcast": dataop("bcast", ("qs",), "qs"),
                "scores": dataop("l2d_scores", ("qs", "kvc"), "s", **mask),
                "softmax": dataop("l2d_softmax", ("s",), "s"),
                "av": dataop("l2d_av", ("s", "kvc"), "pt"),
                "o_reduce": dataop("reduce", ("pt",), "o0", combine="softmax", heads=1),
                "o_bcast": dataop("bcast", ("o0",), "o0"),
                "o_place": dataop("l2d_place", ("o0",), "ao", lo=h * hd, **common)}

    def layer(self, i: int) -> dict:
        act = "swiglu" if self.cfg.activation == "swiglu" else "gelu"
        return (self.norm("norm1", f"L{i}.g1") | self.norm("norm2", f"L{i}.g2")
                | {"kv_store": dataop("copy", ("cq",), f"L{i}.kv"),
                   "residual1": dataop("add", ("x", "co"), "x"),
                   "act": dataop(act, ("cu",), "hf"),
                   "residual2": dataop("add", ("x", "cd"), "x")})

    def head_data(self, x: str, k: int, moved: bool) -> dict:
        """DataOps of `common.emit_lm_head` on the top row (keys as there)."""
        run = self.run
        last = [(b * run.prompt + run.prompt - 1) for b in range(run.batch)]
        rows = tuple(t % self.t.tm for t in last)
        ins = tuple(f"last{b}" if last_token_row(run, self.t.tm, self.perm, b) else "x"
                    for b in range(run.batch))
        return {"select_last": dataop("l2d_pick", ins, "lnf.x", rows=rows),
                "ln_f.stats": dataop("norm_stats", ("lnf.x",), "lnf.stats"),
                "ln_f.allreduce": dataop("reduce", ("lnf.stats",), "lnf.stats"),
                "ln_f.bcast": dataop("bcast", ("lnf.stats",), "lnf.stats"),
                "ln_f": dataop("norm_apply", ("lnf.x", "lnf.stats", "lnf.g"), "head0.x",
                               n=self.cfg.d_model, rms=self.rms, eps=EPS),
                "bcast0": dataop("bcast", ("head0.x",), "head0.x"),
                "lm_head.0": dataop("gemm", ("head0.x", "head0.table"), "head0.logits"),
                "reduce0": dataop("reduce", ("head0.logits",), "head0.logits")}

    def meta(self) -> dict:
        return {"algos": self.algos, "perm": list(self.perm), "tm": self.t.tm}


# ---- weights in, logits out ---------------------------------------------------------------------

def _blocks(m: np.ndarray, rows: int, cols: int, P: int) -> np.ndarray:
    """m padded to (rows P, cols P) and cut into blocks [row block, column block]."""
    out = np.zeros((rows * P, cols * P), np.float32)
    out[:m.shape[0], :m.shape[1]] = m
    return out.reshape(P, rows, P, cols).transpose(0, 2, 1, 3)


def _on_cores(blocks: np.ndarray, perm: tuple) -> np.ndarray:
    """Blocks [logical row, logical column] placed on the cores [y, x]."""
    o = np.array(perm)
    out = np.empty_like(blocks)
    out[np.ix_(o, o)] = blocks
    return out


def _up_columns(cfg, w: dict, i: int, f_t: int, P: int) -> np.ndarray:
    """FFN up (| gate) as the GEMM's B: each column block holds [up | gate] of its features."""
    up = np.zeros((cfg.d_model, f_t * P), np.float32)
    up[:, :cfg.d_ffn] = w[f"L{i}.w_up"]
    if cfg.activation != "swiglu":
        return up
    gate = np.zeros_like(up)
    gate[:, :cfg.d_ffn] = w[f"L{i}.w_gate"]
    blk = lambda m: m.reshape(cfg.d_model, P, f_t)  # noqa: E731
    return np.concatenate([blk(up), blk(gate)], axis=2).reshape(cfg.d_model, 2 * f_t * P)


def embedded(cfg, weights: dict, tokens: np.ndarray) -> np.ndarray:
    """The tokens' embeddings (and learned positions), (batch x prompt, d_model)."""
    B, S = tokens.shape
    x = weights["embed"][tokens]
    if cfg.positions == "learned":
        x = x + weights["pos"][np.arange(S)]
    return x.reshape(B * S, -1)


def layer_matrices(cfg, w: dict, i: int, f_t: int, P: int) -> dict:
    """Layer i's weight matrices as its GEMMs' B (Q|K|V side by side, FFN up | gate)."""
    return {"qkv_proj": np.concatenate([w[f"L{i}.w_{n}"] for n in "qkv"], axis=1),
            "o_proj": w[f"L{i}.w_o"], "ffn_up": _up_columns(cfg, w, i, f_t, P),
            "ffn_down": w[f"L{i}.w_down"]}


def model_inputs(program, cfg, weights: dict, tokens: np.ndarray) -> dict:
    """The buffers a functional run starts from: the embedded tokens, every weight tile."""
    meta = program.meta["functional_2d"]
    algos, perm, P = meta["algos"], tuple(meta["perm"]), len(meta["perm"])
    t = program.meta["tiles"]
    tm, d_t, f_t = t["tokens"], t["d_model"], t["ffn_k"]
    out = {"x": _on_cores(_blocks(embedded(cfg, weights, tokens), tm, d_t, P), perm)}
    for i in range(cfg.n_layers):
        for label, m in layer_matrices(cfg, weights, i, f_t, P).items():
            kt = math.ceil(m.shape[0] / P)
            nt = math.ceil(m.shape[1] / P) if label != "ffn_up" else t["ffn"]
            out[f"L{i}.{label}.w"] = prealigned_b(algos[label], _blocks(m, kt, nt, P))
        for k, name in ((1, "ln1"), (2, "ln2")):
            out[f"L{i}.g{k}"] = _gain(cfg, weights, f"L{i}.{name}", d_t, P, perm, P)
    out["lnf.g"] = _gain(cfg, weights, "ln_f", d_t, P, perm, 1)
    head = weights["embed"].T if cfg.tied_embeddings else weights["lm_head"]
    vr = math.ceil(cfg.vocab_size / P)
    tb = _blocks(head, d_t, vr, P)  # [d block, vocab block]
    o = np.array(perm)
    table = np.empty((P, P, d_t, vr), np.float32)  # core (x, r): d block pos(x), vocab block r
    for r in range(P):
        table[r, o] = tb[:, r]
    out["head0.table"] = table
    return out


def _gain(cfg, weights: dict, prefix: str, d_t: int, P: int, perm: tuple, rows: int):
    """Norm gain (and bias) per core: column x holds feature block pos(x)."""
    parts = [weights[prefix + "_g"]] + ([] if cfg.norm == "rmsnorm" else [weights[prefix + "_b"]])
    g = np.zeros((len(parts), d_t * P), np.float32)
    for k, v in enumerate(parts):
        g[k, :cfg.d_model] = v
    blocks = g.reshape(len(parts), P, d_t).transpose(1, 0, 2)  # [logical column block]
    out = np.empty((rows, P, len(parts), d_t), np.float32)
    out[:, np.array(perm)] = blocks[None]
    return out


def model_logits(program, buffers: dict) -> np.ndarray:
    """(batch, vocab) logits from column 0 of the region (vocab block r on row r)."""
    from mapper.strategies.functional_model import decode
    lg = decode(program, buffers, "head0.logits")  # (P, P, B, vr)
    return np.concatenate(list(lg[:, 0]), axis=-1)[:, :program.meta["vocab_size"]]


def random_case(program, cfg, seed: int = 0) -> tuple[dict, np.ndarray]:
    """(inputs for run_functional, reference logits (batch, vocab)) for random weights
    (`workloads.reference.init_weights(cfg, seed)`) and tokens, as
    `functional_model.random_case` does for the top-row layout."""
    from mapper.strategies.functional_model import round_to
    from workloads import reference
    meta = program.meta
    weights = reference.init_weights(cfg, seed)
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, cfg.vocab_size, (meta["batch"], meta["prompt"]))
    w64 = {k: round_to(v, meta["dtype"]).astype(np.float64) for k, v in weights.items()}
    logits, _ = reference.forward(cfg, w64, tokens)
    return model_inputs(program, cfg, weights, tokens), logits[:, -1]
