"""Whole-model mappings: `strategies()` maps a name to `map(cfg, hw, *, phase, batch, prompt,
context, dtype, grid, sparsity, functional=False, chunks=1) -> Program` (`chunks`: the fewest
chunks a prefill runs in; more are used when a layer's buffers need them)."""

from __future__ import annotations


def strategies() -> dict:
    """Name -> mapping function (imported on demand: no work at import time)."""
    from mapper.strategies.layer_pipelined import map_layer_pipelined
    from mapper.strategies.single_region import map_layer_sequential, map_weight_streaming
    return {"layer-pipelined": map_layer_pipelined, "layer-sequential": map_layer_sequential,
            "weight-streaming": map_weight_streaming}


NAMES = ("layer-pipelined", "layer-sequential", "weight-streaming")
