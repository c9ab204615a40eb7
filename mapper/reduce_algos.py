"""The names of the reduce algorithms (no imports: the CLI lists them at start-up). The
algorithms themselves: `mapper.tree_reduce`."""

from __future__ import annotations

REDUCE_ALGOS = ("chain", "tree")  # of one line (and of the GEMV)
# Of a layer laid 2-D (mapper.strategies.tp2d): the algorithm of its row reduces (along the
# rows into the leaders: the up GEMMs' outputs, the down GEMMs' input gradients) and of its
# column reduces (up the columns into the top row: the down GEMMs' outputs, the up GEMMs' input
# gradients): "tree" is both, "row-tree" / "col-tree" one of them.
LAYER_REDUCE_ALGOS = ("chain", "tree", "row-tree", "col-tree")


def check_algo(field: str, algo) -> str:
    """`algo` if it is one of LAYER_REDUCE_ALGOS, else a one-line ValueError naming `field`."""
    if algo not in LAYER_REDUCE_ALGOS:
        raise ValueError(f"{field}: got {algo!r}, must be one of {', '.join(LAYER_REDUCE_ALGOS)}")
    return algo


def axis_algo(layer_algo: str, axis: str) -> str:
    """The line algorithm ("chain" or "tree") of a layer's reduces along `axis` ('x': rows)."""
    if layer_algo == "tree" or layer_algo == ("row-tree" if axis == "x" else "col-tree"):
        return "tree"
    return "chain"
