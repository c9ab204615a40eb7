"""Big dense models over several wafers (issue 18, item 3): for Llama-3.1-70B and -405B in
fp16 on wse3, decode at a 4,096-token context, the fewest wafers whose slices all fit (found
by mapping: `fewest_wafers`), the layers per wafer (`stage_split`: the wafers with the
embedding or the LM head take fewer when they must), SRAM per core of the fullest wafer, and
tokens/s with one token in flight (latency) and with every wafer busy (pipelined); the
weights-only lower bound on the wafers (their SRAM) is the baseline of the ratio. `--quick`:
70B only."""

from __future__ import annotations

import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402

MODELS = ("llama3.1-70b", "llama3.1-405b")
DECODE = dict(phase="decode", batch=1, prompt=128, context=4096, dtype="fp16", grid=None,
              sparsity=0.0)


def _model(figures: dict, name: str) -> None:
    from mapper.strategies.common import make_run, total_weight_bytes
    from mapper.strategies.layer_pipelined import fewest_wafers, stage_split
    from workloads.models import load_model
    from wse_sim.experiment import run_multi_wafer
    from wse_sim.hardware import load_preset
    hw, cfg = load_preset("wse3"), load_model(name)
    t0 = time.perf_counter()
    need = total_weight_bytes(make_run(cfg, hw, **DECODE))
    bound = math.ceil(need / (hw.mesh_cols * hw.mesh_rows * hw.sram_bytes))
    w = fewest_wafers(cfg, hw, **DECODE)
    split = stage_split(cfg, hw, w, **DECODE)
    out = run_multi_wafer(hw, name, wafers=w, phase="decode", context=4096, dtype="fp16")
    p = f"{name}."
    figures[p + "weights_gb"] = need / 1e9
    figures[p + "wafers_sram_bound"] = bound
    figures[p + "wafers"] = w
    figures[p + "wafers_vs_bound"] = w / bound
    figures[p + "layers_per_wafer"] = " ".join(map(str, split))
    figures[p + "sram_bytes_per_core_max"] = max(r.summary()["sram_bytes_per_core"]
                                                 for r in out["stages"])
    figures[p + "tokens_per_s"] = out["tokens_per_s"]
    figures[p + "pipelined_tokens_per_s"] = out["pipelined_tokens_per_s"]
    figures[p + "wall_s"] = round(time.perf_counter() - t0, 1)


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    figures: dict = {}
    for name in MODELS[:1] if args.quick else MODELS:
        _model(figures, name)
    emit("bench_big_models", figures, {}, args.json, machine_info())


if __name__ == "__main__":
    main()
