"""Benchmark of the fast (numba) engine against the reference (SimPy) engine.

Program: a Cannon-like 2-D GEMM over the whole mesh (per step every core multiplies, then the
A tiles shift east and the B tiles south with torus wrap-around), then a reduce along every
row: the regular SPMD shape of the mappers' GEMM phases.

Figures: fast vs reference wall time on the same program at 32 x 32 and 64 x 64 (same
results checked), for the fast engine's default (auto) and its step path; the fast
engine's wall time and instances/s at 64 x 64, 256 x 256 and the full WSE-2 mesh (750 x 994),
with the step path's wall time over the event path's on the same program;
its memory per simulated core there (tracemalloc peak of the whole run over the cores), per
path and, for the default path, at 4 and 16 steps (it keeps per-core state only, so the figure
does not grow with the steps); the slope of log(wall) against log(instances) over mesh sizes;
and numba's start-up (cache load in this process; cold compile in a fresh cache, full mode only).
Wall times are the best of a few runs and exclude compilation.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import best_of, emit, machine_info, parse_args  # noqa: E402

from wse_sim.engine import fast  # noqa: E402
from wse_sim.engine.reference import simulate_reference  # noqa: E402
from wse_sim.hardware import load_preset  # noqa: E402
from wse_sim.program import Compute, Dep, LineStream, Program, Region, Unicast  # noqa: E402


def cannon(hw, steps: int, flops_per_core: int = 20000, wavelets: int = 64) -> Program:
    """Cannon-like GEMM over the whole mesh: `steps` x (compute, shift A east, shift B south),
    double-buffered (a shift waits for the previous shift and the compute that used its
    buffer), then a pipelined reduce along every row."""
    g = Region(0, 0, hw.mesh_cols, hw.mesh_rows)
    tasks = []
    for s in range(steps):
        c = len(tasks)
        tasks.append(Compute(f"mm{s}", g, flops_per_core * g.size, "fp16",
                             deps=() if s == 0 else (Dep(c - 2), Dep(c - 1))))
        tasks.append(Unicast(f"shiftA{s}", g, wavelets, dx=1, wrap=True, color=1,
                             deps=(Dep(c),) if s == 0 else (Dep(c), Dep(c - 2))))
        tasks.append(Unicast(f"shiftB{s}", g, wavelets, dy=1, wrap=True, color=2,
                             deps=(Dep(c),) if s == 0 else (Dep(c), Dep(c - 1))))
    tasks.append(LineStream("rowsum", g, "x", 1, wavelets, reduce=True, dtype="fp16", color=3,
                            deps=(Dep(len(tasks) - 3),)))
    return Program(f"cannon-{hw.mesh_cols}x{hw.mesh_rows}-{steps}", tuple(tasks),
                   tokens=hw.mesh_rows)


def mesh(cols: int, rows: int):
    base = "wse2" if cols * rows > 64 * 64 else f"mesh{cols}" if cols == rows else "mesh64"
    hw = load_preset(base)
    return hw.with_overrides({"mesh_cols": cols, "mesh_rows": rows})


def same_result(a, b) -> bool:
    keys = ("cycles", "flops", "comm_bytes", "delivered_bytes", "bytes_hops", "compute_cycles",
            "comm_cycles", "ops")
    return (all(getattr(a, k) == getattr(b, k) for k in keys)
            and np.array_equal(a.core_busy_cycles, b.core_busy_cycles)
            and np.array_equal(a.link_busy_cycles, b.link_busy_cycles))


def run_fast(program, hw, repeats: int, path: str = "auto") -> tuple[float, object]:
    holder = {}

    def once():
        holder["r"] = fast.simulate_fast(program, hw, progress=False, path=path)
    return best_of(once, repeats, min_time=0.0), holder["r"]


def cold_compile_seconds() -> float:
    """Seconds to compile every kernel from scratch (a fresh numba cache, a new process)."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = ("import time; t = time.perf_counter(); from wse_sim.engine import fast; "
                "fast.warm_up(); print(time.perf_counter() - t)")
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True, cwd=os.path.dirname(
                                 os.path.dirname(os.path.abspath(__file__))))
        return float(out.stdout.strip().splitlines()[-1])


