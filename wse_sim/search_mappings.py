"""The front door's search over mappings: which strategy, grid, chunks, micro-batches, region
shape, layout, GEMM algorithm and reduce algorithm simulate fastest (`wse-sim search`); the
mapper's `mapper.search` ranks and prunes, this module builds and simulates the candidates."""

from __future__ import annotations

from mapper.gemm import fragment_algos
from mapper.strategies.moe_layer import MOE_LAYOUTS
from workloads.models import load_model
from wse_sim.engine import simulate
from wse_sim.experiment import STRATEGIES, build_program, run_multi_wafer
from wse_sim.hardware import ConfigError, HardwareConfig
from wse_sim.spec import Mapping

# the options of the layout a search fixes when given other than these
LAYOUT_DEFAULTS = {"layout": "auto", "gemm_algo": "auto", "recompute": "on"}


def _candidates(model: str, kw: dict, grids: tuple, algos: tuple, fixed_attention,
                fixed_layout, given: dict) -> list[dict]:
    """The first stage of `search_mapping`: every strategy x grid x chunks x micro-batches x
    region shape x reduce algorithm (x expert placement) in the top-row layout, and for a
    dense prefill or training step the 2-D layout's (`_two_d`); each a valid mapping of the
    run spec. `given`: the layout, GEMM algorithm and checkpointing the caller fixed (None:
    searched); a GEMM algorithm or checkpointing given asks for the 2-D layout, as in `run`."""
    phase, batch = kw.get("phase", "prefill"), kw.get("batch", 1)
    chunk_options = (1, 2, 4, 8) if phase == "prefill" else (1,)
    micro_options = tuple(m for m in (1, 2, 4, 8) if batch % m == 0) \
        if phase == "train" else (1,)
    moe = load_model(model, kw.get("model_set")).is_moe
    layouts = (fixed_layout,) if fixed_layout or not moe else MOE_LAYOUTS
    two_d_only = given["layout"] == "2d" or given["gemm_algo"] or given["recompute"]
    two_d_maps = phase in ("prefill", "train") and not moe and not fixed_attention
    if given["recompute"] and phase != "train":
        raise ConfigError(f"recompute: got {given['recompute']!r}, which applies only to a "
                          "training step")
    if two_d_only and not two_d_maps:
        raise ConfigError(f"search: the 2-D layout (asked for by {_asked(given)}) maps a dense "
                          "prefill or training step, with attention auto")
    cands = [] if two_d_only else [
        {"strategy": s, "grid": g, "chunks": c, "micro_batches": mb, "region_shape": r,
         "reduce_algo": a, "attention": fixed_attention or "auto", "moe_layout": lay,
         "layout": "top-row", "gemm_algo": "auto"}
        for s in STRATEGIES for g in grids
        for c in chunk_options if c <= kw.get("prompt", 128)
        for mb in (micro_options if s == "layer-pipelined" else (1,))
        for r in ((0, 1, 2) if s == "layer-pipelined" else (0,))
        for a in algos for lay in layouts]
    if two_d_maps and given["layout"] != "top-row":
        cands += _two_d(phase, grids, micro_options, algos[0], given)
    for cand in cands:
        Mapping(**{k: v for k, v in cand.items() if v is not None})
    return cands


def _asked(given: dict) -> str:
    return ", ".join(f"{k} {v!r}" for k, v in given.items() if v)


