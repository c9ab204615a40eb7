"""The front door for one run: hardware + workload + strategy -> Program -> SimResult."""

from __future__ import annotations

from functools import partial

from mapper.attention import ATTENTION_SPLITS
from mapper.gemm import fragment_algos
from mapper.placement import MappingError
from mapper.reduce_algos import LAYER_REDUCE_ALGOS
from mapper.strategies import NAMES as STRATEGY_NAMES
from mapper.strategies import strategies
from mapper.strategies.choose_layout import CHOICES as LAYOUT_CHOICES
from mapper.strategies.choose_layout import (
    TWO_D_STRATEGIES,
    WHERE_2D,
    candidates,
    map_first,
    smallest_grid,
    two_d_maps,
)
from mapper.strategies.common import check_micro_batches
from mapper.strategies.layout2d import map_2d
from mapper.strategies.layout2d_optimizer import OPTIMIZERS
from workloads.models import load_model
from wse_sim.engine import simulate
from wse_sim.hardware import (
    DTYPE_BYTES,
    DTYPES,
    FLOAT_DTYPES,
    ConfigError,
    HardwareConfig,
    load_preset,
)
from wse_sim.precision import Precision
from wse_sim.sparsity import Sparsity
from wse_sim.spec import RunSpec
from wse_sim.timing import split_evenly

STRATEGIES = STRATEGY_NAMES
PHASES = ("prefill", "decode", "train")


def _positive(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: got {value!r}, must be a positive integer")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}: got {value!r}, must be one of {', '.join(allowed)}")


def build_program(hw: HardwareConfig, model: str, *, phase: str = "prefill",
                  strategy: str = "layer-pipelined", batch: int = 1, prompt: int = 128,
                  context: int | None = None, dtype: str = "fp16", grid: int | None = None,
                  sparsity: float = 0.0, functional: bool = False, chunks: int = 1,
                  micro_batches: int = 1, region_shape: int = 0, reduce_algo: str = "chain",
                  attention: str = "auto", model_set: dict | None = None,
                  routing: str | None = None, moe_layout: str | None = None, seed: int = 0,
                  weights_dtype: str | None = None, kv_dtype: str | None = None,
                  accum_dtype: str | None = None, sparse_format: str = "dense",
                  sparsity_file: str | None = None, layout: str = "auto",
                  gemm_algo: str = "auto", recompute: str = "on", optimizer: str = "offwafer"):
    """Validate the run's parameters and map the model; returns the Program. `chunks`: a
    prefill's prompt runs through the layers in at least this many chunks; `micro_batches`:
    a training step's batch runs in this many equal micro-batches (layer-pipelined);
    `reduce_algo`: how the GEMMs' partial sums reduce: `chain`, `tree`, or the tree only for
    the row reduces (`row-tree`) or the column reduces (`col-tree`) (mapper.strategies.tp2d);
    `attention`: `heads` (one row per head group), `rows` (a head group's rows split its keys
    too, when a region has more rows than heads) or `auto` (heads when it fits). An MoE
    model: `routing` (uniform, skewed:ALPHA, router, a .csv/.json file; default uniform;
    `seed`) and `moe_layout` (blocks, strips, bands): docs/moe.md. `weights_dtype`, `kv_dtype`
    (default `dtype`) and `accum_dtype` (default fp32): each tensor's dtype, `dtype` being the
    activations' (docs/precision.md). `sparse_format` (dense, unstructured, bitmap, N:M) and
    `sparsity_file` (one fraction per layer): how the zero weights are stored and how many each
    layer has (docs/sparsity.md). `model_set`:
    model fields to override, e.g. {"n_layers": 1} to time one layer. `context`
    (decode): None takes min(128, the model's maximum context - 1). `layout`: `top-row`,
    `2d` (a prefill with tokens x features tiled over the region, its projections 2-D GEMMs
    by `gemm_algo`: auto, summa, cannon or meshgemm; mapper.strategies.layout2d; a training
    step in it: `recompute` on or off, activation checkpointing; `optimizer` offwafer or
    onwafer, mapper.strategies.layout2d_optimizer) or `auto` (top-row where it
    maps, else 2d: mapper.strategies.choose_layout); `program.meta["layout"]` says which."""
    if not isinstance(hw, HardwareConfig):
        raise TypeError(f"build_program: hw got {type(hw).__name__}, must be a HardwareConfig "
                        "(wse_sim.hardware.load_preset)")
    _one_of("strategy", strategy, STRATEGIES)
    _one_of("phase", phase, PHASES)
    prec = precision_of(dtype, weights_dtype, kv_dtype, accum_dtype)
    for d in prec.compute_dtypes:
        hw.lanes(d)  # refused here, in one line, when the chip has no lanes for it
    for name, v in (("batch", batch), ("prompt", prompt)):
        _positive(name, v)
    _positive("context", context, allow_none=True)
    _positive("grid", grid, allow_none=True)
    _positive("chunks", chunks)
    _positive("micro_batches", micro_batches)
    if phase == "train" and chunks != 1:
        raise ConfigError(f"chunks: got {chunks} with phase train, must be 1; a training step "
                          "splits its batch into micro_batches instead")
    try:
        check_micro_batches(micro_batches, phase, batch)
    except MappingError as e:
        raise ConfigError(str(e)) from None
    _one_of("attention", attention, ATTENTION_SPLITS)
    _one_of("reduce_algo", reduce_algo, LAYER_REDUCE_ALGOS)
    if isinstance(region_shape, bool) or not isinstance(region_shape, int) or region_shape < 0:
        raise ConfigError(f"region_shape: got {region_shape!r}, must be an integer >= 0")
    two_d = (gemm_algo, recompute, optimizer)  # the 2-D layout's own options
    _check_layout(layout, strategy, phase, *two_d)
    extra = {}
    if region_shape:
        if strategy != "layer-pipelined":
            raise ConfigError(f"region_shape: got {region_shape} with strategy {strategy}; only "
                              "layer-pipelined cuts the mesh into layer regions")
        extra["region_shape"] = region_shape
    sp = sparse_of(sparsity, sparse_format, sparsity_file)
    cfg = load_model(model, model_set)
    for name, v in (("routing", routing), ("moe_layout", moe_layout)):
        if v is not None and not cfg.is_moe:
            raise ConfigError(f"{name}: got {v!r}, which applies only to a mixture-of-experts "
                              f"model; {cfg.name} is dense")
    if context is None:
        context = min(128, cfg.max_context - 1)
    run_kw = dict(phase=phase, batch=batch, prompt=prompt, context=context, dtype=dtype,
                  sparsity=sp.fraction, functional=functional, chunks=chunks,
                  micro_batches=micro_batches, reduce_algo=reduce_algo, attention=attention,
                  seed=seed, precision=prec, sparse=sp)
    top_row = partial(strategies()[strategy], cfg, hw, grid=grid, routing=routing,
                      moe_layout=moe_layout, **run_kw, **extra)
    return _map_layout(cfg, hw, strategy, layout, two_d, grid, run_kw | extra, top_row)


