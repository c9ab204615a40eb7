"""What every core holds in a functional run of a whole-model strategy, and what each record
does to it (the `DataOp`s that `tp2d` and `common` attach when built with functional=True).

The layout is the one `tp2d` describes, made exact (it is the same for every strategy):

- d-shards: column j of a region holds features [j dC, (j + 1) dC) of d_model, dC = ceil(d/C);
  the last shard is padded with zeros (zero gains and zero weight rows keep padding at zero).
- Heads: row r < Ra holds the query heads [r hpr, (r + 1) hpr) (hpr = ceil(H/Ra)), contiguous
  so that under GQA a row's query heads share their K/V heads; the row keeps those K/V heads
  (kvpr = ceil(KV/Ra) slots, the size the timing model budgets; a model whose rows would need
  more is rejected). Its qkv tile is [q heads | k heads | v heads], hd columns per head.
- FFN: row r holds the f-shard [r fR, (r + 1) fR), fR = ceil(d_ffn/R); with SwiGLU its up
  partial is [up | gate] of that shard (2 fR columns), so the act is local to the leader.
- KV cache, sequence split over columns: position p of every sequence lives on column p mod C,
  slot p div C (interleaved, so causal work stays balanced); tile (2 [K, V], B, kvpr, S, hd)
  with S = ceil(keys/C). RoPE is applied before K is stored (the reference's convention).
- LM head: vocabulary shard s = h R + r (h: table region, r: row) of vr = ceil(V/(k R))
  entries; core (j, r) of table region h holds table[d-shard j, shard s].
- Tokens are sequence-major: t = b sq + s, the order of reference.forward's (batch, seq).

Attention is exact: every core computes its keys' scores and a local softmax (max m, sum l,
unnormalised output o) and the row's reduce stream merges the (o, m, l) triples in stream order
(`combine="softmax"` in `wse_sim.functional`), delivering o / l at the leader.

Memory: in a functional build the SRAM of each region is one arena of the timing model's total
(`common.alloc_group`) and every tile is a view into it at a planned offset; scratch slots are
shared by tiles whose lives do not overlap (`FLayout.layer_tiles`), and since views really share
bytes, a wrong plan gives wrong numbers. `meta["functional"]["sram_extra_bytes"]` is what the
tiles need beyond the timing budget on the fullest core (K/V weights kept by several head rows
under GQA, padded shards, the softmax statistics, the LM head's activations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mapper.placement import MappingError
from workloads.models import GPTConfig
from workloads.reference import EPS
from wse_sim.program import DataOp, Region

WEIGHT_KEYS = ("ln1", "ln2", "wq", "wk", "wv", "wo", "wup", "wgate", "wdown", "kv")


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

    def __call__(self, key: str) -> str:
        return (self.w if key in WEIGHT_KEYS else self.a) + key


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

    def __post_init__(self):
        for r, kv in enumerate(self.row_kv):
            if len(kv) > self.kvpr:
                raise MappingError(
                    f"functional: head row {r} of {self.ra} needs K/V heads {list(kv)}, more than "
                    f"the {self.kvpr} per row the mapping budgets (heads {self.cfg.n_heads}, "
                    f"kv heads {self.cfg.n_kv_heads}); use a region with more rows")

    # ---- sizes ------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.batch * self.sq

    @property
    def keys(self) -> int:
        return self.start + self.sq

    @property
    def lm_tokens(self) -> int:
        return self.batch

    @property
    def select(self) -> bool:
        """The LM head sees only the last token of each sequence."""
        return self.sq > 1

    @property
    def ra(self) -> int:
        return min(self.rows, self.cfg.n_heads)

    @property
    def hpr(self) -> int:
        return math.ceil(self.cfg.n_heads / self.ra)

    @property
    def kvpr(self) -> int:
        return math.ceil(self.cfg.n_kv_heads / self.ra)

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
    def slots(self) -> int:
        return math.ceil(self.keys / self.cols)

    @property
    def vr(self) -> int:
        return math.ceil(self.cfg.vocab_size / (self.tables * self.rows))

    @property
    def qkv_cols(self) -> int:
        return (self.hpr + 2 * self.kvpr) * self.hd

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

    # ---- tiles: name -> (region, tile shape, dtype, slot) ----------------------------------
    # Slot None: a tile of its own. Slots "s1" and "s2" are scratch shared by the tiles whose
    # lives do not overlap (every tile of a slot starts at the slot's first byte): s1 holds
    # qkv, then the attention partials, then their combine (ao overwrites apart at the leader
    # after reading it), then the FFN partials and the act (written over its own input); s2
    # the norm statistics, then the scores. `h` is the norm output and also the down GEMMs' partial sums (never live
    # together). Functional runs check the plan: a tile reused too early gives wrong numbers.
    def layer_tiles(self, lay, b: LayerBufs, *, weights: bool = True, acts: bool = True) -> dict:
        dt, T, dc, hd = self.dtype, self.T, self.dc, self.hd
        gain = 2 if self.cfg.norm == "layernorm" else 1
        out = {}
        if weights:
            out.update({b("ln1"): (lay.row0, (gain, dc), dt, None),
                        b("ln2"): (lay.row0, (gain, dc), dt, None),
                        b("wq"): (lay.att, (dc, self.hpr * hd), dt, None),
                        b("wk"): (lay.att, (dc, self.kvpr * hd), dt, None),
                        b("wv"): (lay.att, (dc, self.kvpr * hd), dt, None),
                        b("wo"): (lay.att, (self.hpr * hd, dc), dt, None),
                        b("wup"): (lay.reg, (dc, self.fr), dt, None)})
            if self.cfg.activation == "swiglu":
                out[b("wgate")] = (lay.reg, (dc, self.fr), dt, None)
            out[b("wdown")] = (lay.reg, (self.fr, dc), dt, None)
            out[b("kv")] = (lay.att, (2, self.batch, self.kvpr, self.slots, hd), dt, None)
        if acts:
            out.update({b("x"): (lay.row0, (T, dc), dt, None),
                        b("h"): (lay.reg, (T, dc), dt, None),
                        b("stats"): (lay.row0, (T, 2), "fp32", "s2"),
                        b("qkv"): (lay.att, (T, self.qkv_cols), dt, "s1"),
                        b("apart"): (lay.att, (T, self.hpr * (hd + 2)), dt, "s1"),
                        b("ao"): (lay.att, (T, self.hpr * hd), dt, "s1"),
                        b("fpart"): (lay.reg, (T, self.nf), dt, "s1"),
                        b("act"): (lay.reg, (T, self.fr), dt, "s1"),
                        b("scores"): (lay.att, (T, self.hpr, self.slots + 2), "fp32", "s2")})
        return out

    def embed_tiles(self, row: Region, own_x: bool, scratch: bool = False) -> dict:
        """The gathered embedding rows (and position rows); with `scratch` they sit in the
        layer scratch slots, free until the first layer's norm."""
        s1, s2 = ("s1", "s2") if scratch else (None, None)
        out = {"embed.rows": (row, (self.T, self.dc), self.dtype, s1)}
        if self.cfg.positions == "learned":
            out["embed.pos"] = (row, (self.T, self.dc), self.dtype, s2)
        if own_x:
            out["embed.x"] = (row, (self.T, self.dc), self.dtype, None)
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
        return {f"head{j}.x": (hr, (lm, self.dc), dt, None),
                f"head{j}.table": (hr, (self.dc, self.vr), dt, None),
                f"head{j}.logits": (hr, (lm, self.vr), dt, None)}

    # ---- what the records do ----------------------------------------------------------------
    def norm_data(self, key: str, x: str, out: str, stats: str, gain: str) -> dict:
        return {key + ".stats": dataop("norm_stats", (x,), stats),
                key + ".allreduce": dataop("reduce", (stats,), stats),
                key + ".bcast": dataop("bcast", (stats,), stats),
                key: dataop("norm_apply", (x, stats, gain), out, n=self.cfg.d_model,
                            rms=self.cfg.norm == "rmsnorm", eps=EPS)}

    def layer_data(self, b: LayerBufs) -> dict:
        """DataOp of every record of a layer's forward pass, by key (see TP2D.forward)."""
        hq, hk = self.hpr * self.hd, self.kvpr * self.hd
        att = {"hd": self.hd, "heads": self.hpr, "head_kv": self.head_kv, "batch": self.batch,
               "sq": self.sq, "start": self.start}
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
        return d

    def embed_data(self, out: str) -> DataOp:
        if self.cfg.positions == "learned":
            return dataop("add", ("embed.rows", "embed.pos"), out)
        return dataop("copy", ("embed.rows",), out)

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
        return d

    # ---- meta ---------------------------------------------------------------------------------
    def meta(self, layers: list, heads: list[Region], embed_row: Region) -> dict:
        """What `functional_model` needs to scatter inputs and gather outputs."""
        return {"model": self.cfg.name, "vocab": self.cfg.vocab_size, "rows": self.rows, "cols": self.cols,
                "dtype": self.dtype, "batch": self.batch, "sq": self.sq, "start": self.start,
                "tables": self.tables, "heads": [rect(h) for h in heads],
                "embed_row": rect(embed_row),
                "layers": [{"region": rect(lay.reg), "w": b.w, "a": b.a} for lay, b in layers]}


def make_layout(cfg: GPTConfig, run, rows: int, cols: int, tables: int = 1) -> FLayout:
    """The functional layout of `run` (a common.Run) on R x C regions; prefill and decode."""
    if run.phase == "train":
        raise NotImplementedError("functional: the training step is not mapped functionally "
                                  "(prefill and decode are)")
    sq = 1 if run.phase == "decode" else run.prompt
    start = run.context if run.phase == "decode" else 0
    return FLayout(cfg, rows, cols, run.dtype, run.batch, sq, start, tables)
