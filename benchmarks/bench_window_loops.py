"""Loops fast-forwarded on the fast engine's window path, against the same path without the
fast-forward, on the same programs in one process.

The programs are chunked top-row prefills: their chunks pipeline through the layers on the
same cores, so the step path refuses them and the window path runs them; their layers 2 ..
L - 1 are one loop (`wse_sim/engine/fast_window_loops.py`). Full: Cerebras-GPT-1.3B's
weight-streaming prefill of 128 tokens (64 chunks) on a 128 x 128 grid of wse2, with 8, 16 and
24 (all) layers; the baseline (no fast-forward) at 24. `--quick`: tiny-llama's
layer-sequential prefill of 64 tokens in 4 chunks on mesh32, 8, 16 and 32 layers. Figures:
wall seconds per layer count (one run each, after a warm-up run on the smallest), the
iterations skipped, the cycles (equal with and without the fast-forward), the speed-up at
the most layers and the log-log slope of wall time against layers."""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

FULL = ("wse2", "cerebras-gpt-1.3b", "weight-streaming", {"prompt": 128, "grid": 128},
        (8, 16, 24))
QUICK = ("mesh32", "tiny-llama", "layer-sequential", {"prompt": 64, "chunks": 4}, (8, 16, 32))


def _run(program, hw, fast_forward: bool) -> tuple[float, object]:
    from wse_sim.engine.fast import simulate_fast
    t0 = time.perf_counter()
    res = simulate_fast(program, hw, spans=False, progress=False, path="window",
                        fast_forward=fast_forward)
    return time.perf_counter() - t0, res


def main(argv=None) -> int:
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    args = parse_args(__doc__.splitlines()[0], argv)
    preset, model, strategy, spec, layers = QUICK if args.quick else FULL
    hw = load_preset(preset)

    def program(n: int):
        return build_program(hw, model, phase="prefill", strategy=strategy, layout="top-row",
                             model_set={"n_layers": n}, **spec)

    figures: dict = {"case": f"{model} {strategy} prefill {spec}, {preset}"}
    _run(program(layers[0]), hw, True)  # compiles
    walls = []
    for n in layers:
        wall, res = _run(program(n), hw, True)
        walls.append(wall)
        figures[f"layers_{n}_seconds"] = wall
        figures[f"layers_{n}_skipped"] = res.loop_iterations_skipped
        figures[f"layers_{n}_cycles"] = res.cycles
    base_wall, base = _run(program(layers[-1]), hw, False)
    figures[f"layers_{layers[-1]}_without_fast_forward_seconds"] = base_wall
    figures["same_cycles"] = base.cycles == figures[f"layers_{layers[-1]}_cycles"]
    figures["speedup"] = base_wall / walls[-1]
    figures["layers_slope"] = (math.log(walls[-1] / walls[0])
                               / math.log(layers[-1] / layers[0]))
    emit("bench_window_loops", figures, {"same_cycles": {"min": 1}}, args.json,
         machine_info())
    return 0 if figures["same_cycles"] else 1


if __name__ == "__main__":
    sys.exit(main())