def _map_layout(cfg, hw, strategy: str, layout: str, two_d: tuple, grid, run_kw: dict,
                top_row):
    """The run in the layout asked for, or (`auto`) the first that maps it
    (`choose_layout`); a 2-D refusal names the grid from which the 2-D layout fits. Where
    `auto` took the top-row layout in chunks it did not ask for and the 2-D layout fits,
    `meta["layout_2d_fits"]` says so (the report's mapping line shows it).
    `two_d`: (gemm_algo, recompute, optimizer); `top_row()`: the top-row mapping."""
    gemm_algo, recompute, optimizer = two_d
    map_2d_at = partial(_map_2d, cfg, hw, strategy, gemm_algo, (recompute, optimizer), run_kw)
    check_2d = partial(map_2d_at, check_only=True)

    def map_one(lay: str):
        if lay == "2d":
            return map_2d_at(grid)
        program = top_row()
        program.meta.setdefault("layout", "top-row")
        return program

    layouts = candidates(layout, run_kw["phase"], strategy, *two_d)
    try:
        program = map_first(layouts, map_one)
    except MappingError as e:
        side = min(hw.mesh_cols, hw.mesh_rows)
        if "2d" in layouts:  # (every mapping checks its budgets without building: check_only)
            which, check = "2-D", check_2d
        else:
            which, check = "top-row", lambda g: top_row(grid=g, check_only=True)
        at = smallest_grid(lambda g: _fits(check, g), grid or side, side)
        if at is None:
            raise
        raise MappingError(f"{str(e).splitlines()[0]}; the {which} layout fits from grid {at} "
                           f"({at} x {at} cores)") from None
    if program.meta["layout"] == "top-row" and "2d" in layouts \
            and program.meta.get("chunks", 1) > run_kw.get("chunks", 1) \
            and _fits(check_2d, grid):
        # `auto` is "fits first" (docs/strategies.md, "Which layout"): say that the prompt
        # went into chunks where the 2-D layout would take it whole
        program.meta["layout_2d_fits"] = True
    return program


