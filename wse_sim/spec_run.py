"""Running one run spec (`wse_sim.spec.RunSpec`, e.g. from `wse-sim run --save-spec`): the
prefill + decode of `generate`, the multi-wafer pipeline of `wafers`, the search of strategy
`auto`, or one mapping simulated."""

from __future__ import annotations

from wse_sim.engine import simulate
from wse_sim.experiment import build_program, run_generate, run_multi_wafer
from wse_sim.hardware import ConfigError, load_preset
from wse_sim.search_mappings import search_mapping
from wse_sim.spec import RunSpec


def simulate_spec(spec: RunSpec):
    """Run one run spec (`wse_sim.spec.RunSpec`, e.g. `wse_sim.spec.load_spec(FILE)`): checks
    that every given field applies, then maps and simulates it. Returns a SimResult; a spec
    with `generate` gives run_generate's dict, with `wafers` > 1 run_multi_wafer's, with
    strategy auto the best mapping search_mapping found (its SimResult)."""
    if not isinstance(spec, RunSpec):
        raise TypeError(f"simulate_spec: spec got {type(spec).__name__}, must be a RunSpec")
    spec.check_applies()
    hw = load_preset(spec.preset, spec.overrides or None)
    values = spec.values()
    model = values.pop("model")
    values = {k: v for k, v in values.items() if v is not None and v != {}}
    generate, wafers = values.pop("generate", None), values.pop("wafers", 1)
    prefill_grid, decode_grid = values.pop("prefill_grid", None), values.pop("decode_grid", None)
    if generate:
        return run_generate(hw, model, generate=generate, engine=spec.engine,
                            prefill_grid=prefill_grid, decode_grid=decode_grid,
                            **{k: v for k, v in values.items() if k not in ("phase", "context")})
    if wafers > 1:
        return run_multi_wafer(hw, model, wafers=wafers, engine=spec.engine,
                               **{k: v for k, v in values.items() if k != "strategy"})
    if values.get("strategy") == "auto":
        values.pop("strategy")
        for k in ("chunks", "micro_batches", "region_shape"):
            values.pop(k, None)  # searched
        grid = values.pop("grid", None)
        _, best = search_mapping(hw, model, engine=spec.engine,
                                 grids=(grid,) if grid else None, **values)
        if best is None:
            raise ConfigError(f"strategy auto: no strategy fits {model} on {spec.preset}")
        return best
    return simulate(build_program(hw, model, **values), hw, engine=spec.engine)
