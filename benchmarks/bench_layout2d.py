"""The 2-D prefill layout against the top-row layout (issue 18, item 1): tokens/s, the share of
the grid's peak, the busy core fraction, SRAM per core and the simulator's wall time, for the
same prefill in both layouts (layer-sequential), the top-row one being the baseline of the
ratios; a layout that does not fit says why in one line. Full size (minutes): one LLaMA3-8B
layer (`n_layers=1`) of a 4,096-token prefill on 720 x 720 cores of wse2, then the whole
32-layer model in the 2-D layout (its simulation time against one layer's); then the
latency-bound case (`small_tiles.*`): Cerebras-GPT-1.3B at 2,048 tokens on 750 x 750 cores,
3 x 3 tiles whose GEMM steps are paced by the rings (some settle with a period of two steps,
docs/hardware-model.md), one layer and the whole 24-layer model. `--quick`: tiny-llama, 128
tokens on a 32 x 32 grid of mesh32."""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

FULL = ("wse2", "llama3-8b", 4096, 720, {"n_layers": 1})
SMALL_TILES = ("wse2", "cerebras-gpt-1.3b", 2048, 750, {"n_layers": 1})
QUICK = ("mesh32", "tiny-llama", 128, 32, None)


def _case(preset: str, model: str, prompt: int, grid: int, model_set, layout: str) -> dict:
    from mapper.placement import MappingError
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    hw = load_preset(preset)
    t0 = time.perf_counter()
    try:
        program = build_program(hw, model, strategy="layer-sequential", prompt=prompt,
                                grid=grid, layout=layout, model_set=model_set)
    except (MappingError, NotImplementedError) as e:
        return {"fits": False, "why": str(e).splitlines()[0][:240]}
    t1 = time.perf_counter()
    r = simulate(program, hw, engine="fast")
    s = r.summary()
    return {"fits": True, "cycles": r.cycles, "tokens_per_s": s["tokens_per_s"],
            "peak_fraction": s["peak_fraction"],
            "useful_peak_fraction": s["useful_peak_fraction"],
            "busy_core_fraction": s["busy_core_fraction"],
            "sram_bytes_per_core": sum(program.meta["sram_buffers_per_core"].values()),
            "build_s": round(t1 - t0, 2), "simulate_s": round(time.perf_counter() - t1, 2),
            "loop_iterations_skipped": s.get("loop_iterations_skipped", 0),
            "gemm_algo": program.meta.get("gemm_algo")}


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    preset, model, prompt, grid, model_set = QUICK if args.quick else FULL
    figures: dict = {"case": f"{model} prefill {prompt} tokens, {grid} x {grid} of {preset}"
                     + (f", {model_set}" if model_set else "")}
    runs = {lay: _case(preset, model, prompt, grid, model_set, lay) for lay in ("top-row", "2d")}
    for lay, r in runs.items():
        for k, v in r.items():
            figures[f"{lay}.{k}"] = v if not isinstance(v, dict) else str(v)
    top, two = runs["top-row"], runs["2d"]
    if top.get("fits") and two.get("fits"):
        figures["speedup_2d_vs_top_row"] = top["cycles"] / two["cycles"]
        figures["peak_fraction_ratio"] = two["peak_fraction"] / top["peak_fraction"]
    targets = {}
    if not args.quick:  # the whole model: its layers one loop around their GEMM-step loops
        whole = _case(preset, model, prompt, grid, None, "2d")
        for k, v in whole.items():
            figures[f"whole_model.{k}"] = v
        if whole.get("fits") and two.get("fits"):
            figures["whole_model.simulate_s_vs_one_layer"] = \
                whole["simulate_s"] / two["simulate_s"]
            targets["whole_model.simulate_s"] = {"max": 60}  # issue 16
        p2, m2, t2, g2, one = SMALL_TILES
        for key, ms in (("small_tiles.one_layer", one), ("small_tiles.whole_model", None)):
            for k, v in _case(p2, m2, t2, g2, ms, "2d").items():
                figures[f"{key}.{k}"] = v
    emit("bench_layout2d", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
