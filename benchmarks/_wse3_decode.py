"""What bench_precision and bench_sparsity share: LLaMA3-8B decode (context 128, batch 1,
layer-pipelined) on wse3 under a set of run options, and the smallest N x N grid each fits."""

from __future__ import annotations

from mapper.placement import MappingError
from wse_sim.engine import simulate
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset

MODEL, RUN = "llama3-8b", {"phase": "decode", "context": 128}


def program(hw, grid, kw):
    """The mapped program, or None where it does not fit."""
    try:
        return build_program(hw, MODEL, grid=grid, **RUN, **kw)
    except MappingError:
        return None


def smallest_grid(hw, kw, lo: int, hi: int) -> int:
    """The smallest N in (lo, hi] with the model fitting on an N x N grid (it fits on hi)."""
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if program(hw, mid, kw) is not None else (mid, hi)
    return hi


def bench_cases(figures: dict, cases: dict, searched) -> None:
    """Per case (name -> run options): tokens/s, SRAM on the fullest core and of a layer
    region (and its weights), the regions; for the names in `searched`, the smallest grid
    that fits, its cores and its tokens/s."""
    hw = load_preset("wse3")
    side = min(hw.mesh_cols, hw.mesh_rows)
    for name, kw in cases.items():
        p = program(hw, None, kw)
        r = simulate(p, hw, engine="fast")
        figures[f"{name}_tokens_per_s"] = r.tokens_per_s
        figures[f"{name}_sram_bytes_fullest_core"] = int(r.summary()["sram_bytes_per_core"])
        layer = p.meta["sram_buffers_per_core"]
        figures[f"{name}_layer_sram_bytes_per_core"] = int(sum(layer.values()))
        figures[f"{name}_layer_weights_bytes_per_core"] = layer["weights"]
        figures[f"{name}_regions"] = (f"{p.meta['regions']} of {p.meta['region_cols']} x "
                                      f"{p.meta['region_rows']} ({p.meta['table_regions']} "
                                      "for the table)")
        if name not in searched:
            continue
        g = smallest_grid(hw, kw, 256, side)
        figures[f"{name}_smallest_grid"] = g
        figures[f"{name}_smallest_grid_cores"] = g * g
        rg = simulate(program(hw, g, kw), hw, engine="fast")
        figures[f"{name}_smallest_grid_tokens_per_s"] = rg.tokens_per_s


def ratios(figures: dict, names, base: str, what: dict) -> None:
    """`figures[f"{name}_vs_{base}_{label}_ratio"]`: each case's figure `key` over the base
    case's, for every `label -> key` of `what` that both cases have (the same process)."""
    for name in names:
        if name == base:
            continue
        for label, key in what.items():
            got, ref = figures.get(f"{name}_{key}"), figures.get(f"{base}_{key}")
            if got is not None and ref is not None:
                figures[f"{name}_vs_{base}_{label}_ratio"] = got / ref
