"""Which activation layout maps a run: the one asked for, or `auto`.

`auto` (the default) keeps the top-row layout where it maps (the decode layout: a prefill on
it leaves the KV cache where the decode reads it) and takes the 2-D layout (`layout2d`)
where the top-row one does not fit or does not map the run: a long prompt, a real training
batch. The 2-D layout maps prefill and training with layer-sequential or weight-streaming,
and training with layer-pipelined (a region per layer, `layout2d_pipelined`); elsewhere
`auto` is the top-row layout. An option only the 2-D layout has (`gemm_algo`,
`recompute`, `optimizer`) asks for it. When no layout maps the run, the error gives each
one's reason and, where a larger grid would fit the 2-D layout, the grid from which it does.
"""

from __future__ import annotations

from collections.abc import Callable

from mapper.placement import MappingError
from mapper.strategies.layout2d import LAYOUTS
from wse_sim.hardware import ConfigError

CHOICES = ("auto",) + LAYOUTS
TWO_D_STRATEGIES = ("layer-sequential", "weight-streaming")
WHERE_2D = ("prefill and training with layer-sequential or weight-streaming, training with "
            "layer-pipelined")


def two_d_maps(phase: str, strategy: str) -> bool:
    """Whether the 2-D layout maps this phase under this strategy."""
    if strategy == "layer-pipelined":
        return phase == "train"
    return strategy in TWO_D_STRATEGIES and phase != "decode"


def candidates(layout: str, phase: str, strategy: str, gemm_algo: str = "auto",
               recompute: str = "on", optimizer: str = "offwafer") -> tuple[str, ...]:
    """The layouts to try, in order: the one given, or for `auto` (module docstring)."""
    if layout != "auto":
        return (layout,)
    asked = [f"{name}: got {v!r}" for name, v, default in
             (("gemm_algo", gemm_algo, "auto"), ("recompute", recompute, "on"),
              ("optimizer", optimizer, "offwafer")) if v != default]
    if not two_d_maps(phase, strategy):
        if asked:
            raise ConfigError(f"{asked[0]}, which applies only with layout 2d; layout auto is "
                              f"top-row for phase {phase} with strategy {strategy} (the 2-D "
                              f"layout maps {WHERE_2D})")
        return ("top-row",)
    return ("2d",) if asked else ("top-row", "2d")


def map_first(layouts: tuple[str, ...], map_one: Callable[[str], object]):
    """map_one(layout) of the first layout that maps the run. With one layout its errors
    are raised as they are, and so is one NotImplementedError that every layout gave; else
    one MappingError giving each layout's reason."""
    reasons, errors = [], []
    for layout in layouts:
        try:
            return map_one(layout)
        except (MappingError, NotImplementedError) as e:
            if len(layouts) == 1:
                raise
            reasons.append(f"{layout}: {str(e).splitlines()[0]}")
            errors.append(e)
    if all(isinstance(e, NotImplementedError) for e in errors) and \
            len({str(e) for e in errors}) == 1:  # what no layout maps: said once, as it was
        raise errors[0]
    raise MappingError("layout auto: no layout maps this run; " + "; ".join(reasons))


def smallest_grid(fits: Callable[[int], bool], grid: int, largest: int) -> int | None:
    """The least grid side above `grid`, up to `largest`, on which `fits` holds (the 2-D
    layout's bytes per core shrink as the grid grows: a binary search), or None."""
    if grid >= largest or not fits(largest):
        return None
    lo, hi = grid, largest  # fits(hi); not known at lo (refused by the caller)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi
