"""The fast engine's window path against its event path, on the same program in one process.

Both paths run programs whose records overlap out of task order (the step path refuses them).
The case: one layer (`n_layers=1`) of Cerebras-GPT-1.3B's weight-streaming prefill of 128
tokens on wse2 (the top-row layout: the layer's weights stream in over the I/O beside its
compute), small enough for the event path's memory; `--quick`: tiny-llama's layer-sequential
prefill of 32 tokens in 4 chunks on mesh16. Figures per path: wall seconds (best of
`REPEATS`, after a warm-up run that compiles), task instances per second, the cycles (they
must be equal) and the window/event ratio of wall time. Peak memory is not compared here (the
window path's point; `bench_strategies` records the runs that only it can do)."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

REPEATS = 2
FULL = ("wse2", "cerebras-gpt-1.3b", "weight-streaming", {"prompt": 128},
        {"n_layers": 1})
QUICK = ("mesh16", "tiny-llama", "layer-sequential", {"prompt": 32, "chunks": 4}, None)


def time_path(program, hw, path: str, repeats: int = REPEATS) -> tuple[float, object]:
    """(best wall seconds of `repeats` runs on the fast engine's `path` after a warm-up run
    that compiles, the last result)."""
    from wse_sim.engine.fast import simulate_fast
    simulate_fast(program, hw, spans=False, progress=False, path=path)  # compiles
    best, res = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = simulate_fast(program, hw, spans=False, progress=False, path=path)
        best = min(best, time.perf_counter() - t0)
    return best, res


def main(argv=None) -> int:
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    args = parse_args(__doc__.splitlines()[0], argv)
    preset, model, strategy, spec, model_set = QUICK if args.quick else FULL
    hw = load_preset(preset)
    program = build_program(hw, model, phase="prefill", strategy=strategy, model_set=model_set,
                            layout="top-row", **spec)
    figures = {"case": f"{model} {strategy} prefill {spec}, {model_set or 'all layers'}, "
                       f"{preset}"}
    results = {}
    for path in ("event", "window"):
        wall, res = time_path(program, hw, path)
        results[path] = res
        figures[f"{path}_seconds"] = wall
        figures[f"{path}_instances"] = res.instances
        figures[f"{path}_instances_per_s"] = res.instances / wall
        figures[f"{path}_cycles"] = res.cycles
        figures[f"{path}_path_ran"] = res.fast_path
    figures["same_cycles"] = results["event"].cycles == results["window"].cycles
    figures["window_vs_event_wall"] = figures["window_seconds"] / figures["event_seconds"]
    emit("bench_window", figures, {"same_cycles": {"min": 1}}, args.json, machine_info())
    return 0 if figures["same_cycles"] else 1


if __name__ == "__main__":
    sys.exit(main())
