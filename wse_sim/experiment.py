"""The front door for one run: hardware + workload + strategy -> Program -> SimResult."""

from __future__ import annotations

from mapper.strategies import NAMES as STRATEGY_NAMES
from mapper.strategies import strategies
from workloads.models import load_model
from wse_sim.engine import simulate
from wse_sim.hardware import DTYPES, ConfigError, HardwareConfig, load_preset

STRATEGIES = STRATEGY_NAMES
PHASES = ("prefill", "decode", "train")


def _positive(name: str, value, allow_none: bool = False):
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name}: got {value!r}, must be a positive integer")


def build_program(hw: HardwareConfig, model: str, *, phase: str = "prefill",
                  strategy: str = "layer-pipelined", batch: int = 1, prompt: int = 128,
                  context: int = 128, dtype: str = "fp16", grid: int | None = None,
                  sparsity: float = 0.0):
    """Validate the run's parameters and map the model; returns the Program."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"strategy: got {strategy!r}, must be one of {', '.join(STRATEGIES)}")
    if phase not in PHASES:
        raise ConfigError(f"phase: got {phase!r}, must be one of {', '.join(PHASES)}")
    if dtype not in DTYPES:
        raise ConfigError(f"dtype: got {dtype!r}, must be one of {', '.join(DTYPES)}")
    for name, v in (("batch", batch), ("prompt", prompt), ("context", context)):
        _positive(name, v)
    _positive("grid", grid, allow_none=True)
    if isinstance(sparsity, bool) or not isinstance(sparsity, int | float) or not 0 <= sparsity < 1:
        raise ConfigError(f"sparsity: got {sparsity!r}, must be a number in [0, 1)")
    cfg = load_model(model)
    return strategies()[strategy](cfg, hw, phase=phase, batch=batch, prompt=prompt,
                                context=context, dtype=dtype, grid=grid, sparsity=sparsity)


def run_model(preset: str | HardwareConfig, model: str, *, engine: str = "auto",
              overrides: dict | None = None, **kw):
    """Map `model` with the chosen strategy onto the preset and simulate it (Python API)."""
    hw = preset if isinstance(preset, HardwareConfig) else load_preset(preset, overrides)
    program = build_program(hw, model, **kw)
    return simulate(program, hw, engine=engine)
