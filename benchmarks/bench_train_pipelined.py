"""Layer-pipelined training in the 2-D layout (a square region per layer and one for the LM
head, micro-batches in a GPipe pipeline) against layer-sequential 2-D training, in the same
run: on the whole grid (in the fewest micro-batches that fit) and on one region of the
pipeline's side (what one pipeline stage's cores do alone). For each: simulated cycles,
tokens/s and its ratio to layer-sequential on the whole grid, % of peak of the cores used,
the busy core fraction, SRAM on the fullest core, the time to build and to simulate.
`--quick`: tiny-llama, batch 8 x 64 tokens on mesh32 (3 regions of 16 x 16), 1, 2, 4 and 8
micro-batches. Full (about 15 minutes on 2 CPUs): Cerebras-GPT-111M, batch 8 x 2,048 tokens
on wse2 (11 regions of 248 x 248), 1 and 8 micro-batches."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

QUICK = ("mesh32", "tiny-llama", 64, 8, (1, 2, 4, 8))
FULL = ("wse2", "cerebras-gpt-111m", 2048, 8, (1, 8))


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
    preset, model, prompt, batch, counts = QUICK if args.quick else FULL
    key = f"{preset}.{model}.{batch}x{prompt}"
    divisors = tuple(m for m in range(1, batch + 1) if batch % m == 0)
    figures: dict = {}

    def record(name: str, row: dict) -> None:
        print(name, row, file=sys.stderr, flush=True)
        base = figures.get(f"{key}.layer-sequential.2d.tokens_per_s")
        for k, v in row.items():
            figures[f"{key}.{name}.{k}"] = v
        if base and "tokens_per_s" in row:
            figures[f"{key}.{name}.vs_layer_sequential"] = row["tokens_per_s"] / base

    record("layer-sequential.2d", _case(preset, model, prompt, batch, "layer-sequential",
                                        divisors))
    side = None
    for mb in counts:
        row = _case(preset, model, prompt, batch, "layer-pipelined", (mb,))
        record(f"layer-pipelined.2d.m{mb}", row)
        if "region" in row:
            side = int(row["region"].split(" x ")[1])
    if side:  # one pipeline stage's cores on their own
        record("layer-sequential.2d.one_region", _case(preset, model, prompt, batch,
                                                       "layer-sequential", divisors, side))
    emit("bench_train_pipelined", figures, {}, args.json, machine_info())


if __name__ == "__main__":
    main()