def peak_bytes(program, hw, path: str = "auto") -> int:
    """tracemalloc's peak over one fast run (numpy reports its arrays to tracemalloc)."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fast.simulate_fast(program, hw, progress=False, path=path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    quick = args.quick
    figures, targets = {}, {}
    t0 = time.perf_counter()
    figures["numba_warmup_seconds"] = fast.warm_up()  # cache load, or compile when cold
    figures["numba_warmup_cached"] = figures["numba_warmup_seconds"] < 5.0

    # ---- fast vs reference on the same program ------------------------------------------------
    ref_steps = 2 if quick else 8
    for n in (32, 64):
        hw = mesh(n, n)
        program = cannon(hw, ref_steps)
        t = time.perf_counter()
        ref = simulate_reference(program, hw)
        t_ref = time.perf_counter() - t
        t_fast, res = run_fast(program, hw, 20)
        t_step, res_step = run_fast(program, hw, 20, path="step")
        assert same_result(ref, res), f"fast and reference results differ at {n} x {n}"
        assert same_result(ref, res_step), f"step path and reference differ at {n} x {n}"
        figures[f"reference_{n}_seconds"] = t_ref
        figures[f"reference_{n}_instances_per_s"] = res.instances / t_ref
        figures[f"fast_{n}_path"] = res.fast_path
        figures[f"fast_{n}_same_program_seconds"] = t_fast
        figures[f"fast_vs_reference_{n}_ratio"] = t_ref / t_fast
        figures[f"fast_step_path_{n}_same_program_seconds"] = t_step
        figures[f"fast_step_path_vs_reference_{n}_ratio"] = t_ref / t_step
    figures["reference_program_steps"] = ref_steps
    figures["reference_64_instances"] = res.instances
    targets["fast_vs_reference_64_ratio"] = {"min": 1000}

    # ---- the fast engine from 64 x 64 to the full wafer ---------------------------------------
    sizes = [("64", 64, 64, 16), ("256", 256, 256, 8), ("full", 750, 994, 4)]
    if quick:
        sizes = [("64", 64, 64, 8), ("256", 256, 256, 2), ("full", 750, 994, 1)]
    for tag, cols, rows, steps in sizes:
        hw = mesh(cols, rows)
        program = cannon(hw, steps)
        t_fast, res = run_fast(program, hw, 2 if tag == "full" else 3)
        figures[f"fast_{tag}_seconds"] = t_fast
        figures[f"fast_{tag}_instances"] = res.instances
        figures[f"fast_{tag}_instances_per_s"] = res.instances / t_fast
        figures[f"fast_{tag}_steps"] = steps
        figures[f"fast_{tag}_simulated_cycles"] = res.cycles
        figures[f"fast_{tag}_path"] = res.fast_path
        t_step, _ = run_fast(program, hw, 2 if tag == "full" else 3, path="step")
        t_event, _ = run_fast(program, hw, 2 if tag == "full" else 3, path="event")
        figures[f"fast_{tag}_step_over_event_ratio"] = t_step / t_event
    targets["fast_full_seconds"] = {"max": 60.0}

    # ---- memory per simulated core at full wafer ----------------------------------------------
    # The step path keeps state per core (resources, a ring of signal slots), the event path
    # per instance as well: the step path's figure does not grow with the steps.
    hw = mesh(750, 994)
    for steps in ((1,) if quick else (4, 16)):
        program = cannon(hw, steps)
        for path in ("step", "event"):
            if path == "event" and steps > 4:
                continue  # grows with the steps: the 4-step figure says it
            peak = peak_bytes(program, hw, path)
            tag = f"full_wafer_{path}_path_{steps}_steps"
            figures[f"{tag}_peak_bytes"] = peak
            figures[f"{tag}_bytes_per_core"] = peak / hw.cores
    steps = 1 if quick else 4
    figures["full_wafer_bytes_per_core"] = min(
        figures[f"full_wafer_{p}_path_{steps}_steps_bytes_per_core"] for p in ("step", "event"))
    targets["full_wafer_bytes_per_core"] = {"max": 200}

    # ---- scaling: wall time against instances over mesh sizes ---------------------------------
    walls, counts = [], []
    side = [64, 128, 256] if quick else [64, 128, 256, 512]
    for n in side:
        hw = mesh(n, n)
        t_fast, res = run_fast(cannon(hw, 2), hw, 3)
        walls.append(t_fast)
        counts.append(res.instances)
    hw = mesh(750, 994)
    t_fast, res = run_fast(cannon(hw, 2), hw, 2)
    walls.append(t_fast)
    counts.append(res.instances)
    slope = float(np.polyfit(np.log(counts), np.log(walls), 1)[0])
    figures["scaling_log_wall_vs_log_instances_slope"] = slope
    figures["scaling_instances"] = counts
    figures["scaling_seconds"] = walls
    targets["scaling_log_wall_vs_log_instances_slope"] = {"max": 1.1}

    # Full-wafer decode of one token of LLaMA3-8B, every layer, on the wse2 preset (issue 4):
    # mapping + simulation wall time.
    from wse_sim.experiment import build_program
    wse2 = load_preset("wse2")
    t1 = time.perf_counter()
    program = build_program(wse2, "llama3-8b", phase="decode", context=2048)
    r = fast.simulate_fast(program, wse2)
    figures["llama3_8b_decode_full_wafer_seconds"] = time.perf_counter() - t1
    figures["llama3_8b_decode_full_wafer_instances"] = r.instances
    figures["llama3_8b_decode_tokens_per_s_simulated"] = r.tokens_per_s
    targets["llama3_8b_decode_full_wafer_seconds"] = {"max": 10.0}

    if not quick:
        figures["numba_cold_compile_seconds"] = cold_compile_seconds()
    figures["benchmark_seconds"] = time.perf_counter() - t0
    emit("bench_engine", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
