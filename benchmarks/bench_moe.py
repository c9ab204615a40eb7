"""MoE on the wafer (issue 21): decode tokens/s of mixture-of-experts models, by expert
placement and routing.

- `tiny_moe_<layout>_<routing>_tokens_per_s`: tiny-moe, decode, batch 16, context 64, on
  preset mesh32 (layer-pipelined), for each expert placement (blocks, strips, bands) and
  routing (uniform; skewed:1.5, seed 0); `..._imbalance`: the busiest expert's tokens over
  the mean (worst layer);
- `tiny_moe_routed_only_skew_slowdown`: the same model without its shared expert (which takes
  every token and so is the slowest expert whatever the routing): skewed:1.5 cycles over
  uniform cycles (blocks);
- `qwen3_30b_a3b_*`: the smallest real MoE model of the zoo on preset wse3 (the largest).
  Its fp16 weights (`weights_bytes`) exceed the wafer's SRAM (`wafer_sram_bytes`), so it
  does not fit one wafer: `wafers_needed_at_least` is their ratio rounded up (MoE models are
  not split over wafers yet). `layers_on_one_wafer` is the most of its 48 layers that
  layer-pipelined maps on one wse3 (decode, batch 1, context 128, blocks); `slice_*` is
  that slice's decode step (`slice_tokens_per_s`: tokens/s of that slice alone, not of the
  model). `--quick`: a 4-layer slice, no search for the most layers;
- `<model>_wafers_*` (`over_wafers`; also `python benchmarks/bench_moe_wafers.py`): each of
  qwen3-30b-a3b, mixtral-8x7b, gpt-oss-120b, qwen3-235b-a22b weight-resident over the fewest
  wse3 wafers that hold it, decode, batch 1, context 128, uniform routing;
- `<model>_weight_streaming_*` (qwen3-30b-a3b, gpt-oss-120b, mixtral-8x7b; not with --quick):
  the whole model on one wse3 with weight streaming (each layer's attention, router and only
  the experts its tokens chose stream in over the wafer's I/O, double-buffered), decode,
  batch 1, context 128, uniform routing: `tokens_per_s`, `cycles`, `io_bytes_per_token`.
Writes benchmarks/results/bench_moe.json and bench_moe.txt (not with --quick).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LAYOUTS = ("blocks", "strips", "bands")
ROUTINGS = (("uniform", "uniform"), ("skewed", "skewed:1.5"))


def _decode(hw, model: str, context_: int = 64, **kw):
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    program = build_program(hw, model, phase="decode", context=context_, **kw)
    return simulate(program, hw, engine="fast"), program


def tiny(figures: dict) -> None:
    from wse_sim.hardware import load_preset
    hw = load_preset("mesh32")
    for layout in LAYOUTS:
        for tag, spec in ROUTINGS:
            r, p = _decode(hw, "tiny-moe", batch=16, moe_layout=layout, routing=spec)
            figures[f"tiny_moe_{layout}_{tag}_tokens_per_s"] = r.tokens_per_s
            figures[f"tiny_moe_{layout}_{tag}_imbalance"] = p.meta["moe"]["max_imbalance"]
    from workloads.models import list_models
    assert "tiny-moe" in list_models()
    text = (Path(__file__).resolve().parents[1] / "workloads" / "zoo" / "tiny-moe.toml")
    lines = [ln for ln in text.read_text().splitlines() if "published" not in ln]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny-moe-routed-only.toml"
        model.write_text("\n".join(lines).replace("n_shared_experts = 1", "n_shared_experts = 0"))
        uni = _decode(hw, str(model), batch=16, routing="uniform")[0].cycles
        skew = _decode(hw, str(model), batch=16, routing="skewed:1.5")[0].cycles
    figures["tiny_moe_routed_only_skew_slowdown"] = skew / uni


def most_layers(cfg, hw, fits, hi: int) -> int:
    """The most layers (1..hi) for which `fits(n)` holds (it holds for fewer when it holds)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def qwen(figures: dict, quick: bool) -> None:
    from mapper.placement import MappingError
    from mapper.strategies.layer_pipelined import map_layer_pipelined
    from workloads.models import load_model
    from wse_sim.engine import simulate
    from wse_sim.hardware import load_preset
    hw, cfg = load_preset("wse3"), load_model("qwen3-30b-a3b")
    need = cfg.param_count() * 2
    have = hw.mesh_cols * hw.mesh_rows * hw.sram_bytes
    figures |= {"qwen3_30b_a3b_weights_bytes": need, "qwen3_30b_a3b_wafer_sram_bytes": have,
                "qwen3_30b_a3b_wafers_needed_at_least": math.ceil(need / have)}

    def build(n: int):
        return map_layer_pipelined(cfg.with_overrides(n_layers=n), hw, phase="decode",
                                   batch=1, context=128)

    def fits(n: int) -> bool:
        try:
            build(n)
        except MappingError:
            return False
        return True

    n = 4 if quick else most_layers(cfg, hw, fits, cfg.n_layers)
    r = simulate(build(n), hw, engine="fast")
    figures |= {"qwen3_30b_a3b_layers_on_one_wafer": n, "qwen3_30b_a3b_slice_cycles": r.cycles,
                "qwen3_30b_a3b_slice_tokens_per_s": r.tokens_per_s,
                "qwen3_30b_a3b_slice_cycles_per_layer": r.cycles / n}


