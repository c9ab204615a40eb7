"""Layer-pipelined, weight-resident mapping: every layer in its own region of the mesh.

Each layer's weights stay in the SRAM of its region (R rows x C cols). Inside a region the
layer runs 2-D tensor-parallel: the activation X (M tokens x d) lives on the region's top row,
split by columns (column j holds a d/C shard). Every matmul is split over both axes:

- QKV, FFN-up: the X shard streams down each column (line broadcast); core (j, r) multiplies
  it by its weight block; the partial sums reduce along each row (pipelined chain) into the
  row's leader in column 0, which then holds row r's share of the output.
- attention: row r owns heads r, r + Ra, ... (Ra = min(R, heads)); the leader broadcasts
  Q, K, V along its row; the keys are split by position over the C columns (sequence
  parallel); partial outputs and softmax statistics reduce back to the leader.
- O-projection, FFN-down: the leader broadcasts its share along its row; core (j, r) holds
  the block (row r's share) x (d-shard j); partial sums reduce up each column into the top row.
- norms: split over the top row; their statistics are all-reduced along it.

The top row then hands its shards to the next layer's region (SPMD unicast). Embedding table
and LM head live in extra regions at the end of the chain. See docs/strategies.md.
"""

from __future__ import annotations

import math

from mapper.placement import MappingError, layer_graph, place_chain, slot_grid
from workloads.graph import build_graph, ops_in_order
from workloads.models import GPTConfig
from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.program import (
    Compute,
    Dep,
    LineStream,
    Program,
    ProgramBuilder,
    Region,
    Unicast,
    wavelets_for,
)

COLORS = {"col_bcast": 0, "row_reduce": 1, "row_bcast": 2, "col_reduce": 3, "stats": 4,
          "handoff": 5, "stats_bcast": 6}


class _Emitter:
    """Adds records for one stage, threading the dependency from record to record."""

    def __init__(self, pb: ProgramBuilder, dtype: str, sparsity: float):
        self.pb, self.dtype, self.sparsity = pb, dtype, sparsity

    def compute(self, op, region: Region, dep: int, *, fmac: bool) -> int:
        return self.pb.add(Compute(
            op.name, region, int(op.flops), self.dtype, "fmac" if fmac else "vector",
            self.sparsity if (fmac and op.weight) else 0.0,
            sram_read_bytes=int(op.bytes_in + op.weight_bytes), sram_write_bytes=int(op.bytes_out),
            deps=(Dep(dep),)))

    def stream(self, name: str, region: Region, axis: str, direction: int, values: int,
               dep: int, *, reduce: bool, color: str, dtype: str | None = None) -> int:
        """A line stream, or nothing when the region is one core wide along `axis`."""
        length = region.cols if axis == "x" else region.rows
        if length < 2 or values <= 0:
            return dep
        dt = dtype or self.dtype
        return self.pb.add(LineStream(name, region, axis, direction, wavelets_for(values, dt),
                                      reduce=reduce, dtype=dt, color=COLORS[color],
                                      deps=(Dep(dep),)))

    def norm(self, op, row: Region, dep: int, tokens: int) -> int:
        """Statistics over a split row: half the FLOPs, all-reduce of 2 numbers per token,
        then the other half (normalise)."""
        half = op.flops // 2
        a = self.pb.add(Compute(op.name + ".stats", row, int(half), self.dtype, "vector",
                                sram_read_bytes=int(op.bytes_in), deps=(Dep(dep),)))
        a = self.stream(op.name + ".allreduce", row, "x", -1, 2 * tokens, a, reduce=True,
                        color="stats", dtype="fp32")
        a = self.stream(op.name + ".bcast", row, "x", 1, 2 * tokens, a, reduce=False,
                        color="stats_bcast", dtype="fp32")
        return self.pb.add(Compute(op.name, row, int(op.flops - half), self.dtype, "vector",
                                   sram_write_bytes=int(op.bytes_out), deps=(Dep(a),)))


