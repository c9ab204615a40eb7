"""Layer-pipelined training in the 2-D layout (a square region per layer and one for the LM
head, micro-batches in a GPipe pipeline) against layer-sequential 2-D training, in the same
run: on the whole grid (in the fewest micro-batches that fit) and on one region of the
pipeline's side (what one pipeline stage's cores do alone). For each: simulated cycles,
tokens/s and its ratio to layer-sequential on the whole grid, % of peak of the cores used,
the busy core fraction, SRAM on the fullest core, the time to build and to simulate.
`--quick`: tiny-llama, batch 8 x 64 tokens on mesh32 (3 regions of 16 x 16), 1, 2, 4 and 8
micro-batches. Full (about 20 minutes on 2 CPUs): Cerebras-GPT-111M at 2,048 tokens on wse2
(11 regions of 248 x 248): layer-pipelined at batch 1, layer-sequential at batch 1 on one
248 x 248 region (the ratios' base), layer-pipelined at batch 8 in 8 micro-batches.
Layer-sequential on the whole 750 x 750 is not run: at batch 1 it is 208 G task instances
whose 3 x 2-value ring steps do not settle (about 6 hours), at batch 8 416 G."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

# (row name, strategy, batch, micro-batch counts to try in order, on one pipeline region)
QUICK = ("mesh32", "tiny-llama", 64, (
    ("layer-sequential.2d", "layer-sequential", 8, (1, 2, 4, 8), False),
    *((f"layer-pipelined.2d.m{m}", "layer-pipelined", 8, (m,), False) for m in (1, 2, 4, 8)),
    ("layer-sequential.2d.one_region", "layer-sequential", 8, (1, 2, 4, 8), True)))
FULL = ("wse2", "cerebras-gpt-111m", 2048, (
    ("layer-pipelined.2d.b1", "layer-pipelined", 1, (1,), False),
    ("layer-sequential.2d.b1.one_region", "layer-sequential", 1, (1,), True),
    ("layer-pipelined.2d.b8.m8", "layer-pipelined", 8, (8,), False)))


def _case(preset: str, model: str, prompt: int, batch: int, strategy: str,
          micro_batches: tuple, grid: int | None = None) -> dict:
    """The first micro-batch count of `micro_batches` that fits, simulated."""
    from mapper.placement import MappingError
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    hw = load_preset(preset)
    why = ""
    for mb in micro_batches:
        t0 = time.perf_counter()
        try:
            program = build_program(hw, model, phase="train", strategy=strategy, layout="2d",
                                    prompt=prompt, batch=batch, grid=grid, micro_batches=mb)
        except (MappingError, NotImplementedError, ValueError) as e:
            why = str(e).splitlines()[0][:240]
            continue
        t1 = time.perf_counter()
        r = simulate(program, hw, engine="fast")
        s, m = r.summary(), program.meta
        return {"micro_batches": mb, "region": f"{m['regions']} x {m['region_cols']} x "
                f"{m['region_rows']}", "cycles": r.cycles, "tokens_per_s": s["tokens_per_s"],
                "peak_fraction": s["peak_fraction"],
                "busy_core_fraction": s["busy_core_fraction"],
                "sram_bytes_per_core": s["sram_bytes_per_core"],
                "build_s": round(t1 - t0, 1), "simulate_s": round(time.perf_counter() - t1, 1)}
    return {"fits": False, "why": why}


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    preset, model, prompt, cases = QUICK if args.quick else FULL
    key = f"{preset}.{model}.{prompt}"
    rows: dict = {}
    side = None  # the pipeline's region side
    for name, strategy, batch, counts, one_region in cases:
        if one_region and side is None:
            continue
        rows[name] = _case(preset, model, prompt, batch, strategy, counts,
                           side if one_region else None)
        print(name, rows[name], file=sys.stderr, flush=True)
        if strategy == "layer-pipelined" and "region" in rows[name]:
            side = int(rows[name]["region"].split(" x ")[1])
    # the ratios against the first layer-sequential row
    base = next((rows[n].get("tokens_per_s") for n, s, *_ in cases
                 if s == "layer-sequential" and n in rows), None)
    figures: dict = {}
    for name, row in rows.items():
        figures |= {f"{key}.{name}.{k}": v for k, v in row.items()}
        if base and "tokens_per_s" in row and not name.startswith("layer-sequential"):
            figures[f"{key}.{name}.vs_layer_sequential"] = row["tokens_per_s"] / base
    emit("bench_train_pipelined", figures, {}, args.json, machine_info())


if __name__ == "__main__":
    main()
