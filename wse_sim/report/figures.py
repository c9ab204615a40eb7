"""Every figure of a run, drawn into a folder: the mesh maps (`plots`) and the time figures
(`plots_time`)."""

from __future__ import annotations

from pathlib import Path

from wse_sim.report import plots_time
from wse_sim.report.plots import FIGURE_NAMES, mesh_figures, style


def draw_figures(result, out_dir, *, formats=("png", "svg"), tasks=None, title: str = "",
                 only=None) -> list[Path]:
    """Draw every figure of a run into `out_dir`; returns the files written.
    `only`: a subset of FIGURE_NAMES (mesh maps are all-or-nothing under 'core_busy')."""
    out_dir = Path(out_dir)
    formats = tuple(formats)
    want = set(only or FIGURE_NAMES)
    paths: list[Path] = []
    with style():
        if want & {"core_busy", "sram", "links_ew", "links_ns", "colors"}:
            paths += mesh_figures(result, out_dir, formats, title)
        if "timeline" in want:
            paths += plots_time.timeline_figure(result, out_dir, formats, tasks, title)
        if "phases" in want:
            paths += plots_time.phases_figure(result, out_dir, formats, title)
        if "roofline" in want:
            paths += plots_time.roofline_figure(result, out_dir, formats, tasks, title)
    return paths
