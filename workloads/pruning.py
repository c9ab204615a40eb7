"""Magnitude pruning of weight matrices (numpy), as the sparse formats of a run ask
(docs/sparsity.md): the functional run and the numpy reference compute with the same pruned
weights.

- `prune_fraction(w, fraction)`: zero the `round(fraction x size)` entries of smallest
  magnitude of the whole matrix (ties: the earlier entry in row-major order goes first);
- `prune_n_m(w, n, m)`: in every group of `m` consecutive entries along the reduction
  dimension (axis 0 of a (k, n) weight: the inputs a column sums over) keep the `n` of largest
  magnitude (a last, shorter group keeps min(n, its length)).
"""

from __future__ import annotations

import numpy as np


def prune_fraction(w: np.ndarray, fraction: float) -> np.ndarray:
    """`w` with its `round(fraction x w.size)` smallest-magnitude entries set to zero."""
    if not 0 <= fraction < 1:
        raise ValueError(f"prune_fraction: fraction got {fraction!r}, must be in [0, 1)")
    zeros = int(round(fraction * w.size))
    if zeros == 0:
        return w.copy()
    flat = w.reshape(-1).copy()
    order = np.argsort(np.abs(flat), kind="stable")
    flat[order[:zeros]] = 0
    return flat.reshape(w.shape)


def prune_n_m(w: np.ndarray, n: int, m: int) -> np.ndarray:
    """`w` (k, cols) with only the `n` largest-magnitude entries of every `m` consecutive rows
    of each column kept."""
    if w.ndim != 2 or not 1 <= n < m:
        raise ValueError(f"prune_n_m: got a {w.ndim}-d weight and {n}:{m}; needs a 2-d weight "
                         "and 1 <= n < m")
    k = w.shape[0]
    out = w.copy()
    for g0 in range(0, k, m):
        blk = out[g0:g0 + m]  # a view: (group, cols)
        drop = blk.shape[0] - min(n, blk.shape[0])
        if drop <= 0:
            continue
        order = np.argsort(np.abs(blk), axis=0, kind="stable")[:drop]  # smallest per column
        np.put_along_axis(blk, order, 0, axis=0)
    return out


def layer_of(name: str) -> int | None:
    """The layer of a weight named `L{i}.w_...` (None for anything else)."""
    if not name.startswith("L") or ".w_" not in name:
        return None
    head = name[1:name.index(".")]
    return int(head) if head.isdigit() else None


def prune_layers(weights: dict, fraction_of, nm: tuple[int, int] | None = None) -> dict:
    """Every layer weight matrix pruned by magnitude: to `fraction_of(layer)` zeros, or to the
    `nm` = (N, M) pattern. Everything else (tables, norms, biases) unchanged."""
    out = dict(weights)
    for name, v in weights.items():
        layer = layer_of(name)
        if layer is None or v.ndim != 2:
            continue
        out[name] = (prune_n_m(v, *nm) if nm else prune_fraction(v, fraction_of(layer))) \
            .astype(v.dtype)
    return out
