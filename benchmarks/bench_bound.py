"""The search's lower bound (`mapper.search_bound.cycles_lower_bound`) against the per-core loop
it replaced (`tests/bound_per_core.py`) and against simulating the same program, in one
process: a bound is worth computing only where it costs a small part of the simulation it may
save. Programs: Cerebras-GPT-111M prefills of 64 tokens on 128 x 128 cores of wse2 with
layer-sequential, in the 2-D layout (37,501 records, 634 followed cores: the per-core loop
took longer than the simulation) and in the top-row layout (a few followed cores: numpy's
per-call cost shows). `--quick`: 2 layers. Every figure is wall seconds (best of 2), the
bounds checked equal."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))

from _common import emit, parse_args  # noqa: E402


def _best(fn, repeats: int = 2) -> tuple[float, object]:
    out, best = None, float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    from bound_per_core import per_core_bound

    from mapper.search_bound import cycles_lower_bound, tracked_cores
    from wse_sim.engine.fast import simulate_fast
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    hw = load_preset("wse2")
    layers = {"n_layers": 2} if args.quick else None
    figures: dict = {"case": "cerebras-gpt-111m layer-sequential prefill, 64 tokens, 128 x 128 "
                             f"of wse2{', 2 layers' if layers else ''}"}
    for layout in ("2d", "top-row"):
        program = build_program(hw, "cerebras-gpt-111m", prompt=64, grid=128, model_set=layers,
                                strategy="layer-sequential", layout=layout)
        cores = tracked_cores(program)
        new_s, new = _best(lambda p=program, c=cores: cycles_lower_bound(p, hw, c))
        old_s, old = _best(lambda p=program, c=cores: per_core_bound(p, hw, c))
        sim_s, res = _best(lambda p=program: simulate_fast(p, hw, progress=False), 1)
        tag = layout.replace("-", "_")
        figures |= {f"{tag}.records": len(program.tasks), f"{tag}.followed_cores": len(cores),
                    f"{tag}.bound_cycles": new, f"{tag}.bounds_equal": new == old,
                    f"{tag}.simulated_cycles": res.cycles,
                    f"{tag}.bound_s": round(new_s, 3), f"{tag}.per_core_bound_s": round(old_s, 3),
                    f"{tag}.per_core_over_bound": round(old_s / new_s, 2),
                    f"{tag}.simulate_s": round(sim_s, 3),
                    f"{tag}.bound_over_simulate": round(new_s / sim_s, 3)}
    targets = {"2d.bounds_equal": {"min": 1}, "top_row.bounds_equal": {"min": 1}}
    emit("bench_bound", figures, targets, args.json)


if __name__ == "__main__":
    main()
