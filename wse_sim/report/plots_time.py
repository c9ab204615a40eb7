"""Figures over time and per op: the timeline, where the time goes per phase, the roofline.

Same conventions as `wse_sim.report.plots` (object API, Agg canvas, no global state). Simulated time
is drawn in µs (cycles / clock).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wse_sim.report.plots import new_figure, save

COMPUTE_COLOR = "#1f77b4"
COMM_COLOR = "#ff7f0e"
IDLE_COLOR = "#d9d9d9"
MAX_FAMILIES = 10


def _us(result) -> float:
    return 1e6 / result.hardware.clock_hz   # µs per cycle


def _phases_in_order(result) -> list[str]:
    from wse_sim.report.text import phase_of
    order = sorted(result.ops.items(), key=lambda kv: (kv[1]["start"], kv[1]["end"]))
    return list(dict.fromkeys(phase_of(n) for n, _ in order))


def compute_activity(result, tasks, bins: int = 400):
    """(bin edges in cycles, mean cores computing per bin) from the compute instances' spans,
    or None when the spans or the task kinds are unknown."""
    from wse_sim.report.trace import _active_average
    sp = result.spans
    if sp is None or not tasks or result.cycles <= 0:
        return None
    comp = np.array([t.get("kind") == "Compute" for t in tasks], bool)
    task = np.asarray(sp["task"], np.int64)
    m = (task < len(comp)) & comp[np.clip(task, 0, len(comp) - 1)]
    edges = np.linspace(0, int(result.cycles), min(bins, int(result.cycles)) + 1)
    return edges, _active_average(np.asarray(sp["start"])[m], np.asarray(sp["end"])[m], edges)


def timeline_figure(result, out_dir: Path, formats, tasks=None, title: str = "") -> list[Path]:
    """Gantt of ops by phase (compute ops vs transfers / streams; gaps are idle) over
    simulated time, and below it the share of the used cores computing."""
    from matplotlib.patches import Patch

    from wse_sim.report.text import is_compute, phase_of
    us = _us(result)
    phases = _phases_in_order(result)
    act = compute_activity(result, tasks)
    n = max(1, len(phases))
    height = min(11.0, 2.2 + 0.22 * n + (1.6 if act is not None else 0))
    fig = new_figure(7.2, height)
    if act is not None:
        gs = fig.add_gridspec(2, 1, height_ratios=[max(2.0, 0.22 * n), 1.4])
        ax = fig.add_subplot(gs[0])
        ax2 = fig.add_subplot(gs[1], sharex=ax)
    else:
        ax, ax2 = fig.add_subplot(), None
    row = {p: i for i, p in enumerate(phases)}
    bars: dict[tuple, list] = {}
    for name, o in result.ops.items():
        kind = "compute" if is_compute(o.get("kind", "")) else "comm"
        span = max(o["end"] - o["start"], 0)
        bars.setdefault((phase_of(name), kind), []).append((o["start"] * us, max(span, 1) * us))
    for (ph, kind), xr in sorted(bars.items(), key=lambda kv: kv[0][1] == "compute"):
        y = row[ph]
        if kind == "comm":
            ax.broken_barh(xr, (y - 0.38, 0.76), facecolors=COMM_COLOR, linewidth=0, alpha=0.9)
        else:
            ax.broken_barh(xr, (y - 0.26, 0.52), facecolors=COMPUTE_COLOR, linewidth=0)
    ax.set_yticks(range(len(phases)), phases, fontsize=8 if n <= 30 else 6)
    ax.set_ylim(n - 0.5, -0.5)
    ax.set_xlim(0, max(1, result.cycles) * us)
    ax.set_ylabel("phase (op-name prefix)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(handles=[Patch(color=COMPUTE_COLOR, label="compute op in progress"),
                        Patch(color=COMM_COLOR, label="transfer / stream op in progress"),
                        Patch(facecolor="white", edgecolor="0.6", label="gap: idle")],
               loc="outside lower center", ncols=3, frameon=False)
    cp = result.compute_cycles / max(1, result.cycles)
    ax.set_title(f"Timeline: {result.cycles:,} cycles = {result.cycles * us:,.2f} µs; critical "
                 f"path {100 * cp:.0f} % computing, {100 * (1 - cp):.0f} % on the fabric")
    if ax2 is not None:
        edges, active = act
        cores = result.cores_used or result.hardware.cores
        x = np.repeat(edges * us, 2)[1:-1]
        y = np.repeat(100 * active / cores, 2)
        ax2.fill_between(x, y, color=COMPUTE_COLOR, alpha=0.8, linewidth=0)
        ax2.set_ylabel("cores computing\n(% of cores used)")
        ax2.set_ylim(0, max(1.0, float(y.max(initial=0)) * 1.15))
        ax2.grid(alpha=0.3)
        ax2.set_xlabel("simulated time (µs)")
        ax.tick_params(labelbottom=False)
    else:
        ax.set_xlabel("simulated time (µs)")
    if title:
        fig.suptitle(title)
    return save(fig, out_dir, "timeline", formats)


def phases_figure(result, out_dir: Path, formats, title: str = "") -> list[Path]:
    """Stacked bars of where the wall-clock time goes: per phase (compute / fabric only /
    idle within the phase's window) and per op family (active time, compute vs fabric)."""
    from wse_sim.report.text import phase_rows
    us = _us(result)
    rows = phase_rows(result)
    ph = [r for r in rows if r["level"] == "phase"]
    fam = sorted((r for r in rows if r["level"] == "family"),
                 key=lambda r: r["compute_cycles"] + r["comm_cycles"], reverse=True)[:15]
    n = max(len(ph), len(fam), 1)
    fig = new_figure(8.6, min(11.0, 1.8 + 0.22 * n))
    a1, a2 = fig.subplots(1, 2)
    for ax, data, what in ((a1, ph, "phase"), (a2, fam, "op family (all layers)")):
        if not data:
            ax.set_axis_off()
            continue
        names = [r["name"] for r in data]
        y = np.arange(len(data))
        c = np.array([r["compute_cycles"] for r in data]) * us
        m = np.array([r["comm_cycles"] for r in data]) * us
        ax.barh(y, c, color=COMPUTE_COLOR, label="compute op in progress")
        ax.barh(y, m, left=c, color=COMM_COLOR, label="only transfers / streams")
        total = c + m
        if what == "phase":
            i = np.array([r["idle_cycles"] for r in data]) * us
            ax.barh(y, i, left=c + m, color=IDLE_COLOR, label="idle")
            total = total + i
        ax.set_xlim(0, max(float(total.max(initial=0)), 1e-9) * 1.04)
        ax.set_yticks(y, names, fontsize=8 if len(data) <= 30 else 6)
        ax.set_ylim(len(data) - 0.5, -0.5)
        ax.set_xlabel("wall-clock time (µs)")
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(f"per {what}")
    fig.legend(*a1.get_legend_handles_labels(), loc="outside lower center", ncols=3,
               frameon=False)
    sup = "Where the time goes"
    fig.suptitle(f"{sup}: {title}" if title else sup)
    return save(fig, out_dir, "phases", formats)


def roofline_points(result, tasks) -> list[dict]:
    """Per compute op with known SRAM traffic: intensity (FLOPs per SRAM byte read + written)
    and achieved FLOP/s per core while computing (FLOPs / busy core-cycles x clock)."""
    from wse_sim.report.tasks import op_info
    from wse_sim.report.text import family_of, is_compute
    info = op_info(tasks)
    pts = []
    for name, o in result.ops.items():
        if not is_compute(o.get("kind", "")) or not o["flops"] or not o["busy_cycles"]:
            continue
        i = info.get(name, {})
        sram = o.get("sram_bytes", i.get("sram_bytes"))
        pts.append({"op": name, "family": family_of(name), "flops": int(o["flops"]),
                    "sram_bytes": sram, "dtype": i.get("dtype", result.dtype),
                    "compute": i.get("compute", "fmac"),
                    "intensity": o["flops"] / sram if sram else None,
                    "flops_per_core_s": o["flops"] / o["busy_cycles"] * result.hardware.clock_hz})
    return pts


def roofline_figure(result, out_dir: Path, formats, tasks=None, title: str = "") -> list[Path]:
    """Roofline per compute op: FLOPs per SRAM byte vs FLOP/s per core, under the core's
    compute ceilings per dtype (FMAC ops: 2 FLOPs per lane per cycle; vector ops: 1) and its
    SRAM-bandwidth ceiling (read + write bytes per cycle)."""
    import matplotlib
    hw = result.hardware
    clock = hw.clock_hz
    pts = roofline_points(result, tasks)
    shown = [p for p in pts if p["intensity"]]
    fig = new_figure(8.2, 4.8)
    ax = fig.add_subplot()
    bw = (hw.sram_read_bytes_per_cycle + hw.sram_write_bytes_per_cycle) * clock
    dtypes = sorted({p["dtype"] for p in pts} or {result.dtype}, key=lambda d: -hw.lanes(d))
    ai = np.array([p["intensity"] for p in shown]) if shown else np.array([1.0])
    peak_top = max(hw.peak_flops_per_core_cycle(d) * clock for d in dtypes)
    lo = min(float(ai.min()) / 3, peak_top / bw / 30)
    hi = max(float(ai.max()) * 3, peak_top / bw * 30)
    xs = np.geomspace(lo, hi, 400)
    styles = ("-", "--", ":")
    for j, d in enumerate(dtypes):
        for peak, color, what in ((hw.peak_flops_per_core_cycle(d) * clock, "0.15", "FMAC"),
                                  (hw.lanes(d) * clock, "0.6", "vector-op")):
            ax.plot(xs, np.minimum(xs * bw, peak), color=color, ls=styles[j % 3], lw=1.3,
                    zorder=2, label=f"{d} {what} peak {peak / 1e9:.2f} GFLOP/s")
    ax.plot([], [], " ", label=f"slope: SRAM {bw / 1e9:.1f} GB/s per core\n"
            f"({hw.sram_read_bytes_per_cycle} B/cycle read + "
            f"{hw.sram_write_bytes_per_cycle} B/cycle write)")
    if shown:
        fams: dict[str, int] = {}
        for p in shown:
            fams[p["family"]] = fams.get(p["family"], 0) + p["flops"]
        top = [f for f, _ in sorted(fams.items(), key=lambda kv: -kv[1])[:MAX_FAMILIES]]
        cmap = matplotlib.colormaps["tab10"]
        fmax = max(p["flops"] for p in shown)
        for k, fam in enumerate(top + ["other"]):
            sel = [p for p in shown if (p["family"] == fam if fam != "other"
                                        else p["family"] not in top)]
            color = cmap(k % 10) if fam != "other" else "0.6"
            labelled = False
            for marker, fmac in (("o", True), ("^", False)):
                s2 = [p for p in sel if (p["compute"] == "fmac") == fmac]
                if not s2:
                    continue
                ax.scatter([p["intensity"] for p in s2], [p["flops_per_core_s"] for p in s2],
                           s=[18 + 110 * np.sqrt(p["flops"] / fmax) for p in s2], marker=marker,
                           color=color, edgecolor="k", linewidth=0.4, alpha=0.85, zorder=3,
                           label=None if labelled else fam)
                labelled = True
    else:
        ax.text(0.5, 0.5, "per-op SRAM traffic not recorded\n(write outputs with program=...)",
                transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.legend(title="ceilings, then op families\n(size ~ FLOPs; ● FMAC, ▲ vector op)",
              fontsize=7, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, alignment="left")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ymin = min([p["flops_per_core_s"] for p in shown] + [peak_top / 100]) / 3
    ax.set_ylim(ymin, peak_top * 3)
    ax.set_xlabel("arithmetic intensity (FLOPs per SRAM byte read + written)")
    ax.set_ylabel("achieved FLOP/s per core while computing")
    ax.grid(which="major", alpha=0.25)
    missing = len(pts) - len(shown)
    ax.set_title("Roofline of the compute ops (one point per op)"
                 + (f"; {missing} without SRAM traffic not shown" if missing and shown else ""))
    if title:
        fig.suptitle(title)
    return save(fig, out_dir, "roofline", formats)