def streaming(figures: dict) -> None:
    from wse_sim.hardware import load_preset
    hw = load_preset("wse3")
    for model in ("qwen3-30b-a3b", "gpt-oss-120b", "mixtral-8x7b"):
        r, _ = _decode(hw, model, batch=1, strategy="weight-streaming", context_=128)
        key = model.replace("-", "_").replace(".", "_")
        figures |= {f"{key}_weight_streaming_tokens_per_s": r.tokens_per_s,
                    f"{key}_weight_streaming_cycles": r.cycles,
                    f"{key}_weight_streaming_io_bytes_per_token": r.io_bytes / r.tokens}


WAFER_MODELS = ("qwen3-30b-a3b", "mixtral-8x7b", "gpt-oss-120b", "qwen3-235b-a22b")


def over_wafers(figures: dict, models=WAFER_MODELS) -> None:
    """Each model weight-resident over the fewest wse3 wafers that hold it (layers split
    evenly, layer-pipelined on each, joined by the system I/O), decode, batch 1, context
    128, uniform routing: latency tokens/s and with every wafer busy."""
    from mapper.placement import MappingError
    from workloads.models import load_model
    from wse_sim.experiment import run_multi_wafer
    from wse_sim.hardware import load_preset
    hw = load_preset("wse3")
    for model in models:
        key = model.replace("-", "_").replace(".", "_")
        cfg = load_model(model)
        wafers = math.ceil(2 * cfg.param_count() / (hw.cores * hw.sram_bytes))  # fp16
        while True:
            try:
                r = run_multi_wafer(hw, model, wafers=wafers, phase="decode", context=128,
                                    engine="fast")
                break
            except MappingError:
                wafers += 1
        figures |= {f"{key}_wafers": wafers, f"{key}_wafers_tokens_per_s": r["tokens_per_s"],
                    f"{key}_wafers_pipelined_tokens_per_s": r["pipelined_tokens_per_s"],
                    f"{key}_wafers_cycles": r["cycles"]}


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    figures: dict = {}
    tiny(figures)
    qwen(figures, args.quick)
    if not args.quick:
        streaming(figures)
        over_wafers(figures)
    machine = machine_info()
    if not args.quick:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "bench_moe.json").write_text(json.dumps(
            {"benchmark": "bench_moe", "machine": machine, "figures": figures, "targets": {}},
            indent=1) + "\n")
        table = io.StringIO()
        with contextlib.redirect_stdout(table):
            emit("bench_moe", figures, {}, False, machine)
        (RESULTS / "bench_moe.txt").write_text(table.getvalue())
    emit("bench_moe", figures, {}, args.json, machine)


if __name__ == "__main__":
    main()
