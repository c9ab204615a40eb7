"""Benchmark of the distributed GEMM / GEMV programs (mapper.gemm) on the simulator.

Figures, per grid size: simulated cycles and % of peak of every GEMM algorithm (1d, SUMMA,
Cannon, MeshGEMM) on a compute-bound problem (16 x 16 x 16 fp16 tiles per core) and on a
communication-bound one (2 x 2 x 2 tiles, pre-aligned), the two GEMV reduces on a short and a
long vector, the closed forms' error (target 0 cycles where a closed form is exact), the host
wall time of the reference engine (and of the fast engine when it is available, with their
cycle counts compared), and the overhead of a functional run (real tensors through the
kernels) relative to a timing-only run of the same program.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import best_of, emit, parse_args  # noqa: E402

from mapper.gemm import GEMM_ALGOS, GEMV_ALGOS, build_gemm, build_gemv, gemm_inputs  # noqa: E402
from wse_sim.engine import fast_available, simulate  # noqa: E402
from wse_sim.functional import run_functional  # noqa: E402
from wse_sim.hardware import load_preset  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _fast_ok(hw) -> bool:
    """The fast engine is importable and agrees on a tiny program (it may be mid-rewrite)."""
    if not fast_available():
        return False
    try:
        p = build_gemm("cannon", hw, grid=2, m=4, k=4, n=4)
        return simulate(p, hw, engine="fast").cycles == simulate(p, hw, "reference").cycles
    except Exception as e:  # report, do not fail the benchmark
        print(f"fast engine unavailable: {type(e).__name__}: {e}", file=sys.stderr)
        return False


# (name, tile size per core, dtype, alignment in the program)
REGIMES = (("compute", 16, "fp16", True), ("comm", 2, "fp16", False))


def bench_gemm(figures, targets, hw, grids, engines):
    for P in grids:
        for regime, tile, dtype, skew in REGIMES:
            size = tile * P
            for algo in GEMM_ALGOS:
                tag = f"gemm_{regime}_{algo}_p{P}"
                try:
                    prog = build_gemm(algo, hw, grid=P, m=size, k=size, n=size, dtype=dtype,
                                      skew=skew)
                except ValueError:
                    continue
                res = {}
                for eng in engines:
                    res[eng], wall = _timed(lambda e=eng, p=prog: simulate(p, hw, engine=e))
                    figures[f"{tag}_{eng}_wall_s"] = wall
                r = res[engines[0]]
                figures[f"{tag}_cycles"] = r.cycles
                figures[f"{tag}_peak_fraction"] = r.peak_fraction
                figures[f"{tag}_records"] = len(prog.tasks)
                cf = prog.meta["closed_form_cycles"]
                if cf is not None:
                    figures[f"{tag}_closed_form_error_cycles"] = abs(r.cycles - cf)
                    targets[f"{tag}_closed_form_error_cycles"] = {"max": 0}
                if len(res) == 2:
                    figures[f"{tag}_engines_cycle_diff"] = abs(res["fast"].cycles - r.cycles)
                    targets[f"{tag}_engines_cycle_diff"] = {"max": 0}
            ref = figures.get(f"gemm_{regime}_cannon_p{P}_cycles")
            mesh = figures.get(f"gemm_{regime}_meshgemm_p{P}_cycles")
            if ref and mesh:
                figures[f"gemm_{regime}_cannon_over_meshgemm_p{P}_ratio"] = ref / mesh


def bench_gemv(figures, targets, hw, grids, engines):
    for P in grids:
        for label, nt in (("short", 8), ("long", 512)):  # y values per core
            for algo in GEMV_ALGOS:
                tag = f"gemv_{label}_{algo}_p{P}"
                prog = build_gemv(algo, hw, grid=P, k=8 * P, n=nt * P, dtype="fp16")
                r = simulate(prog, hw, engine=engines[0])
                figures[f"{tag}_cycles"] = r.cycles
                figures[f"{tag}_closed_form_error_cycles"] = abs(r.cycles
                                                                 - prog.meta["closed_form_cycles"])
                targets[f"{tag}_closed_form_error_cycles"] = {"max": 0}
            chain, tree = (figures[f"gemv_{label}_{a}_p{P}_cycles"] for a in ("chain", "tree"))
            figures[f"gemv_{label}_chain_over_tree_p{P}_ratio"] = chain / tree


def bench_functional(figures, targets, hw, P):
    """Functional run (DataOps through the kernels) vs timing-only (reference engine); best
    of three warm runs each."""
    rng = np.random.default_rng(0)
    size = 16 * P
    a = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    b = rng.uniform(-1, 1, (size, size)).astype(np.float32)
    warm = build_gemm("cannon", hw, grid=2, m=8, k=8, n=8, dtype="fp16", functional=True)
    run_functional(warm, hw, gemm_inputs(warm, a[:8, :8], b[:8, :8]))  # compile the kernels
    total_func = total_sim = 0.0
    for algo in GEMM_ALGOS:
        try:
            prog = build_gemm(algo, hw, grid=P, m=size, k=size, n=size, dtype="fp16",
                              functional=True)
        except ValueError:
            continue
        inputs = gemm_inputs(prog, a, b)
        t_func = best_of(lambda p=prog, i=inputs: run_functional(p, hw, i), repeats=3)
        t_sim = best_of(lambda p=prog: simulate(p, hw, engine="reference"), repeats=3)
        tag = f"functional_{algo}_p{P}"
        figures[f"{tag}_wall_s"] = t_func
        figures[f"{tag}_over_timing_ratio"] = t_func / t_sim
        total_func, total_sim = total_func + t_func, total_sim + t_sim
    figures[f"functional_all_p{P}_over_timing_ratio"] = total_func / total_sim
    targets[f"functional_all_p{P}_over_timing_ratio"] = {"max": 1.0}


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    figures: dict = {}
    targets: dict = {}
    hw = load_preset("mesh16" if args.quick else "mesh32")
    engines = ["reference"] + (["fast"] if _fast_ok(hw) else [])
    figures["fast_engine_compared"] = int(len(engines) == 2)
    grids = [4, 8] if args.quick else [4, 8, 16]
    t0 = time.perf_counter()
    bench_gemm(figures, targets, hw, grids, engines)
    bench_gemv(figures, targets, hw, grids + ([] if args.quick else [32]), engines)
    bench_functional(figures, targets, hw, 8)
    if "fast" in engines and not args.quick:
        bench_gemm(figures, targets, hw, [32], ["fast"])
    figures["total_wall_s"] = time.perf_counter() - t0
    if args.quick:
        targets["total_wall_s"] = {"max": 60.0}
    emit("bench_gemm", figures, targets, args.json)


if __name__ == "__main__":
    main()