def _map_2d(cfg, hw, strategy: str, gemm_algo: str, train: tuple, run_kw: dict, grid,
            check_only: bool = False):
    """The run in the 2-D layout on `grid` (a prefill, or a training step: `train` is its
    (recompute, optimizer))."""
    run_kw = dict(run_kw)
    shape = run_kw.pop("region_shape", 0)
    if shape:  # the top-row layer-pipelined regions' option
        raise MappingError(f"region_shape: got {shape}, which picks a top-row layer-pipelined "
                           "region shape; the 2-D layout cuts the largest squares that give "
                           "every layer one")
    mapper_2d = partial(map_2d, streaming=strategy == "weight-streaming")
    if run_kw["phase"] == "train":
        from mapper.strategies.layout2d_pipelined import map_pipelined_train_2d
        from mapper.strategies.layout2d_train import map_train_2d
        mapper_2d = partial(map_pipelined_train_2d, recompute=train[0] == "on",
                            optimizer=train[1]) if strategy == "layer-pipelined" else \
            partial(map_train_2d, streaming=strategy == "weight-streaming",
                    recompute=train[0] == "on", optimizer=train[1])
    return mapper_2d(cfg, hw, grid=grid, gemm_algo=gemm_algo, check_only=check_only,
                     **run_kw)


def _fits(check, grid: int) -> bool:
    """Whether `check(grid)` (a mapping's budget checks on that grid) passes."""
    try:
        check(grid)
    except (MappingError, NotImplementedError):
        return False
    return True


def _check_layout(layout: str, strategy: str, phase: str, gemm_algo: str, recompute: str,
                  optimizer: str) -> None:
    """The layout and the 2-D layout's own options, each where it applies."""
    _one_of("layout", layout, LAYOUT_CHOICES)
    _one_of("gemm_algo", gemm_algo, ("auto",) + fragment_algos())
    if layout == "top-row" and gemm_algo != "auto":
        raise ConfigError(f"gemm_algo: got {gemm_algo!r}, which applies only with layout 2d")
    if layout == "2d" and strategy not in TWO_D_STRATEGIES and not two_d_maps(phase, strategy):
        raise ConfigError(f"layout: got '2d' with strategy {strategy} and phase {phase}; the "
                          f"2-D layout maps {WHERE_2D}")
    _one_of("recompute", recompute, ("on", "off"))
    if recompute != "on" and not (layout in ("2d", "auto") and phase == "train"):
        raise ConfigError(f"recompute: got {recompute!r}, which applies only to a training "
                          "step in layout 2d")
    _one_of("optimizer", optimizer, OPTIMIZERS)
    if optimizer != "offwafer" and not (layout in ("2d", "auto") and phase == "train"
                                        and strategy == "weight-streaming"):
        raise ConfigError(f"optimizer: got {optimizer!r}, which applies only to a "
                          "weight-streaming training step in layout 2d")


def sparse_of(sparsity: float = 0.0, sparse_format: str = "dense",
              sparsity_file: str | None = None) -> Sparsity:
    """The run's `Sparsity` (docs/sparsity.md): a uniform `sparsity` or a file of one
    fraction per layer, stored as `sparse_format` says (N:M sets the fraction itself)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity: got {sparsity!r}, must be a number in [0, 1)")
    return Sparsity.build(sparse_format, float(sparsity), sparsity_file)


def precision_of(dtype: str, weights_dtype: str | None = None, kv_dtype: str | None = None,
                 accum_dtype: str | None = None) -> Precision:
    """The run's `Precision`: `dtype` for the activations and for each tensor not given."""
    _one_of("dtype", dtype, DTYPES)
    for name, v, allowed in (("weights_dtype", weights_dtype, DTYPES),
                             ("kv_dtype", kv_dtype, DTYPES),
                             ("accum_dtype", accum_dtype, FLOAT_DTYPES)):
        if v is not None:
            _one_of(name, v, allowed)
    return Precision.of(dtype, weights_dtype, kv_dtype, accum_dtype)


