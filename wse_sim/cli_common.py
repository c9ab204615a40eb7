"""Argument helpers shared by the `wse-sim` sub-command modules."""

from __future__ import annotations

import argparse
import json
import sys

EXIT_BAD_INPUT = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one `error:` line and exit code 2."""

    def error(self, message: str):
        raise SystemExit(fail(f"{self.prog}: {message}"))


def fail(message: str) -> int:
    """Print one `error:` line on stderr; return the exit code for bad input."""
    print(f"error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def int_at_least(minimum: int, allowed: str):
    """An argparse type: an integer >= `minimum`; `allowed` says so in the error."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"got {text!r}, must be {allowed}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"got {v}, must be {allowed}")
        return v
    return parse


positive_int = int_at_least(1, "a positive integer")


def one_of(allowed: tuple):
    """An argparse type: one of `allowed`; the error names the value and what is allowed."""
    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"got {text!r}, must be one of {', '.join(allowed)}")
        return text
    return parse


def fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, must be a number in [0, 1)") from None
    if not 0 <= v < 1:
        raise argparse.ArgumentTypeError(f"got {v}, must be a number in [0, 1)")
    return v


def hardware_args(p: argparse.ArgumentParser, default_preset: str = "wse2") -> None:
    p.add_argument("--preset", default=default_preset,
                   help="preset name (see `wse-sim presets`) or a TOML file")
    p.add_argument("--set", action="append", metavar="FIELD=VALUE", default=[],
                   help="override a hardware field, e.g. --set clock_ghz=1.1 (repeatable)")
    p.add_argument("--engine", default="auto", choices=("auto", "reference", "fast"))
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    from wse_sim.cli_outputs import add_output_args  # --out DIR, --trace FILE, --trace-region
    add_output_args(p)




def effective_hardware(args):
    """The preset after --set overrides."""
    from wse_sim.hardware import load_preset, parse_set
    hw = load_preset(args.preset, parse_set(args.set))
    grid = getattr(args, "grid", None)
    if grid is not None and grid <= min(hw.mesh_cols, hw.mesh_rows):
        # Cores outside the grid take no part: simulate the grid alone (same cycles, less memory).
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
    from wse_sim.outputs import jsonable
    print(json.dumps(obj, default=jsonable))


def simulate_and_print(program, hw, args, title: str) -> int:
    """Simulate, then print the JSON object (--json) or the text report."""
    from wse_sim.cli_outputs import check_output_args, write_requested
    from wse_sim.engine import simulate
    from wse_sim.report import format_report
    check_output_args(args, hw)
    result = simulate(program, hw, engine=args.engine)
    written = write_requested(result, args, program=program, title=title)
    if getattr(args, "json", False):
        print_json(with_interface_keys(result.summary(), args, hw) | written)
    else:
        print(format_report(result, title))
    return 0
