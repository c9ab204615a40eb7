"""Per-core compute kernels (numba), batched over a leading core axis.

One call computes a phase for every core at once: GEMM tiles in fp32, fp16/bf16 (stored as
uint16 bit patterns, fp32 accumulate, like the hardware) and weight-sparse form; softmax,
layernorm/rmsnorm, GELU, SwiGLU, RoPE, residual add, the fixed-order reduction collectives
use, and the flash-attention merge. Every kernel is compiled lazily, cached on disk, and
built twice: ``parallel=False`` on any wrapper selects the serial twin, which the parallel
build must equal bit for bit. Bad arguments raise a one-line ``ValueError``.

Parallel kernels need every thread at once: on an oversubscribed machine (sweep workers,
other jobs) numba's default OpenMP layer spins and a sub-millisecond call can take a scheduler
slice (~10 ms, measured). There, run with ``NUMBA_NUM_THREADS=1`` (or
``numba.set_num_threads(1)``), or ``OMP_WAIT_POLICY=passive`` set before numba starts.

int8 and fp8 (E4M3, E5M2) are 8-bit codes with per-channel scales (``quant``) and GEMMs with
fp32 (int8 x int8: int32) accumulation (``gemm_q``); ``quant_ref`` is their numpy reference.

The implementation lives in ``precision`` (dtype codecs), ``gemm`` and ``rows`` (on ``base``);
this package's top is the public surface. ``basic`` and ``gpt`` are the kernels of functional
runs, found by name through ``registry``.
"""

from wse_sim.kernels.base import BLAS_THREADED_MACS, DTYPES, DTYPES_LP
from wse_sim.kernels.gemm import (
    count_nonzero_macs,
    csc_tiles,
    gemm_tiles,
    gemm_tiles_lp,
    sparse_gemm_tiles,
)
from wse_sim.kernels.gemm_q import gemm_tiles_q8, gemm_tiles_w8
from wse_sim.kernels.precision import (
    decode_bf16,
    decode_fp16,
    encode_bf16,
    encode_fp16,
    from_bits,
    round_to,
    to_bits,
)
from wse_sim.kernels.quant import dequantize, quantize, round_to8
from wse_sim.kernels.rows import (
    gelu,
    layernorm_rows,
    online_softmax_combine,
    residual_add,
    rmsnorm_rows,
    rope,
    softmax_rows,
    sum_tiles,
    swiglu,
)

__all__ = [
    "BLAS_THREADED_MACS",
    "DTYPES",
    "DTYPES_LP",
    "count_nonzero_macs",
    "csc_tiles",
    "decode_bf16",
    "dequantize",
    "decode_fp16",
    "encode_bf16",
    "encode_fp16",
    "from_bits",
    "gelu",
    "gemm_tiles",
    "gemm_tiles_lp",
    "gemm_tiles_q8",
    "gemm_tiles_w8",
    "layernorm_rows",
    "online_softmax_combine",
    "quantize",
    "residual_add",
    "rmsnorm_rows",
    "rope",
    "round_to",
    "round_to8",
    "softmax_rows",
    "sparse_gemm_tiles",
    "sum_tiles",
    "swiglu",
    "to_bits",
]
