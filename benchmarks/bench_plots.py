"""Benchmark of a run's outputs: figures, result.json and the trace, up to full-wafer size.

Figures (seconds, best of a few repeats, files written to a temporary folder):
- full_wafer_heatmap_{png,svg}_s: one mesh heatmap of a synthetic 750 x 994 map (block-max
  reduced, imshow, colorbar), drawn and saved;
- full_wafer_mesh_figures_png_s: the five mesh heatmaps of a synthetic full-wafer SimResult;
- full_wafer_result_json_s / _load_s: result.json of that SimResult written and read back;
- trace_events_per_s: instances turned into trace events per second (synthetic spans);
- mesh16_write_outputs_s: the whole output folder (PNG + SVG, trace) of `tiny` prefill on
  mesh16, simulation excluded.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import best_of, emit, machine_info, parse_args  # noqa: E402

from wse_sim.hardware import load_preset  # noqa: E402
from wse_sim.report import outputs, plots, trace  # noqa: E402
from wse_sim.report.metrics import SimResult  # noqa: E402


def synthetic(hw, n_spans: int, seed: int = 0) -> SimResult:
    rng = np.random.default_rng(seed)
    r, c = hw.mesh_rows, hw.mesh_cols
    cycles = 100_000
    start = rng.integers(0, cycles - 1000, n_spans)
    return SimResult(
        program="synthetic", engine="fast", hardware=hw, cycles=cycles, flops=10**12,
        executed_flops=10**12, stream_flops=0, flops_by_dtype={"fp16": 10**12},
        comm_bytes=10**9, delivered_bytes=10**9, bytes_hops=3 * 10**9,
        sram_traffic_bytes=10**11, io_bytes=0, compute_cycles=60_000, comm_cycles=40_000,
        core_busy_cycles=rng.integers(0, cycles, (r, c)),
        link_bytes=rng.integers(0, 4 * cycles, (r, c, 4)),
        link_busy_cycles=rng.integers(0, cycles, (r, c, 4)),
        sram_bytes=rng.integers(0, hw.sram_bytes, (r, c)), colors=rng.integers(0, 24, (r, c)),
        ops={f"L{i}.mm": {"flops": 10**10, "busy_cycles": 10**6, "bytes": 0, "start": i * 900,
                          "end": i * 900 + 800, "kind": "Compute"} for i in range(100)},
        instances=n_spans, tokens=1, dtype="fp16", cores_used=r * c,
        spans={"task": rng.integers(0, 100, n_spans), "index": np.arange(n_spans),
               "core": rng.integers(0, r * c, n_spans), "start": start,
               "end": start + rng.integers(1, 1000, n_spans)},
    )


def once(fn) -> float:
    """Seconds of one call (for the slow, full-wafer steps)."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def heatmap_once(data, fmt: str) -> None:
    rows, cols = data.shape
    fig, ax, cax = plots.mesh_layout(rows, cols)
    with plots.style():
        plots.draw_heatmap(fig, ax, data, title="t", label="busy (%)", cmap="viridis",
                           scale=100.0, cax=cax)
        fig.savefig(io.BytesIO(), format=fmt, dpi=plots.PNG_DPI)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    repeats = 1 if args.quick else 5
    figures: dict = {}
    targets: dict = {}
    wse2 = load_preset("wse2")
    rng = np.random.default_rng(0)
    wafer = rng.random((wse2.mesh_rows, wse2.mesh_cols))
    for fmt in ("png", "svg"):
        figures[f"full_wafer_heatmap_{fmt}_s"] = best_of(lambda f=fmt: heatmap_once(wafer, f),
                                                         repeats)
        targets[f"full_wafer_heatmap_{fmt}_s"] = {"max": 1.0}
    figures["full_wafer_block_max_s"] = best_of(lambda: plots.block_max(wafer), repeats)
    big = synthetic(wse2, 20_000 if args.quick else 200_000)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        figures["full_wafer_mesh_figures_png_s"] = once(
            lambda: figures.draw_figures(big, tmp, formats=("png",), only=("core_busy",)))
        targets["full_wafer_mesh_figures_png_s"] = {"max": 5.0}
        figures["full_wafer_result_json_s"] = once(
            lambda: outputs.save_result(big, tmp / "result.json"))
        figures["full_wafer_result_json_mb"] = (tmp / "result.json").stat().st_size / 1e6
        figures["full_wafer_result_load_s"] = once(lambda: outputs.load_result(tmp))
        n = len(big.spans["task"])
        region = (0, 0, wse2.mesh_cols, wse2.mesh_rows)   # every instance becomes an event
        t = once(lambda: trace.trace_events(big, region=region))
        figures["trace_events_per_s"] = n / t
        p = trace.write_trace(big, tmp / "t.json")   # default region: 32 x 32 window
        figures["full_wafer_trace_default_region_mb"] = p.stat().st_size / 1e6
        targets["full_wafer_trace_default_region_mb"] = {"max": 100.0}

        from wse_sim.engine import simulate
        from wse_sim.experiment import build_program
        hw = load_preset("mesh16")
        program = build_program(hw, "tiny", prompt=32)
        result = simulate(program, hw, engine="reference")
        figures["mesh16_write_outputs_s"] = once(
            lambda: outputs.write_outputs(result, tmp / "run", program=program, trace=True))
        targets["mesh16_write_outputs_s"] = {"max": 15.0}
    emit("bench_plots", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
