"""Which distributed GEMM wins on the wafer, by grid and size (issue 22): SUMMA, Cannon and
MeshGEMM on a P x P region of wse2, C = A.B with m = k = n = N, fp16, for P in 360, 540, 720
and N in 2,048, 4,096, 8,192 (`--quick`: P 64 and 128, N 512 and 1,024).

`--flow-control` adds Cannon and MeshGEMM with flow-controlled shifts (`cannon+flow`,
`meshgemm+flow`). Per point and algorithm: simulated cycles, cycles per step (cycles / P), the ratio to
MeshGEMM's cycles, and the host time of building and simulating (fast engine, each run in a
fresh process). The ranking is by cycles. Every finished point is appended to
`--out` (JSON lines) at once, so an interrupted run keeps what it did. WaferLLM (OSDI 2025)
measured SUMMA and Cannon 2-3x slower than MeshGEMM on a real WSE-2 (docs/gemm.md,
"Ranking"); no constant here is fitted to that.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info  # noqa: E402

ALGOS = ("summa", "cannon", "meshgemm")
FLOW = ("cannon+flow", "meshgemm+flow")


def _one(variant: str, grid: int, size: int, queue) -> None:
    """Build and simulate one algorithm at one point (in a child process)."""
    from mapper.gemm import build_gemm
    from wse_sim.engine import fast
    from wse_sim.hardware import load_preset
    fast.warm_up()
    hw = load_preset("wse2")
    t0 = time.perf_counter()
    algo, _, flow = variant.partition("+")
    program = build_gemm(algo, hw, grid=grid, m=size, k=size, n=size, dtype="fp16",
                         flow_control=bool(flow))
    build = time.perf_counter() - t0
    res = fast.simulate_fast(program, hw, spans=False, progress=False)
    queue.put({"cycles": res.cycles, "build_seconds": build,
               "simulate_seconds": res.wall_seconds, "peak_fraction": res.peak_fraction,
               "loop_iterations_skipped": res.loop_iterations_skipped})


def run(algo: str, grid: int, size: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(algo, grid, size, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"failed_exit_code": proc.exitcode}
    return queue.get()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--out", default=None, help="append every finished point (JSON lines)")
    parser.add_argument("--flow-control", action="store_true",
                        help="also Cannon and MeshGEMM with flow-controlled shifts")
    args = parser.parse_args(argv)
    grids, sizes = ((64, 128), (512, 1024)) if args.quick else ((360, 540, 720),
                                                                (2048, 4096, 8192))
    done = {}
    if args.out and os.path.exists(args.out):
        with open(args.out) as f:
            for line in f:
                row = json.loads(line)
                done[row["algo"], row["grid"], row["size"]] = row
    figures = {}
    for grid in grids:
        for size in sizes:
            point = {}
            for algo in ALGOS + (FLOW if args.flow_control else ()):
                row = done.get((algo, grid, size))
                if row is None:
                    row = {"algo": algo, "grid": grid, "size": size} | run(algo, grid, size)
                    if args.out:
                        with open(args.out, "a") as f:
                            f.write(json.dumps(row) + "\n")
                print(json.dumps(row), file=sys.stderr)
                point[algo] = row
            base = point["meshgemm"].get("cycles")
            for algo, row in point.items():
                if "cycles" not in row:
                    continue
                key = f"P{grid}.N{size}.{algo}"
                figures[f"{key}.cycles"] = row["cycles"]
                figures[f"{key}.cycles_per_step"] = round(row["cycles"] / grid, 1)
                figures[f"{key}.vs_meshgemm"] = round(row["cycles"] / base, 3) if base else None
                figures[f"{key}.wall_seconds"] = round(row["build_seconds"]
                                                       + row["simulate_seconds"], 2)
            ranked = sorted((r["cycles"], a) for a, r in point.items() if "cycles" in r)
            figures[f"P{grid}.N{size}.ranking"] = " < ".join(a for _, a in ranked)
    emit("bench_gemm_ranking", figures, {}, args.json, machine_info())


if __name__ == "__main__":
    main()
