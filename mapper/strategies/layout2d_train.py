"""A training step in the 2-D layout (issue 18 item 2): weight streaming with the activations
tiled over the whole region, as a wafer trains (docs/strategies.md, "2-D layout: training").

- The batch runs in `micro_batches` equal parts (gradient accumulation), each a forward pass,
  the loss and a backward pass. Per micro-batch and layer the weights stream in over the
  off-wafer I/O for the forward and again for the backward (double-buffered: layer i's after
  layer i - 2's pass), and the weight gradients stream out; the optimizer runs off the wafer
  where the weights live (its FLOPs in `offwafer_flops`, as the top-row weight streaming).
- Activation checkpointing (`recompute`, the default): the forward keeps only each layer's
  input, and the backward of layer i first runs layer i's forward again (its FLOPs counted in
  `executed_flops` and in `meta["recompute_flops"]`). Without it every layer keeps the tiles
  its backward reads.
- Every activation stays in the natural layout, so each projection of the forward runs its
  own algorithm of the GEMM library (`mapper.gemm.gemm_fragment` on natural data, the weights
  streamed in pre-aligned for it): `gemm_algo` names one for all, or (`auto`) each takes the
  least contention-free estimate (`gemm_algos` in the meta). The backward's products are the
  transposed products of `mapper.gemm_transposed` on the interleaved rings: dX = dY W^T
  (`nt`: the weights streamed in again, pre-aligned for the rings; the gradient rotated back
  to the natural layout) and dW = X^T dY (`tn`: the weight gradient comes out in a rotated
  layout that the host undoes as it takes it). What reads the backward's copy of the weights
  before `nt` runs on the same rings (MeshGEMM, `RING_ALGO`): the recompute's GEMMs and the
  LM head's forward (its weights stream in once for both passes).
- The LM head runs over all of a micro-batch's tokens: logits as a GEMM, the loss's row
  statistics all-reduced along the rows, then its two backward products.
- Attention backward, per K/V head (a loop, as the forward): K|V gathered, RoPE'd and sent
  down the columns from the diagonal as in the forward; per query head Q, dO and O gathered
  at column 0 (D = rowsum(dO o O) there), broadcast; every core recomputes its scores and
  probabilities (from the saved row statistics), forms dV, dP, dS, dQ and dK for its query
  block x key block; dQ is reduced along the row into column 0 (RoPE backward there) and
  broadcast back; dK|dV are reduced up the columns into row 0 (RoPE backward there) and
  multicast to the row that holds their tokens.
- Norms: the two per-token sums all-reduced along the rows; the gain gradients reduced up
  the columns.

Layer-sequential (`streaming=False`): every layer's weights stay on the wafer, in both
alignments the step reads (the forward GEMM's and the rings' of the backward and the
recompute: the two tiles the weight stream brings in, `.w` and `.wb`), the LM head's once;
nothing streams in but the embeddings. The weight gradients accumulate on the wafer (fp32,
every layer's with several micro-batches); after the last micro-batch's backward of a
layer they stream out, the host runs the optimizer where its state lives, and the updated
weights stream back into both copies (`offwafer`, the only place mapped: an on-wafer update
leaves the weights in the gradients' rotated layout, and writing them back into the resident
copies is not mapped).

Functional runs (`layout2d_train_data`, one micro-batch) compute the real loss and gradients.
"""

from __future__ import annotations

import math

from mapper import gemm_transposed as gt
from mapper.gemm import gemm_fragment
from mapper.gemm_common import Plan
from mapper.placement import MappingError
from mapper.strategies import layout2d_optimizer as opt
from mapper.strategies.common import Run, check_total_weights
from mapper.strategies.layout2d import (
    Emitter,
    Tiles,
    _get,
    _refuse,
    buffers_2d,
    build_2d,
    check_layout,
    choose_algos,
    emit_layers,
    gemm_shapes,
    layer_weight_tile_bytes,
    scratch_bytes,
)
from mapper.strategies.layout2d_optimizer import OPTIMIZERS, update_layer
from mapper.strategies.tp2d import COLORS
from wse_sim.hardware import DTYPE_BYTES
from wse_sim.program import Compute, Dep, IoTransfer, LineStream, Multicast, Region, wavelets_for

RING_ALGO = gt.RING_ALGO  # GEMMs that share the transposed products' copy of the weights


def check_options(recompute, optimizer) -> None:
    """A 2-D training step's own options: one line naming the field and what it allows."""
    if not isinstance(recompute, bool):
        raise MappingError(f"recompute: got {recompute!r}, must be true or false")
    if optimizer not in OPTIMIZERS:
        raise MappingError(f"optimizer: got {optimizer!r}, must be one of "
                           f"{', '.join(OPTIMIZERS)}")


