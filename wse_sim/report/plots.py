"""Figures of a run: mesh heatmaps (this module), timeline, phases and roofline
(`wse_sim.report.plots_time`).

Everything uses matplotlib's object API (`Figure` + the Agg canvas): no pyplot, no global
figure state, nothing drawn or imported at import time. `heatmap_arrays(result)` returns the
arrays the heatmaps draw, so tests can check them against the SimResult's counters.

Meshes larger than `MAX_CELLS` cores along an axis are reduced by block-max (a hot core is
never averaged away) before `imshow`; the title then says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

FORMATS = ("png", "svg", "pdf")
PNG_DPI = 160
MAX_CELLS = 500          # cells drawn per mesh axis; bigger meshes are block-max reduced
FIGURE_NAMES = ("core_busy", "sram", "links_ew", "links_ns", "colors", "timeline", "phases",
                "roofline")

# heatmap array -> (figure title, file name, colormap)
MAPS = {
    "core_busy_fraction": ("Core busy fraction", "core_busy", "viridis"),
    "sram_bytes": ("SRAM high-water", "sram", "magma"),
    "link_util_east_west": ("Link utilization, east / west", "links_ew", "inferno"),
    "link_util_north_south": ("Link utilization, north / south", "links_ns", "inferno"),
    "colors": ("Routing colors per core", "colors", "cividis"),
}


# ---- data ----------------------------------------------------------------------------------
def heatmap_arrays(result) -> dict[str, np.ndarray]:
    """The (rows, cols) arrays the mesh heatmaps draw, before any downsampling:
    core busy fraction (busy / run cycles), SRAM high-water (bytes), link utilization
    (busy cycles / run cycles, the larger of the two directions of each pair) and colors."""
    from wse_sim.fabric import EAST, NORTH, SOUTH, WEST
    cyc = max(1, int(result.cycles))
    busy = np.asarray(result.core_busy_cycles, np.float64) / cyc
    lb = np.asarray(result.link_busy_cycles, np.float64) / cyc
    return {
        "core_busy_fraction": busy,
        "sram_bytes": np.asarray(result.sram_bytes),
        "link_util_east_west": np.maximum(lb[..., EAST], lb[..., WEST]),
        "link_util_north_south": np.maximum(lb[..., NORTH], lb[..., SOUTH]),
        "colors": np.asarray(result.colors),
    }


def block_max(a: np.ndarray, max_cells: int = MAX_CELLS) -> tuple[np.ndarray, int]:
    """Reduce a (rows, cols) array by the max over k x k blocks so that neither axis exceeds
    `max_cells`; returns (array, k). Edge blocks are padded with the array's minimum."""
    a = np.asarray(a)
    r, c = a.shape
    k = max(1, math.ceil(max(r, c) / max_cells))
    if k == 1:
        return a, 1
    pr, pc = -r % k, -c % k
    fill = a.min() if a.size else 0
    p = np.pad(a, ((0, pr), (0, pc)), constant_values=fill)
    return p.reshape((r + pr) // k, k, (c + pc) // k, k).max(axis=(1, 3)), k


# ---- figure plumbing -----------------------------------------------------------------------
def new_figure(width: float = 6.4, height: float = 4.8):
    """A Figure on the Agg canvas with constrained layout (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig, out_dir: Path, name: str, formats) -> list[Path]:
    """Save `fig` as out_dir/name.<fmt> for each format; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(out_dir) / f"{name}.{fmt}"
        kw = {"dpi": PNG_DPI} if fmt == "png" else {}
        if fmt == "svg":
            kw["metadata"] = {"Date": None}  # reproducible files
        fig.savefig(path, format=fmt, **kw)
        paths.append(path)
    return paths


def style():
    """rc settings for the figures, as a context manager (restored afterwards)."""
    import matplotlib
    return matplotlib.rc_context({
        "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
        "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.titlesize": 10,
        "svg.hashsalt": "wse-sim", "image.interpolation": "nearest",
    })


def _mesh_axes(ax, rows: int, cols: int) -> None:
    from matplotlib.ticker import MaxNLocator
    ax.set_xlabel("mesh column x (east →)")
    ax.set_ylabel("mesh row y (south ↓)")
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(nbins=8, integer=True))


