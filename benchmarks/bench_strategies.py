"""Scorecard of every whole-model strategy for Cerebras-GPT-1.3B and LLaMA3-8B on the wse2
preset (issue 7): simulated tokens/s, % of peak, communication share, SRAM per core, and the
host wall time of each simulation (fast engine, and which of its paths ran). Strategies that
do not fit are listed with the reason; each row runs in its own process, given up after
`--limit-s` seconds (default 1,800); `--only TEXT` runs the rows whose key contains TEXT.
`--quick` uses a 128 x 128 grid and Cerebras-GPT-111M instead."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args, timed_call  # noqa: E402

from wse_sim.experiment import STRATEGIES, build_program  # noqa: E402
from wse_sim.hardware import load_preset  # noqa: E402


def _row(model: str, phase: str, strategy: str, quick: bool) -> dict:
    """One row: the figures, or why it does not run (`runs`: False)."""
    from wse_sim.engine import fast_available, simulate
    hw = load_preset("wse2")
    if quick:
        hw = hw.with_overrides({"mesh_cols": 128, "mesh_rows": 128})
    engine = "fast" if fast_available() else "reference"
    try:
        program = build_program(hw, model, phase=phase, strategy=strategy, layout="top-row",
                                **PHASES[phase])
        t0 = time.perf_counter()
        r = simulate(program, hw, engine=engine)
        wall = time.perf_counter() - t0
    except (ValueError, NotImplementedError) as e:
        return {"runs": False, "why": str(e).splitlines()[0][:200]}
    s = r.summary()
    return {"runs": True, "tokens_per_s": s["tokens_per_s"], "peak_fraction": s["peak_fraction"],
            "comm_share": s["comm_cycles"] / max(1, s["cycles"]),
            "sram_bytes_per_core": s["sram_bytes_per_core"], "wall_seconds": wall,
            "cycles": r.cycles, "path": getattr(r, "fast_path", engine)}


PHASES = {"prefill": {"prompt": 128}, "decode": {"context": 1024}}


def main(argv=None) -> int:
    import argparse
    extra = argparse.ArgumentParser(add_help=False)
    extra.add_argument("--limit-s", type=int, default=1800,
                       help="a row's simulation is given up after this many seconds")
    extra.add_argument("--only", default="",
                       help="rows whose key contains this (e.g. 'prefill.weight-streaming')")
    args = more = parse_args(__doc__, argv, parents=(extra,))
    if more.limit_s <= 0:
        extra.error(f"--limit-s: got {more.limit_s}, must be a positive number of seconds")
    models = ("cerebras-gpt-111m",) if args.quick else ("cerebras-gpt-1.3b", "llama3-8b")
    rows = [(m, p, s) for m in models for p in PHASES for s in STRATEGIES
            if more.only in f"{m}.{p}.{s}"]
    if not rows:
        extra.error(f"--only: got {more.only!r}, which no row's key (<model>.<phase>.<strategy>, "
                    f"e.g. {models[0]}.prefill.weight-streaming) contains")
    figures, rejected = {}, {}
    for model, phase, strategy in rows:
        key = f"{model}.{phase}.{strategy}"
        row = timed_call(more.limit_s, _row, model, phase, strategy, args.quick)
        if not row.pop("runs"):
            rejected[key] = row["why"]
            continue
        for k, v in row.items():
            figures[f"{key}.{k}"] = v
    machine = None
    if rejected:
        machine = machine_info()
        machine["rejected"] = rejected
        for k, why in rejected.items():
            print(f"{k}: does not run: {why}", file=sys.stderr)
    emit("bench_strategies", figures, {}, args.json, machine)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