def _layer_buffers(cfg: GPTConfig, R: int, C: int, ra: int, tokens: int, keys: int,
                   kv_tokens: int, b: int) -> dict[str, int]:
    """SRAM bytes per core of a layer region, by buffer (the largest core's share)."""
    d, hd = cfg.d_model, cfg.hd
    hpr, kvpr = math.ceil(cfg.n_heads / ra), math.ceil(cfg.n_kv_heads / ra)
    ffn_cols = cfg.d_ffn * (2 if cfg.activation == "swiglu" else 1)
    shapes = cfg.layer_weight_shapes()
    attn_w = sum(k * n for name, (k, n) in shapes.items() if name in ("w_q", "w_k", "w_v", "w_o"))
    ffn_w = sum(k * n for name, (k, n) in shapes.items() if name not in ("w_q", "w_k", "w_v", "w_o"))
    return {
        "weights": math.ceil(attn_w * b / (ra * C)) + math.ceil(ffn_w * b / (R * C))
        + math.ceil(cfg.layer_small_params() * b / C),
        "x_shard": 2 * tokens * math.ceil(d / C) * b,
        "partial": tokens * max(math.ceil(ffn_cols / R), hd * (hpr + 2 * kvpr)) * 4,
        "scores": tokens * hpr * math.ceil(keys / C) * 4,
        "kv_cache": 2 * kvpr * hd * math.ceil(kv_tokens / C) * b,
    }


