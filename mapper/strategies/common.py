"""What every whole-model strategy shares: run parameters, the op graph, and the embedding
table / LM head regions."""

from __future__ import annotations

import math
from dataclasses import dataclass

from mapper.attention import ATTENTION_SPLITS
from mapper.placement import MappingError
from mapper.reduce_algos import check_algo
from mapper.strategies.functional_layout import LayerBufs
from mapper.strategies.tp2d import COLORS, TP2D, _deps, tree_recv_bytes
from workloads.graph import build_graph, ops_in_order
from workloads.models import GPTConfig
from workloads.routing import Routing
from wse_sim.hardware import DTYPE_BYTES, FLOAT_DTYPES, HardwareConfig
from wse_sim.precision import Precision
from wse_sim.program import Alloc, Compute, ProgramBuilder, Region, Unicast, wavelets_for
from wse_sim.sparsity import Sparsity
from wse_sim.timing import split_evenly


@dataclass(frozen=True)
class MicroBatch:
    """One of `count` micro-batches of a training step, as the LM head sees it."""

    count: int
    sfx: str = ""  # suffix of the tiles it owns (its targets and loss statistics)


@dataclass(frozen=True)
class Run:
    """A phase of a model on a grid of the mesh, with derived sizes."""

    cfg: GPTConfig
    hw: HardwareConfig
    phase: str
    batch: int
    prompt: int
    context: int
    dtype: str
    cols: int
    rows: int
    sparsity: float
    chunks: int = 1  # prefill: the prompt runs through the layers in this many chunks
    micro_batches: int = 1  # train: the batch runs through the layers in this many parts
    reduce_algo: str = "chain"  # how the GEMMs' partial sums reduce (mapper.tree_reduce)
    attention: str = "auto"  # how attention splits over a region's rows (tp2d.Layout.fitted)
    routing: Routing | None = None  # MoE: each token's experts per layer (workloads.routing)
    moe_layout: str = "blocks"  # MoE: how experts are placed in a layer region (moe_layer)
    prec: Precision | None = None  # each tensor's dtype (None: `dtype` for all, fp32 accum)
    sp: Sparsity | None = None  # sparse weights (None: `sparsity` uniform, stored dense)
    table_params: int | None = None  # a wafer's share of the tables (None: the model's)

    @property
    def sparse(self) -> Sparsity:
        """How the layers' zero weights are stored, and how many per layer."""
        return self.sp or Sparsity("dense", self.sparsity)

    def layer_matrix_bytes(self, i: int, positions: int | None = None) -> int:
        """Stored bytes of layer i's weight matrices (all of them, or `positions` of them),
        compressed as the run's sparse format says (docs/sparsity.md)."""
        if positions is None:
            positions = self.cfg.layer_matmul_params(i if self.cfg.is_moe else None)
        return self.sparse.stored_bytes(positions, self.weight_bytes, i)

    @property
    def precision(self) -> Precision:
        """The dtypes of weights, activations (`dtype`), KV cache and accumulators."""
        return self.prec or Precision.of(self.dtype)

    @property
    def weight_bytes(self) -> int:
        """Bytes per value of a weight matrix."""
        return self.precision.bytes("weights")

    @property
    def parts(self) -> int:
        """Pieces the phase runs in: prefill chunks or training micro-batches (else 1)."""
        return {"prefill": self.chunks, "train": self.micro_batches}.get(self.phase, 1)

    @property
    def chunk_tokens(self) -> int:
        """Tokens of one chunk or micro-batch (the tokens a layer handles at a time)."""
        if self.phase == "prefill":
            return self.batch * math.ceil(self.prompt / self.chunks)
        if self.phase == "train":
            return self.batch // self.micro_batches * self.prompt
        return self.tokens

    @property
    def bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def tokens(self) -> int:
        """Tokens that flow through the layers in this phase."""
        return self.batch * (1 if self.phase == "decode" else self.prompt)

    @property
    def keys(self) -> int:
        return self.context + 1 if self.phase == "decode" else self.prompt

    @property
    def kv_tokens(self) -> int:
        return self.batch * self.keys

    @property
    def lm_tokens(self) -> int:
        """Tokens that reach the LM head (all of them when training)."""
        return self.tokens if self.phase == "train" else self.batch

    @property
    def lm_chunk_tokens(self) -> int:
        """Tokens that reach the LM head at a time (one micro-batch's when training)."""
        return self.chunk_tokens if self.phase == "train" else self.batch

    @property
    def table_bytes(self) -> int:
        """The token (and position) table and the LM head held on the wafer (a multi-wafer
        stage holds the part it uses: `stage_table_params`) in the weights dtype; 8-bit ones
        with an fp32 scale per row of the tables and per column (vocabulary entry) of the LM
        head (docs/precision.md): one per d_model values."""
        params = self.table_params
        if params is None:
            params = self.cfg.embedding_params() + self.cfg.lm_head_params()
        scales = 4 * (params // self.cfg.d_model) if self.weight_bytes == 1 else 0
        return params * self.weight_bytes + scales

    def ops(self) -> dict:
        g = build_graph(self.cfg, self.phase, batch=self.batch, prompt=self.prompt,
                        context=self.context, dtype=self.dtype,
                        weights_dtype=self.precision.weights, kv_dtype=self.precision.kv)
        ops = {op.name: op for op in ops_in_order(g)}
        if self.routing is None:
            return ops
        from mapper.strategies.moe_layer import moe_ops
        return moe_ops(ops, self.cfg, self.dtype, self.routing)


def stage_table_params(cfg: GPTConfig, with_embed: bool, with_head: bool) -> int:
    """Table parameters one wafer of a multi-wafer pipeline holds: the embedding (token and
    position tables) where the tokens enter, the LM head where the logits leave (the token
    table again when the head is tied to it and the two are on different wafers)."""
    head = cfg.vocab_size * cfg.d_model if cfg.tied_embeddings else cfg.lm_head_params()
    if with_embed and with_head:
        return cfg.embedding_params() + cfg.lm_head_params()
    return (cfg.embedding_params() if with_embed else 0) + (head if with_head else 0)


def make_run(cfg: GPTConfig, hw: HardwareConfig, *, phase: str, batch: int, prompt: int,
             context: int, dtype: str, grid: int | None, sparsity: float,
             chunks: int = 1, micro_batches: int = 1, reduce_algo: str = "chain",
             attention: str = "auto", routing: str | None = None,
             moe_layout: str | None = None, seed: int = 0, functional: bool = False,
             precision: Precision | None = None, sparse: Sparsity | None = None) -> Run:
    if routing is not None and not cfg.is_moe:
        raise MappingError(f"routing: got {routing!r}, but model {cfg.name} has no experts")
    if grid is not None and (grid > hw.mesh_cols or grid > hw.mesh_rows):
        raise MappingError(f"grid: got {grid}, must be at most the {hw.mesh_cols} x "
                           f"{hw.mesh_rows} mesh of {hw.name}")
    cols, rows = (grid, grid) if grid else (hw.mesh_cols, hw.mesh_rows)
    if phase != "prefill":
        chunks = 1
    elif not 1 <= chunks <= prompt:
        raise MappingError(f"chunks: got {chunks}, must be in 1..prompt ({prompt})")
    check_micro_batches(micro_batches, phase, batch)
    check_algo("reduce_algo", reduce_algo)
    if attention not in ATTENTION_SPLITS:
        raise MappingError(f"attention: got {attention!r}, must be one of "
                           f"{', '.join(ATTENTION_SPLITS)}")
    prec = check_precision(precision, dtype, phase, functional, cfg)
    sp = check_sparse(sparse, sparsity, phase, cfg)
    run = Run(cfg, hw, phase, batch, prompt, context, dtype, cols, rows, sparsity, chunks,
              micro_batches, reduce_algo, attention, prec=prec, sp=sp)
    if cfg.is_moe:
        from mapper.strategies.moe_layer import moe_run
        run = moe_run(run, routing, moe_layout, seed, functional)
    return run


def check_precision(prec: Precision | None, dtype: str, phase: str, functional: bool,
                    cfg: GPTConfig) -> Precision:
    """The run's precision (default: `dtype` for every tensor); refused where it is not
    modelled: per-tensor dtypes or 8-bit ones in training and MoE models; in functional runs
    8-bit activations (W8A8) and accumulators stored below fp32."""
    prec = prec or Precision.of(dtype)
    if prec.acts != dtype:
        raise MappingError(f"precision: activations {prec.acts!r} differ from the run's dtype "
                           f"{dtype!r}; the run's dtype is the activations'")
    if prec.uniform and prec.acts in FLOAT_DTYPES:
        return prec
    what = ", ".join(f"{k} {v}" for k, v in prec.to_dict().items() if k in
                     ("acts", "weights", "kv", "accum"))
    if phase == "train":
        raise MappingError(f"precision: {what} with phase train; a training step keeps every "
                           "tensor in one 16- or 32-bit float dtype (8-bit and per-tensor "
                           "dtypes are for prefill and decode)")
    if cfg.is_moe:
        raise NotImplementedError(f"precision: {what} for the MoE model {cfg.name} is not "
                                  "mapped (its expert layers size and time one dtype)")
    if functional and prec.acts not in FLOAT_DTYPES:
        raise NotImplementedError(f"functional: {prec.acts} activations (W8A8) are timed only; "
                                  "missing: per-token quantization of every stored activation "
                                  "and the int8 x int8 GEMMs (gemm_tiles_q8) in the model's "
                                  "records; functional runs take fp32, fp16 or bf16 "
                                  "activations with 8-bit weights and KV cache")
    if functional and prec.accum != "fp32":
        raise NotImplementedError(f"functional: accum_dtype {prec.accum} is timed only; the "
                                  "functional kernels keep partial sums and scores in fp32")
    return prec


def check_sparse(sp: Sparsity | None, sparsity: float, phase: str,
                 cfg: GPTConfig) -> Sparsity:
    """The run's sparse weights (default: `sparsity` uniform, stored dense); a compressed
    format is refused where it is not modelled: training and MoE models."""
    sp = sp or Sparsity("dense", sparsity)
    if sp.per_layer:
        sp.check_layers(cfg.n_layers, cfg.name)
    elif sp.fraction != sparsity:
        raise MappingError(f"sparsity: got {sparsity!r} and a Sparsity of {sp.fraction!r}; "
                           "they must agree")
    if not sp.compressed and not sp.per_layer:
        return sp
    if phase == "train":
        raise MappingError(f"sparse_format: got {sp.fmt!r} with phase train; a training step "
                           "updates dense weights (compressed or per-layer sparsity is for "
                           "prefill and decode)")
    if cfg.is_moe:
        raise NotImplementedError(f"sparse_format: {sp.fmt} or per-layer sparsity for the MoE "
                                  f"model {cfg.name} is not mapped (its expert layers store "
                                  "dense weights)")
    return sp


def part_bufs(i: int, p: int, parts: list, train: bool, last: bool,
              acts: str = "") -> LayerBufs:
    """Tile names of layer i for part p (`parts.part_spans`): weights (and a chunk's KV
    cache) under 'L{i}.'; a micro-batch's saved activations and KV tile (and, in the `last`
    layer, the dY the LM head hands it) under 'L{i}.m{p}.', the backward's scratch shared; a
    chunk's activations under 'L{i}.c{p}.' (they share bytes with the other chunks':
    `shared_tiles`), or, with `acts` (single-region strategies: one set for every layer),
    under acts + '.c{p}.'."""
    base = acts or f"L{i}"
    if len(parts) == 1:
        return LayerBufs(f"L{i}.", base + ".")
    mine = f"{base}{parts[p][0]}."
    if not train:
        return LayerBufs(f"L{i}.", mine)
    return LayerBufs(f"L{i}.", mine, f"L{i}.", ("kv", "dx") if last else ("kv",))


def shared_tiles(tiles: dict, prefix: str, own: tuple = (), tag: str = "") -> dict:
    """A chunk's activation tiles, each in a scratch slot named by its key, so that every
    chunk's tile of that key starts at the same byte (one chunk at a time per layer); the
    keys in `own` (a chunk's own tile, live while the other chunks run) keep theirs. `tag`
    names one of several sets of scratch slots (`tag` appended to every shared slot)."""
    out = {}
    for name, (reg, shape, dt, slot) in tiles.items():
        key = name[len(prefix):]
        if key not in own or slot:
            slot = (slot or "own." + key) + tag
        out[name] = (reg, shape, dt, slot)
    return out


def check_micro_batches(micro_batches: int, phase: str, batch: int) -> None:
    """Micro-batches split a training step's batch into equal parts of whole sequences."""
    if micro_batches == 1:
        return
    if phase != "train":
        raise MappingError(f"micro_batches: got {micro_batches} with phase {phase}; only a "
                           "training step runs in micro-batches (must be 1)")
    allowed = [n for n in range(1, batch + 1) if batch % n == 0]
    if micro_batches not in allowed:
        raise MappingError(f"micro_batches: got {micro_batches}, must divide the batch "
                           f"({batch}): one of {', '.join(map(str, allowed))}")


def check_buffers(what: str, run: Run, buffers: dict, region: Region, extra: str = "") -> None:
    total = sum(buffers.values())
    if total > run.hw.sram_bytes:
        parts = ", ".join(f"{n} {v}" for n, v in buffers.items() if v)
        raise MappingError(f"model {run.cfg.name} does not fit: {what} is {region.cols} x "
                           f"{region.rows} cores{extra} and needs {total} bytes per core ({parts})"
                           f" > sram_bytes {run.hw.sram_bytes}; use a larger mesh (--grid), "
                           "a smaller batch/prompt or a smaller model")


def total_weight_bytes(run: Run) -> int:
    """Stored bytes of every weight: the layers' matrices as the sparse format stores them,
    the rest (table, LM head, norms, biases) dense in the weights dtype."""
    cfg = run.cfg
    matrices = sum(cfg.layer_matmul_params(i if cfg.is_moe else None)
                   for i in range(cfg.n_layers))
    rest = (cfg.param_count() - matrices) * run.weight_bytes
    return rest + sum(run.layer_matrix_bytes(i) for i in range(cfg.n_layers))


def check_total_weights(run: Run) -> None:
    need = total_weight_bytes(run)
    have = run.cols * run.rows * run.hw.sram_bytes
    if need > have:
        side = math.isqrt(-(-need // run.hw.sram_bytes) - 1) + 1  # least: side^2 sram >= need
        raise MappingError(f"model {run.cfg.name} does not fit: its weights need {need} bytes "
                           f"> {run.cols * run.rows} cores x sram_bytes {run.hw.sram_bytes} = "
                           f"{have} bytes on the {run.cols} x {run.rows} mesh (they alone need "
                           f"a grid of at least {side} x {side}); use a larger mesh (--grid), "
                           "weight streaming or more wafers")


def handoff(pb: ProgramBuilder, name: str, src_row: Region, dst_row: Region, values: int,
            dtype: str, dep, color: str = "handoff", data=None) -> int:
    """The top row of one region sends its column shards to the top row of another."""
    if (src_row.x, src_row.y) == (dst_row.x, dst_row.y):
        return dep
    return pb.add(Unicast(name, src_row, wavelets_for(values, dtype), dx=dst_row.x - src_row.x,
                          dy=dst_row.y - src_row.y, color=COLORS[color], deps=_deps(dep),
                          data=data))


def alloc_group(pb: ProgramBuilder, prefix: str, region: Region, buffers: dict,
                tiles: dict | None = None) -> tuple[dict, int]:
    """The SRAM of `region`: one allocation per buffer class (`buffers`: name -> bytes per
    core on the fullest core). In a functional run (`tiles`: name -> (region inside `region`,
    shape, dtype, scratch slot or None)) one allocation `prefix + "sram"` of the same total
    instead, with every tile a view into it (`wse_sim.functional`: Views): the tiles of their
    own first, then each scratch slot (as large as its largest tile). The arena grows only
    where the tiles need more than the timing model budgets (padding, softmax statistics).
    Returns the views {name: (arena, byte offset)} for the program's meta and the bytes per
    core the arena needs beyond the timing model's total (0 when the tiles fit in it)."""
    if tiles is None:
        for name, v in buffers.items():
            pb.alloc(prefix + name, region, v)
        return {}, 0
    offsets, end, slots = {}, 0, {}
    for name, (reg, shape, dtype, slot) in tiles.items():
        if not (region.contains(reg.x, reg.y) and region.contains(reg.x1, reg.y1)):
            raise MappingError(f"functional tile {name} on {reg} is outside its region {region}")
        nbytes = -(-math.prod(shape) * DTYPE_BYTES[dtype] // 4) * 4
        if slot is None:
            offsets[name], end = end, end + nbytes
        else:
            slots[slot] = max(slots.get(slot, 0), nbytes)
    starts = {}
    for slot in sorted(slots):
        starts[slot], end = end, end + slots[slot]
    arena = prefix + "sram"
    budget = sum(buffers.values())
    pb.alloc(arena, region, max(end, budget))
    views = {}
    for name, (reg, shape, dtype, slot) in tiles.items():
        pb.allocs.append(Alloc(name, reg, 0, tuple(shape), dtype))
        views[name] = (arena, offsets[name] if slot is None else starts[slot])
    return views, max(0, end - budget)


def emit_lm_head(tp: TP2D, run: Run, last_row: Region, heads: list[Region], dep,
                 weight_dep=None, x_name: str | None = None,
                 dx_name: str | None = None, micro=None) -> tuple[int, list[int]]:
    """Final norm on `last_row`, then the LM head split by vocabulary over the `heads` regions
    (and, when training, the loss and the head's backward). Returns (the dependency that
    carries dX back on `last_row` when training, else the last record; the head's
    weight-gradient records). Functional (`tp.fl`): `x_name` is the buffer of the last
    layer's output; each table region's leaders end with their rows' logits; training: the
    loss, the head's backward and the final norm's backward, which leaves dX in `dx_name`.
    Training in micro-batches: `tp.share` is (micro-batch, micro-batches) and `micro` says
    which (`MicroBatch`)."""
    pb, cfg, k = tp.pb, run.cfg, len(heads)
    C, R = heads[0].cols, heads[0].rows
    moved = (last_row.x, last_row.y) != (heads[0].x, heads[0].y)
    fd = tp.fl.head_data(x_name, k, moved) if tp.fl is not None else {}
    if tp.fl is not None and tp.fl.train:
        fd |= tp.fl.train_head_data(x_name, dx_name, moved, micro)
    lm = run.lm_chunk_tokens
    if run.lm_tokens != run.tokens:
        dep = pb.add(Compute("select_last", last_row, 0, run.dtype, "vector", deps=_deps(dep),
                             data=fd.get("select_last")))
    dep = tp.norm("ln_f", last_row, dep, lm, fd, "ln_f")
    vals = lm * math.ceil(cfg.d_model / C)
    vocab_rows = math.ceil(cfg.vocab_size / (k * R))
    ends, grads = [], []
    saved_tokens = tp.tokens
    tp.tokens = lm

    def flops(name: str, j: int) -> int:  # this micro-batch's share, then table region j's
        return split_evenly(split_evenly(tp.ops[name].flops, tp.share[1], tp.share[0]), k, j)
    for j, hr in enumerate(heads):
        top = Region(hr.x, hr.y, C, 1)
        d = handoff(pb, f"lm_head.handoff{j}", last_row, top, vals, run.dtype, dep,
                    data=fd.get(f"handoff{j}"))
        d = tp.stream(f"lm_head.bcast{j}", hr, "y", 1, vals, d, reduce=False, color="col_bcast",
                      data=fd.get(f"bcast{j}"))
        wd = weight_dep[j] if isinstance(weight_dep, list) else weight_dep
        d = tp.compute("lm_head", hr, _deps(d) + _deps(wd), fmac=True,
                       flops=flops("lm_head", j), label=f"lm_head.{j}",
                       data=fd.get(f"lm_head.{j}"))
        d = tp.reduce(f"lm_head.reduce{j}", hr, "x", lm * vocab_rows, d,
                      color="row_reduce", data=fd.get(f"reduce{j}"))
        if run.phase == "train":
            lead = Region(hr.x, hr.y, 1, R)
            for n in ("loss", "loss.bwd"):
                d = tp.compute(n, lead, d, fmac=False, flops=flops(n, j),
                               label=f"{n}.{j}", data=fd.get(f"{n}.{j}"))
            d = tp.stream(f"lm_head.bwd.bcast{j}", hr, "x", 1, lm * vocab_rows, d,
                          reduce=False, color="row_bcast", data=fd.get(f"bwd.bcast{j}"))
            for part in ("lm_head.bwd_data", "lm_head.bwd_weight"):
                d = tp.compute(part, hr, d, fmac=True, flops=flops(part, j),
                               label=f"{part}.{j}", data=fd.get(f"{part}.{j}"))
            grads.append(d)
            d = tp.reduce(f"lm_head.bwd.reduce{j}", hr, "y", vals, d, color="col_reduce",
                          data=fd.get(f"bwd.reduce{j}"))
            d = handoff(pb, f"lm_head.bwd.handoff{j}", top, last_row, vals, run.dtype, d,
                        color="back", data=fd.get(f"bwd.handoff{j}"))
        ends.append(d)
    tp.tokens = saved_tokens
    if run.phase != "train":
        return ends[-1], grads
    return tp.norm("ln_f.bwd", last_row, tuple(ends), lm, fd, "ln_f.bwd"), grads


def head_tree_recv(run: Run, region: Region, tables: int) -> int:
    """Receive buffers of the LM head's tree reduces on a table region's root core (the logits
    along the rows; training: dX up the columns)."""
    vocab_rows = math.ceil(run.cfg.vocab_size / (tables * region.rows))
    lm = run.lm_chunk_tokens  # one micro-batch at a time
    y = lm * math.ceil(run.cfg.d_model / region.cols) if run.phase == "train" else 0
    return tree_recv_bytes(region, lm * vocab_rows, y, run.precision.vector, run.reduce_algo)


def mapping_meta(run: Run, tp: TP2D) -> dict:
    """What the program's meta says about how the GEMMs reduce."""
    return {"reduce_algo": run.reduce_algo, "tree_reduces": tp.tree_reduces,
            "tree_axes": "".join(sorted(tp.tree_axes)), "combine_flops": tp.combine_flops}


def kv_context_limit(cfg: GPTConfig, hw: HardwareConfig, buffers: dict, lay, run: Run,
                     layers: int) -> int:
    """The longest context (cached positions per sequence of the batch) whose KV cache still
    fits the SRAM left after every other buffer of the fullest core."""
    free = hw.sram_bytes - (sum(buffers.values()) - buffers.get("kv_cache", 0))
    att = lay.split(cfg)
    if run.phase == "train":  # each cache from the first core (see layer_buffers)
        return att.max_tokens(free // (layers * run.batch), run.precision.kv)
    return att.max_tokens(free, run.precision.kv, layers * run.batch)


def resolve_attention(run: Run, fits) -> Run:
    """`attention="auto"` made concrete: `heads` (one row per head group) when some chunking
    of the phase fits with it (`fits(run)`, as for `chunked`), else `rows` (the row-group
    split, which spreads the attention weights and KV cache over every row)."""
    import dataclasses
    if run.attention != "auto":
        return run
    heads = dataclasses.replace(run, attention="heads")
    if fits(chunked(heads, fits)):
        return heads
    return dataclasses.replace(run, attention="rows")


def chunked(run: Run, fits) -> Run:
    """The fewest prefill chunks (`run.chunks`, then twice as many, ...) for which
    `fits(run)` holds; `run` itself when nothing fits (so the caller reports the numbers)."""
    import dataclasses
    n = run.chunks
    while n <= max(1, run.prompt if run.phase == "prefill" else 1):
        candidate = dataclasses.replace(run, chunks=n)
        if fits(candidate):
            return candidate
        n *= 2
    return run
