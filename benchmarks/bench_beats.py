"""Layer-sequential's chunked prefill in pipeline beats (session 18) against the layer-by-layer
order it had before, on the fast engine's window path, in one process.

The two programs have the same records and dependencies; only their order differs
(`mapper.strategies.single_region.beat_order`; the baseline puts every chunk of a layer before
the next layer, with the same loop of layer pairs). Records enter the window in program order,
so layer by layer the window holds a whole layer while the next layer's first chunks already
run. The order is also the priority of grants that tie, so the cycles may differ (both
printed). Full: Cerebras-GPT-111M, 256 tokens in 16 chunks, 12 layers, on a 128 x 128 grid of
wse2. `--quick`: tiny-llama, 64 tokens in 8 chunks, 12 layers, on mesh32 (a case whose
cycles differ). Figures: wall seconds, tracemalloc's peak (numpy reports its arrays to it),
cycles and iterations skipped of each order, and the ratios beats / layers."""

from __future__ import annotations

import os
import sys
import time
import tracemalloc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

FULL = ("wse2", 128, "cerebras-gpt-111m", {"prompt": 256, "chunks": 16}, 12)
QUICK = ("mesh32", None, "tiny-llama", {"prompt": 64, "chunks": 8}, 12)


def layer_order(beats):
    """The layer-by-layer order, as `beat_order` returns its blocks: layers 0 and 1 before
    the loop, then layers 2j and 2j + 1 (every chunk of each) an iteration, then the rest."""
    def order(layers: int, chunks: int, looped: bool):
        _pre, its, _post = beats(layers, chunks, looped)
        block = [[(i, c) for c in range(chunks)] for i in range(layers)]
        if not its:
            return [b for lay in block for b in lay], [], []
        last = 2 * len(its) + 2
        return (block[0] + block[1], [block[2 * j] + block[2 * j + 1] for j in
                                      range(1, len(its) + 1)],
                [b for lay in block[last:] for b in lay])
    return order


def _run(program, hw) -> tuple[float, int, object]:
    from wse_sim.engine.fast import simulate_fast
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        t0 = time.perf_counter()
        res = simulate_fast(program, hw, spans=False, progress=False, path="window")
        wall = time.perf_counter() - t0
        return wall, tracemalloc.get_traced_memory()[1], res
    finally:
        tracemalloc.stop()


def main(argv=None) -> int:
    import mapper.strategies.single_region as single
    from wse_sim.engine.fast import warm_up
    from wse_sim.experiment import build_program
    from wse_sim.hardware import load_preset
    args = parse_args(__doc__.splitlines()[0], argv)
    preset, grid, model, spec, layers = QUICK if args.quick else FULL
    hw = load_preset(preset)
    if grid:
        hw = hw.with_overrides({"mesh_cols": grid, "mesh_rows": grid})
    warm_up()
    figures: dict = {"case": f"{model} layer-sequential prefill {spec}, {layers} layers, "
                             f"{hw.mesh_cols} x {hw.mesh_rows} of {preset}"}
    beats = single.beat_order
    try:
        for name, order in (("layers", layer_order(beats)), ("beats", beats)):
            single.beat_order = order
            program = build_program(hw, model, phase="prefill", strategy="layer-sequential",
                                    layout="top-row", model_set={"n_layers": layers}, **spec)
            wall, peak, res = _run(program, hw)
            figures |= {f"{name}_seconds": wall, f"{name}_peak_bytes": peak,
                        f"{name}_cycles": res.cycles,
                        f"{name}_skipped": res.loop_iterations_skipped}
    finally:
        single.beat_order = beats
    figures["beats_over_layers_seconds"] = figures["beats_seconds"] / figures["layers_seconds"]
    figures["beats_over_layers_peak_bytes"] = \
        figures["beats_peak_bytes"] / figures["layers_peak_bytes"]
    figures["same_cycles"] = figures["beats_cycles"] == figures["layers_cycles"]
    emit("bench_beats", figures, {}, args.json, machine_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