def _two_d(phase: str, grids: tuple, micro_options: tuple, reduce_algo: str,
           given: dict) -> list[dict]:
    """The 2-D layout's candidates: layer-sequential and weight-streaming with each GEMM
    algorithm that composes into it and `auto` (an algorithm per projection); a training
    step with each micro-batch count (`_Mapped` refuses more than the fewest that
    fit) and checkpointing on, and off with the last algorithm (`auto`, or the one given),
    and layer-pipelined (a region per layer) with that last algorithm."""
    train = phase == "train"
    gas = (given["gemm_algo"],) if given["gemm_algo"] else fragment_algos() + ("auto",)
    rcs = (given["recompute"],) if given["recompute"] else ("on", "off")
    strategies = ("layer-sequential", "weight-streaming") + (("layer-pipelined",) if train
                                                             else ())
    return [{"strategy": s, "grid": g, "chunks": 1, "micro_batches": mb, "region_shape": 0,
             "reduce_algo": reduce_algo, "attention": "auto", "moe_layout": None,
             "layout": "2d", "gemm_algo": ga} | ({"recompute": rc} if train else {})
            for s in strategies for g in grids
            for mb in (micro_options if train else (1,))
            for ga in (gas if s != "layer-pipelined" else gas[-1:])
            for rc in (rcs if train and (ga == gas[-1] or given["recompute"]) else ("on",))]


