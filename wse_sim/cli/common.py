"""Argument helpers shared by the `wse-sim` sub-command modules."""

from __future__ import annotations

import argparse
import json

from wse_sim.cli.base import (  # noqa: F401  (re-exported to the sub-command modules)
    EXIT_BAD_INPUT,
    Parser,
    fail,
    fraction,
    int_at_least,
    one_of,
    positive_int,
)
from wse_sim.cli.outputs import add_output_args, check_output_args, write_requested


def hardware_args(p: argparse.ArgumentParser, default_preset: str | None = "wse2",
                  default_engine: str | None = "auto") -> None:
    """--preset, --set, --engine, --json and the output options. A None default (run) lets a
    run spec file supply the value when the option is not given."""
    p.add_argument("--preset", default=default_preset,
                   help="preset name (see `wse-sim presets`) or a TOML file"
                        + ("" if default_preset else " (default wse2)"))
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                   help="override a hardware field, e.g. --set clock_ghz=1.1 (repeatable)")
    p.add_argument("--engine", default=default_engine, choices=("auto", "reference", "fast"))
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    add_output_args(p)  # --out DIR, --trace FILE, --trace-region




def effective_hardware(args, whole_mesh: bool = False):
    """The preset after --set overrides (with `--grid`, the mesh cut to the grid unless
    `whole_mesh`)."""
    from wse_sim.hardware import load_preset, parse_set
    hw = load_preset(args.preset, parse_set(args.set))
    grid = None if whole_mesh else getattr(args, "grid", None)
    if grid is not None and grid <= min(hw.mesh_cols, hw.mesh_rows) and hw.repair() is None:
        # Cores outside the grid take no part: simulate the grid alone (same cycles, less memory).
        # Not with defects: they are drawn on the whole wafer, whose repair the grid's corner sees.
        hw = hw.with_overrides({"mesh_cols": grid, "mesh_rows": grid})
    return hw


def with_interface_keys(summary: dict, args, hw) -> dict:
    """Add the INTERFACES.md keys `preset` and `hardware` (the effective fields)."""
    out = dict(summary)
    out["preset"] = args.preset
    out["hardware"] = hw.to_dict()
    return out


def print_json(obj) -> None:
    """Exactly one JSON object on stdout."""
    from wse_sim.report.outputs import jsonable
    print(json.dumps(obj, default=jsonable))


def simulate_and_print(program, hw, args, title: str) -> int:
    """Simulate, then print the JSON object (--json) or the text report."""
    from wse_sim.engine import simulate
    from wse_sim.report.text import format_report
    check_output_args(args, hw)
    result = simulate(program, hw, engine=args.engine)
    written = write_requested(result, args, program=program, title=title)
    if getattr(args, "json", False):
        print_json(with_interface_keys(result.summary(), args, hw) | written)
    else:
        print(format_report(result, title))
    return 0
