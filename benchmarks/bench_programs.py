"""The example programs of docs/programs.md at wafer scale, on the fast engine.

Each example (examples/programs/) is built for a large mesh and timed once on the fast engine
(after a warm-up run on a small mesh that absorbs compilation):
- jacobi3d: 7-point sweeps, full wse2 mesh (750 x 994 cores), nz = 1024 fp32, 10 sweeps;
- stencil25: 25-point sweeps, full wse2 mesh, nz = 512 fp32, 10 sweeps;
- bicgstab: Rocki et al. SC20's configuration, the wse1 preset (600 x 595 cores),
  nz = 1536 fp16, 4 iterations;
- fft3d: the largest that runs within about a minute here: a 256 x 256 x 512 grid on
  256 x 256 cores of wse2 (1,023 tasks, 67 M instances, 40 to 60 s here; 512 x 512 cores
  would be 8 times the instances). With --quick: 128 x 128 cores (64 x 64 for the FFT), wse2 for all.
Figures per example: wall seconds of the simulation, simulated cycles, FLOP/s and fraction of
the peak of the cores used, loop iterations fast-forwarded. Then a weak-scaling curve of
stencil25 (nz = 512 per core, 10 sweeps) from 64 x 64 cores up to the full wse2 mesh.
The JSON lands in benchmarks/results/bench_programs[_quick].json.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BUDGET_SECONDS = 600.0


def example(name: str):
    """examples/programs/<name>.py as a module."""
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  ROOT / "examples" / "programs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cases(quick: bool) -> list[tuple]:
    """(name, preset, builder of the program, closed-form FLOPs)."""
    j3, s25, bi, ft = (example(n) for n in ("jacobi3d", "stencil25", "bicgstab", "fft3d"))
    full = (750, 994)
    g = (128, 128) if quick else full
    f = 64 if quick else 256
    bi_grid = (128, 128) if quick else (600, 595)
    return [
        ("jacobi3d", "wse2", lambda: j3.build(*g, 1024, 10), 10 * 8 * 1024 * g[0] * g[1]),
        ("stencil25", "wse2", lambda: s25.build(*g, 512, 10), 10 * 29 * 512 * g[0] * g[1]),
        ("bicgstab", "wse2" if quick else "wse1",
         lambda: bi.build(*bi_grid, 1536, 4, "fp16"), bi.closed_form_flops(*bi_grid, 1536, 4)),
        ("fft3d", "wse2", lambda: ft.build(f, f, 512), ft.closed_form_flops(f, f, 512)),
    ]


def timed(program, hw) -> dict:
    """One fast-engine run: its figures."""
    from wse_sim.engine.fast import simulate_fast
    t0 = time.perf_counter()
    r = simulate_fast(program, hw, spans=False)
    wall = time.perf_counter() - t0
    return {"cores": program.cores_used, "tasks": len(program.tasks), "instances": r.instances,
            "wall_seconds": wall, "cycles": r.cycles, "flops": r.flops,
            "flops_per_s": r.flops_per_s, "peak_fraction": r.peak_fraction,
            "loop_iterations": r.loop_iterations,
            "loop_iterations_skipped": r.loop_iterations_skipped}


def weak_scaling(quick: bool) -> list[int]:
    sizes = [64, 128, 256] if quick else [64, 128, 256, 512, 750]
    return sizes


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    from wse_sim.engine.fast import warm_up
    from wse_sim.hardware import load_preset
    warm_up()
    s25 = example("stencil25")
    timed(s25.build(8, 8, 16, 3), load_preset("mesh8"))  # compile the paths the runs take
    figures, targets = {}, {}
    for name, preset, make, flops in cases(args.quick):
        hw = load_preset(preset)
        t0 = time.perf_counter()
        program = make()
        out = {"preset": preset, "build_seconds": time.perf_counter() - t0, **timed(program, hw)}
        if out["flops"] != flops:
            raise AssertionError(f"{name}: simulated {out['flops']} FLOPs != closed form {flops}")
        print(f"{name}: {json.dumps(out)}", file=sys.stderr)
        figures.update({f"{name}_{k}": v for k, v in out.items()})
        targets[f"{name}_wall_seconds"] = {"max": BUDGET_SECONDS}
    wse2 = load_preset("wse2")
    for n in weak_scaling(args.quick):
        rows = 994 if n == 750 else n
        out = timed(s25.build(n, rows, 512, 10), wse2)
        print(f"stencil25 weak {n} x {rows}: {json.dumps(out)}", file=sys.stderr)
        for k in ("wall_seconds", "cycles", "flops_per_s", "peak_fraction"):
            figures[f"weak25_{n}x{rows}_{k}"] = out[k]
    emit("bench_programs", figures, targets, args.json, machine_info())
    path = ROOT / "benchmarks" / "results" / f"bench_programs{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps({"benchmark": "bench_programs", "machine": machine_info(),
                                "figures": figures, "targets": targets}, indent=1) + "\n")
    print(f"wrote {path.relative_to(ROOT)}", file=sys.stderr)


if __name__ == "__main__":
    main()