def map_layer_pipelined(cfg: GPTConfig, hw: HardwareConfig, *, phase: str = "prefill",
                        batch: int = 1, prompt: int = 128, context: int = 128,
                        dtype: str = "fp16", grid: int | None = None,
                        sparsity: float = 0.0) -> Program:
    """Map every layer of `cfg` onto its own region of the mesh (or of a grid x grid corner)."""
    if phase == "train":
        raise NotImplementedError("layer-pipelined: the training step (backward and update "
                                  "ops) is not mapped yet (issue 7); use --phase prefill|decode")
    g = build_graph(cfg, phase, batch=batch, prompt=prompt, context=context, dtype=dtype)
    ops = {op.name: op for op in ops_in_order(g)}
    cols = rows = grid if grid else None
    if grid is not None and (grid > hw.mesh_cols or grid > hw.mesh_rows):
        raise MappingError(f"grid: got {grid}, must be at most the {hw.mesh_cols} x "
                           f"{hw.mesh_rows} mesh of {hw.name}")
    cols, rows = (grid, grid) if grid else (hw.mesh_cols, hw.mesh_rows)
    b = DTYPE_BYTES[dtype]
    L = cfg.n_layers
    tokens = batch * (prompt if phase == "prefill" else 1)
    keys = prompt if phase == "prefill" else context + 1
    kv_tokens = batch * keys
    lm_tokens = batch
    table_bytes = (cfg.embedding_params() + cfg.lm_head_params()) * b

    weight_bytes = cfg.param_count() * b
    if weight_bytes > cols * rows * hw.sram_bytes:
        raise MappingError(f"model {cfg.name} does not fit: its weights need {weight_bytes} bytes "
                           f"> {cols * rows} cores x sram_bytes {hw.sram_bytes} = "
                           f"{cols * rows * hw.sram_bytes} bytes on the "
                           f"{cols} x {rows} mesh; use a larger mesh (--grid) or a smaller model")
    # Choose the slot grid: L layer slots + k slots for the embedding table / LM head.
    k, sg = 1, None
    for _ in range(64):
        if L + k > cols * rows:
            raise MappingError(f"model {cfg.name} does not fit: {L} layers + {k} table regions "
                               f"> {cols * rows} cores of the {cols} x {rows} mesh")
        sg = slot_grid(cols, rows, L + k)
        per_core = math.ceil(table_bytes / (k * sg.cols * sg.rows))
        head_act = 2 * lm_tokens * math.ceil(cfg.d_model / sg.cols) * b
        need = math.ceil(table_bytes / max(1, hw.sram_bytes - head_act) / (sg.cols * sg.rows))
        if per_core + head_act <= hw.sram_bytes or need <= k:
            break
        k = max(k + 1, need)
    R, C = sg.rows, sg.cols
    ra = min(R, cfg.n_heads)
    buffers = _layer_buffers(cfg, R, C, ra, tokens, keys, kv_tokens, b)
    if sum(buffers.values()) > hw.sram_bytes:
        parts = ", ".join(f"{n} {v}" for n, v in buffers.items())
        raise MappingError(f"model {cfg.name} does not fit: each layer region is {C} x {R} cores "
                           f"({L + k} regions on a {cols} x {rows} mesh) and needs "
                           f"{sum(buffers.values())} bytes per core ({parts}) > sram_bytes "
                           f"{hw.sram_bytes}; use a larger mesh (--grid) or a smaller model")
    head_per_core = math.ceil(table_bytes / (k * R * C)) + 2 * lm_tokens * math.ceil(cfg.d_model / C) * b
    if head_per_core > hw.sram_bytes:
        raise MappingError(f"model {cfg.name} does not fit: the embedding/LM-head table "
                           f"({table_bytes} bytes) needs {head_per_core} bytes per core on {k} "
                           f"regions of {C} x {R} > sram_bytes {hw.sram_bytes}")

    names = [f"L{i}" for i in range(L)] + [f"head{j}" for j in range(k)]
    handoff = [tokens * cfg.d_model * b] * L + [0] * (k - 1)
    placed = place_chain(layer_graph(names, handoff), sg)
    pb = ProgramBuilder(f"{cfg.name}-{phase}-layer-pipelined")
    em = _Emitter(pb, dtype, sparsity)
    heads = [placed[f"head{j}"] for j in range(k)]
    for j, hr in enumerate(heads):
        pb.alloc(f"head{j}.table", hr, math.ceil(table_bytes / (k * R * C)))
        pb.alloc(f"head{j}.act", hr, 2 * lm_tokens * math.ceil(cfg.d_model / C) * b)

    # Embedding: gathered in the first table region's top row, handed to layer 0.
    h0 = heads[0]
    top = Region(h0.x, h0.y, C, 1)
    e = pb.add(Compute("embed", top, int(ops["embed"].flops), dtype, "vector",
                       sram_read_bytes=int(ops["embed"].bytes_out),
                       sram_write_bytes=int(ops["embed"].bytes_out)))
    x_vals = tokens * math.ceil(cfg.d_model / C)
    r0 = placed["L0"]
    dep = pb.add(Unicast("embed.handoff", top, wavelets_for(x_vals, dtype), dx=r0.x - h0.x,
                         dy=r0.y - h0.y, color=COLORS["handoff"], deps=(Dep(e),)))
    for i in range(L):
        reg = placed[f"L{i}"]
        for name, v in buffers.items():
            pb.alloc(f"L{i}.{name}", reg, v)
        dep = _emit_layer(em, cfg, ops, i, reg, ra, tokens, dep, dtype)
        row0 = Region(reg.x, reg.y, C, 1)
        if i + 1 < L:
            nxt = placed[f"L{i + 1}"]
            dep = pb.add(Unicast(f"L{i}.handoff", row0, wavelets_for(x_vals, dtype),
                                 dx=nxt.x - reg.x, dy=nxt.y - reg.y, color=COLORS["handoff"],
                                 deps=(Dep(dep),)))
    # Final norm on the last layer's top row (only the tokens that predict), then the LM head.
    last = Region(placed[f"L{L - 1}"].x, placed[f"L{L - 1}"].y, C, 1)
    if lm_tokens != tokens:
        sel = pb.add(Compute("select_last", last, 0, dtype, "vector", deps=(Dep(dep),)))
        dep = sel
    dep = em.norm(ops["ln_f"], last, dep, lm_tokens)
    head_op = ops["lm_head"]
    lm_vals = lm_tokens * math.ceil(cfg.d_model / C)
    share = _shares(head_op.flops, k)
    vocab_rows = math.ceil(cfg.vocab_size / (k * R))
    for j, hr in enumerate(heads):
        hand = pb.add(Unicast(f"lm_head.handoff{j}", last, wavelets_for(lm_vals, dtype),
                              dx=hr.x - last.x, dy=hr.y - last.y, color=COLORS["handoff"],
                              deps=(Dep(dep),)))
        d2 = em.stream(f"lm_head.bcast{j}", hr, "y", 1, lm_vals, hand, reduce=False,
                       color="col_bcast")
        d3 = pb.add(Compute(f"lm_head.{j}", hr, share[j], dtype, "fmac", sparsity,
                            sram_read_bytes=_shares(head_op.bytes_in + head_op.weight_bytes, k)[j],
                            sram_write_bytes=_shares(head_op.bytes_out, k)[j],
                            deps=(Dep(d2),)))
        em.stream(f"lm_head.reduce{j}", hr, "x", -1, lm_tokens * vocab_rows, d3, reduce=True,
                  color="row_reduce")
    used = sg.gx * sg.cols * sg.gy * sg.rows
    return pb.build(dtype=dtype, tokens=tokens, cores_used=used, meta={
        "strategy": "layer-pipelined", "model": cfg.name, "phase": phase, "batch": batch,
        "prompt": prompt, "context": context, "dtype": dtype, "sparsity": sparsity,
        "region_cols": C, "region_rows": R, "regions": L + k, "table_regions": k,
        "grid_cols": cols, "grid_rows": rows, "graph_flops": int(sum(o.flops for o in ops.values())),
        "sram_buffers_per_core": buffers})


