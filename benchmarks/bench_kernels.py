"""Benchmark of wse_sim.kernels against plain numpy on the same batched shapes.

Figures: fp32 GEMM tiles vs np.matmul, fp16/bf16 GEMM tiles vs numpy float16 matmul and vs the
fp32 kernel, weight-sparse GEMM vs the dense kernel, and the row kernels (softmax, layernorm,
rmsnorm, GELU, sum over cores, fp16 encoding) vs numpy. Compile time is excluded (warm-up) and
each figure is the best of a few repeats. Ratios are numpy time / kernel time (> 1: faster).
"""

from __future__ import annotations

import functools
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import best_of, emit, machine_info, parse_args  # noqa: E402

from wse_sim import kernels as K  # noqa: E402


def _name(shape):
    return "x".join(str(s) for s in shape)


def bench_gemm(figures, targets, shapes, repeats, rng):
    for P, m, k, n in shapes:
        a = rng.standard_normal((P, m, k), dtype=np.float32)
        b = rng.standard_normal((P, k, n), dtype=np.float32)
        out = np.empty((P, m, n), np.float32)
        flops = 2.0 * P * m * k * n
        tag = f"gemm_fp32_{_name((P, m, k, n))}"
        t_k = best_of(lambda: K.gemm_tiles(a, b, out=out), repeats)  # noqa: B023
        t_s = best_of(lambda: K.gemm_tiles(a, b, out=out, parallel=False), repeats)  # noqa: B023
        t_np = best_of(lambda: np.matmul(a, b, out=out), repeats)  # noqa: B023
        figures[f"{tag}_gflops"] = flops / t_k / 1e9
        figures[f"{tag}_serial_gflops"] = flops / t_s / 1e9
        figures[f"{tag}_numpy_gflops"] = flops / t_np / 1e9
        figures[f"{tag}_vs_numpy_ratio"] = t_np / t_k
        targets[f"{tag}_vs_numpy_ratio"] = {"min": 0.9}


def bench_gemm_lp(figures, targets, shape, repeats, rng):
    P, m, k, n = shape
    a = rng.standard_normal((P, m, k), dtype=np.float32)
    b = rng.standard_normal((P, k, n), dtype=np.float32)
    out = np.empty((P, m, n), np.float32)
    flops = 2.0 * P * m * k * n
    t32 = best_of(lambda: K.gemm_tiles(a, b, out=out), repeats)
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    t_np16 = best_of(lambda: np.matmul(a16, b16), max(1, repeats // 2))
    figures[f"numpy_fp16_matmul_{_name(shape)}_gflops"] = flops / t_np16 / 1e9
    for dtype in ("fp16", "bf16"):
        ab, bb = K.to_bits(a, dtype), K.to_bits(b, dtype)
        t = best_of(lambda: K.gemm_tiles_lp(ab, bb, dtype, out=out), repeats)  # noqa: B023
        tag = f"gemm_{dtype}_{_name(shape)}"
        figures[f"{tag}_gflops"] = flops / t / 1e9
        figures[f"{tag}_vs_numpy_fp16_ratio"] = t_np16 / t
        targets[f"{tag}_vs_numpy_fp16_ratio"] = {"min": 20.0}
        figures[f"{tag}_vs_fp32_kernel_ratio"] = t32 / t


def bench_sparse(figures, shape, repeats, rng):
    P, m, k, n = shape
    a = rng.standard_normal((P, m, k), dtype=np.float32)
    b = rng.standard_normal((P, k, n), dtype=np.float32)
    out = np.empty((P, m, n), np.float32)
    t_dense = best_of(lambda: K.gemm_tiles(a, b, out=out), repeats)
    dense_flops = 2.0 * P * m * k * n
    for pct in (50, 90):
        bs = np.where(rng.random(b.shape) < pct / 100, 0.0, b).astype(np.float32)
        csc = K.csc_tiles(bs)
        t = best_of(lambda: K.sparse_gemm_tiles(a, *csc, out=out), repeats)  # noqa: B023
        tag = f"sparse_{pct}pct_{_name(shape)}"
        figures[f"{tag}_vs_dense_ratio"] = t_dense / t
        figures[f"{tag}_nonzero_gflops"] = 2.0 * K.count_nonzero_macs(a.shape, bs) / t / 1e9
        figures[f"{tag}_dense_equivalent_gflops"] = dense_flops / t / 1e9


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _np_layernorm(x, g, b, eps=1e-5):
    mu = x.mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(x.var(-1, keepdims=True) + eps) * g + b


def _np_rmsnorm(x, g, eps=1e-6):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * g


def _np_gelu(x):
    c = np.float32(np.sqrt(2 / np.pi))
    return 0.5 * x * (1 + np.tanh(c * (x + np.float32(0.044715) * x**3)))


def bench_rows(figures, shape, repeats, rng):
    P, m, n = shape
    x = rng.standard_normal(shape, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    b = rng.standard_normal(n, dtype=np.float32)
    offs = np.arange(P) % 4 * m  # a sequence-split causal tile per core
    cols = np.arange(n)
    causal = (cols[None, None, :] <= np.arange(m)[None, :, None] + offs[:, None, None])

    def np_causal():
        return _np_softmax(np.where(causal, x, -np.inf))

    cases = {
        "softmax": (lambda: K.softmax_rows(x), lambda: _np_softmax(x)),
        "softmax_causal": (lambda: K.softmax_rows(x, causal_offset=offs), np_causal),
        "layernorm": (lambda: K.layernorm_rows(x, g, b), lambda: _np_layernorm(x, g, b)),
        "rmsnorm": (lambda: K.rmsnorm_rows(x, g), lambda: _np_rmsnorm(x, g)),
        "gelu": (lambda: K.gelu(x), lambda: _np_gelu(x)),
        "sum_tiles": (lambda: K.sum_tiles(x), lambda: functools.reduce(np.add, x)),
        "to_bits_fp16": (lambda: K.to_bits(x, "fp16"), lambda: x.astype(np.float16)),
    }
    for name, (kern, ref) in cases.items():
        t_k = best_of(kern, repeats)
        t_np = best_of(ref, repeats)
        figures[f"{name}_{_name(shape)}_ms"] = t_k * 1e3
        figures[f"{name}_{_name(shape)}_vs_numpy_ratio"] = t_np / t_k


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    rng = np.random.default_rng(0)
    figures, targets = {}, {}
    if args.quick:
        repeats = 10
        gemm_shapes = [(256, 32, 32, 32), (64, 64, 64, 64), (8, 128, 128, 128)]
        lp_shape, sparse_shape, rows_shape = (16, 64, 64, 64), (64, 64, 64, 64), (32, 64, 512)
    else:
        repeats = 20
        gemm_shapes = [(1024, 16, 16, 16), (256, 32, 32, 32), (64, 64, 64, 64),
                       (16, 128, 128, 128), (4, 256, 256, 256)]
        lp_shape, sparse_shape, rows_shape = (64, 64, 64, 64), (256, 64, 64, 64), (64, 128, 1024)
    bench_gemm(figures, targets, gemm_shapes, repeats, rng)
    bench_gemm_lp(figures, targets, lp_shape, repeats, rng)
    bench_sparse(figures, sparse_shape, repeats, rng)
    bench_rows(figures, rows_shape, repeats, rng)
    machine = machine_info()
    try:
        import numba

        machine["numba_threading_layer"] = numba.threading_layer()
    except (ImportError, ValueError):
        pass
    emit("bench_kernels", figures, targets, args.json, machine)


if __name__ == "__main__":
    main()
