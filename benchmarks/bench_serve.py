"""Serving (issue 21): the latency-throughput curve of continuous batching, and how long the
simulation of 10,000 requests takes.

Model `tiny` on preset `mesh16` (reference engine), prompts uniform:8-64, outputs
uniform:8-56 tokens, max batch 32, power-of-two buckets, seed 0. For each arrival rate and
mode (`ts`: time-shared, `ts4`: time-shared with up to 4 prompts per prefill step, `dis`:
disaggregated on two mesh16 regions):
- `<mode>_r<rate>_output_tokens_per_s`, `..._requests_per_s`: achieved throughput;
- `..._ttft_p50_ms`, `..._ttft_p99_ms`, `..._tpot_p50_ms`, `..._tpot_p99_ms`: latency;
- `..._goodput_requests_per_s`: served requests per second meeting TTFT <= 1 ms and
  TPOT <= 0.1 ms.
Wall time of 10,000 requests at the highest rate, time-shared:
- `wall_10k_cold_s`: from an empty cost cache (every shape mapped and simulated);
- `wall_10k_warm_s`: the same run with the cost cache filled (the scheduler alone);
- `shapes_10k`: distinct shapes simulated.
Writes benchmarks/results/bench_serve.json (with the curve as rows) and bench_serve.png.

`--real` (tens of minutes on 2 cores: run it in the background): the same curve for two real
models on wse3, prompts and outputs uniform:8-32, 300 requests per rate, seed 0, fast engine:
LLaMA3-8B on one wafer (max batch 32) and the MoE qwen3-30b-a3b over 2 wafers
(`--wafers 2`, `--prefill per-token`: the multi-wafer mapping of a prefill holds 4 tokens at
most; max batch 4, the largest decode batch that fits at these contexts), both modes;
`<model>_<mode>_r<rate>_...` as above, plus `qwen3_wall_10k_warm_s` (10,000 requests at the top
rate, costs from the curve's cache), `qwen3_shapes` and `qwen3_cost_wall_s` (every distinct
shape mapped and simulated once), and the ratios `qwen3_vs_llama3_saturated_output_tokens` (the
top rate's output tokens/s, time-shared) and `qwen3_wall_10k_over_300` (scheduler wall time of
10,000 requests over that of 300, warm). Writes bench_serve_real.json/.txt/.png.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
RATES = (1000, 2000, 5000, 10000, 15000, 20000, 30000, 50000)
BASE = ["serve", "--preset", "mesh16", "--model", "tiny", "--engine", "reference",
        "--prompt-dist", "uniform:8-64", "--output-dist", "uniform:8-56", "--max-batch", "32",
        "--slo-ttft-ms", "1", "--slo-tpot-ms", "0.1", "--seed", "0"]


def _serve(argv: list) -> dict:
    from wse_sim.cli.main import build_parser
    from wse_sim.cli.serve import serve
    return serve(build_parser().parse_args(argv))[1]


def _row(mode: str, rate: int, s: dict) -> dict:
    return {"mode": mode, "rate": rate, "output_tokens_per_s": s["output_tokens_per_s"],
            "requests_per_s": s["requests_per_s"],
            "ttft_p50_ms": s["ttft_s"]["p50"] * 1e3, "ttft_p99_ms": s["ttft_s"]["p99"] * 1e3,
            "tpot_p50_ms": s["tpot_s"]["p50"] * 1e3, "tpot_p99_ms": s["tpot_s"]["p99"] * 1e3,
            "goodput_requests_per_s": s["goodput_requests_per_s"], "refused": s["refused"]}


def curve(n: int, cache: str) -> list:
    rows = []
    for mode, tag, k in (("time-shared", "ts", 1), ("time-shared", "ts4", 4),
                         ("disaggregated", "dis", 1)):
        for rate in RATES:
            s = _serve(BASE + ["--arrivals", f"poisson:{rate}", "--requests", str(n),
                               "--mode", mode, "--max-prefill-batch", str(k),
                               "--cost-cache", cache])
            rows.append(_row(tag, rate, s))
    return rows


MODES = (("ts", "time-shared"), ("ts4", "time-shared, 4 prompts/prefill"),
         ("dis", "disaggregated"))


def plot(rows: list, path: Path, modes=MODES, title="tiny on mesh16: continuous batching"
         ) -> None:
    from wse_sim.report.plots import new_figure, save, style
    with style():
        fig = new_figure(7.0, 3.2)
        thr, lat = fig.subplots(1, 2)
        for tag, label in modes:
            r = [x for x in rows if x["mode"] == tag]
            thr.plot([x["rate"] for x in r], [x["requests_per_s"] for x in r], "o-", label=label)
            lat.plot([x["requests_per_s"] for x in r], [x["ttft_p99_ms"] for x in r], "o-",
                     label=f"{label}: TTFT p99")
            lat.plot([x["requests_per_s"] for x in r], [x["tpot_p99_ms"] for x in r], "s--",
                     label=f"{label}: TPOT p99")
        thr.set_xlabel("offered (requests/s)")
        thr.set_ylabel("served (requests/s)")
        thr.legend()
        lat.set_xlabel("served (requests/s)")
        lat.set_ylabel("ms")
        lat.set_yscale("log")
        lat.legend(fontsize=6)
        fig.suptitle(title)
        save(fig, path.parent, path.stem, ("png",))


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--real" in argv:
        from _serve_real import main_real
        argv.remove("--real")
        main_real(parse_args(__doc__.splitlines()[0], argv), _serve, _row, plot)
        return
    args = parse_args(__doc__.splitlines()[0], argv)
    n_curve = 300 if args.quick else 1000
    n_wall = 2000 if args.quick else 10000
    figures = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = curve(n_curve, str(Path(tmp) / "curve.json"))
        for r in rows:
            for k, v in r.items():
                if k not in ("mode", "rate"):
                    figures[f"{r['mode']}_r{r['rate']}_{k}"] = v
        wall_argv = BASE + ["--arrivals", f"poisson:{RATES[-1]}", "--requests", str(n_wall),
                            "--cost-cache", str(Path(tmp) / "wall.json")]
        t0 = time.perf_counter()
        s = _serve(wall_argv)
        figures[f"wall_{n_wall // 1000}k_cold_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        _serve(wall_argv)
        figures[f"wall_{n_wall // 1000}k_warm_s"] = time.perf_counter() - t0
        figures[f"shapes_{n_wall // 1000}k"] = s["cost_shapes_simulated"]
    targets = {f"wall_{n_wall // 1000}k_cold_s": {"max": 180.0}}
    machine = machine_info()
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "bench_serve.json").write_text(json.dumps(
            {"benchmark": "bench_serve", "machine": machine, "figures": figures,
             "targets": targets, "curve": rows}, indent=1) + "\n")
        plot(rows, RESULTS / "bench_serve.png")
    emit("bench_serve", figures, targets, args.json, machine)


if __name__ == "__main__":
    main()
