"""Executors of a Program: `reference` (SimPy, readable) and `fast` (numba, full wafer)."""

from __future__ import annotations

ENGINES = ("auto", "reference", "fast")
AUTO_REFERENCE_MAX_CORES = 32 * 32  # auto picks the reference engine up to this mesh size


def simulate(program, hw, engine: str = "auto", functional: dict | None = None):
    """Run `program` on `hw` and return a SimResult. `auto` prefers the fast engine when it is
    available and the mesh is larger than 32 x 32; the reference engine otherwise.

    `functional`: the input buffers of a functional run (e.g. `mapper.gemm.gemm_inputs`); the
    program's DataOps then also run on real tensors through the kernels, and the final buffers
    are in `result.buffers` (the timing is the same either way)."""
    from wse_sim.hardware import HardwareConfig
    from wse_sim.program import Program
    if not isinstance(program, Program):
        raise TypeError(f"simulate: program got {type(program).__name__}, must be a Program")
    if not isinstance(hw, HardwareConfig):
        raise TypeError(f"simulate: hw got {type(hw).__name__}, must be a HardwareConfig "
                        "(wse_sim.hardware.load_preset)")
    result = _timed(program, hw, engine)
    if functional is not None:
        from wse_sim.functional import run_functional
        result.buffers = run_functional(program, hw, functional)
    return result


def _timed(program, hw, engine: str):
    if engine not in ENGINES:
        from wse_sim.hardware import ConfigError
        raise ConfigError(f"engine: got {engine!r}, must be one of {', '.join(ENGINES)}")
    if engine == "auto":
        engine = "reference" if hw.cores <= AUTO_REFERENCE_MAX_CORES or not fast_available() else "fast"
    if engine == "reference":
        from wse_sim.engine.reference import simulate_reference
        return simulate_reference(program, hw)
    if not fast_available():
        raise NotImplementedError("engine 'fast': wse_sim.engine.fast is not built yet (issue 4); "
                                  "use --engine reference")
    from wse_sim.engine.fast import simulate_fast
    return simulate_fast(program, hw)


def fast_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("wse_sim.engine.fast") is not None
