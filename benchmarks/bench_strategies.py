"""Scorecard of every whole-model strategy for Cerebras-GPT-1.3B and LLaMA3-8B on the wse2
preset (issue 7): simulated tokens/s, % of peak, communication share, SRAM per core, and the
host wall time of each simulation (fast engine). Strategies that do not fit are listed with
the reason. `--quick` uses a 128 x 128 grid and Cerebras-GPT-111M instead."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, parse_args  # noqa: E402

from wse_sim.engine import fast_available  # noqa: E402
from wse_sim.experiment import STRATEGIES, build_program  # noqa: E402
from wse_sim.hardware import load_preset  # noqa: E402


def main(argv=None) -> int:
    args = parse_args(__doc__, argv)
    engine = "fast" if fast_available() else "reference"
    hw = load_preset("wse2")
    if args.quick:
        hw = hw.with_overrides({"mesh_cols": 128, "mesh_rows": 128})
        models = ("cerebras-gpt-111m",)
    else:
        models = ("cerebras-gpt-1.3b", "llama3-8b")
    phases = {"prefill": {"prompt": 128}, "decode": {"context": 1024}}
    figures, rejected = {}, {}
    from wse_sim.engine import simulate
    for model in models:
        for phase, kw in phases.items():
            for strategy in STRATEGIES:
                key = f"{model}.{phase}.{strategy}"
                try:
                    program = build_program(hw, model, phase=phase, strategy=strategy, **kw)
                    t0 = time.perf_counter()
                    r = simulate(program, hw, engine=engine)
                    wall = time.perf_counter() - t0
                except (ValueError, NotImplementedError) as e:
                    rejected[key] = str(e).splitlines()[0][:200]
                    continue
                s = r.summary()
                figures[f"{key}.tokens_per_s"] = s["tokens_per_s"]
                figures[f"{key}.peak_fraction"] = s["peak_fraction"]
                figures[f"{key}.comm_share"] = s["comm_cycles"] / max(1, s["cycles"])
                figures[f"{key}.sram_bytes_per_core"] = s["sram_bytes_per_core"]
                figures[f"{key}.wall_seconds"] = wall
    machine = None
    if rejected:
        from _common import machine_info
        machine = machine_info()
        machine["rejected"] = rejected
        for k, why in rejected.items():
            print(f"{k}: does not run: {why}", file=sys.stderr)
    emit("bench_strategies", figures, {}, args.json, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
