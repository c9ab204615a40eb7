"""The backward's transposed products (`mapper.gemm_transposed`) against MeshGEMM on the wafer.

C = A^T B (`tn`, a weight gradient) and C = A B^T (`nt`, an activation gradient) on a P x P
region of wse2 (P = 720 in full mode, 128 with --quick) with 16 x 16 x 16 fp16 tiles per core
(m = k = n = 16 P), and MeshGEMM's C = A B of the same sizes as the baseline, each in a fresh
process (its own peak memory): the time to build the program, the time to simulate it (fast
engine), the fast-forwarded steps, the simulated cycles against MeshGEMM's (the accumulator's
shift cannot overlap the multiply), % of peak, and the contention-free estimate. Also, on
64 x 64 with 64 steps, the fast engine against the reference engine (same program).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

BUDGET_SECONDS = 60.0


def _one(kind: str, grid: int, queue) -> None:
    import resource

    from mapper.gemm import build_gemm
    from mapper.gemm_transposed import build_transposed
    from wse_sim.engine import fast
    from wse_sim.hardware import load_preset
    fast.warm_up()
    hw = load_preset("wse2")
    size = 16 * grid
    t0 = time.perf_counter()
    if kind == "meshgemm":
        program = build_gemm("meshgemm", hw, grid=grid, m=size, k=size, n=size, dtype="fp16")
    else:
        program = build_transposed(kind, hw, grid=grid, m=size, k=size, n=size, dtype="fp16")
    build = time.perf_counter() - t0
    res = fast.simulate_fast(program, hw, spans=False)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    est = {"estimate_cycles": program.meta["estimate_cycles"]} if kind != "meshgemm" else {}
    queue.put({"tasks": len(program.tasks), "build_seconds": build,
               "simulate_seconds": res.wall_seconds, "path": res.fast_path,
               "steps_skipped": res.loop_iterations_skipped, "cycles": res.cycles,
               "peak_fraction": res.peak_fraction, "peak_rss_bytes_per_core": rss / (grid * grid)}
              | est)


def run(kind: str, grid: int) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_one, args=(kind, grid, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        return {"failed_exit_code": proc.exitcode}
    return queue.get()


def fast_vs_reference() -> dict:
    from mapper.gemm_transposed import build_transposed
    from wse_sim.engine.fast import simulate_fast, warm_up
    from wse_sim.engine.reference import simulate_reference
    from wse_sim.hardware import load_preset
    warm_up()
    hw = load_preset("mesh64")
    p = build_transposed("tn", hw, grid=64, m=1024, k=1024, n=1024, dtype="fp16")
    t0 = time.perf_counter()
    f = simulate_fast(p, hw)
    tf = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = simulate_reference(p, hw)
    tr = time.perf_counter() - t0
    return {"ref_seconds_64": tr, "fast_seconds_64": tf, "ref_vs_fast_64": tr / tf,
            "same_cycles_64": f.cycles == r.cycles}


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    grid = 128 if args.quick else 720
    figures, targets = {"grid": grid}, {}
    for kind in ("meshgemm", "tn", "nt"):
        out = run(kind, grid)
        print(f"{kind}: {json.dumps(out)}", file=sys.stderr)
        for k, v in out.items():
            figures[f"{kind}_{k}"] = v
        if kind != "meshgemm" and "cycles" in out:
            targets[f"{kind}_simulate_seconds"] = {"max": BUDGET_SECONDS}
            figures[f"{kind}_cycles_vs_meshgemm"] = out["cycles"] / figures["meshgemm_cycles"]
    if not args.quick:
        figures |= fast_vs_reference()
    emit("bench_gemm_transposed", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
