"""The scorecard of issue 18: LLaMA3-8B and Cerebras-GPT-1.3B on wse2 and wse3, a prefill of
4,096 tokens, a decode step at a 4,096-token context and a training step at sequence 2,048
(Cerebras-GPT-1.3B: 2,048 and 2,047, its longest),
under every strategy (and, for the prefills and training steps of layer-sequential and
weight-streaming, the 2-D layout): simulated tokens/s, % of peak (every executed FLOP, and
since session 19 the model's alone: `useful_peak_fraction`, without the 2-D layout's padded
tiles and recomputation), the communication share of the critical path, the busy
core fraction and SRAM per core, or the one line that says which resource does not fit and by
how much, or that its simulation did not finish within `--limit-s` (default 600 s). `--quick`:
decode only; `--presets wse2` one preset, `--phases train` one phase, `--only TEXT` the rows
whose key contains TEXT, `--grid-2d N` the 2-D rows on an N x N grid (default the largest
square: wse3's 755 is odd, and on an odd interleaved ring some GEMM steps never repeat, so
their loops run every step; docs/strategies.md). The full card runs whole-model prefills
(about 6 minutes each on 2 shared CPUs)."""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args, timed_call  # noqa: E402

from mapper.strategies.choose_layout import two_d_maps  # noqa: E402

MODELS = ("cerebras-gpt-1.3b", "llama3-8b")
PRESETS = ("wse2", "wse3")
PHASES = {"prefill": {"prompt": 4096}, "decode": {"context": 4096},
          "train": {"prompt": 2048}}
ROWS = (("layer-pipelined", "top-row"), ("layer-pipelined", "2d"),
        ("layer-sequential", "top-row"), ("layer-sequential", "2d"),
        ("weight-streaming", "top-row"), ("weight-streaming", "2d"))


def _row(preset: str, model: str, phase: str, strategy: str, layout: str,
         grid: int | None = None) -> dict:
    from workloads.models import load_model
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    hw = load_preset(preset)
    t0 = time.perf_counter()
    # the sizes, or the model's longest (Cerebras-GPT: 2,048 positions)
    most = load_model(model).max_context
    size = {k: min(v, most - (k == "context")) for k, v in PHASES[phase].items()}
    try:
        program = build_program(hw, model, phase=phase, strategy=strategy, layout=layout,
                                grid=grid if layout == "2d" else None, **size)
        r = simulate(program, hw, engine="fast")
    except (ValueError, NotImplementedError) as e:
        return {"runs": False, "why": str(e).splitlines()[0][:300]}
    s = r.summary()
    return {"runs": True, "tokens_per_s": s["tokens_per_s"], "peak_fraction": s["peak_fraction"],
            "useful_peak_fraction": s["useful_peak_fraction"],
            "comm_share": s["comm_cycles"] / max(1, s["cycles"]),
            "busy_core_fraction": s["busy_core_fraction"],
            "sram_bytes_per_core": s["sram_bytes_per_core"],
            "region": f"{program.meta['region_cols']} x {program.meta['region_rows']}",
            "wall_s": round(time.perf_counter() - t0, 1)}


def main(argv=None) -> None:
    import argparse
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--presets", default=",".join(PRESETS))
    extra.add_argument("--limit-s", type=int, default=600)
    extra.add_argument("--phases", default=",".join(PHASES),
                       help="the phases' rows to run (default all)")
    extra.add_argument("--only", default="", help="rows whose key contains this")
    extra.add_argument("--grid-2d", type=int, default=None,
                       help="the 2-D rows' grid side (default the largest square)")
    args = more = parse_args(__doc__.splitlines()[0], argv, parents=(extra,))
    if more.limit_s <= 0:
        extra.error(f"--limit-s: got {more.limit_s}, must be a positive number of seconds")
    if more.grid_2d is not None and more.grid_2d < 2:
        extra.error(f"--grid-2d: got {more.grid_2d}, must be at least 2")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    figures: dict = {}
    phases = ("decode",) if args.quick else tuple(more.phases.split(","))
    for preset in more.presets.split(","):
        for model in MODELS:
            for phase in phases:
                for strategy, layout in ROWS:
                    if layout == "2d" and not two_d_maps(phase, strategy):
                        continue  # prefills and training steps (layer-pipelined: training)
                    key = f"{preset}.{model}.{phase}.{strategy}" + \
                        (".2d" if layout == "2d" else "")
                    if more.only not in key:
                        continue
                    row = timed_call(more.limit_s, _row, preset, model, phase, strategy, layout,
                                     more.grid_2d)
                    for k, v in row.items():
                        figures[f"{key}.{k}"] = v
                    print(json.dumps({k: v for k, v in figures.items()
                                      if k.startswith(key + ".")}), file=sys.stderr, flush=True)
    emit("bench_scorecard", figures, {}, args.json, machine_info())


if __name__ == "__main__":
    main()
