"""`wse-sim plot` and the --out / --trace / --trace-region options of the simulating commands.

    wse-sim run --preset mesh16 --model tiny --out runs/tiny --trace runs/tiny.trace.json
    wse-sim plot runs/tiny                 # re-draw the figures from runs/tiny/result.json
    wse-sim plot runs/tiny/result.json --out figs --format png
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import sys
from pathlib import Path

from wse_sim.cli.base import fail


def _region(text: str):
    from wse_sim.report.trace import parse_region
    try:
        return parse_region(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_output_args(p: argparse.ArgumentParser) -> None:
    """--out DIR, --trace FILE, --trace-region X0,Y0,COLS,ROWS (idempotent)."""
    if "--out" in p._option_string_actions:
        return
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write the run's folder: result.json, summary.txt, ops.csv, "
                        "phases.csv and figures (PNG + SVG)")
    p.add_argument("--trace", metavar="FILE", default=None,
                   help="write a Chrome / Perfetto trace (JSON) of the run")
    p.add_argument("--trace-region", metavar="X0,Y0,COLS,ROWS", type=_region, default=None,
                   help="cores whose instances the trace keeps (default: the whole mesh up "
                        "to 64 x 64, else a 32 x 32 window at the busy cores' corner)")


def check_output_args(args, hw) -> None:
    """Fail early (before simulating) on a bad --trace-region; ConfigError names it."""
    region = getattr(args, "trace_region", None)
    if region is None:
        return
    from wse_sim.hardware import ConfigError
    from wse_sim.report.trace import check_region
    if not getattr(args, "trace", None):
        raise ConfigError("--trace-region: needs --trace FILE")
    check_region(region, hw)


def _with_suffix(path, tag: str | None):
    if not path or not tag:
        return path
    p = Path(path)
    return p.with_name(f"{p.stem}.{tag}{p.suffix or '.json'}")


def write_requested(result, args, *, program=None, title: str = "",
                    tag: str | None = None) -> dict:
    """Write what --out / --trace asked for; returns JSON-able {"out": dir, "trace": file}.
    `tag` (e.g. the demo's phase) makes a sub-folder of --out and a suffix of --trace."""
    out = getattr(args, "out", None)
    trace = _with_suffix(getattr(args, "trace", None), tag)
    region = getattr(args, "trace_region", None)
    done: dict = {}
    if out:
        from wse_sim.report.outputs import write_outputs
        out_dir = Path(out) / tag if tag else Path(out)
        w = write_outputs(result, out_dir, trace=trace or None, trace_region=region,
                          program=program, title=title or None)
        done["out"] = str(w["dir"])
        print(f"wrote {len(w['files'])} files to {w['dir']}/", file=sys.stderr)
        if w["trace"]:
            done["trace"] = str(w["trace"])
    elif trace:
        import os

        from wse_sim.report.outputs import OutputError
        from wse_sim.report.tasks import tasks_of
        from wse_sim.report.trace import write_trace
        path = Path(trace)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_trace(result, tmp, tasks=tasks_of(result, program), region=region)
            os.replace(tmp, path)
        except OSError as e:
            raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None
        finally:
            if tmp.exists():
                tmp.unlink()
        done["trace"] = str(path)
    if done.get("trace"):
        print(f"wrote trace {done['trace']} (open in ui.perfetto.dev)", file=sys.stderr)
    return done


def cmd_plot(args) -> int:
    from wse_sim.report.figures import draw_figures
    from wse_sim.report.outputs import OutputError, load_result
    from wse_sim.report.plots import FORMATS
    src = Path(args.result)
    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        return fail(f"plot: --format: got {args.format!r}, must be a comma list of "
                    f"{', '.join(FORMATS)}")
    if not src.exists():
        return fail(f"plot: {src}: no such file or folder")
    sweep = src.is_dir() and (src / "sweep.csv").is_file()
    has_result = (src / "result.json").is_file() if src.is_dir() else True
    written: list = []
    if sweep:
        if importlib.util.find_spec("wse_sim.sweep.plots") is None:
            return fail(f"plot: {src} holds a sweep table, but sweep plots are not available")
        fn = importlib.import_module("wse_sim.sweep.plots").plot_sweep
        kw = {"out": args.out} if args.out and "out" in inspect.signature(fn).parameters else {}
        try:
            written += list(fn(src, **kw) or [])
        except (ValueError, OSError) as e:
            return fail(f"plot: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        if not has_result:
            print(f"wrote {len(written)} files", file=sys.stderr)
            return 0
    try:
        result = load_result(src)
    except OutputError as e:
        return fail(f"plot: {e}")
    out = Path(args.out) if args.out else (src if src.is_dir() else src.parent)
    try:
        out.mkdir(parents=True, exist_ok=True)
        from wse_sim.report.outputs import run_title
        written += draw_figures(result, out, formats=formats, tasks=result.meta.get("tasks"),
                                title=run_title(result))
    except OSError as e:
        return fail(f"plot: {out}: cannot write ({e.strerror or e})")
    print(f"wrote {len(written)} files to {out}/", file=sys.stderr)
    return 0


def register(sub) -> dict:
    p = sub.add_parser("plot", help="re-draw a run's figures from its result.json (no re-run)")
    p.add_argument("result", metavar="RESULT",
                   help="a result.json, or a folder holding one (or a sweep's sweep.csv)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for the figures (default: beside the result)")
    p.add_argument("--format", default="png,svg", help="comma list of png, svg, pdf")
    demo = sub.choices.get("demo")   # the demo writes --out / --trace too (one per phase)
    if demo is not None:
        add_output_args(demo)
    return {"plot": cmd_plot}


def write_file(path, text: str) -> None:
    """Write one output file (its folder made first); an OS error is one OutputError line
    naming the path."""
    from wse_sim.report.outputs import OutputError
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror or e})") from None


def write_json(path, obj) -> None:
    """`write_file` of `obj` as indented JSON (numpy values made plain)."""
    from wse_sim.report.outputs import jsonable
    write_file(path, json.dumps(obj, indent=1, default=jsonable) + "\n")