def check_train(run: Run, streaming: bool, functional: bool, optimizer: str) -> None:
    """What this layout's training step does not map: one line naming it."""
    if run.reduce_algo != "chain":
        raise MappingError(f"reduce_algo: got {run.reduce_algo!r}; a 2-D training step has "
                           "no GEMM partial sums to reduce along lines (its GEMMs are 2-D), so "
                           "only chain applies")
    if functional and run.micro_batches > 1:
        raise NotImplementedError(f"layout 2d: a functional training step runs one "
                                  f"micro-batch, not {run.micro_batches} (the weight "
                                  "gradients stream out; the host's accumulation is not run)")
    if not streaming and optimizer != "offwafer":
        raise NotImplementedError(f"layout 2d: optimizer {optimizer} with layer-sequential "
                                  "training: the on-wafer update leaves the weights in the "
                                  "gradients' rotated layout, and writing them back into the "
                                  "resident copies is not mapped (optimizer offwafer is)")


def train_algos(run: Run, P: int, gemm_algo: str) -> dict[str, str]:
    """Each forward projection's GEMM algorithm: the one given, or (`auto`) its least
    contention-free estimate: the activations stay natural, so the projections need not
    agree (`layout2d.choose_algos`)."""
    return choose_algos(run, P, gemm_algo, run.chunk_tokens, natural=True)


def train_buffers(run: Run, t, recompute: bool, gemm_algo: str = "auto",
                  streaming: bool = True) -> dict[str, int]:
    """SRAM bytes per buffer class on the fullest core (one micro-batch's tiles `t`, the
    projections' algorithms `train_algos(run, t.P, gemm_algo)`). The GEMMs run one after
    another, so one set of scratch serves them all (the largest, of any algorithm the step
    runs); the embedding is gathered off the wafer. Weight streaming holds two layers'
    weights (double-buffered) and the LM head's as they stream in; layer-sequential every
    layer's in both alignments (module docstring) and, with several micro-batches, every
    layer's gradient accumulator."""
    cfg, b, P, tm = run.cfg, run.bytes, t.P, t.tm
    algos = train_algos(run, P, gemm_algo)
    out = buffers_2d(run, t, algos, True)
    if not streaming:
        out["weights"] = cfg.n_layers * layer_weight_tile_bytes(run, t, copies=2)
        if run.micro_batches > 1:  # the other layers' (`weight_grads` counts one)
            out["grad_accumulators"] = (cfg.n_layers - 1) * t.weight_values() * 4
    for k in ("kv_cache", "tree_recv", "table"):
        out.pop(k, None)
    out |= step_scratch(run, P, algos, recompute, train_shapes(run, P))
    # the saved activations: each layer's input, or every tile its backward reads (the
    # input, both norms' inputs and outputs and statistics, Q|K|V and the up|gate
    # projection as their GEMMs left them (fp32), the attention output, the FFN hidden state
    # and each head's softmax row statistics)
    keep = tm * t.d * b if recompute else (tm * (4 * t.d + t.q + t.f) * b
                                           + tm * (t.qkv + t.ffn + 4 + 2 * cfg.n_heads) * 4)
    vt = math.ceil(cfg.vocab_size / P)
    out |= {
        "saved_activations": cfg.n_layers * keep,
        # dX (fp32), dQ|dK|dV, d(attention out), d(FFN hidden)
        "gradients": tm * t.d * 4 + tm * (t.qkv + t.q + t.ffn) * b,
        # a layer's weight gradients (fp32) until they have streamed out
        "weight_grads": t.weight_values() * 4,
        # dK|dV partials of the column's key block, [dO | D | m l] of the head
        "attention_bwd": tm * 2 * cfg.hd * 4 + tm * (cfg.hd + 3) * 4,
        # the logits (fp32) and their gradient; the LM head's weights and gradient
        "logits": tm * vt * (4 + b),
        "lm_head": t.d * vt * (run.weight_bytes + 4),
    }
    return out


def train_shapes(run: Run, P: int) -> dict[str, tuple[int, int, int, tuple]]:
    """The step's GEMMs (a micro-batch's): a layer's projections and the LM head."""
    cfg = run.cfg
    return gemm_shapes(cfg, run.chunk_tokens, P) | {
        "lm_head": (run.chunk_tokens, cfg.d_model, cfg.vocab_size, ())}


