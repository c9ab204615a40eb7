"""What every core holds in a functional run of a whole-model strategy, and what each record
does to it (the `DataOp`s that `tp2d` and `common` attach when built with functional=True).

The layout is the one `tp2d` describes, made exact (it is the same for every strategy):

- d-shards: column j of a region holds features [j dC, (j + 1) dC) of d_model, dC = ceil(d/C);
  the last shard is padded with zeros (zero gains and zero weight rows keep padding at zero).
- Heads (`mapper.attention`): head group r < Ra holds the query heads [r hpr, (r + 1) hpr)
  (hpr = ceil(H/Ra)), contiguous so that under GQA a group's query heads share their K/V heads;
  the group keeps those K/V heads (kvpr = ceil(KV/Ra) slots, the size the timing model
  budgets; a model whose groups would need more is rejected). Its qkv tile is
  [q heads | k heads | v heads], hd columns per head. A group is one row (G = 1, the tiles
  below) or G rows (`group_tiles`: each row a slice of the fused Q|K|V and O weights).
- FFN: row r holds the f-shard [r fR, (r + 1) fR), fR = ceil(d_ffn/R); with SwiGLU its up
  partial is [up | gate] of that shard (2 fR columns), so the act is local to the leader.
- KV cache, sequence split over a group's G x C cores: position p of sequence b sits at index
  v = p + its cache's offset (`mapper.attention.AttentionSplit.kv_offsets`: the caches of the
  layers sharing the region and of the sequences start on spread cores): column v mod C, row
  (v div C) mod G of the group, slot v div (G C) (interleaved, so causal work stays balanced);
  tile (2 [K, V], B, kvpr, S, hd), S enough for the cache that starts last. RoPE is applied
  before K is stored (the reference's convention).
- LM head: vocabulary shard s = h R + r (h: table region, r: row) of vr = ceil(V/(k R))
  entries; core (j, r) of table region h holds table[d-shard j, shard s].
- Tokens are sequence-major: t = b sq + s, the order of reference.forward's (batch, seq).

Attention is exact: every core computes its keys' scores and a local softmax (max m, sum l,
unnormalised output o) and the row's reduce stream merges the (o, m, l) triples in stream order
(`combine="softmax"` in `wse_sim.functional`), delivering o / l at the leader (G > 1: the row
keeps the merged triple and the group's column of leaders merges those).

Training (`train`): every token reaches the LM head; each layer keeps the activations its
backward reads (`train_tiles`), the backward's DataOps (`backward_data`) mirror the forward
patterns (dO travels with the merged softmax statistics M, L that the forward's combine kept,
so every core rebuilds its keys' exact probabilities), weight gradients are local GEMMs into
"g" + weight tiles. The loss record combines the vocabulary shards of its lead column inside
the task (the timing model has no record for that 2-value-per-token all-reduce).

Tree reduces (`reduce_algo="tree"`): the root of a GEMM's reduce keeps one receive tile per
group leader, like the partial sums it adds (`recv_tiles`); tile k of every reduce shares
scratch slot "r{k}" (one reduce runs at a time in a region).

Precision (`weights_dtype`, `kv_dtype`; `functional_quant`): the weight matrix tiles and the
LM-head table in the weights dtype, the KV tile in the KV dtype; 8-bit ones hold uint8 codes
beside an fp32 `<tile>.scale` tile, which the GEMM and attention DataOps read as one more input.

Memory: in a functional build the SRAM of each region is one arena of the timing model's total
(`common.alloc_group`) and every tile is a view into it at a planned offset; scratch slots are
shared by tiles whose lives do not overlap (`FLayout.layer_tiles`), and since views really share
bytes, a wrong plan gives wrong numbers. `meta["functional"]["sram_extra_bytes"]` is what the
tiles need beyond the timing budget on the fullest core (K/V weights kept by several head rows
under GQA, padded shards, the softmax statistics, the LM head's activations).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from mapper import attention
from mapper.placement import MappingError
from mapper.reduce_algos import axis_algo
from mapper.strategies import functional_quant as fq
from mapper.tree_reduce import recv_name, tree_groups
from workloads.models import GPTConfig
from workloads.reference import EPS
from wse_sim.program import DataOp, Program, ProgramError, Region

WEIGHT_KEYS = ("ln1", "ln2", "wq", "wk", "wv", "wqkv", "wo", "wup", "wgate", "wdown", "kv")
GRAD_KEYS = tuple("g" + k for k in WEIGHT_KEYS[:-1])  # weight gradients (training)
SCRATCH_KEYS = ("apart", "part", "dx", "gd", "gf", "gfp", "gh", "bst", "gao", "gs", "gqkv")
# The partial sums the GEMMs reduce, by the axis they reduce along ('x': along the rows into
# the lead column; 'y': up the columns into the top row).
REDUCED = {"qkv": "x", "qkvp": "x", "fpart": "x", "gf": "x", "gao": "x", "h": "y", "part": "y", "gh": "y"}


def dataop(kernel: str, inputs, output: str, **params) -> DataOp:
    return DataOp(kernel, tuple(inputs), output, tuple(sorted(params.items())))


def rect(reg: Region) -> list[int]:
    return [reg.x, reg.y, reg.cols, reg.rows]


@dataclass(frozen=True)
class LayerBufs:
    """Buffer names of one layer: weights (and KV cache) under `w`, activations under `a`
    (layer-pipelined: both 'L{i}.'; single-region strategies share the activations)."""

    w: str
    a: str
    g: str = ""  # training: the backward's scratch (default: `a`)
    own: tuple = ()  # keys under `a` all the same (a micro-batch's KV tile, its dY)

    def __call__(self, key: str) -> str:
        if key in self.own:
            return self.a + key
        if key in WEIGHT_KEYS or key in GRAD_KEYS:
            return self.w + key
        return (self.g or self.a if key in SCRATCH_KEYS else self.a) + key


@dataclass(frozen=True)
class FLayout:
    """Sizes of every tile for one phase of `cfg` on R x C layer regions (and `tables` table
    regions of the same size)."""

    cfg: GPTConfig
    rows: int
    cols: int
    dtype: str
    batch: int
    sq: int        # new tokens per sequence (1 in decode)
    start: int     # position of the first new token (the cached context in decode)
    tables: int = 1
    train: bool = False  # the training step: every token reaches the LM head
    kv_keys: int = 0  # positions the KV tiles hold, when more than start + sq (a chunk's)
    add_grads: bool = False  # a later micro-batch: weight gradients add to the earlier ones'
    kv_layers: int = 1   # layers whose KV caches share a region's cores (layer-sequential: all)
    row_groups: bool = True  # a head group's rows split its keys (tp2d.Layout.fitted)
    weights_dtype: str = ""  # of the weight matrices and the LM head ("": `dtype`)
    kv_dtype: str = ""  # of the KV cache ("": `dtype`); 8-bit ones: `functional_quant`

    def __post_init__(self):
        for r, kv in enumerate(self.row_kv):
            if len(kv) > self.kvpr:
                raise MappingError(
                    f"functional: head row {r} of {self.ra} needs K/V heads {list(kv)}, more than "
                    f"the {self.kvpr} per row the mapping budgets (heads {self.cfg.n_heads}, "
                    f"kv heads {self.cfg.n_kv_heads}); use a region with more rows")

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def wdt(self) -> str:
        return self.weights_dtype or self.dtype

    @property
    def kvdt(self) -> str:
        return self.kv_dtype or self.dtype

    @property
    def T(self) -> int:
        return self.batch * self.sq

    @property
    def keys(self) -> int:
        return self.start + self.sq

    @property
    def lm_tokens(self) -> int:
        return self.T if self.train else self.batch

    @property
    def select(self) -> bool:
        """The LM head sees only the last token of each sequence."""
        return self.sq > 1 and not self.train

    @property
    def split(self) -> attention.AttentionSplit:
        return attention.split(self.cfg, self.rows, self.cols,
                               seq_rows=self.row_groups and not self.train)

    @property
    def ra(self) -> int:
        """Head groups."""
        return self.split.groups

    @property
    def G(self) -> int:
        """Rows per head group."""
        return self.split.rows_per_group

    @property
    def hpr(self) -> int:
        return self.split.heads_per_group

    @property
    def kvpr(self) -> int:
        return self.split.kv_heads_per_group

    @property
    def hd(self) -> int:
        return self.cfg.hd

    @property
    def dc(self) -> int:
        return math.ceil(self.cfg.d_model / self.cols)

    @property
    def fr(self) -> int:
        return math.ceil(self.cfg.d_ffn / self.rows)

    @property
    def nf(self) -> int:
        return self.fr * (2 if self.cfg.activation == "swiglu" else 1)

    @property
    def kv_offsets(self) -> tuple:
        """Start index of every cache (layer-major, then sequence) on a group's G C cores;
        all 0 in a training step."""
        m = self.kv_layers * self.batch
        return (0,) * m if self.train else self.split.kv_offsets(m)

    def layer_offsets(self, layer: int) -> tuple:
        """The start index of each sequence's cache of `layer`."""
        k = (layer % self.kv_layers) * self.batch
        return self.kv_offsets[k:k + self.batch]

    @property
    def slots(self) -> int:
        """KV slots of every core's tile (the same on every core: room for the cache that
        starts last; a chunk's tiles hold every position of the phase)."""
        return math.ceil((max(self.keys, self.kv_keys) + max(self.kv_offsets))
                         / self.split.cores_per_group)

    def chunk(self, start: int, sq: int) -> FLayout:
        """The layout of positions [start, start + sq) of every sequence (a prefill chunk);
        its KV tiles still hold every position of the phase."""
        return dataclasses.replace(self, sq=sq, start=start, kv_keys=self.keys)

    def micro(self, count: int, index: int) -> FLayout:
        """The layout of micro-batch `index` of `count` equal ones (whole sequences)."""
        return dataclasses.replace(self, batch=self.batch // count, add_grads=index > 0)

    @property
    def vr(self) -> int:
        return math.ceil(self.cfg.vocab_size / (self.tables * self.rows))

    @property
    def qkv_cols(self) -> int:
        return (self.hpr + 2 * self.kvpr) * self.hd

    @property
    def w_qkv(self) -> int:
        """Q|K|V columns of a row's slice when G > 1 (the whole group's when G = 1)."""
        return math.ceil(self.qkv_cols / self.G)

    @property
    def w_o(self) -> int:
        """Attention-output columns (O-projection input rows) of a row's slice."""
        return math.ceil(self.hpr * self.hd / self.G)

    # ---- heads ------------------------------------------------------------------------------
    def row_heads(self, r: int) -> list[int]:
        return list(range(r * self.hpr, min((r + 1) * self.hpr, self.cfg.n_heads)))

    @property
    def row_kv(self) -> tuple:
        g = self.cfg.n_heads // self.cfg.n_kv_heads
        return tuple(tuple(sorted({h // g for h in self.row_heads(r)})) for r in range(self.ra))

    @property
    def head_kv(self) -> tuple:
        """Per head row, per local query-head slot: the local K/V slot it reads (-1: no head)."""
        g = self.cfg.n_heads // self.cfg.n_kv_heads
        out = []
        for r in range(self.ra):
            hs, kv = self.row_heads(r), self.row_kv[r]
            out.append(tuple(kv.index(hs[k] // g) if k < len(hs) else -1
                             for k in range(self.hpr)))
        return tuple(out)

    @property
    def head_kv_rows(self) -> tuple:
        """`head_kv` for every row of the attention rows (a group's G rows alike)."""
        return tuple(hk for hk in self.head_kv for _ in range(self.G))

    # ---- tiles: name -> (region, tile shape, dtype, slot) ----------------------------------
    # Slot None: a tile of its own. Slots "s1" and "s2" are scratch shared by the tiles whose
    # lives do not overlap (every tile of a slot starts at the slot's first byte): s1 holds
    # qkv, then the attention partials, then their combine (ao overwrites apart at the leader
    # after reading it), then the FFN partials and the act (written over its own input); s2
    # the norm statistics, then the scores. `h` is the norm output and also the down GEMMs' partial sums (never live
    # together). Functional runs check the plan: a tile reused too early gives wrong numbers.
    # With G > 1 rows per head group, row g of a group holds the g-th slice (w_qkv columns)
    # of the group's [Q heads | K heads | V heads] projection (one fused weight tile `wqkv`,
    # padded with zeros) and the g-th slice (w_o rows) of its O-projection; qkvp is a row's
    # slice (the row reduce leaves it at the row's leader), qkv the group's whole Q|K|V
    # (gathered at the group's top core, then shared), aos a row's slice of the attention
    # output. s2 then holds the norm statistics, qkvp, the scores; s1 qkv, the partials, ao,
    # aos (each written after its input was read), the FFN tiles.
    def layer_tiles(self, lay, b: LayerBufs, *, weights: bool = True, acts: bool = True) -> dict:
        dt, T, dc, hd, H = self.dtype, self.T, self.dc, self.hd, self.hpr
        gain = 2 if self.cfg.norm == "layernorm" else 1
        rows = self.G > 1
        out = {}
        if weights:
            out.update({b("ln1"): (lay.row0, (gain, dc), dt, None),
                        b("ln2"): (lay.row0, (gain, dc), dt, None)})
            if rows:
                out[b("wqkv")] = (lay.att, (dc, self.w_qkv), dt, None)
            else:
                out.update({b("wq"): (lay.att, (dc, H * hd), dt, None),
                            b("wk"): (lay.att, (dc, self.kvpr * hd), dt, None),
                            b("wv"): (lay.att, (dc, self.kvpr * hd), dt, None)})
            out.update({b("wo"): (lay.att, (self.w_o, dc), dt, None),
                        b("wup"): (lay.reg, (dc, self.fr), dt, None)})
            if self.cfg.activation == "swiglu":
                out[b("wgate")] = (lay.reg, (dc, self.fr), dt, None)
            out[b("wdown")] = (lay.reg, (self.fr, dc), dt, None)
            out[b("kv")] = (lay.att, (2, self.batch, self.kvpr, self.slots, hd), dt, None)
        if acts:
            out.update({b("x"): (lay.row0, (T, dc), dt, None),
                        b("h"): (lay.reg, (T, dc), dt, None),
                        b("stats"): (lay.row0, (T, 2), "fp32", "s2")})
            if rows:
                out[b("qkvp")] = (lay.att, (T, self.w_qkv), dt, "s2")
            out.update({b("qkv"): (lay.att, (T, self.qkv_cols), dt, "s1"),
                        b("apart"): (lay.att, (T, H * (hd + 2)), dt, "s1"),
                        b("ao"): (lay.att, (T, H * hd), dt, "s1")})
            if rows:
                out[b("aos")] = (lay.att, (T, self.w_o), dt, "s1")
            out.update({b("fpart"): (lay.reg, (T, self.nf), dt, "s1"),
                        b("act"): (lay.reg, (T, self.fr), dt, "s1"),
                        b("scores"): (lay.att, (T, H, self.slots + 2), "fp32", "s2")})
        return fq.layer_tiles(self, b, out)

    def embed_tiles(self, row: Region, own_x: bool, scratch: bool = False,
                    sfx: str = "") -> dict:
        """The gathered embedding rows (and position rows); with `scratch` they sit in the
        layer scratch slots, free until the first layer's norm. `sfx`: a chunk's or
        micro-batch's own tiles."""
        s1, s2 = ("s1", "s2") if scratch else (None, None)
        out = {"embed.rows" + sfx: (row, (self.T, self.dc), self.dtype, s1)}
        if self.cfg.positions == "learned":
            out["embed.pos" + sfx] = (row, (self.T, self.dc), self.dtype, s2)
        if own_x:
            out["embed.x" + sfx] = (row, (self.T, self.dc), self.dtype, None)
        return out

    def lnf_tiles(self, row: Region, handoff: bool) -> dict:
        lm, dc, dt = self.lm_tokens, self.dc, self.dtype
        gain = 2 if self.cfg.norm == "layernorm" else 1
        out = {"lnf.g": (row, (gain, dc), dt, None), "lnf.stats": (row, (lm, 2), "fp32", None)}
        if self.select:
            out["lnf.x"] = (row, (lm, dc), dt, None)
        if handoff:
            out["lnf.h"] = (row, (lm, dc), dt, None)
        return out

    def head_tiles(self, j: int, hr: Region) -> dict:
        lm, dt = self.lm_tokens, self.dtype
        return fq.head_tiles(self, j, {f"head{j}.x": (hr, (lm, self.dc), dt, None),
                                       f"head{j}.table": (hr, (self.dc, self.vr), dt, None),
                                       f"head{j}.logits": (hr, (lm, self.vr), dt, None)})

    # ---- what the records do ----------------------------------------------------------------
    def norm_data(self, key: str, x: str, out: str, stats: str, gain: str) -> dict:
        return {key + ".stats": dataop("norm_stats", (x,), stats),
                key + ".allreduce": dataop("reduce", (stats,), stats),
                key + ".bcast": dataop("bcast", (stats,), stats),
                key: dataop("norm_apply", (x, stats, gain), out, n=self.cfg.d_model,
                            rms=self.cfg.norm == "rmsnorm", eps=EPS)}

    def layer_data(self, b: LayerBufs, layer: int = 0) -> dict:
        """DataOp of every record of layer `layer`'s forward pass, by key (see
        TP2D.forward)."""
        hq, hk = self.hpr * self.hd, self.kvpr * self.hd
        att = self._att(layer)
        d = {}
        d.update(self.norm_data("norm1", b("x"), b("h"), b("stats"), b("ln1")))
        d.update({"qkv.bcast": dataop("bcast", (b("h"),), b("h")),
                  "q_proj": dataop("gemm", (b("h"), b("wq")), b("qkv"), out_offset=0),
                  "k_proj": dataop("gemm", (b("h"), b("wk")), b("qkv"), out_offset=hq),
                  "v_proj": dataop("gemm", (b("h"), b("wv")), b("qkv"), out_offset=hq + hk),
                  "qkv.reduce": dataop("reduce", (b("qkv"),), b("qkv")),
                  "rope": dataop("rope", (b("qkv"),), b("qkv"), hd=self.hd,
                                 heads=self.hpr + self.kvpr, start=self.start, sq=self.sq,
                                 theta=float(self.cfg.rope_theta)),
                  "qkv.share": dataop("bcast", (b("qkv"),), b("qkv")),
                  "attn_qk": dataop("attn_scores", (b("qkv"), b("kv")), b("scores"), **att),
                  "softmax": dataop("attn_softmax", (b("scores"),), b("scores")),
                  "attn_av": dataop("attn_av", (b("scores"), b("kv")), b("apart"), **att),
                  "attn.reduce": dataop("reduce", (b("apart"),), b("ao"), combine="softmax",
                                        heads=self.hpr),
                  "o.bcast": dataop("bcast", (b("ao"),), b("ao")),
                  "o_proj": dataop("gemm", (b("ao"), b("wo")), b("h")),
                  "o.reduce": dataop("reduce", (b("h"),), b("h")),
                  "residual1": dataop("add", (b("x"), b("h")), b("x"))})
        if self.G > 1:
            d.update(self.group_attention_data(b))
        d.update(self.norm_data("norm2", b("x"), b("h"), b("stats"), b("ln2")))
        act = "swiglu" if self.cfg.activation == "swiglu" else "gelu"
        d.update({"ffn.bcast": dataop("bcast", (b("h"),), b("h")),
                  "ffn_up": dataop("gemm", (b("h"), b("wup")), b("fpart"), out_offset=0),
                  "ffn_gate": dataop("gemm", (b("h"), b("wgate")), b("fpart"),
                                     out_offset=self.fr),
                  "ffn.reduce": dataop("reduce", (b("fpart"),), b("fpart")),
                  "act": dataop(act, (b("fpart"),), b("act")),
                  "down.bcast": dataop("bcast", (b("act"),), b("act")),
                  "ffn_down": dataop("gemm", (b("act"), b("wdown")), b("h")),
                  "down.reduce": dataop("reduce", (b("h"),), b("h")),
                  "residual2": dataop("add", (b("x"), b("h")), b("x"))})
        return fq.layer_data(self, b, d)

    def embed_data(self, out: str, sfx: str = "") -> DataOp:
        if self.cfg.positions == "learned":
            return dataop("add", ("embed.rows" + sfx, "embed.pos" + sfx), out)
        return dataop("copy", ("embed.rows" + sfx,), out)

    def head_data(self, x: str, k: int, handoff: bool) -> dict:
        """DataOps of the final norm and the LM head over k table regions (keys as in
        common.emit_lm_head); `x` is the last layer's activation buffer."""
        d = {}
        src = x
        if self.select:
            rows = tuple(b * self.sq + self.sq - 1 for b in range(self.batch))
            d["select_last"] = dataop("select_rows", (x,), "lnf.x", rows=rows)
            src = "lnf.x"
        normed = "lnf.h" if handoff else "head0.x"
        d.update(self.norm_data("ln_f", src, normed, "lnf.stats", "lnf.g"))
        for j in range(k):
            hx = f"head{j}.x"
            d.update({f"handoff{j}": dataop("copy", (normed,), hx),
                      f"bcast{j}": dataop("bcast", (hx,), hx),
                      f"lm_head.{j}": dataop("gemm", (hx, f"head{j}.table"), f"head{j}.logits"),
                      f"reduce{j}": dataop("reduce", (f"head{j}.logits",), f"head{j}.logits")})
        return fq.head_data(self, k, d)

    # ---- training ---------------------------------------------------------------------------
    # The forward pass keeps, per layer, what its backward reads (no scratch sharing): the
    # layer input x, the mid-layer residual x1 and output xo, both norms' outputs (h1 on the
    # head rows, h2 on every core: the broadcasts left them there) and statistics, qkv after
    # RoPE, the local softmax (p, m, l) of every core, the attention output ao and, in gattn,
    # the merged (M, L) per query head (the leader's combine keeps them), fpart (before the
    # activation, at the leader) and act. The backward's scratch (prefix `b.g`) is shared by
    # the layers of a region; the weight gradients ("g" + weight key) sit beside the weights.
    def train_tiles(self, lay, b: LayerBufs, *, scratch: bool = True,
                    weights: bool = True) -> dict:
        """`weights`: also the weights and their gradients (a later micro-batch has only its
        saved activations and KV tile)."""
        dt, T, dc, hd, H = self.dtype, self.T, self.dc, self.hd, self.hpr
        hq, f32 = H * hd, "fp32"
        wt = self.layer_tiles(lay, b, acts=False)
        out = dict(wt) if weights else {b("kv"): wt[b("kv")]}
        for k, v in wt.items():
            if k != b("kv") and weights:
                out[b("g" + k[len(b.w):])] = v
        row, att, reg = lay.row0, lay.att, lay.reg
        out.update({b(k): (row, (T, dc), dt, None) for k in ("x", "x1", "xo")})
        out.update({b("stats1"): (row, (T, 2), f32, None), b("stats2"): (row, (T, 2), f32, None),
                    b("h1"): (att, (T, dc), dt, None), b("h2"): (reg, (T, dc), dt, None),
                    b("qkv"): (att, (T, self.qkv_cols), dt, None),
                    b("scores"): (att, (T, H, self.slots + 2), f32, None),
                    b("ao"): (att, (T, hq), dt, None), b("gattn"): (att, (T, hq + 2 * H), dt, None),
                    b("fpart"): (reg, (T, self.nf), dt, None), b("act"): (reg, (T, self.fr), dt, None)})
        if scratch:
            out.update({b("apart"): (att, (T, H * (hd + 2)), dt, None),
                        b("part"): (reg, (T, dc), dt, None), b("dx"): (row, (T, dc), dt, None),
                        b("gd"): (reg, (T, dc), dt, None), b("gf"): (reg, (T, self.fr), dt, None),
                        b("gfp"): (reg, (T, self.nf), dt, None), b("gh"): (reg, (T, dc), dt, None),
                        b("bst"): (row, (T, 2), f32, None), b("gao"): (att, (T, hq), dt, None),
                        b("gs"): (att, (T, H, self.slots), f32, None),
                        b("gqkv"): (att, (T, self.qkv_cols), dt, None)})
        return out

    def train_layer_data(self, b: LayerBufs, xo: str) -> dict:
        """DataOps of a layer's forward pass when training (keys as in `layer_data`; `xo`:
        where residual2 leaves the layer's output)."""
        d = self.layer_data(b)
        hq, att = self.hpr * self.hd, self._att()
        d.update(self.norm_data("norm1", b("x"), b("h1"), b("stats1"), b("ln1")))
        d.update(self.norm_data("norm2", b("x1"), b("h2"), b("stats2"), b("ln2")))
        hk = self.kvpr * self.hd
        d.update({"qkv.bcast": dataop("bcast", (b("h1"),), b("h1")),
                  "q_proj": dataop("gemm", (b("h1"), b("wq")), b("qkv"), out_offset=0),
                  "k_proj": dataop("gemm", (b("h1"), b("wk")), b("qkv"), out_offset=hq),
                  "v_proj": dataop("gemm", (b("h1"), b("wv")), b("qkv"), out_offset=hq + hk),
                  "attn_av": dataop("attn_av", (b("scores"), b("kv")), b("apart"), **att),
                  "attn.reduce": dataop("reduce", (b("apart"),), b("ao"), combine="softmax",
                                        heads=self.hpr, stats=b("gattn"), stats_offset=hq),
                  "o_proj": dataop("gemm", (b("ao"), b("wo")), b("part")),
                  "o.reduce": dataop("reduce", (b("part"),), b("part")),
                  "residual1": dataop("add", (b("x"), b("part")), b("x1")),
                  "ffn.bcast": dataop("bcast", (b("h2"),), b("h2")),
                  "ffn_up": dataop("gemm", (b("h2"), b("wup")), b("fpart"), out_offset=0),
                  "ffn_gate": dataop("gemm", (b("h2"), b("wgate")), b("fpart"),
                                     out_offset=self.fr),
                  "ffn_down": dataop("gemm", (b("act"), b("wdown")), b("part")),
                  "down.reduce": dataop("reduce", (b("part"),), b("part")),
                  "residual2": dataop("add", (b("x1"), b("part")), xo)})
        return d

    def _att(self, layer: int = 0) -> dict:
        return {"hd": self.hd, "heads": self.hpr, "head_kv": self.head_kv_rows,
                "batch": self.batch, "sq": self.sq, "start": self.start, "group": self.G,
                "offsets": self.layer_offsets(layer)}

    def group_attention_data(self, b: LayerBufs) -> dict:
        """The attention DataOps that differ when G > 1 (see `TP2D.attention_groups`): the
        fused Q|K|V GEMM (on the q_proj record; k_proj and v_proj carry none), the gather of
        the rows' slices into the group's top core, the shares back, the two-level combine
        and the slices of the attention output."""
        return {"q_proj": dataop("gemm", (b("h"), b("wqkv")), b("qkvp")),
                "k_proj": None, "v_proj": None,
                "qkv.reduce": dataop("reduce", (b("qkvp"),), b("qkvp")),
                "qkv.gather": dataop("reduce", (b("qkvp"),), b("qkv"), gather=True),
                "qkv.group": dataop("bcast", (b("qkv"),), b("qkv")),
                "attn.reduce": dataop("reduce", (b("apart"),), b("apart"), combine="softmax",
                                      heads=self.hpr, partial=True),
                "attn.combine": dataop("reduce", (b("apart"),), b("ao"), combine="softmax",
                                       heads=self.hpr),
                "attn.share": dataop("bcast", (b("ao"),), b("aos"), scatter=self.w_o),
                "o.bcast": dataop("bcast", (b("aos"),), b("aos")),
                "o_proj": dataop("gemm", (b("aos"), b("wo")), b("h"))}

    def norm_bwd_data(self, key: str, dy: str, x: str, stats: str, gain: str, bst: str,
                      ggain: str, dx: str, accumulate: bool, add_grads: bool = False) -> dict:
        p = {"n": self.cfg.d_model, "rms": self.cfg.norm == "rmsnorm", "eps": EPS}
        acc = {"accumulate_gain": True} if add_grads else {}  # a later micro-batch adds
        return {key + ".stats": dataop("norm_bwd_stats", (dy, x, stats, gain), bst, **p),
                key + ".allreduce": dataop("reduce", (bst,), bst),
                key + ".bcast": dataop("bcast", (bst,), bst),
                key: dataop("norm_bwd_apply", (dy, x, stats, gain, bst, ggain), dx,
                            accumulate=accumulate, **p, **acc)}

    def backward_data(self, b: LayerBufs) -> dict:
        """DataOp of every record of a layer's backward pass, by key (see TP2D.backward):
        dY arrives in b("dx") on the top row, which leaves with dX. With `add_grads` the
        weight gradients add to what earlier micro-batches left (else they overwrite)."""
        add_grads = self.add_grads
        acc = {"accumulate": True} if add_grads else {}
        hq, hk, fr = self.hpr * self.hd, self.kvpr * self.hd, self.fr
        att = self._att() | {"kvpr": self.kvpr}
        act = "swiglu_bwd" if self.cfg.activation == "swiglu" else "gelu_bwd"

        d = {"residual2.bwd": dataop("copy", (b("dx"),), b("gd")),
             "down.bwd.bcast": dataop("bcast", (b("gd"),), b("gd")),
             "ffn_down.bwd_data": dataop("gemm_bt", (b("gd"), b("wdown")), b("gf")),
             "ffn_down.bwd_weight": dataop("gemm_tn", (b("act"), b("gd")), b("gwdown"), **acc),
             "down.bwd.reduce": dataop("reduce", (b("gf"),), b("gf")),
             "act.bwd": dataop(act, (b("fpart"), b("gf")), b("gfp")),
             "ffn.bwd.bcast": dataop("bcast", (b("gfp"),), b("gfp")),
             "ffn_up.bwd_data": dataop("gemm_bt", (b("gfp"), b("wup")), b("gh"), a_offset=0),
             "ffn_up.bwd_weight": dataop("gemm_tn", (b("h2"), b("gfp")), b("gwup"), b_offset=0,
                                         **acc),
             "ffn_gate.bwd_data": dataop("gemm_bt", (b("gfp"), b("wgate")), b("gh"),
                                         a_offset=fr, accumulate=True),
             "ffn_gate.bwd_weight": dataop("gemm_tn", (b("h2"), b("gfp")), b("gwgate"),
                                           b_offset=fr, **acc),
             "ffn.bwd.reduce": dataop("reduce", (b("gh"),), b("gh")),
             "residual1.bwd": dataop("copy", (b("dx"),), b("gd")),
             "o.bwd.bcast": dataop("bcast", (b("gd"),), b("gd")),
             "o_proj.bwd_data": dataop("gemm_bt", (b("gd"), b("wo")), b("gao")),
             "o_proj.bwd_weight": dataop("gemm_tn", (b("ao"), b("gd")), b("gwo"), **acc),
             "o.bwd.reduce": dataop("reduce", (b("gao"),), b("gattn"), out_offset=0),
             "attn.bwd.bcast": dataop("bcast", (b("gattn"),), b("gattn")),
             "attn_av.bwd_p": dataop("attn_bwd_dp", (b("gattn"), b("kv")), b("gs"), **att),
             "attn_av.bwd_v": dataop("attn_bwd_dv", (b("scores"), b("gattn")), b("gqkv"), **att),
             "softmax.bwd": dataop("attn_bwd_softmax", (b("gs"), b("scores"), b("gattn"),
                                                       b("ao")), b("gs"), **att),
             "attn_qk.bwd_q": dataop("attn_bwd_dq", (b("gs"), b("kv")), b("gqkv"), **att),
             "attn_qk.bwd_k": dataop("attn_bwd_dk", (b("gs"), b("qkv")), b("gqkv"), **att),
             "attn.bwd.reduce": dataop("reduce", (b("gqkv"),), b("gqkv")),
             "rope.bwd": dataop("rope", (b("gqkv"),), b("gqkv"), hd=self.hd,
                                heads=self.hpr + self.kvpr, start=0, sq=self.sq,
                                theta=float(self.cfg.rope_theta), inverse=True),
             "qkv.bwd.bcast": dataop("bcast", (b("gqkv"),), b("gqkv")),
             "qkv.bwd.reduce": dataop("reduce", (b("gh"),), b("gh"))}
        for i, (n, w) in enumerate((("q_proj", "wq"), ("k_proj", "wk"), ("v_proj", "wv"))):
            off = (0, hq, hq + hk)[i]
            d[n + ".bwd_data"] = dataop("gemm_bt", (b("gqkv"), b(w)), b("gh"), a_offset=off,
                                        accumulate=i > 0)
            d[n + ".bwd_weight"] = dataop("gemm_tn", (b("h1"), b("gqkv")), b("g" + w),
                                          b_offset=off, **acc)
        d.update(self.norm_bwd_data("norm2.bwd", b("gh"), b("x1"), b("stats2"), b("ln2"),
                                    b("bst"), b("gln2"), b("dx"), True, add_grads))
        d.update(self.norm_bwd_data("norm1.bwd", b("gh"), b("x"), b("stats1"), b("ln1"),
                                    b("bst"), b("gln1"), b("dx"), True, add_grads))
        return d

    def train_head_tiles(self, hr: Region, sfxs: tuple = ("",)) -> dict:
        """The LM head's backward tiles (shared by micro-batches) and the targets and loss
        statistics of every micro-batch (`sfxs`: their tile suffixes)."""
        T, dt, dc, f32 = self.T, self.dtype, self.dc, "fp32"
        lead = Region(hr.x, hr.y, 1, hr.rows)
        out = {"head0.dlogits": (hr, (T, self.vr), dt, None),
               "head0.gx": (hr, (T, dc), dt, None), "head0.gtable": (hr, (dc, self.vr), dt, None)}
        for sfx in sfxs:
            out |= {"loss.targets" + sfx: (lead, (T, 1), f32, None),
                    "loss.stats" + sfx: (lead, (T, 3), f32, None)}
        return out

    def train_lnf_tiles(self, row: Region, handoff: bool) -> dict:
        gain = 2 if self.cfg.norm == "layernorm" else 1
        out = {"lnf.gg": (row, (gain, self.dc), self.dtype, None),
               "lnf.bst": (row, (self.T, 2), "fp32", None)}
        if handoff:
            out["lnf.gh"] = (row, (self.T, self.dc), self.dtype, None)
        return out

    def train_embed_tiles(self, row: Region, sfx: str = "") -> dict:
        """dX of the embedding (its rows' gradient) and the token ids, where the tokens enter
        (the gather and its scatter-add happen there, off the records, as in the forward)."""
        return {"embed.grad" + sfx: (row, (self.T, self.dc), self.dtype, None),
                "embed.ids" + sfx: (row, (self.T, 1), "fp32", None)}

    def train_head_data(self, x: str, dx: str, handoff: bool, micro=None) -> dict:
        """DataOps of the loss and the LM head's backward (one table region), the final
        norm's backward leaving dX of the last layer in `dx`. `micro` (a
        `common.MicroBatch`): this micro-batch's targets and loss statistics; the loss is
        the mean over every micro-batch's tokens; a later one adds to the head's and final
        norm's weight gradients."""
        lr = {"base": 0, "vocab": self.cfg.vocab_size}
        gsrc = "lnf.gh" if handoff else "head0.gx"
        sfx, count = (micro.sfx, micro.count) if micro is not None else ("", 1)
        later = self.add_grads
        acc = {"accumulate": True} if later else {}
        tg, st = "loss.targets" + sfx, "loss.stats" + sfx
        d = {"loss.0": dataop("loss_stats", ("head0.logits", tg), st, **lr),
             "loss.bwd.0": dataop("loss_bwd", ("head0.logits", st, tg), "head0.dlogits",
                                  count=self.T * count, **lr),
             "bwd.bcast0": dataop("bcast", ("head0.dlogits",), "head0.dlogits"),
             "lm_head.bwd_data.0": dataop("gemm_bt", ("head0.dlogits", "head0.table"),
                                          "head0.gx"),
             "lm_head.bwd_weight.0": dataop("gemm_tn", ("head0.x", "head0.dlogits"),
                                            "head0.gtable", **acc),
             "bwd.reduce0": dataop("reduce", ("head0.gx",), "head0.gx"),
             "bwd.handoff0": dataop("copy", ("head0.gx",), gsrc)}
        d.update(self.norm_bwd_data("ln_f.bwd", gsrc, x, "lnf.stats", "lnf.g", "lnf.bst",
                                    "lnf.gg", dx, False, later))
        return d

    # ---- meta ---------------------------------------------------------------------------------
    def meta(self, layers: list, heads: list[Region], embed_row: Region,
             parts: list | None = None) -> dict:
        """What `functional_model` needs to scatter inputs and gather outputs. `parts`: the
        chunks or micro-batches, each (tile suffix, first sequence, sequences, first
        position, positions); layers: the first part's buffer names."""
        out = {"model": self.cfg.name, "vocab": self.cfg.vocab_size, "rows": self.rows,
               "cols": self.cols, "dtype": self.dtype, "batch": self.batch, "sq": self.sq,
               "start": self.start, "tables": self.tables, "heads": [rect(h) for h in heads],
               "embed_row": rect(embed_row), "train": self.train, "kv_layers": self.kv_layers,
               "row_groups": self.row_groups, "weights_dtype": self.wdt, "kv_dtype": self.kvdt,
               "layers": [{"region": rect(lay.reg), "w": b.w, "a": b.a, "g": b.g}
                          for lay, b in layers]}
        if parts is not None:
            out["parts"] = [list(p) for p in parts]
        return out


def recv_tiles(tiles: dict, sources: dict[str, str]) -> dict:
    """The root's receive tiles of the tree reduces of `sources` (tile name -> axis, see
    REDUCED) that `tiles` holds: as many as the tile's lines have group leaders, each shaped
    like the tile, on the root line of its region, tile k in scratch slot "r{k}"."""
    out = {}
    for name, axis in sources.items():
        if name not in tiles:
            continue
        reg, shape, dtype, _ = tiles[name]
        root = Region(reg.x, reg.y, 1, reg.rows) if axis == "x" else Region(reg.x, reg.y,
                                                                            reg.cols, 1)
        m = tree_groups(reg.cols if axis == "x" else reg.rows)[1]
        out.update({recv_name(name, k): (root, shape, dtype, f"r{k}") for k in range(1, m + 1)})
    return out


def layer_recv_tiles(tiles: dict, bufs, algo: str) -> dict:
    """`recv_tiles` of a layer's tree reduces under `algo` (a layer reduce algorithm; bufs: a
    LayerBufs, or several)."""
    items = bufs if isinstance(bufs, list | tuple) else [bufs]
    return recv_tiles(tiles, {b(k): axis for b in items for k, axis in REDUCED.items()
                              if axis_algo(algo, axis) == "tree"})


def head_recv_tiles(tiles: dict, tables: int, algo: str) -> dict:
    """`recv_tiles` of the LM head's tree reduces (the logits along the rows, training: dX
    up the columns)."""
    sources = {f"head{j}.logits": "x" for j in range(tables)} | {"head0.gx": "y"}
    return recv_tiles(tiles, {k: a for k, a in sources.items() if axis_algo(algo, a) == "tree"})


def make_layout(cfg: GPTConfig, run, rows: int, cols: int, tables: int = 1,
                kv_layers: int = 1, row_groups: bool = True) -> FLayout:
    """The functional layout of `run` (a common.Run) on R x C regions (`kv_layers` layers'
    KV caches on one region's cores)."""
    train = run.phase == "train"
    if train and tables > 1:
        raise NotImplementedError(f"functional: a training step whose LM head spans {tables} "
                                  "table regions is not mapped functionally (one region is)")
    if train and run.sparsity > 0:
        raise NotImplementedError("functional: a sparse training step is not mapped "
                                  "functionally")
    sq = 1 if run.phase == "decode" else run.prompt
    start = run.context if run.phase == "decode" else 0
    prec = run.precision
    return FLayout(cfg, rows, cols, run.dtype, run.batch, sq, start, tables, train, kv_layers,
                   row_groups=row_groups, weights_dtype=prec.weights, kv_dtype=prec.kv)


# ---- tiles of real weights (functional runs) ---------------------------------------------
def _zeros(program: Program, name: str) -> np.ndarray:
    for a in program.allocs:
        if a.name == name and a.shape:
            return np.zeros((a.region.rows, a.region.cols, *a.shape), np.float32)
    raise ProgramError(f"program {program.name!r} has no tile {name!r}")


def _pad(w: np.ndarray, shape: tuple) -> np.ndarray:
    out = np.zeros(shape, np.float32)
    out[tuple(slice(0, s) for s in w.shape)] = w
    return out


def _cols(w: np.ndarray, fl: FLayout, axis: int) -> np.ndarray:
    """Split axis `axis` (d_model) of w into C shards of dC (padded): shard axis first."""
    w = np.moveaxis(np.asarray(w, np.float32), axis, 0)
    w = _pad(w, (fl.cols * fl.dc, *w.shape[1:]))
    return np.moveaxis(w.reshape(fl.cols, fl.dc, *w.shape[1:]), 1, axis + 1)