def mesh_layout(rows: int, cols: int, width: float = 5.6):
    """(fig, ax, cax): a figure whose axes have the mesh's aspect ratio, and a colorbar axes
    beside it. Placed by hand in inches (no layout engine: the full wafer draws fast)."""
    left, right, top, bottom = 0.75, 1.0, 0.74, 0.55
    gap, bar = 0.12, 0.16
    aw = width - left - right - gap - bar
    ah = aw * rows / max(1, cols)
    if ah > 6.5:
        ah = 6.5
        aw = ah * cols / max(1, rows)
    ah = max(ah, 1.2)
    height = ah + top + bottom
    fig = new_figure(width, height)
    fig.set_layout_engine("none")
    ax = fig.add_axes((left / width, bottom / height, aw / width, ah / height))
    cax = fig.add_axes(((left + aw + gap) / width, bottom / height, bar / width, ah / height))
    return fig, ax, cax


def used_box(result) -> tuple[int, int, int, int] | None:
    """(x0, y0, cols, rows) of the cores that did anything (busy, SRAM, colors or a busy
    outgoing link); None when nothing did."""
    used = ((np.asarray(result.core_busy_cycles) > 0) | (np.asarray(result.sram_bytes) > 0)
            | (np.asarray(result.colors) > 0)
            | (np.asarray(result.link_busy_cycles) > 0).any(axis=-1))
    ys = np.flatnonzero(used.any(axis=1))
    xs = np.flatnonzero(used.any(axis=0))
    if not xs.size:
        return None
    return int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)


def _norm(cmap: str, vmin: float, vmax: float, discrete: bool):
    import matplotlib
    from matplotlib.colors import BoundaryNorm, Normalize
    if discrete:
        top = max(1, int(math.ceil(vmax)))
        bounds = np.arange(-0.5, top + 1.0, 1.0)
        cm = matplotlib.colormaps[cmap].resampled(len(bounds) - 1)
        return cm, BoundaryNorm(bounds, cm.N)
    return matplotlib.colormaps[cmap], Normalize(vmin, max(vmax, vmin + 1e-12))


def _inset(ax, data, box, cmap, norm, scale) -> None:
    """Zoom on the used cores when they cover a small corner of a large mesh."""
    x0, y0, c, r = box
    rows, cols = data.shape
    crop, k = block_max(data[y0:y0 + r, x0:x0 + c])
    crop = crop * scale if scale != 1.0 else crop
    # put the inset in the emptier half, away from the used box
    right = x0 + c / 2 < cols / 2
    lower = y0 + r / 2 < rows / 2
    frac = 0.45
    ratio = (r / c) * (cols / rows)   # inset height / width in axes fractions (equal aspect)
    w = frac if ratio <= 1 else frac / ratio
    h = frac * ratio if ratio <= 1 else frac
    pos = (0.97 - w if right else 0.03, 0.03 if lower else 0.97 - h, w, h)
    ins = ax.inset_axes(pos)
    ins.imshow(crop, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto",
               extent=(x0 - 0.5, x0 - 0.5 + crop.shape[1] * k,
                       y0 - 0.5 + crop.shape[0] * k, y0 - 0.5))
    ins.set_xlim(x0 - 0.5, x0 + c - 0.5)
    ins.set_ylim(y0 + r - 0.5, y0 - 0.5)
    ins.tick_params(labelsize=6, colors="white", length=2)
    for sp in ins.spines.values():
        sp.set_edgecolor("white")
    ins.set_title(f"cores used: {c} x {r} at ({x0},{y0})", fontsize=7, color="white", pad=2)
    ax.indicate_inset_zoom(ins, edgecolor="white", alpha=0.9)