def step_scratch(run: Run, P: int, algos: dict[str, str], recompute: bool,
                 shapes: dict) -> dict[str, int]:
    """The scratch bytes per core of the GEMMs `shapes` (label -> (m, k, n, ops)), run one
    after another: the forward's (the largest plan of any algorithm it runs: the
    projection's own, and the rings' with recompute), the backward's transposed products'
    and the copy of a GEMM's input that the GEMM consumes (the backward reads the original)."""
    fwd, bwd = 0, 0
    for label, (m, k, n, _) in shapes.items():
        used = {algos.get(label, RING_ALGO)} | ({RING_ALGO} if recompute else set())
        fwd = max([fwd] + [scratch_bytes(Plan("gemm", a, P, m, k, n, run.dtype))
                           for a in used])
        nt = gt.TPlan("nt", P, m, k, n, run.dtype).buffers()
        tn = gt.TPlan("tn", P, m, k, n, run.dtype).buffers()
        # nt: the weights' second copy and both accumulators (one ends as dA); tn: A's
        # two copies and the accumulator that does not end as dW
        bwd = max(bwd, nt["b1"][2] + 2 * nt["c0"][2], 2 * tn["a0"][2] + tn["c0"][2])
    copy = max(math.ceil(m / P) * math.ceil(k / P) for m, k, _, _ in shapes.values())
    return {"gemm_scratch": fwd, "gemm_input_copy": copy * run.bytes,
            "backward_scratch": bwd}


