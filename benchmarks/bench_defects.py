"""Defects and spares: what a fraction of defective cores costs a model on the wafer.

Simulated: Cerebras-GPT-111M decode (context 128, batch 1, layer-pipelined, fp16) on wse3 with
its spares (26 spare columns, 41 spare rows: docs/hardware-model.md "Defects and spares") and
a seeded random fraction of defective cores, 0, 0.1 %, 0.5 %, 1 %, 2 % and 5 %: the repair
(defective cores, rows retired, spare rows and spare-column cores used, rows lost, usable
cores, the most extra hops of a route's x or y segment) and tokens/s, or the refusal when the
mapping needs rows the repair lost; where some row has more defects than the spare columns,
the same fraction again with as many spare columns as that row needs. Ratios are against the
0-defect run of the same process.
``--quick``: 0 and 1 % only.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit, machine_info, parse_args  # noqa: E402

from wse_sim.engine import simulate  # noqa: E402
from wse_sim.errors import ConfigError  # noqa: E402
from wse_sim.experiment import build_program  # noqa: E402
from wse_sim.hardware import load_preset  # noqa: E402

PRESET, MODEL, SEED = "wse3", "cerebras-gpt-111m", 0
RUN = {"phase": "decode", "context": 128}
FRACTIONS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05)
REPAIR = ("defective_cores", "rows_retired", "spare_rows_used", "spare_cores_used",
          "spare_cols_needed", "rows_lost", "usable_cores", "detour_hops_max")


def case(figures: dict, fraction: float, spare_cols: int | None = None) -> dict:
    """One defect fraction (and spare columns, else the preset's): the repair's counts, then
    tokens/s or the refusal. Returns the repair's summary."""
    name = f"defects_{fraction * 100:g}pct" + (f"_spare_cols_{spare_cols}" if spare_cols else "")
    more = {"spare_cols": spare_cols} if spare_cols else {}
    hw = load_preset(PRESET, {"defect_fraction": fraction, "defect_seed": SEED, **more})
    rep = hw.repair()
    summary = rep.summary() if rep is not None else {
        "defective_cores": 0, "rows_retired": 0, "spare_rows_used": 0, "spare_cores_used": 0,
        "spare_cols_needed": 0, "rows_lost": 0, "usable_cores": hw.cores, "detour_hops_max": 0}
    for key in REPAIR:
        figures[f"{name}_{key}"] = summary[key]
    program = build_program(hw, MODEL, **RUN)
    try:
        r = simulate(program, hw, engine="fast")
    except ConfigError as e:
        figures[f"{name}_refused"] = str(e)
        return summary
    figures[f"{name}_cycles"] = r.cycles
    figures[f"{name}_tokens_per_s"] = r.tokens_per_s
    figures[f"{name}_bytes_hops"] = r.bytes_hops
    return summary


def bench(figures: dict, quick: bool) -> None:
    hw = load_preset(PRESET)
    figures["mesh"] = f"{hw.mesh_cols} x {hw.mesh_rows} + {hw.spare_cols} spare cols, " \
                      f"{hw.spare_rows} spare rows"
    fractions = (0.0, 0.01) if quick else FRACTIONS
    names = []
    for f in fractions:
        need = case(figures, f)["spare_cols_needed"]
        names.append(f"defects_{f * 100:g}pct")
        if need > hw.spare_cols:  # the spare columns that would repair every row
            case(figures, f, need)
            names.append(f"defects_{f * 100:g}pct_spare_cols_{need}")
    base = figures["defects_0pct_tokens_per_s"]
    for name in names[1:]:
        got = figures.get(f"{name}_tokens_per_s")
        if got is not None:
            figures[f"{name}_vs_0pct_tokens_ratio"] = got / base


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    figures, targets = {}, {}
    t0 = time.perf_counter()
    bench(figures, args.quick)
    figures["wall_seconds"] = time.perf_counter() - t0
    emit("bench_defects", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
