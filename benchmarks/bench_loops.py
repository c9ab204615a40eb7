"""Loops and their exact fast-forward (issue 16): speed against the reference and against the
fast engine without fast-forward, in the same process, and wall time against steps and cores.

Program: Cannon-like steps on an n x n region as one loop (compute, then shift A east and B
south with torus wrap; every step waits for the previous one's shifts), then a row reduce.
Figures:
- `ref_vs_fast_ratio`: reference wall time / fast wall time on 64 x 64 cores, 64 steps;
- `ff_ratio_<n>`: fast without fast-forward / with it, same program (256 steps);
- `steps_slope`: log-log slope of fast wall time against steps, 16 .. 1024 steps (64 x 64);
- `cores_slope`: log-log slope of fast wall time against cores, 64^2 .. 512^2 (32 steps).
Every run is checked to give the same cycles with and without fast-forward.
"""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402


def stepped(n: int, steps: int, flops: int = 20000, wavelets: int = 64):
    """Steps of a double-buffered Cannon-style GEMM on n x n cores as the mapper builds them
    (`mapper.gemm_build.build_cannon`, any number of steps): compute on the step's buffers;
    shift A west and B north (torus wrap) into the other buffers once the previous step's
    compute has read them; then a row reduce."""
    from wse_sim.program import Compute, Dep, LineStream, ProgramBuilder, Region, Unicast
    g = Region(0, 0, n, n)
    b = ProgramBuilder(f"stepped{n}x{steps}")
    ids = {}

    def step(s: int) -> None:
        prev = ids.get(s - 1)
        deps = () if prev is None else (Dep(prev[1]), Dep(prev[2]), Dep(prev[0]))
        comp = b.add(Compute("mm", g, flops * n * n, "fp16", deps=deps))
        war = () if prev is None else (Dep(prev[0], "all"),)
        sa = b.add(Unicast("shift_a", g, wavelets, dx=-1, wrap=True, color=1,
                           deps=(() if prev is None else (Dep(prev[1]),)) + war))
        sb = b.add(Unicast("shift_b", g, wavelets, dy=-1, wrap=True, color=2,
                           deps=(() if prev is None else (Dep(prev[2]),)) + war))
        ids[s] = (comp, sa, sb)

    step(0)
    b.repeat("step", steps - 1, lambda i: step(i + 1))
    comp, sa, sb = ids[steps - 1]
    b.add(LineStream("rowsum", g, "x", 1, wavelets, reduce=True, dtype="fp16", color=3,
                     deps=(Dep(comp), Dep(sa), Dep(sb))))
    return b.build(tokens=n)


def _time(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return (sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True))
            / sum((a - mx) ** 2 for a in lx))


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    from wse_sim.engine.fast import simulate_fast, warm_up
    from wse_sim.engine.reference import simulate_reference
    from wse_sim.hardware import load_preset
    warm_up()
    figures, targets = {}, {}
    wafer = load_preset("wse2")
    hw64 = load_preset("mesh64")
    n_ref, steps_ref = (32, 32) if args.quick else (64, 64)
    p = stepped(n_ref, steps_ref)
    t_ref, ref = _time(lambda: simulate_reference(p, hw64))
    fast = simulate_fast(p, hw64, spans=False)
    assert fast.cycles == ref.cycles
    figures.update(ref_seconds=t_ref, fast_seconds=fast.wall_seconds,
                   ref_vs_fast_ratio=t_ref / fast.wall_seconds,
                   skipped=fast.loop_iterations_skipped)
    targets["ref_vs_fast_ratio"] = {"min": 1000}
    for n in ((64,) if args.quick else (64, 256)):
        p = stepped(n, 256)
        on = simulate_fast(p, wafer, spans=False)
        off = simulate_fast(p, wafer, spans=False, fast_forward=False)
        assert on.cycles == off.cycles and on.compute_cycles == off.compute_cycles
        figures[f"ff_ratio_{n}"] = off.wall_seconds / on.wall_seconds
        figures[f"ff_seconds_{n}"] = on.wall_seconds
    steps = (16, 64, 256) if args.quick else (16, 64, 256, 1024)
    walls = [simulate_fast(stepped(64, s), wafer, spans=False).wall_seconds for s in steps]
    figures.update({f"steps_{s}_seconds": w for s, w in zip(steps, walls, strict=True)})
    figures["steps_slope"] = slope(steps, walls)
    targets["steps_slope"] = {"max": 0.2}
    sizes = (64, 128, 256) if args.quick else (64, 128, 256, 512)
    walls = [simulate_fast(stepped(n, 32), wafer, spans=False).wall_seconds for n in sizes]
    figures.update({f"cores_{n * n}_seconds": w for n, w in zip(sizes, walls, strict=True)})
    figures["cores_slope"] = slope([n * n for n in sizes], walls)
    targets["cores_slope"] = {"max": 1.1}
    emit("bench_loops", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
