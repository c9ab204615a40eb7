"""A training step in the 2-D layout (issue 18, item 2) against the top-row layout: whether
each fits (SRAM per core, or the one line that says what does not), and for the 2-D layout
the simulated step: tokens/s, % of peak (recomputed FLOPs included), the recompute's share of
the executed FLOPs, the busy core fraction, the time to build and to simulate. Then the
issue's sizes: the fewest micro-batches with which LLaMA3-8B at sequence 2,048 and batch 64
fits wse3 (the budget, nothing built). Full size (minutes): Cerebras-GPT-1.3B at sequence
2,048 on wse2 and LLaMA3-8B at sequence 2,048 (batch 1) on wse3. `--quick`: tiny-llama, 64
tokens, batch 2 in 2 micro-batches, on a 16 x 16 grid of mesh32 (`auto`: an algorithm per
projection), then with each GEMM algorithm for every projection of the forward. Every case
also runs with the optimizer on the wafer (`optimizer="onwafer"`) and as a layer-sequential
step (every layer's weights resident: `.2d.layer-sequential`, with the bytes over the I/O of
both)."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

FULL = (("wse2", "cerebras-gpt-1.3b", 2048, 1, 1, None),
        ("wse3", "llama3-8b", 2048, 1, 1, None))
QUICK = (("mesh32", "tiny-llama", 64, 2, 2, 16),)


def _case(preset, model, prompt, batch, micro, grid, layout, gemm_algo="auto",
          optimizer="offwafer", strategy="weight-streaming") -> dict:
    from mapper.placement import MappingError
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    hw = load_preset(preset)
    t0 = time.perf_counter()
    try:
        program = build_program(hw, model, phase="train", strategy=strategy,
                                prompt=prompt, batch=batch, grid=grid, layout=layout,
                                micro_batches=micro if layout == "2d" else 1,
                                gemm_algo=gemm_algo if layout == "2d" else "auto",
                                optimizer=optimizer if layout == "2d" else "offwafer")
    except (MappingError, NotImplementedError, ValueError) as e:
        return {"fits": False, "why": str(e).splitlines()[0][:240]}
    sram = sum(program.meta["sram_buffers_per_core"].values())
    if layout != "2d":
        return {"fits": True, "sram_bytes_per_core": sram}
    t1 = time.perf_counter()
    r = simulate(program, hw, engine="fast")
    s, m = r.summary(), program.meta
    return {"fits": True, "sram_bytes_per_core": sram, "cycles": r.cycles,
            "tokens_per_s": s["tokens_per_s"], "peak_fraction": s["peak_fraction"],
            "recompute_share": m["recompute_flops"] / m["executed_flops"],
            "busy_core_fraction": s["busy_core_fraction"],
            "comm_share": s["comm_cycles"] / max(1, s["cycles"]), "io_bytes": s["io_bytes"],
            "build_s": round(t1 - t0, 1), "simulate_s": round(time.perf_counter() - t1, 1),
            "loop_iterations_skipped": s.get("loop_iterations_skipped", 0),
            "gemm_algos": ",".join(f"{k}={v}" for k, v in m["gemm_algos"].items())}


def fewest_micro_batches(preset: str, model: str, prompt: int, batch: int) -> dict:
    """The fewest micro-batches (dividing the batch) whose budget fits, and its bytes."""
    from mapper.strategies.common import make_run
    from mapper.strategies.layout2d import Tiles
    from mapper.strategies.layout2d_train import train_buffers
    from workloads.models import load_model
    from wse_sim.hardware import load_preset
    hw, cfg = load_preset(preset), load_model(model)
    for mb in (m for m in range(1, batch + 1) if batch % m == 0):
        run = make_run(cfg, hw, phase="train", batch=batch, prompt=prompt, context=prompt,
                       dtype="fp16", grid=None, sparsity=0.0, micro_batches=mb)
        P = min(run.cols, run.rows)
        need = sum(train_buffers(run, Tiles.of(cfg, P, run.chunk_tokens), True).values())
        if need <= hw.sram_bytes:
            return {"micro_batches": mb, "sram_bytes_per_core": need}
    return {"micro_batches": None}


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    figures: dict = {}
    for preset, model, prompt, batch, micro, grid in (QUICK if args.quick else FULL):
        key = f"{preset}.{model}"
        for lay in ("top-row", "2d"):
            r = _case(preset, model, prompt, batch, micro, grid, lay)
            print(key, lay, r, file=sys.stderr, flush=True)
            for k, v in r.items():
                figures[f"{key}.{lay}.{k}"] = v
        # Adam on the wafer (`--optimizer onwafer`): its state streams in and out per layer
        r = _case(preset, model, prompt, batch, micro, grid, "2d", optimizer="onwafer")
        print(key, "onwafer", r, file=sys.stderr, flush=True)
        for k in ("fits", "why", "sram_bytes_per_core", "cycles", "tokens_per_s", "simulate_s"):
            if k in r:
                figures[f"{key}.2d.onwafer.{k}"] = r[k]
        if "cycles" in r and f"{key}.2d.cycles" in figures:
            figures[f"{key}.2d.onwafer_vs_offwafer_cycles"] = \
                r["cycles"] / figures[f"{key}.2d.cycles"]
        # the weights resident (layer-sequential): no weight streams, the updates in once
        r = _case(preset, model, prompt, batch, micro, grid, "2d", strategy="layer-sequential")
        print(key, "layer-sequential", r, file=sys.stderr, flush=True)
        for k in ("fits", "why", "sram_bytes_per_core", "cycles", "tokens_per_s", "io_bytes",
                  "simulate_s"):
            if k in r:
                figures[f"{key}.2d.layer-sequential.{k}"] = r[k]
        if "cycles" in r and f"{key}.2d.cycles" in figures:
            figures[f"{key}.2d.layer-sequential_vs_weight-streaming_cycles"] = \
                r["cycles"] / figures[f"{key}.2d.cycles"]
        if args.quick:  # the forward's GEMM algorithm, each for every projection
            for algo in ("meshgemm", "cannon", "summa"):
                r = _case(preset, model, prompt, batch, micro, grid, "2d", algo)
                print(key, algo, r, file=sys.stderr, flush=True)
                for k in ("cycles", "simulate_s"):
                    figures[f"{key}.2d.{algo}.{k}"] = r[k]
    if not args.quick:
        for k, v in fewest_micro_batches("wse3", "llama3-8b", 2048, 64).items():
            figures[f"wse3.llama3-8b.batch64.{k}"] = v
    emit("bench_train2d", figures, {}, args.json, machine_info())


if __name__ == "__main__":
    main()