def expert_block_options(model: str, model_set: dict | None, layout: str) -> list[str]:
    """The expert parallelism a search tries on an MoE model's best placement `layout`: its
    experts over E / 2, E / 4 and E / 8 blocks (E experts; one block each is the default)."""
    from mapper.strategies.moe_layer import parse_moe_layout
    cfg = load_model(model, model_set)
    base, groups = parse_moe_layout(layout)
    n = cfg.moe.n_experts
    return [f"{base}:{g}" for g in dict.fromkeys((n // 2, n // 4, n // 8)) if 1 <= g < n
            and groups is None]


def _search_expert_blocks(model: str, kw: dict, found, evaluate, budget: int):
    """The best MoE mapping with fewer expert blocks (`expert_block_options`), within budget."""
    from mapper.search import SearchResult, search
    left = budget - len(found.tried)
    best = found.best
    if best is None or left <= 0 or not best.get("moe_layout"):
        return SearchResult(None, None)
    opts = expert_block_options(model, kw.get("model_set"), best["moe_layout"])
    return search([best | {"moe_layout": lay} for lay in opts], evaluate, budget=left)


class _Mapped:
    """Each candidate's Program, mapped once (its bound and its simulation share it); a
    mapping that an earlier candidate already gave is refused, and so is a layer-sequential or
    weight-streaming 2-D training step in more micro-batches than an earlier candidate of the
    same mapping fitted in (each one more runs every pass again: more latency, more I/O)."""

    def __init__(self, hw: HardwareConfig, model: str, kw: dict):
        self.hw, self.model, self.kw = hw, model, kw
        self.seen: set = set()
        self.built: dict = {}  # id(candidate) -> (candidate, its Program)
        self.fewest: dict = {}  # a 2-D training mapping -> the fewest micro-batches that fitted

    def program(self, cand: dict):
        if id(cand) in self.built:
            return self.built[id(cand)][1]
        # (layer-pipelined pipelines its micro-batches: more may be faster)
        two_d = (cand["strategy"], cand["grid"], cand["gemm_algo"], cand.get("recompute")) \
            if cand["layout"] == "2d" and "recompute" in cand \
            and cand["strategy"] != "layer-pipelined" else None
        if two_d in self.fewest and self.fewest[two_d] < cand["micro_batches"]:
            raise ValueError(f"more micro-batches than the {self.fewest[two_d]} this mapping "
                             "fits in (each one more runs every pass again)")
        program = build_program(self.hw, self.model, strategy=cand["strategy"],
                                grid=cand["grid"], chunks=cand["chunks"],
                                micro_batches=cand["micro_batches"],
                                region_shape=cand["region_shape"],
                                reduce_algo=cand["reduce_algo"], attention=cand["attention"],
                                moe_layout=cand["moe_layout"], layout=cand["layout"],
                                gemm_algo=cand["gemm_algo"],
                                **({"recompute": cand["recompute"]} if "recompute" in cand
                                   else {}), **self.kw)
        m = program.meta
        trees = m.get("tree_axes", "")  # what the records really are
        g = m.get("attention", {}).get("rows_per_group", 1)
        key = (cand["strategy"], cand["grid"], m.get("chunks", 1), m.get("micro_batches", 1),
               m.get("region_cols"), m.get("region_rows"), trees, g,
               m.get("moe", {}).get("moe_layout"), m.get("layout"), m.get("gemm_algo"),
               m.get("recompute"))
        if two_d is not None:
            self.fewest.setdefault(two_d, cand["micro_batches"])
        if key in self.seen:  # the same mapping as an earlier candidate
            raise ValueError(f"same mapping as an earlier candidate ({m.get('chunks', 1)} "
                             f"chunks, {m.get('region_cols')} x {m.get('region_rows')} regions, "
                             f"trees along {trees or 'no axis'}: a tree needs lines of 3 cores "
                             f"or more; {g} row(s) per head group)")
        self.seen.add(key)
        self.built[id(cand)] = (cand, program)
        return program


def search_mapping(hw: HardwareConfig, model: str, *, engine: str = "auto", budget: int = 64,
                   grids: tuple | None = None, progress: bool = False, prune: bool = False,
                   **kw):
    """Pick the strategy, grid, (prefill) chunk count, (training, layer-pipelined) micro-batch
    count, for layer-pipelined the region shape, and the GEMMs' reduce algorithm with the least
    simulated time per token. Chunks and micro-batches are the tile size along the tokens (more
    pipeline better through the layer regions but pay more per-part latency); the region shape
    is how each layer's matmuls are tiled over cores (rows x columns of its region); the reduce
    algorithm how their partial sums meet (`chain`: one pipelined stream per line; `tree`:
    two-level, fewer stages but the leaders' whole vectors queue at the root: it wins on long
    lines and short vectors, i.e. decode).

    Every mapping is tried with `chain` and `tree`; then the best one also with the tree in one
    direction only (`row-tree`, `col-tree`), and with attention split over every row of a head
    group (`attention="rows"`, when a region has more rows than heads), within `budget`. A
    given `reduce_algo` or `attention` is fixed. An MoE model also tries every expert
    placement (`moe_layout`: blocks, strips, bands) unless one is given. A dense prefill also
    tries the 2-D layout (`layout="2d"`, layer-sequential and weight-streaming) with each
    GEMM algorithm that composes into it, and with `auto` (an algorithm per projection;
    refused as a repeat where it chose one for all); a dense training step too, with
    activation checkpointing off as well as on (with `auto`), in the fewest micro-batches that
    fit (more are refused: each one more runs every pass again). A `layout`, `gemm_algo` or
    `recompute` given other than its default fixes it (the last two: the 2-D layout only).

    `grids=None` searches the grid too: the candidates above run on the whole mesh, then the
    best one on the grids of `mapper.search.grid_options` (powers of two, largest first, down
    to the first on which nothing fits) with each reduce algorithm (before the one-direction
    trees). A tuple of grids fixes them.

    Each candidate is mapped once. `prune` (`wse-sim search` sets it): before any is
    simulated, each gets `mapper.search_bound.cycles_lower_bound` (provably at most its simulated
    cycles); they are simulated by increasing bound, and one whose bound is above the best
    simulated cost so far is pruned, not simulated (it cannot win; `tried` says "pruned"
    with its bound): the choice is the one simulating every candidate gives
    (tests/test_search_speed.py), in a fraction of the time."""
    from mapper.search import grid_options, pruned, search
    from mapper.search_bound import cycles_lower_bound
    results = {}
    # the layout, GEMM algorithm and checkpointing: searched unless given other than the
    # default (a run spec passes every field)
    given = {k: None if kw.get(k, d) == d else kw[k] for k, d in LAYOUT_DEFAULTS.items()}
    for k in LAYOUT_DEFAULTS:
        kw.pop(k, None)
    fixed = kw.pop("reduce_algo", None)
    algos = (fixed,) if fixed else ("chain", "tree")
    fixed_attention = kw.pop("attention", None)

    fixed_layout = kw.pop("moe_layout", None)  # an MoE model: where its experts go
    cands = _candidates(model, kw, grids or (None,), algos, fixed_attention, fixed_layout,
                        given)
    mapped = _Mapped(hw, model, kw)
    prepare = mapped.program

    def bound_of(cand: dict) -> float:
        """A lower bound of `evaluate(cand)`: `mapper.search_bound.cycles_lower_bound` (provably at
        most the simulated cycles) in the same units (seconds per token)."""
        program = prepare(cand)
        return hw.seconds(cycles_lower_bound(program, hw)) / max(1, program.tokens)

    def evaluate(cand: dict) -> float:
        program = prepare(cand)
        mapped.built.pop(id(cand), None)
        r = simulate(program, hw, engine=engine)
        results[tuple(cand.values())] = r
        return r.seconds / max(1, r.tokens)

    bound = bound_of if prune else None
    found = search(cands, evaluate, budget=budget, progress=progress, bound=bound)
    left = budget - len(found.tried)
    if found.best is not None and grids is None:  # the best on smaller grids, largest first
        base = found.best
        for g in grid_options(hw.mesh_cols, hw.mesh_rows)[1:]:
            left = budget - len(found.tried)
            if left <= 0:
                break
            sized = search([base | {"grid": g, "reduce_algo": a} for a in algos], evaluate,
                           budget=left, bound=bound, prune_above=found.best_cost)
            found.absorb(sized)
            if sized.best is None and not any(pruned(w) for *_, w in sized.tried):
                break  # nothing fits this grid: smaller ones fit less
    if not fixed_layout:  # the expert parallelism on the best placement
        found.absorb(_search_expert_blocks(model, kw, found, evaluate, budget))
    left = budget - len(found.tried)
    two_d = found.best is not None and found.best["layout"] == "2d"
    if found.best is not None and not fixed and left > 0 and not two_d:  # one direction only
        one_way = [found.best | {"reduce_algo": a} for a in ("row-tree", "col-tree")]
        found.absorb(search(one_way, evaluate, budget=left, bound=bound,
                            prune_above=found.best_cost))
    left = budget - len(found.tried)
    if found.best is not None and not fixed_attention and left > 0 and not two_d:
        found.absorb(search([found.best | {"attention": "rows"}], evaluate, budget=left,
                            bound=bound, prune_above=found.best_cost))
    best = results.get(tuple(found.best.values())) if found.best else None
    return found, best


def search_multi_wafer(hw: HardwareConfig, model: str, *, wafers: int, engine: str = "auto",
                       budget: int = 64, progress: bool = False, **kw):
    """The multi-wafer form of `search_mapping` (layer-pipelined on each of `wafers` wafers,
    `run_multi_wafer`): tries the GEMMs' reduce algorithm (`chain`, `tree`, unless
    `reduce_algo` is given) and, for an MoE model, every expert placement (`moe_layout`:
    blocks, strips, bands, unless given); the least simulated latency per token wins (one
    batch through every wafer in turn). Returns (SearchResult, the winner's run_multi_wafer
    dict or None)."""
    from mapper.search import search
    fixed = kw.pop("reduce_algo", None)
    fixed_layout = kw.pop("moe_layout", None)
    moe = load_model(model, kw.get("model_set")).is_moe
    layouts = (fixed_layout,) if fixed_layout or not moe else MOE_LAYOUTS
    cands = [{"strategy": "layer-pipelined", "wafers": wafers, "reduce_algo": a,
              "moe_layout": lay} for lay in layouts for a in ((fixed,) if fixed else
                                                              ("chain", "tree"))]
    results = {}

    def evaluate(cand: dict) -> float:
        out = run_multi_wafer(hw, model, wafers=wafers, engine=engine,
                              reduce_algo=cand["reduce_algo"], moe_layout=cand["moe_layout"],
                              **kw)
        results[tuple(cand.values())] = out
        return out["seconds"] / max(1, out["stages"][0].tokens)

    found = search(cands, evaluate, budget=budget, progress=progress)
    if not fixed_layout:  # the expert parallelism on the best placement
        found.absorb(_search_expert_blocks(model, kw, found, evaluate, budget))
    return found, results.get(tuple(found.best.values())) if found.best else None
