"""Sparse weights stored sparse: what 50 % unstructured and 2:4 sparsity buy a model on the wafer.

Simulated: LLaMA3-8B decode (context 128, batch 1, layer-pipelined) on wse3 at fp16 with the
weights dense, 50 % zeros stored dense (the cores skip them, `--sparsity 0.5`), 50 %
unstructured (values + 16-bit indices), 50 % bitmap (values + 1 bit per weight) and 2:4
(2 bits per kept value): tokens/s, SRAM on the fullest core (of the program; of a layer
region, and its weights), and the smallest N x N grid (`--grid N`) each one fits on, with its
tokens/s there. Ratios are against the dense run of the same process (docs/sparsity.md).
``--quick``: the grid search for dense and 2:4 only.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402
from _wse3_decode import bench_cases, ratios  # noqa: E402

CASES = {"dense": {}, "skip50": {"sparsity": 0.5},
         "unstructured50": {"sparse_format": "unstructured", "sparsity": 0.5},
         "bitmap50": {"sparse_format": "bitmap", "sparsity": 0.5},
         "nm24": {"sparse_format": "2:4"}}
def bench_model(figures, quick: bool):
    bench_cases(figures, CASES, ("dense", "nm24") if quick else tuple(CASES))
    ratios(figures, CASES, "dense", {"tokens": "tokens_per_s",
                                     "layer_weights": "layer_weights_bytes_per_core",
                                     "cores": "smallest_grid_cores"})


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    figures, targets = {}, {}
    t0 = time.perf_counter()
    bench_model(figures, args.quick)
    figures["wall_seconds"] = time.perf_counter() - t0
    targets["nm24_vs_dense_cores_ratio"] = {"max": 0.75}
    emit("bench_sparsity", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
