"""A layer-pipelined prefill in chunks on the fast engine's step path against its event path,
on the same program in one process (session 14: the forward emitted in pipeline beats and the
embedding's region next to layer 0 put these pipelines on the step path;
docs/hardware-model.md, "Program order that follows time"). The case: Cerebras-GPT-1.3B's
prefill of 2,048 tokens on wse2 with 4 layers (`n_layers=4`), small enough for the event
path's memory; `--quick`: tiny-llama's prefill of 32 tokens in 8 chunks on mesh32. Figures per
path: wall seconds (best of `REPEATS`, after a warm-up run that compiles), tracemalloc's peak
host bytes over one run, the cycles (they must be equal), and the ratios step / event."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402
from bench_engine import peak_bytes  # noqa: E402
from bench_window import time_path  # noqa: E402

REPEATS = 2
FULL = ("wse2", "cerebras-gpt-1.3b", {"prompt": 2048}, {"n_layers": 4})
QUICK = ("mesh32", "tiny-llama", {"prompt": 32, "chunks": 8}, None)


def main(argv=None) -> int:
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    args = parse_args(__doc__.splitlines()[0], argv)
    preset, model, spec, model_set = QUICK if args.quick else FULL
    hw = load_preset(preset)
    program = build_program(hw, model, phase="prefill", strategy="layer-pipelined",
                            model_set=model_set, **spec)
    figures = {"case": f"{model} layer-pipelined prefill {spec}, {model_set or 'all layers'}, "
                       f"{preset}, {program.meta['chunks']} chunks"}
    results = {}
    for path in ("event", "step"):
        wall, res = time_path(program, hw, path, REPEATS)
        results[path] = res
        figures[f"{path}_seconds"] = wall
        figures[f"{path}_instances_per_s"] = res.instances / wall
        figures[f"{path}_peak_bytes"] = peak_bytes(program, hw, path)
        figures[f"{path}_cycles"] = res.cycles
        figures[f"{path}_path_ran"] = res.fast_path
    figures["instances"] = results["step"].instances
    figures["same_cycles"] = results["event"].cycles == results["step"].cycles
    figures["step_vs_event_wall"] = figures["step_seconds"] / figures["event_seconds"]
    figures["step_vs_event_peak_bytes"] = figures["step_peak_bytes"] / figures["event_peak_bytes"]
    emit("bench_pipeline", figures, {"same_cycles": {"min": 1}}, args.json, machine_info())
    return 0 if figures["same_cycles"] else 1


if __name__ == "__main__":
    sys.exit(main())