def _shares(total: int, parts: int) -> list[int]:
    base, extra = divmod(int(total), parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def _emit_layer(em: _Emitter, cfg: GPTConfig, ops: dict, i: int, reg: Region, ra: int,
                tokens: int, dep: int, dtype: str) -> int:
    """Records of one transformer layer on region `reg`; returns the last record's index."""
    p = f"L{i}."
    C, R = reg.cols, reg.rows
    d, hd = cfg.d_model, cfg.hd
    hpr, kvpr = math.ceil(cfg.n_heads / ra), math.ceil(cfg.n_kv_heads / ra)
    row0 = Region(reg.x, reg.y, C, 1)
    att = Region(reg.x, reg.y, C, ra)
    lead_att = Region(reg.x, reg.y, 1, ra)
    lead = Region(reg.x, reg.y, 1, R)
    x_vals = tokens * math.ceil(d / C)
    qkv_vals = tokens * hd * (hpr + 2 * kvpr)

    def gemms(names, region, dep):
        for n in names:
            if p + n in ops:
                dep = em.compute(ops[p + n], region, dep, fmac=True)
        return dep

    dep = em.norm(ops[p + "norm1"], row0, dep, tokens)
    dep = em.stream(p + "x.bcast", att, "y", 1, x_vals, dep, reduce=False, color="col_bcast")
    dep = gemms(("q_proj", "k_proj", "v_proj"), att, dep)
    dep = em.stream(p + "qkv.reduce", att, "x", -1, qkv_vals, dep, reduce=True, color="row_reduce")
    if p + "rope" in ops:
        dep = em.compute(ops[p + "rope"], lead_att, dep, fmac=False)
    dep = em.stream(p + "qkv.bcast", att, "x", 1, qkv_vals, dep, reduce=False, color="row_bcast")
    dep = em.compute(ops[p + "attn_qk"], att, dep, fmac=True)
    dep = em.compute(ops[p + "softmax"], att, dep, fmac=False)
    dep = em.compute(ops[p + "attn_av"], att, dep, fmac=True)
    dep = em.stream(p + "attn.reduce", att, "x", -1, tokens * hpr * (hd + 2), dep, reduce=True,
                    color="row_reduce")
    dep = em.stream(p + "attn.bcast", att, "x", 1, tokens * hpr * hd, dep, reduce=False,
                    color="row_bcast")
    dep = gemms(("o_proj",), att, dep)
    dep = em.stream(p + "o.reduce", att, "y", -1, x_vals, dep, reduce=True, color="col_reduce")
    dep = em.compute(ops[p + "residual1"], row0, dep, fmac=False)
    dep = em.norm(ops[p + "norm2"], row0, dep, tokens)
    dep = em.stream(p + "h.bcast", reg, "y", 1, x_vals, dep, reduce=False, color="col_bcast")
    dep = gemms(("ffn_up", "ffn_gate"), reg, dep)
    ffn_cols = cfg.d_ffn * (2 if cfg.activation == "swiglu" else 1)
    dep = em.stream(p + "ffn.reduce", reg, "x", -1, tokens * math.ceil(ffn_cols / R), dep,
                    reduce=True, color="row_reduce")
    dep = em.compute(ops[p + "act"], lead, dep, fmac=False)
    dep = em.stream(p + "ffn.bcast", reg, "x", 1, tokens * math.ceil(cfg.d_ffn / R), dep,
                    reduce=False, color="row_bcast")
    dep = gemms(("ffn_down",), reg, dep)
    dep = em.stream(p + "down.reduce", reg, "y", -1, x_vals, dep, reduce=True, color="col_reduce")
    return em.compute(ops[p + "residual2"], row0, dep, fmac=False)