def draw_heatmap(fig, ax, data: np.ndarray, *, title: str, label: str, cmap: str,
                 vmin: float = 0.0, vmax: float | None = None, discrete: bool = False,
                 scale: float = 1.0, cax=None, zoom: tuple | None = None):
    """imshow one (rows, cols) map with a colorbar; block-max reduced (by k x k blocks) when
    large; returns (image, k). Values are
    multiplied by `scale` for display (e.g. 100 for percent, 1/1024 for KiB). `zoom`:
    (x0, y0, cols, rows) of a region to repeat, enlarged, in an inset."""
    rows, cols = data.shape
    img, k = block_max(data)
    img = img * scale if scale != 1.0 else img
    if vmax is None:
        vmax = float(img.max()) if img.size else 1.0
    cm, norm = _norm(cmap, vmin, vmax, discrete)
    extent = (-0.5, -0.5 + img.shape[1] * k, -0.5 + img.shape[0] * k, -0.5)
    im = ax.imshow(img, cmap=cm, norm=norm, extent=extent, interpolation="nearest",
                   aspect="equal")
    kw = {"cax": cax} if cax is not None else {"ax": ax, "shrink": 0.9}
    cb = fig.colorbar(im, **kw)
    if discrete:
        top = int(round(norm.vmax - 0.5))
        step = max(1, math.ceil((top + 1) / 12))
        cb.set_ticks(list(range(0, top + 1, step)))
    cb.set_label(label)
    _mesh_axes(ax, rows, cols)
    if zoom is not None:
        _inset(ax, data, zoom, cm, norm, scale)
    ax.set_title(title, fontsize=9)
    return im, k


def _pct(frac: float) -> str:
    v = 100 * float(frac)
    return f"{v:.1f} %" if v >= 1 or v == 0 else f"{v:.2g} %"


def mesh_figures(result, out_dir: Path, formats, title: str = "") -> list[Path]:
    """One figure per mesh map: core busy, SRAM, links E/W, links N/S, colors. Each colorbar
    spans 0 to the map's largest value (SRAM: the capacity); when the cores used fill under a
    tenth of a large mesh, an inset repeats them enlarged."""
    arrays = heatmap_arrays(result)
    hw = result.hardware
    rows, cols = hw.mesh_rows, hw.mesh_cols
    ew = arrays["link_util_east_west"]
    ns = arrays["link_util_north_south"]
    sram_max = arrays["sram_bytes"].max(initial=0) / 1024
    box = used_box(result)
    zoom = box if box and box[2] * box[3] < 0.1 * rows * cols and max(rows, cols) >= 64 \
        else None
    specs = {
        "core_busy_fraction": dict(scale=100.0, label="busy cycles / run cycles (%)",
                                   sub=f"busiest core {_pct(arrays['core_busy_fraction'].max())}, "
                                       f"mean of the cores used "
                                       f"{_pct(result.busy_fraction())}"),
        "sram_bytes": dict(vmax=hw.sram_bytes / 1024, scale=1 / 1024,
                           label="high-water KiB per core",
                           sub=f"fullest core {sram_max:.1f} of {hw.sram_bytes / 1024:.0f} KiB"),
        "link_util_east_west": dict(scale=100.0, label="busy cycles / run cycles (%),\n"
                                    "larger of the E and W links", sub=f"busiest link {_pct(ew.max())}"),
        "link_util_north_south": dict(scale=100.0, label="busy cycles / run cycles (%),\n"
                                      "larger of the N and S links",
                                      sub=f"busiest link {_pct(ns.max())}"),
        "colors": dict(vmax=max(1, int(arrays["colors"].max(initial=0))), discrete=True,
                       label="routing colors in use",
                       sub=f"busiest router {int(arrays['colors'].max(initial=0))} of "
                           f"{hw.colors_per_core}"),
    }
    paths = []
    for key, (name, fname, cmap) in MAPS.items():
        st = specs[key]
        fig, ax, cax = mesh_layout(rows, cols)
        _, k = draw_heatmap(fig, ax, arrays[key], title=st["sub"], label=st["label"],
                            cmap=cmap, vmax=st.get("vmax"), discrete=st.get("discrete", False),
                            scale=st.get("scale", 1.0), cax=cax, zoom=zoom)
        head = f"{name}: {title}" if title else name
        mesh = f"{cols} x {rows} cores" + (f", drawn as the max over {k} x {k} blocks"
                                          if k > 1 else "")
        fig.suptitle(f"{head}\n{mesh}", y=1 - 0.06 / fig.get_figheight(), va="top",
                     fontsize=10)
        paths += save(fig, out_dir, fname, formats)
    return paths
