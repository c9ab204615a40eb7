"""Sweep curves: a metric against one axis, one line per combination of the other axes.

    plot_sweep("runs/sram_clock")      # tokens_per_s against the first numeric axis
    plot_sweep("runs/sram_clock", metric="cycles", x="clock_ghz", out="figs")

Reads DIR/sweep.csv (and DIR/sweep.json for the axes and their order); writes
`sweep_<metric>_vs_<x>.png` and `.svg` into `out` (a folder; default DIR) and returns the paths.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from wse_sim.sweep.spec import SweepError
from wse_sim.sweep.table import METRICS, SPEC, STATUS_COLUMNS, TABLE, read_rows

DEFAULT_METRIC = "tokens_per_s"
MAX_LINES = 40


def _num(text: str) -> float | None:
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _axes(directory: Path, header: list[str]) -> tuple[list[str], dict]:
    """The sweep's columns (in order) and the axis values from sweep.json, if readable."""
    columns = header[:header.index("point_id")] if "point_id" in header else []
    try:
        spec = json.loads((directory / SPEC).read_text())
        return list(spec.get("columns", columns)), dict(spec.get("axes", {}))
    except (OSError, ValueError):
        return columns, {}


def _default_x(columns: list[str], axes: dict, rows: list[dict]) -> str:
    def numeric(c):
        vals = axes.get(c)
        if vals is not None:
            return all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals)
        return all(_num(r[c]) is not None for r in rows)

    def varies(c):
        return len({r[c] for r in rows}) > 1

    for pick in (lambda c: numeric(c) and varies(c), numeric, varies, lambda c: True):
        for c in columns:
            if pick(c):
                return c
    raise SweepError("sweep-plot: the sweep has no axes to plot against")


def _fmt(v: str) -> str:
    n = _num(v)
    return f"{n:g}" if n is not None and v not in ("", "full") else v


def plot_sweep(directory, metric: str | None = None, x: str | None = None,
               out=None) -> list[Path]:
    """Draw `metric` against axis `x` for the sweep in `directory`; returns [png, svg]."""
    directory = Path(directory)
    path = directory / TABLE
    if not path.exists():
        raise SweepError(f"{path}: no sweep table here (run `wse-sim sweep FILE --out DIR`)")
    header, rows, _ = read_rows(path)
    if not header:
        raise SweepError(f"{path}: the table is empty")
    columns, axes = _axes(directory, header)
    metric = metric or DEFAULT_METRIC
    numeric_cols = [c for c in header if c not in STATUS_COLUMNS]
    if metric not in numeric_cols:
        raise SweepError(f"sweep-plot: metric: got {metric!r}, must be one of "
                         f"{', '.join(c for c in header if c in METRICS or c in columns)}")
    ok = [r for r in rows if r.get("status") == "ok"]
    failed = len(rows) - len(ok)
    if not ok:
        raise SweepError(f"{path}: no successful points to plot ({failed} failed)")
    if x is None:
        x = _default_x(columns, axes, ok)
    elif x not in columns:
        raise SweepError(f"sweep-plot: x: got {x!r}, must be one of the sweep's axes: "
                         f"{', '.join(columns)}")
    others = [c for c in columns if c != x and len({r[c] for r in ok}) > 1]

    order = [str(v) for v in axes.get(x, [])]
    x_numeric = all(_num(r[x]) is not None for r in ok)
    if not x_numeric:
        seen = order + [r[x] for r in ok]
        order = list(dict.fromkeys(v for v in seen if any(r[x] == v for r in ok)))

    def xpos(r):
        return _num(r[x]) if x_numeric else order.index(r[x])

    groups: dict[tuple, list] = {}
    for r in ok:
        groups.setdefault(tuple(r[c] for c in others), []).append(r)
    if len(groups) > MAX_LINES:
        raise SweepError(f"sweep-plot: {len(groups)} curves (one per combination of "
                         f"{', '.join(others)}); at most {MAX_LINES}: pick another --x")

    from matplotlib.figure import Figure
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.add_subplot()
    ys_all, xs_all = [], []
    for key in sorted(groups, key=lambda k: tuple((_num(v) is None, _num(v) or 0, v)
                                                  for v in k)):
        pts = sorted(((xpos(r), _num(r[metric])) for r in groups[key]),
                     key=lambda t: t[0])
        pts = [(a, b) for a, b in pts if b is not None]
        if not pts:
            continue
        xs, ys = zip(*pts, strict=True)
        xs_all += xs
        ys_all += ys
        label = ", ".join(f"{c}={_fmt(v)}" for c, v in zip(others, key, strict=True)) or metric
        n = len(ax.lines)
        ax.plot(xs, ys, marker="os^vDP*X"[n % 8], linestyle=("-", "--", ":", "-.")[n // 8 % 4],
                markersize=5, label=label)
    if not ys_all:
        raise SweepError(f"sweep-plot: metric {metric!r} has no numeric values")
    if x_numeric and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 50:
        ax.set_xscale("log")
    if min(ys_all) > 0 and max(ys_all) / min(ys_all) >= 100:
        ax.set_yscale("log")
    if not x_numeric:
        ax.set_xticks(range(len(order)), [_fmt(v) for v in order])
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    title = f"{metric} vs {x}"
    if failed:
        title += f"  ({failed} failed point{'s' if failed > 1 else ''} not shown)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    if len(groups) > 1:
        ax.legend(fontsize=7 if len(groups) > 8 else 8, loc="best")

    out_dir = Path(out) if out is not None else directory
    if out_dir.suffix in (".png", ".svg"):
        stem, out_dir = out_dir.with_suffix(""), out_dir.parent
    else:
        stem = out_dir / f"sweep_{metric}_vs_{x}"
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for ext in ("png", "svg"):
        f = stem.with_name(f"{stem.name}.{ext}")
        fig.savefig(f, dpi=130)
        files.append(f)
    return files
