"""Per-tensor precision: what int8 weights buy a model on the wafer, and the 8-bit kernels.

Model (simulated): LLaMA3-8B decode (context 128, batch 1, layer-pipelined) on wse3 with fp16
everywhere, int8 weights, int8 weights + int8 KV cache, and int8 weights and activations
(W8A8, the only case that runs on WSE-3's 16 int8 lanes): tokens/s, SRAM on the fullest core
(of the program; of a layer region, and its weights) on the whole mesh, and the smallest N x N grid (`--grid N`) each one fits on, with its
tokens/s there. Ratios are against the fp16 run of the same process.

Kernels (measured): the 8-bit GEMM tiles (`gemm_tiles_w8`: fp16 activations x 8-bit weights;
`gemm_tiles_q8`: both 8-bit) against the fp16 kernel (`gemm_tiles_lp`) and against their numpy
reference (`quant_ref`) on the same shapes, with each one's error against the float64 product
of the unquantized operands; BLAS runs single-threaded (below). ``--quick``: a smaller grid
search and kernel shapes.
"""

from __future__ import annotations

import os
import sys
import time

# BLAS single-threaded for kernels and numpy alike: on a small shared host numpy's OpenBLAS and
# scipy's (which numba's np.dot calls) each keep a spinning thread pool, and a GEMM of one
# waiting on the other's spinning threads took 250 ms instead of 4 (measured on 2 CPUs).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import best_of, emit, machine_info, parse_args  # noqa: E402
from _wse3_decode import bench_cases, ratios  # noqa: E402

from wse_sim import kernels as K  # noqa: E402
from wse_sim.kernels import quant_ref as R  # noqa: E402

CASES = {"fp16": {}, "w8": {"weights_dtype": "int8"},
         "w8kv8": {"weights_dtype": "int8", "kv_dtype": "int8"}, "w8a8": {"dtype": "int8"}}
def bench_model(figures, quick: bool):
    bench_cases(figures, CASES, ("fp16", "w8") if quick else tuple(CASES))
    ratios(figures, CASES, "fp16", {"tokens": "tokens_per_s",
                                    "layer_sram": "layer_sram_bytes_per_core",
                                    "cores": "smallest_grid_cores"})


def _rel_err(got, exact):
    return float(np.abs(got - exact).max() / np.abs(exact).max())


def bench_kernels(figures, shapes, repeats, rng):
    for P, m, k, n in shapes:
        tag = f"{P}x{m}x{k}x{n}"
        a = rng.standard_normal((P, m, k), dtype=np.float32)
        w = rng.standard_normal((P, k, n), dtype=np.float32)
        exact = np.matmul(a.astype(np.float64), w.astype(np.float64))
        flops = 2.0 * P * m * k * n
        ab, wb = K.to_bits(a, "fp16"), K.to_bits(w, "fp16")
        t16 = best_of(lambda: K.gemm_tiles_lp(ab, wb, "fp16"), repeats)  # noqa: B023
        figures[f"fp16_{tag}_gflops"] = flops / t16 / 1e9
        figures[f"fp16_{tag}_rel_err"] = _rel_err(K.gemm_tiles_lp(ab, wb, "fp16"), exact)
        a16 = K.from_bits(ab, "fp16")
        for d in ("int8", "fp8_e4m3", "fp8_e5m2"):
            wc, ws = K.quantize(w, d)
            ac, as_ = K.quantize(a, d, "row")
            for kind, fn, ref in (
                    ("w8", lambda: K.gemm_tiles_w8(ab, "fp16", wc, ws, d),  # noqa: B023
                     lambda: R.gemm_w8(a16, wc, ws, d)),  # noqa: B023
                    ("q8", lambda: K.gemm_tiles_q8(ac, as_, wc, ws, d),  # noqa: B023
                     lambda: R.gemm_q8(ac, as_, wc, ws, d))):  # noqa: B023
                t = best_of(fn, repeats)
                t_np = best_of(ref, max(1, repeats // 2))
                key = f"{kind}_{d}_{tag}"
                figures[f"{key}_gflops"] = flops / t / 1e9
                figures[f"{key}_vs_fp16_kernel_ratio"] = t16 / t
                figures[f"{key}_vs_numpy_ratio"] = t_np / t
                figures[f"{key}_rel_err"] = _rel_err(fn(), exact)
            tq = best_of(lambda: K.quantize(w, d), repeats)  # noqa: B023
            tq_np = best_of(lambda: R.quantize(w, d), max(1, repeats // 2))  # noqa: B023
            figures[f"quantize_{d}_{tag}_vs_numpy_ratio"] = tq_np / tq


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    figures, targets = {}, {}
    t0 = time.perf_counter()
    bench_model(figures, args.quick)
    shapes = [(16, 32, 128, 128)] if args.quick else [(64, 1, 512, 512), (16, 128, 256, 256)]
    bench_kernels(figures, shapes, 3 if args.quick else 5, np.random.default_rng(0))
    figures["wall_seconds"] = time.perf_counter() - t0
    targets["w8_vs_fp16_layer_sram_ratio"] = {"max": 0.75}
    emit("bench_precision", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