def run_model(preset: str | HardwareConfig, model: str, *, engine: str = "auto",
              overrides: dict | None = None, functional: bool = False, **kw):
    """Map `model` with the chosen strategy onto the preset (a name, a TOML file or a
    HardwareConfig; `overrides` apply to either) and simulate it (Python API). `kw` are run
    spec fields (`wse_sim.spec`): an unknown one, or one that does not apply to the run, is a
    ConfigError naming it. generate and wafers runs have their own functions (`run_generate`,
    `run_multi_wafer`), strategy auto is `search_mapping`."""
    name = preset.name if isinstance(preset, HardwareConfig) else preset
    spec = RunSpec.from_values({"model": model} | kw, preset=name, overrides=overrides,
                               engine=engine)
    spec.check_applies()
    for key, fn in (("generate", "run_generate"), ("wafers", "run_multi_wafer")):
        if kw.get(key) not in (None, 1):
            raise ConfigError(f"{key}: got {kw[key]!r}; run_model runs one mapping, use {fn}()")
    if kw.get("strategy") == "auto":
        raise ConfigError("strategy: got 'auto'; run_model runs one mapping, use search_mapping()")
    if isinstance(preset, HardwareConfig):
        hw = preset.with_overrides(overrides) if overrides else preset
    else:
        hw = load_preset(preset, overrides)
    program = build_program(hw, model, functional=functional, **kw)
    return simulate(program, hw, engine=engine)


def compare_strategies(hw: HardwareConfig, model: str, *, engine: str = "auto", **kw) -> dict:
    """Run every strategy; returns name -> SimResult, or name -> the one-line reason it does
    not fit."""
    out = {}
    for name in STRATEGIES:
        try:
            program = build_program(hw, model, strategy=name, **kw)
            out[name] = simulate(program, hw, engine=engine)
        except (ValueError, NotImplementedError) as e:
            out[name] = str(e).splitlines()[0]
    return out


def run_generate(hw: HardwareConfig, model: str, *, generate: int, prompt: int, batch: int = 1,
                 engine: str = "auto", prefill_grid=None, decode_grid=None, **kw) -> dict:
    """Prefill the prompt, then decode `generate` tokens. The decode step is simulated at the
    first and at the last context; steps in between are interpolated linearly (attention work
    grows linearly with the context, everything else is constant). `layout` and `gemm_algo`
    (the 2-D layout) apply to the prefill; the decode steps keep the top-row layout."""
    _positive("generate", generate)
    two_d = {k: kw.pop(k) for k in ("layout", "gemm_algo") if k in kw}
    pre_program = build_program(hw, model, phase="prefill", prompt=prompt, batch=batch,
                                grid=prefill_grid, **kw, **two_d)
    first_program = build_program(hw, model, phase="decode", context=prompt, batch=batch,
                                  grid=decode_grid, **kw)
    handoff = kv_handoff(pre_program.meta, first_program.meta)
    cfg = load_model(model, kw.get("model_set"))
    kv = precision_of(kw.get("dtype", "fp16"), kw.get("weights_dtype"), kw.get("kv_dtype"),
                      kw.get("accum_dtype")).kv
    # what a move between the layouts carries: every layer's keys and values of the prompt
    moved = 2 * cfg.n_layers * cfg.kv_dim * prompt * batch * DTYPE_BYTES[kv] \
        if handoff != "in place" else 0
    pre = simulate(pre_program, hw, engine=engine)
    first = simulate(first_program, hw, engine=engine)
    if generate > 1:
        last = simulate(build_program(hw, model, phase="decode", context=prompt + generate - 1,
                                      batch=batch, grid=decode_grid, **kw), hw, engine=engine)
    else:
        last = first
    decode_s = generate * (first.seconds + last.seconds) / 2
    total = pre.seconds + decode_s
    return {
        "kv_handoff": handoff, "kv_handoff_bytes": moved,
        "prefill_seconds": pre.seconds, "decode_seconds": decode_s, "seconds": total,
        "first_decode_seconds": first.seconds, "last_decode_seconds": last.seconds,
        "time_to_first_token_s": pre.seconds + first.seconds,
        "generated_tokens": generate * batch, "tokens_per_s": generate * batch / total,
        "decode_tokens_per_s": generate * batch / decode_s,
        "cycles": int(round(total * hw.clock_hz)), "flops": pre.flops + generate * (
            first.flops + last.flops) // 2,
        "results": {"prefill": pre, "decode_first": first, "decode_last": last},
    }


KV_SAME_PLACE = ("strategy", "layout", "grid_cols", "grid_rows", "region_cols", "region_rows",
                 "regions", "attention")


