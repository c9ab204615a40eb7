"""An MoE layer computed for real: its tiles, the DataOps of its records and the kernels they
name (`moe_route`, `moe_gather`, `moe_combine`, added to `wse_sim.kernels.registry`), and how
its weights are scattered (`moe_inputs`).

Layout (bands only: every expert block is as wide as the layer region, so an expert's
d-shards sit under the top row's and each dispatch or collect record moves one core's tile):

- top row: ``L{i}.wr`` the router's rows of the column's d-shard (dC x n_experts),
  ``L{i}.logits`` (T x n_experts, fp32; the leader holds the sum), ``L{i}.choice`` (T x 2k,
  fp32: the k expert ids, then their weights; the leader computes it, the row gets a copy);
- expert s (``L{i}.expert{e}.`` or ``L{i}.shared{j}.``), with t tokens: ``x`` (t x dC, its
  tokens' rows in token order: gathered on the top row, sent to the block's top row,
  broadcast down), ``wup`` / ``wgate`` / ``wdown`` like a dense FFN of width d_expert on the
  block, ``fpart``, ``act`` (in the layer's scratch slots s1, s2, free once the attention
  and norm2 are done; a second expert on the same block gets slots of its own), and ``y`` (t x dC: the down GEMM's partials, reduced into the
  block's top row and sent back to the top row);
- the combine adds, on the top row, every routed expert's rows weighted by the choice, then
  the shared experts, into the layer's ``h`` (as `workloads.reference.moe_ffn` orders them);
  the residual adds h to x.

The routing the records are sized by must be the one the run computes: functional MoE
programs are built with routing ``router`` (the reference's choice on the seed's weights and
tokens, `moe_layer.router_choices`); `moe_gather` fails with one line when the simulated
router picks differently.
"""

from __future__ import annotations

import math

import numpy as np

from mapper.placement import MappingError
from mapper.strategies.functional_layout import LayerBufs, dataop
from workloads.moe import MoEConfig
from wse_sim.program import Region

_ROUTE_FIELDS = ("n_experts", "top_k", "router", "normalize_topk", "routed_scale", "n_groups",
                 "topk_groups")


def check_functional(cfg, run) -> None:
    """What a functional MoE mapping needs; one line naming what is missing."""
    if run.moe_layout != "bands":
        raise NotImplementedError(f"functional MoE mapping needs moe_layout bands (experts as "
                                  f"wide as the layer region), got {run.moe_layout}")
    if run.reduce_algo != "chain":
        raise NotImplementedError("functional MoE mapping with tree reduces is not mapped; "
                                  "use reduce_algo chain")
    if run.routing.spec != "router":
        raise NotImplementedError(f"functional MoE mapping routes by the router weights; "
                                  f"routing must be 'router', got {run.routing.spec!r}")
    if cfg.moe.selection_bias:
        raise NotImplementedError("functional MoE mapping with a selection bias is not mapped")
    register_moe_kernels()


def names(b: LayerBufs, kind: str, e: int) -> dict:
    n = f"{b.w}{kind}{e}."
    return {k: n + k for k in ("x", "wup", "wgate", "wdown", "fpart", "act", "y")}


def moe_tiles(fl, run, lay, b: LayerBufs, i: int, blocks: list, slots: list) -> dict:
    """The tiles of MoE layer i on `lay` (module docstring); `slots`: (kind, id) per block."""
    cfg, dt, T, dc = run.cfg, run.dtype, fl.T, fl.dc
    E, k = cfg.moe.n_experts, cfg.moe.top_k
    row0 = lay.row0
    out = {b.w + "wr": (row0, (dc, E), dt, None),
           b.w + "logits": (row0, (T, E), "fp32", None),
           b.w + "choice": (row0, (T, 2 * k), "fp32", None)}
    counts = run.routing.counts(i)
    swi = cfg.activation == "swiglu"
    seen: dict = {}  # experts so far on each block: each keeps its own scratch slots
    for (kind, e), blk in zip(slots, blocks, strict=True):
        t = T if kind == "shared" else counts[e]
        if t == 0:
            continue
        if blk.cols != lay.reg.cols:
            raise MappingError(f"functional MoE: block {blk} is not as wide as {lay.reg}")
        fr = math.ceil(cfg.moe.d_expert / blk.rows)
        n = names(b, kind, e)
        j = seen[blk] = seen.get(blk, -1) + 1
        w = f"{b.w}moe{j}.w"  # the experts of other blocks keep theirs at the same bytes
        out.update({n["wup"]: (blk, (dc, fr), dt, w + "up"),
                    n["wdown"]: (blk, (fr, dc), dt, w + "down"),
                    n["x"]: (lay.reg, (t, dc), dt, None), n["y"]: (lay.reg, (t, dc), dt, None),
                    n["fpart"]: (blk, (t, fr * (2 if swi else 1)), dt,
                                 "s1" if j == 0 else f"moe{j}.f"),
                    n["act"]: (blk, (t, fr), dt, "s2" if j == 0 else f"moe{j}.a")})
        if swi:
            out[n["wgate"]] = (blk, (dc, fr), dt, w + "gate")
    return out


def router_data(cfg, b: LayerBufs) -> dict:
    moe = cfg.moe
    params = {f: getattr(moe, f) for f in _ROUTE_FIELDS}
    return {"router": dataop("gemm", (b("h"), b.w + "wr"), b.w + "logits"),
            "router.reduce": dataop("reduce", (b.w + "logits",), b.w + "logits"),
            "route": dataop("moe_route", (b.w + "logits",), b.w + "choice", **params),
            "route.bcast": dataop("bcast", (b.w + "choice",), b.w + "choice")}


