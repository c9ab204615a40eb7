"""bench_serve --real: the latency-throughput curves of LLaMA3-8B (one wse3) and of the MoE
qwen3-30b-a3b (two wse3 wafers), and the wall time of 10,000 requests (bench_serve's doc)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from _common import emit, machine_info

RESULTS = Path(__file__).resolve().parent / "results"
COMMON = ["--preset", "wse3", "--prompt-dist", "uniform:8-32", "--output-dist", "uniform:8-32",
          "--slo-ttft-ms", "100", "--slo-tpot-ms", "5", "--seed", "0", "--engine", "fast"]
MODELS = {  # tag: (serve options, arrival rates in requests/s, modes)
    "qwen3": (["--model", "qwen3-30b-a3b", "--wafers", "2", "--prefill", "per-token",
               "--max-batch", "4"], (5, 10, 20, 40, 80), ("time-shared", "disaggregated")),
    "llama3": (["--model", "llama3-8b", "--max-batch", "32"], (25, 50, 100, 200, 400),
               ("time-shared",)),
}
N_CURVE, N_WALL = 300, 10_000
TAG = {"time-shared": "ts", "disaggregated": "dis"}


def _log(text: str) -> None:
    print(text, flush=True)


def curves(serve, row, cache_dir: Path, quick: bool) -> tuple[list, dict]:
    rows, walls = [], {}
    for name, (opts, rates, modes) in MODELS.items():
        cache = str(cache_dir / f"{name}_costs.json")
        for mode in modes:
            for rate in rates[:2] if quick else rates:
                t0 = time.perf_counter()
                s = serve(["serve"] + COMMON + opts + [
                    "--arrivals", f"poisson:{rate}", "--requests", str(N_CURVE), "--mode", mode,
                    "--cost-cache", cache])
                wall = time.perf_counter() - t0
                r = row(f"{name}_{TAG[mode]}", rate, s) | {
                    "wall_s": wall, "shapes_simulated": s["cost_shapes_simulated"],
                    "cost_wall_s": s["cost_wall_s"], "scheduler_wall_s": s["wall_seconds"]}
                rows.append(r)
                walls[(name, mode, rate)] = s["wall_seconds"]
                _log(json.dumps(r))
    return rows, walls


def main_real(args, serve, row, plot) -> None:
    cache_dir = RESULTS / "serve_real_costs"  # kept: a rerun reuses the simulated shapes
    cache_dir.mkdir(parents=True, exist_ok=True)
    rows, walls = curves(serve, row, cache_dir, args.quick)
    figures = {}
    for r in rows:
        for k, v in r.items():
            if k not in ("mode", "rate"):
                figures[f"{r['mode']}_r{r['rate']}_{k}"] = v
    opts, rates, _ = MODELS["qwen3"]
    top = rates[1] if args.quick else rates[-1]
    n_wall = 1000 if args.quick else N_WALL
    s = serve(["serve"] + COMMON + opts + [
        "--arrivals", f"poisson:{top}", "--requests", str(n_wall),
        "--cost-cache", str(cache_dir / "qwen3_costs.json")])
    figures["qwen3_wall_10k_warm_s"] = s["wall_seconds"]
    figures["qwen3_wall_10k_new_shapes"] = s["cost_shapes_simulated"]
    figures["qwen3_wall_10k_over_300"] = s["wall_seconds"] / walls[("qwen3", "time-shared",
                                                                    top)]
    qwen = [r for r in rows if r["mode"] == "qwen3_ts"]
    figures["qwen3_shapes"] = sum(r["shapes_simulated"] for r in rows
                                  if r["mode"].startswith("qwen3"))
    figures["qwen3_cost_wall_s"] = sum(r["cost_wall_s"] for r in rows
                                       if r["mode"].startswith("qwen3"))
    llama = [r for r in rows if r["mode"] == "llama3_ts"]
    figures["qwen3_vs_llama3_saturated_output_tokens"] = (
        qwen[-1]["output_tokens_per_s"] / llama[-1]["output_tokens_per_s"])
    machine = machine_info()
    if not args.quick:
        out = {"benchmark": "bench_serve_real", "machine": machine, "figures": figures,
               "targets": {}, "curve": rows, "options": {"common": COMMON, "models": {
                   k: v[0] for k, v in MODELS.items()}}}
        (RESULTS / "bench_serve_real.json").write_text(json.dumps(out, indent=1) + "\n")
        plot(rows, RESULTS / "bench_serve_real.png",
             modes=(("llama3_ts", "LLaMA3-8B, 1 wse3, time-shared"),
                    ("qwen3_ts", "qwen3-30b-a3b, 2 wse3, time-shared"),
                    ("qwen3_dis", "qwen3-30b-a3b, 2 + 2 wse3, disaggregated")),
             title="wse3: continuous batching, prompts and outputs 8-32 tokens")
    emit("bench_serve_real", figures, {}, args.json, machine)