def kv_handoff(prefill_meta: dict, decode_meta: dict) -> str:
    """Whether the prefill leaves the KV cache where the decode reads it ("in place": the same
    mapping of the same grid) or the cache would have to move between the two layouts (a 2-D
    prefill, other grids or strategies): that move is not simulated, and its time is in no
    figure of `run_generate` (docs/strategies.md, "End to end")."""
    if all(prefill_meta.get(k) == decode_meta.get(k) for k in KV_SAME_PLACE):
        return "in place"
    return "not simulated"


def stage_programs(hw: HardwareConfig, model: str, *, wafers: int, phase: str = "prefill",
                   **kw) -> list:
    """The programs of a multi-wafer pipeline: the layers split evenly over `wafers` wafers
    (the first ones take one more when they do not divide) when every slice fits, else as
    `layer_pipelined.stage_split` finds (the ends lighter); each wafer's slice mapped
    layer-pipelined (`map_layer_pipelined(..., stage=...)`): the first with the embedding, the
    last with the LM head, every wafer after the first starting by receiving the activations
    over its I/O (`io_bits_per_s`). `kw`: the run spec fields of `run_multi_wafer`."""
    from mapper.strategies.layer_pipelined import fewest_wafers, map_layer_pipelined, stage_split
    _positive("wafers", wafers)
    _one_of("phase", phase, PHASES)
    for name, default in (("attention", "auto"), ("chunks", 1), ("region_shape", 0)):
        v = kw.pop(name, default)
        if v != default:  # a wafer's slice takes what fits it: the option would not act
            raise ConfigError(f"{name}: got {v!r} with wafers {wafers}, must be {default!r}: "
                              "a wafer's slice of the model is mapped whole, in the region "
                              "shape and attention split that fit it")
    model_set = kw.pop("model_set", None)
    kw["precision"] = precision_of(kw.pop("dtype", "fp16"), kw.pop("weights_dtype", None),
                                   kw.pop("kv_dtype", None), kw.pop("accum_dtype", None))
    kw["dtype"] = kw["precision"].acts
    kw["sparse"] = sparse_of(kw.pop("sparsity", 0.0), kw.pop("sparse_format", "dense"),
                             kw.pop("sparsity_file", None))
    kw["sparsity"] = kw["sparse"].fraction
    cfg = load_model(model, model_set)
    kw["sparse"].check_layers(cfg.n_layers, cfg.name)
    if wafers > cfg.n_layers:
        raise ConfigError(f"wafers: got {wafers}, must be at most the model's {cfg.n_layers} layers")

    def mapped(split: list[int]) -> list:
        programs, first = [], 0
        for w, n in enumerate(split):
            programs.append(map_layer_pipelined(cfg, hw, phase=phase, stage=(
                first, n, w == 0, w == wafers - 1), **kw))
            first += n
        return programs

    try:  # the even split, each slice mapped once
        return mapped([split_evenly(cfg.n_layers, wafers, w) for w in range(wafers)])
    except MappingError as e:
        why = str(e).splitlines()[0]
    split = stage_split(cfg, hw, wafers, phase=phase, **kw)
    if split is None:  # refused before any simulation, with the numbers and what would fit
        fit = fewest_wafers(cfg, hw, wafers + 1, phase=phase, **kw)
        raise MappingError(f"{why}; over {wafers} wafers no split of the {cfg.n_layers} layers "
                           "fits" + (f": {fit} wafers would" if fit else
                                     ": no number of wafers would"))
    return mapped(split)


def run_multi_wafer(hw: HardwareConfig, model: str, *, wafers: int, engine: str = "auto",
                    phase: str = "prefill", **kw) -> dict:
    """Layers split over `wafers` wafers (layer-pipelined on each), joined by the system I/O
    (`stage_programs`).

    Each wafer is simulated on its own; a wafer after the first starts by receiving the
    activations over its I/O (`io_bits_per_s`). Latency is the sum of the wafers' times; with
    enough prompts or micro-batches in flight the pipeline delivers one batch per slowest wafer.
    """
    stages = [simulate(p, hw, engine=engine)
              for p in stage_programs(hw, model, wafers=wafers, phase=phase, **kw)]
    latency = sum(r.seconds for r in stages)
    slowest = max(r.seconds for r in stages)
    tokens = stages[0].tokens
    return {"wafers": wafers, "seconds": latency, "cycles": sum(r.cycles for r in stages),
            "tokens_per_s": tokens / latency, "pipelined_tokens_per_s": tokens / slowest,
            "flops": sum(r.flops for r in stages), "io_bytes": sum(r.io_bytes for r in stages),
            "stage_seconds": [r.seconds for r in stages], "stages": stages}