def expert_data(cfg, b: LayerBufs, kind: str, e: int, blk: Region) -> dict:
    """DataOps of one expert's records, keyed as `TP2D.up` / `down` / `gemms` look them up."""
    n, k = names(b, kind, e), cfg.moe.top_k
    fr = math.ceil(cfg.moe.d_expert / blk.rows)
    op = f"{kind}{e}."
    act = "swiglu" if cfg.activation == "swiglu" else "gelu"
    return {"gather": dataop("moe_gather", (b("h"), b.w + "choice"), n["x"],
                             expert=e if kind == "expert" else -1, k=k),
            "dispatch": dataop("copy", (n["x"],), n["x"]),
            "ffn.bcast": dataop("bcast", (n["x"],), n["x"]),
            op + "ffn_up": dataop("gemm", (n["x"], n["wup"]), n["fpart"], out_offset=0),
            op + "ffn_gate": dataop("gemm", (n["x"], n["wgate"]), n["fpart"], out_offset=fr),
            "ffn.reduce": dataop("reduce", (n["fpart"],), n["fpart"]),
            "act": dataop(act, (n["fpart"],), n["act"]),
            "down.bcast": dataop("bcast", (n["act"],), n["act"]),
            op + "ffn_down": dataop("gemm", (n["act"], n["wdown"]), n["y"]),
            "down.reduce": dataop("reduce", (n["y"],), n["y"]),
            "collect": dataop("copy", (n["y"],), n["y"])}


def combine_data(cfg, b: LayerBufs, used: list) -> object:
    """The weighted sum of the experts in `used` ((kind, id) with tokens) into h."""
    ys = tuple(names(b, kind, e)["y"] for kind, e in used)
    ids = ",".join(str(e if kind == "expert" else -1) for kind, e in used)
    return dataop("moe_combine", (b.w + "choice",) + ys, b("h"), experts=ids,
                  k=cfg.moe.top_k)


# ---- kernels ------------------------------------------------------------------------------

def _route(call):
    from workloads.reference import route
    p = call.params
    moe = MoEConfig(d_expert=1, **{f: p[f] for f in _ROUTE_FIELDS})
    out = call.out.copy()
    k = moe.top_k
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            idx, w = route(moe, call.inputs[0][r, c].astype(np.float64))
            out[r, c, :, :k], out[r, c, :, k:] = idx, w
    return out


def _rows(choice: np.ndarray, e: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Tokens (in order) that chose expert e, and the slot of their choice."""
    hit = np.rint(choice[:, :k]).astype(np.int64) == e
    rows = np.nonzero(hit.any(1))[0]
    return rows, hit[rows].argmax(1)


def _gather(call):
    e, k = int(call.params["expert"]), int(call.params["k"])
    h, choice = call.inputs
    out = call.out.copy()
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            rows = np.arange(h.shape[2]) if e < 0 else _rows(choice[r, c], e, k)[0]
            if rows.size != out.shape[2]:
                raise ValueError(f"expert {e} got {rows.size} tokens from the router, the "
                                 f"program was built for {out.shape[2]} (routing differs)")
            out[r, c] = h[r, c, rows]
    return out


def _combine(call):
    ids = [int(v) for v in str(call.params["experts"]).split(",")]
    k = int(call.params["k"])
    choice, ys = call.inputs[0], call.inputs[1:]
    out = np.zeros_like(call.out)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            acc = np.zeros(out.shape[2:], np.float32)
            for e, y in zip(ids, ys, strict=True):
                if e < 0:
                    continue
                rows, slot = _rows(choice[r, c], e, k)
                acc[rows] += choice[r, c, rows, k + slot][:, None] * y[r, c]
            for e, y in zip(ids, ys, strict=True):
                if e < 0:
                    acc += y[r, c]
            out[r, c] = acc
    return out


def register_moe_kernels() -> None:
    from wse_sim.kernels.registry import register_kernel
    for name, fn in (("moe_route", _route), ("moe_gather", _gather),
                     ("moe_combine", _combine)):
        register_kernel(name, fn, replace=True)


# ---- inputs -------------------------------------------------------------------------------

def moe_inputs(program, fl, w: dict, i: int, b: LayerBufs, out: dict) -> None:
    """Scatter MoE layer i's router and expert weights into their tiles."""
    from mapper.strategies.functional_layout import _cols, _pad, _zeros
    cfg, C, dc = fl.cfg, fl.cols, fl.dc
    p = f"L{i}."
    arr = _zeros(program, b.w + "wr")
    arr[0] = _cols(w[p + "w_router"], fl, 0)
    out[b.w + "wr"] = arr
    for kind, e, rect, t in program.meta["moe"]["slots"][str(i)]:
        if t == 0:
            continue
        group = "experts" if kind == "expert" else "shared"
        rb = rect[3]
        fr = math.ceil(cfg.moe.d_expert / rb)
        n = names(b, kind, e)
        for key, name in (("wup", "w_up"), ("wgate", "w_gate")):
            if f"{p}{group}.{name}" in w:
                W = _pad(w[f"{p}{group}.{name}"][e], (C * dc, rb * fr))
                out[n[key]] = W.reshape(C, dc, rb, fr).transpose(2, 0, 1, 3)
        W = _pad(w[f"{p}{group}.w_down"][e], (rb * fr, C * dc))
        out[n["wdown"]] = W.reshape(rb, fr, C, dc).transpose(0, 2, 1, 3)