class Trainer:
    """Emits one micro-batch's forward, loss and backward (an `Emitter` for the forward)."""

    def __init__(self, em, recompute: bool):
        self.em, self.recompute = em, recompute
        self.pb, self.tp, self.run, self.t = em.pb, em.tp, em.run, em.t
        self.reg, self.P = em.reg, em.t.P
        self.fd = em.fd  # layout2d_train_data.TrainData2D in a functional run
        self.head_data = {} if self.fd is None else self.fd.head()  # LM head, loss, embed
        self.recompute_flops = 0

    def data(self, d: dict, key: str):
        return d.get(key) if self.fd is not None else None

    # ---- primitives --------------------------------------------------------------------------
    def tgemm(self, kind: str, label: str, m: int, k: int, n: int, start: tuple,
              names: dict | None = None, b_offset: int = 0) -> tuple:
        _, end = gt.fragment(self.pb, kind, self.run.hw, grid=self.P, m=m, k=k, n=n,
                             dtype=self.run.dtype, label=label, start=start, names=names,
                             b_offset=b_offset)
        return end

    def col_reduce(self, name: str, values: int, deps, dtype: str = "fp32", data=None) -> int:
        """Every column's partials summed up the column into row 0."""
        return self.pb.add(LineStream(name, self.reg, "y", -1, wavelets_for(values, dtype),
                                      reduce=True, dtype=dtype, color=COLORS["col_reduce"],
                                      deps=tuple(deps), data=data))

    def norm_bwd(self, name: str, dep: tuple, d: dict) -> tuple:
        """A norm's backward: local sums (half the FLOPs), the two per-token sums all-reduced
        along the rows, the gradient (the other half); the gain's gradient up the columns."""
        tp, tm, key = self.tp, self.t.tm, name.split(".", 1)[-1] if name.startswith("L") \
            else name
        half = tp.ops[name].flops // (2 * self.run.micro_batches)
        a = tp.compute(name, self.reg, dep, fmac=False, flops=half, label=name + ".sums",
                       data=self.data(d, key + ".sums"))
        a = tp.stream(name + ".allreduce", self.reg, "x", -1, 2 * tm, a, reduce=True,
                      color="stats", dtype="fp32", data=self.data(d, key + ".allreduce"))
        a = tp.stream(name + ".bcast", self.reg, "x", 1, 2 * tm, a, reduce=False,
                      color="stats_bcast", dtype="fp32", data=self.data(d, key + ".bcast"))
        g = tp.compute(name, self.reg, a, fmac=False, flops=half, label=name + ".apply",
                       data=self.data(d, key + ".apply"))
        parts = 1 if self.run.cfg.norm == "rmsnorm" else 2  # gain (and bias)
        gain = self.col_reduce(name + ".dgain", parts * self.t.d, (Dep(g),),
                               data=self.data(d, key + ".dgain"))
        # what follows waits for the gains' reduce too (the step path needs the cores'
        # ramps claimed in task order)
        return (Dep(g), Dep(gain, "all")), gain

    # ---- the forward -------------------------------------------------------------------------
    def forward(self, i: int, dep: tuple, wd: tuple) -> tuple:
        """Layer i's forward; with recompute its input is saved first."""
        if self.recompute:
            tm, d, b = self.t.tm, self.t.d, self.run.bytes
            s = self.em.tile_compute(f"L{i}.checkpoint", self.reg, 0, dep, fmac=False,
                                     read=tm * d * b, write=tm * d * b)
            dep = (Dep(s),)
        return self.em.layer(i, dep, wd)

    def recomputed(self, i: int, dep: tuple, wd: tuple) -> tuple:
        """Layer i's forward again, from its saved input (counted in `recompute_flops`)."""
        first = len(self.pb.tasks)
        # the backward's stream of the weights, pre-aligned for the transposed products'
        # rings: the recompute's GEMMs run there
        forward = self.em.algos
        self.em.algos = {label: RING_ALGO for label in forward}
        if self.fd is not None:
            self.fd.backward = True
        out = self.em.layer(i, dep, wd)
        self.em.algos = forward
        if self.fd is not None:
            self.fd.backward = False
        self.recompute_flops += sum(int(x.flops) for x in self.pb.tasks[first:]
                                    if isinstance(x, Compute))
        return out

    # ---- the LM head and loss ------------------------------------------------------------------
    def head(self, dep: tuple, wd: tuple) -> tuple[tuple, list]:
        """ln_f, logits, loss and their backward; (dX's dependency, the gradient records)."""
        run, tp, reg, T, tm = self.run, self.tp, self.reg, self.em.tokens, self.t.tm
        cfg, fd, d = run.cfg, self.fd, self.head_data
        n = tp.norm("ln_f", reg, dep, tm, d, "ln_f")
        keep = self.em.tile_compute("lm_head.keep", reg, 0, (Dep(n),), fmac=False,
                                    read=tm * self.t.d * run.bytes,
                                    write=tm * self.t.d * run.bytes, data=self.data(d, "keep"))
        _, lg = gemm_fragment(self.pb, RING_ALGO, run.hw, grid=self.P, m=T, k=cfg.d_model,
                              n=cfg.vocab_size, dtype=run.dtype, label="lm_head",
                              start=(Dep(keep),) + wd,
                              names=fd.head_gemm_names() if fd is not None else None)
        tp.emitted.add("lm_head")
        dl = self.loss(lg, d)
        # the head's weights stream in once: its forward GEMM moved them one place
        dx = self.tgemm("nt", "lm_head.bwd_data", T, cfg.d_model, cfg.vocab_size, (Dep(dl),),
                        names=fd.nt_names(None, "lm_head", True) if fd is not None else None,
                        b_offset=-1)
        dw = self.tgemm("tn", "lm_head.bwd_weight", T, cfg.d_model, cfg.vocab_size,
                        _all(dx), names=fd.tn_names(None, "lm_head") if fd is not None else None)
        tp.emitted.update(("lm_head.bwd_data", "lm_head.bwd_weight"))
        dx, gain = self.norm_bwd("ln_f.bwd", dx + _all(dw), d)
        return dx, [x.task for x in dw] + [gain]

    def loss(self, lg: tuple, d: dict) -> int:
        """Per token: every core's max and sum of exponentials of its vocabulary block merged
        along the row (the online-softmax reduce), the target's logit summed, broadcast; then
        the logits' gradient on every core."""
        tp, reg, tm = self.tp, self.reg, self.t.tm
        half = tp.ops["loss"].flops // (2 * self.run.micro_batches)
        a = tp.compute("loss", reg, lg, fmac=False, flops=half, label="loss.stats",
                       data=self.data(d, "loss.stats"))
        b = tp.compute("loss", reg, (Dep(a),), fmac=False, flops=half, label="loss.target",
                       data=self.data(d, "loss.target"))
        r = tp.stream("loss.lse", reg, "x", -1, 3 * tm, (Dep(b),), reduce=True, color="stats",
                      dtype="fp32", data=self.data(d, "loss.lse"))
        r = tp.stream("loss.zt", reg, "x", -1, tm, r, reduce=True, color="stats",
                      dtype="fp32", data=self.data(d, "loss.zt"))
        r = tp.stream("loss.bcast", reg, "x", 1, 3 * tm, r, reduce=False,
                      color="stats_bcast", dtype="fp32", data=self.data(d, "loss.bcast"))
        return tp.compute("loss.bwd", reg, r, fmac=False, data=self.data(d, "loss.bwd"))

    # ---- a layer's backward ------------------------------------------------------------------
    def gemm_bwd(self, i: int, label: str, dc: tuple, wd: tuple, act: tuple,
                 between=None) -> tuple:
        """The two backward products of GEMM `label` after dC (`dc`) and its input A (`act`);
        (dA's dependency, dW's). B is where the recompute's GEMM left it (moved one place).
        `between(dA)`: what runs after dA and before dW (dW rotates A in place: the
        attention backward reads the attention output first); its result is dA's."""
        m, k, n, ops = gemm_shapes(self.run.cfg, self.em.tokens, self.P)[label]
        fd, moved = self.fd, self.recompute  # the recompute's GEMM read the weights
        da = self.tgemm("nt", f"L{i}.{label}.bwd_data", m, k, n, dc + wd,
                        names=fd.nt_names(i, label, moved) if fd is not None else None,
                        b_offset=-1 if moved else 0)
        if between is not None:
            da = between(da)
        # after dA (the step path needs the rows and columns claimed in task order)
        dw = self.tgemm("tn", f"L{i}.{label}.bwd_weight", m, k, n, _all(da) + act,
                        names=fd.tn_names(i, label) if fd is not None else None)
        self.tp.emitted.update(f"L{i}.{o}.bwd_{w}" for o in ops for w in ("data", "weight"))
        return da + _all(dw), dw

    def layer_bwd(self, i: int, dy: tuple, wd: tuple, fwd: tuple) -> tuple[tuple, list]:
        """Layer i's backward after dY (`dy`) and its forward (or recompute) `fwd`;
        (dX's dependency, the records the gradients wait for)."""
        tp, reg, p = self.tp, self.reg, f"L{i}."
        d = self.fd.layer_bwd(i) if self.fd is not None else {}
        ready = dy + fwd
        r2 = (Dep(tp.compute(p + "residual2.bwd", reg, ready, fmac=False)),)
        d_act, w_down = self.gemm_bwd(i, "ffn_down", r2, wd, fwd)
        d_up = (Dep(tp.compute(p + "act.bwd", reg, d_act, fmac=False,
                               data=self.data(d, "act.bwd"))),)
        d_n2, w_up = self.gemm_bwd(i, "ffn_up", d_up, wd, fwd)
        d_r1, g2 = self.norm_bwd(p + "norm2.bwd", d_n2, d)
        r1 = (Dep(tp.compute(p + "residual1.bwd", reg, d_r1 + r2, fmac=False)),)
        d_qkv, w_o = self.gemm_bwd(i, "o_proj", r1, wd, fwd,
                                   between=lambda d_attn: self.attention_bwd(i, d_attn))
        d_n1, w_qkv = self.gemm_bwd(i, "qkv_proj", d_qkv, wd, fwd)
        dx, g1 = self.norm_bwd(p + "norm1.bwd", d_n1, d)
        grads = [x.task for x in w_down + w_up + w_o + w_qkv] + [g1, g2]
        return (Dep(tp.compute(p + "residual1.bwd", reg, dx + r1, fmac=False,
                               flops=0, label=p + "residual.bwd_add")),), grads

    # ---- attention backward --------------------------------------------------------------------
    def attention_bwd(self, i: int, d_attn: tuple) -> tuple:
        """Every K/V head's backward after dO (`d_attn`): the records dQ|dK|dV wait for."""
        em, cfg = self.em, self.run.cfg
        start = em.sync(f"L{i}.attn_bwd.start", [d.task for d in d_attn])
        last = [start]
        outs: list[int] = []

        def group(g: int) -> None:
            last[:] = [self.kv_group_bwd(i, g, last[0], outs)]

        group(0)
        if cfg.n_kv_heads > 1:
            self.pb.repeat(f"L{i}.kv_heads_bwd", cfg.n_kv_heads - 1, lambda g: group(g + 1))
        return (Dep(em.sync(f"L{i}.attn_bwd.done", outs), "all"),)

    def kv_group_bwd(self, i: int, g: int, prev: int, outs: list) -> int:
        em, cfg, t, p, P = self.em, self.run.cfg, self.t, f"L{i}.", self.P
        hd, tm, b = cfg.hd, t.tm, self.run.bytes
        acc = DTYPE_BYTES[self.run.precision.accum]
        tc, reg = em.tile_compute, self.reg
        fd = (lambda j: _get(self.fd.attention_bwd(i, g, j))) if self.fd is not None \
            else (lambda j: _get({}))
        d = fd(0)
        keys = em.kv_to_columns(i, g, prev, d, "attn_bwd")
        sm = em.softmax_flops(i)
        after = Dep(keys, "all")
        dkv = None
        for j in range(cfg.n_heads // cfg.n_kv_heads):
            d = fd(j)
            q = em.gather(i, "q", tm * hd, after, d)
            # dO and O of the head gathered at column 0, D = rowsum(dO o O) there, broadcast
            s = tc(p + "attn_bwd.do_slice", reg, 0, (Dep(q),), fmac=False,
                   read=tm * t.q * b * 2, write=2 * tm * hd * b, data=d["do_slice"])
            s = em.row(p + "attn_bwd.do_gather", 2 * tm * hd, (Dep(s),), reduce=True,
                       color="row_reduce", data=d["do_gather"])
            s = tc(p + "softmax.bwd", em.col0, 2 * tm * hd, (Dep(s),), fmac=False,
                   read=2 * tm * hd * b, write=tm * 4, label=p + "attn_bwd.D", data=d["D"])
            s = em.row(p + "attn_bwd.do_bcast", tm * (hd + 3), (Dep(s),), reduce=False,
                       color="row_bcast", dtype="fp32", data=d["do_bcast"])
            kq = (Dep(s), Dep(keys, "all"))
            sc = tc(p + "attn_qk", reg, 2 * tm * tm * hd, kq, fmac=True, read=2 * tm * hd * b,
                    write=tm * tm * acc, label=p + "attn_qk.recompute")
            pr = tc(p + "softmax", reg, sm * tm * tm, (Dep(sc),), fmac=False,
                    read=tm * tm * acc, write=tm * tm * acc, label=p + "softmax.recompute")
            mm = 2 * tm * tm * hd
            dv = tc(p + "attn_av.bwd_v", reg, mm, (Dep(pr),) + ((Dep(dkv),) if dkv else ()),
                    fmac=True, read=tm * tm * acc + tm * hd * b, write=tm * hd * 4)
            dp = tc(p + "attn_av.bwd_p", reg, mm, (Dep(pr),), fmac=True,
                    read=tm * hd * 2 * b, write=tm * tm * acc)
            ds = tc(p + "softmax.bwd", reg, 3 * tm * tm, (Dep(dp),), fmac=False,
                    read=2 * tm * tm * acc, write=tm * tm * acc)
            dq = tc(p + "attn_qk.bwd_q", reg, mm, (Dep(ds),), fmac=True,
                    read=tm * tm * acc + tm * hd * b, write=tm * hd * 4, data=d["dq"])
            dkv = tc(p + "attn_qk.bwd_k", reg, mm, (Dep(ds), Dep(dv)), fmac=True,
                     read=tm * tm * acc + tm * hd * b, write=tm * hd * 4, data=d["dkv"])
            r = em.row(p + "attn_bwd.dq_reduce", tm * hd, (Dep(dq),), reduce=True,
                       color="row_reduce", dtype="fp32", data=d["dq_reduce"])
            r = tc(p + "rope.bwd", em.col0, 3 * tm * hd, (Dep(r),), fmac=False,
                   read=tm * hd * 4, write=tm * hd * 4, label=p + "rope.bwd.q",
                   data=d["dq_rope"])
            r = em.row(p + "attn_bwd.dq_bcast", tm * hd, (Dep(r),), reduce=False,
                       color="row_bcast", dtype="fp32", data=d["dq_bcast"])
            out = tc(p + "attn_bwd.dq_place", reg, 0, (Dep(r),), fmac=False,
                     read=tm * hd * 4, write=tm * hd * 4, data=d["dq_place"])
            outs.append(out)
            after = Dep(out)
        # dK|dV of each key block: summed up the columns into row 0, RoPE backward there,
        # then to the row that holds the block's tokens (row 0's from core (0, 0))
        red = self.col_reduce(p + "attn_bwd.dkv_reduce", 2 * tm * hd, (Dep(dkv), after),
                              data=d["dkv_reduce"])
        top = Region(0, 0, P, 1)
        rk = tc(p + "rope.bwd", top, 3 * tm * hd, (Dep(red),), fmac=False,
                read=tm * hd * 4, write=tm * hd * 4, label=p + "rope.bwd.k", data=d["dk_rope"])
        w = wavelets_for(2 * tm * hd, "fp32")
        sends = [self.pb.add(Multicast(p + "attn_bwd.dkv_row", (x, 0), Region(0, x, P, 1), w,
                                       color=COLORS["handoff"], deps=(Dep(rk),),
                                       data=d["dkv_row"]))
                 for x in range(P)]
        placed = tc(p + "attn_bwd.dkv_place", reg, 0,
                    (Dep(em.sync(p + "attn_bwd.dkv_sent", sends), "all"),),
                    fmac=False, read=2 * tm * hd * 4, write=2 * tm * hd * 4,
                    data=d["dkv_place"])
        outs.append(placed)
        return placed


def _all(deps: tuple) -> tuple:
    return tuple(Dep(d.task, "all") for d in deps)


class IoChain:
    """The wafer's one off-wafer I/O channel: each transfer waits for the one emitted before
    it (the fast engine's step path needs its reservations in task order), so a transfer is
    emitted where it may start."""

    def __init__(self, pb):
        self.pb, self.last = pb, None

    def __call__(self, label: str, region: Region, nbytes: int, direction: str,
                 after) -> tuple:
        """`nbytes` in or out of `region` after every core of each of `after` (Deps or task
        indices); what waits for it."""
        deps = tuple(Dep(d.task if isinstance(d, Dep) else d, "all") for d in after) + \
            ((Dep(self.last, "all"),) if self.last is not None else ())
        self.last = self.pb.add(IoTransfer(label, region, int(nbytes), direction, deps=deps))
        return (Dep(self.last),)


def map_train(em, run: Run, streaming: bool, recompute: bool,
              optimizer: str = "offwafer") -> dict:
    """The whole training step into `em`'s builder: every micro-batch's forward, loss and
    backward, and (`optimizer` onwafer) the layers' updates (`layout2d_optimizer`). The
    off-wafer transfers run one after another in the order they are emitted (each waits for
    the one before: one I/O channel, and the step path needs its reservations in task
    order), so a layer's weights are emitted where they may start. Layer-sequential
    (`streaming` false): no weights stream in; the gradients accumulate on the wafer until
    the last micro-batch, which sends them out and takes the updated weights back in.
    Returns the meta entries it adds."""
    from mapper.strategies.single_region import layer_weight_bytes
    reg, L = em.reg, run.cfg.n_layers
    tr = Trainer(em, recompute)
    io = IoChain(em.pb)

    def xfer(label: str, nbytes: int, direction: str, after) -> tuple:
        return io(label, reg, nbytes, direction, after)

    w_bytes = [layer_weight_bytes(run, i) for i in range(L)]
    for mb in range(run.micro_batches):
        tr.tp.share = (mb, run.micro_batches)
        last = mb == run.micro_batches - 1
        if streaming:
            grads_to = "out" if optimizer == "offwafer" else "update" if last else "keep"
        else:
            grads_to = "renew" if last else "keep"
        _micro_batch(tr, xfer, w_bytes, grads_to, streaming)
    return {"recompute": "on" if recompute else "off", "recompute_flops": tr.recompute_flops,
            "optimizer": optimizer}


def _micro_batch(tr: Trainer, xfer, w_bytes: list[int], grads_to: str,
                 streaming: bool) -> None:
    """One micro-batch: embedding in, the layers' forward, the head and loss, the layers'
    backward (each after its recompute) and what becomes of each layer's weight gradients
    (`grads_to`: "out" over the I/O, "keep" accumulated on the wafer, "update" the on-wafer
    optimizer's step, "renew" out and the host's updated weights back into the resident
    copies), the embedding's gradient out. `streaming`: the weights stream in (`xfer`),
    else they are on the wafer already."""
    em, run, pb, reg = tr.em, tr.run, tr.pb, tr.reg
    cfg, L = run.cfg, run.cfg.n_layers

    def win(label: str, nbytes: int, direction: str, after) -> tuple:
        return xfer(label, nbytes, direction, after) if streaming else ()

    head_bytes = cfg.d_model * cfg.vocab_size * run.weight_bytes
    x = xfer("embed.in", em.tokens * cfg.d_model * run.bytes, "in", ())
    dep = [(Dep(tr.tp.compute("embed", reg, x, fmac=False)),)]
    ends: list = []

    def fwd(i: int) -> None:
        # double buffer: layer i's weights once layer i - 2 is done
        wd = win(f"L{i}.weights.in", w_bytes[i], "in", (ends[i - 2],) if i >= 2 else ())
        dep[0] = tr.forward(i, dep[0], wd)
        ends.append(dep[0][0])

    emit_layers(pb, L, fwd, "layers", peel=2 if streaming else 1)
    wd = win("lm_head.weights.in", head_bytes, "in", ())
    # the last layer's backward weights, once its forward is done (the head has its own)
    nxt = [win(f"L{L - 1}.weights.bwd.in", w_bytes[L - 1], "in", (ends[-1],))]
    dx, head_grads = tr.head(dep[0], wd)
    # streamed, the head's gradient goes out every micro-batch (its update is the host's);
    # resident, it accumulates as the layers' do
    if streaming or grads_to == "renew":
        g = xfer("lm_head.grads.out", cfg.d_model * cfg.vocab_size * run.bytes, "out",
                 head_grads)
        if grads_to == "renew":
            xfer("lm_head.weights.update.in", head_bytes, "in", g)
    bends: list = []
    dx_ = [dx]

    def bwd(j: int) -> None:
        i = L - 1 - j
        wd = nxt[0]
        fwd_dep = tr.recomputed(i, dx_[0], wd) if tr.recompute else ()
        dx_[0], grads = tr.layer_bwd(i, dx_[0], wd, fwd_dep)
        if i > 0:  # layer i - 1's weights into the buffer layer i + 1 has left
            nxt[0] = win(f"L{i - 1}.weights.bwd.in", w_bytes[i - 1], "in",
                         (bends[j - 1],) if j >= 1 else ())
        if grads_to in ("out", "renew"):
            g = xfer(f"L{i}.grads.out", w_bytes[i], "out", grads)
            if grads_to == "renew":  # both copies of the matrices, the gains once
                small = run.cfg.layer_small_params(i) * run.bytes
                xfer(f"L{i}.weights.update.in", 2 * w_bytes[i] - small, "in", g)
        elif grads_to == "update":  # the next layer's backward after this layer's update
            dx_[0] = dx_[0] + update_layer(tr, xfer, i, tuple(grads) + dx_[0])
        bends.append(dx_[0][0])

    emit_layers(pb, L, bwd, "layers_bwd", last_apart=True)
    e = tr.tp.compute("embed.bwd", reg, dx_[0], fmac=False,
                      data=tr.data(tr.head_data, "embed.bwd"))
    xfer("embed.grads.out", em.tokens * cfg.d_model * run.bytes, "out", (e,))


def map_train_2d(cfg, hw, *, streaming: bool, gemm_algo: str = "auto",
                 functional: bool = False, recompute: bool = True, check_only: bool = False,
                 optimizer: str = "offwafer", **kw):
    """A training step in the 2-D layout on the largest square of the grid (module
    docstring): budgets checked before anything is built. `kw`: the run's parameters, as
    `common.make_run` takes them. `check_only`: stop after the checks (None: it fits)."""
    from mapper.strategies.common import alloc_group, check_buffers, make_run
    from mapper.strategies.tp2d import TP2D
    from wse_sim.program import ProgramBuilder
    check_layout("2d", gemm_algo)
    run = make_run(cfg, hw, functional=functional, **kw)
    _refuse(run, functional)
    check_options(recompute, optimizer)
    check_train(run, streaming, functional, optimizer)
    if not streaming:
        check_total_weights(run)
    # a micro-batch shorter than the grid's side leaves token rows empty: padding, as in a
    # prefill (their cores hold weights and multiply zeros; tests check the gradients)
    cfg, P = run.cfg, min(run.cols, run.rows)
    t = Tiles.of(cfg, P, run.chunk_tokens)
    algos = train_algos(run, P, gemm_algo)
    buffers = train_buffers(run, t, recompute, gemm_algo, streaming) | opt.buffers(
        cfg, P, t.weight_values(), optimizer, run.micro_batches)
    reg = Region(0, 0, P, P)
    if not streaming and buffers["weights"] > hw.sram_bytes:
        raise MappingError(
            f"model {cfg.name} does not fit layer-sequential training in the 2-D layout: its "
            f"resident weights (every layer's, twice) alone need {buffers['weights']} bytes "
            f"per core of {P} x {P} > sram_bytes {hw.sram_bytes}; use weight-streaming")
    check_buffers("the 2-D region", run, buffers, reg)
    if check_only:
        return None
    name = "weight-streaming" if streaming else "layer-sequential"
    pb = ProgramBuilder(f"{cfg.name}-train-{name}-2d")
    fd, fmeta = None, {}
    if functional:
        from mapper.strategies.layout2d_train_data import functional_allocs
        fd, fmeta = functional_allocs(pb, run, t, algos, recompute, optimizer, reg, buffers)
    else:
        alloc_group(pb, "", reg, buffers)
    ops = run.ops()
    tp = TP2D(pb, cfg, ops, run.dtype, run.sparse, run.chunk_tokens, None, run.reduce_algo,
              run.precision)
    em = Emitter(pb, tp, run, t, RING_ALGO, fd)
    em.tokens, em.training, em.algos = run.chunk_tokens, True, dict(algos)
    extra = map_train(em, run, streaming, recompute, optimizer)
    offwafer = opt.offwafer_flops(ops, optimizer)
    return build_2d(pb, run, tp, name, algos, t, buffers, extra | fmeta,
                    offwafer_flops=offwafer)
