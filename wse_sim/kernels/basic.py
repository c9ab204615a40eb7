"""The basic compute kernels of functional runs: `gemm`, `gemm_acc`, `add`, `copy`, `zero`.

Buffer kernels of `wse_sim.kernels.registry` (signature (task, out, inputs, what), reading
and writing the `wse_sim.functional.Buffer`s themselves), once per task over every core of
its region. Semantics (DataOp `kernel`, `inputs`, `output`, `params`):
`gemm` out = a @ b; `gemm_acc` out += a @ b; `add` out = sum of inputs (fp32, in order);
`copy` out = in0; `zero` out = 0. Parameter `a_k_block` = w: core of rank r (row-major in the
region) uses columns [r w, (r + 1) w) of `a` (a GEMV's slice of a broadcast vector);
`out_offset` = o: the (m, n) product or sum goes to columns [o, o + n) of a wider `out` (the
rest is kept). A task with `sparsity` > 0 runs the sparse kernel (the cores skip zeros).
8-bit weights (`b` an int8 / fp8 buffer of codes): a third input holds their fp32 scales, one
per output column of each core's tile (tile shape (n,)); fp16/bf16 activations run
`gemm_tiles_w8` (both operands decoded exactly, fp32 sums, then each column times its scale),
fp32 activations (and the sparse kernel) the same on the decoded codes, then the scales.
"""

from __future__ import annotations

import numpy as np

from wse_sim import kernels as K
from wse_sim.kernels.base import use_parallel as _par
from wse_sim.program import ProgramError


def _arity(ins: list, n: int, what: str) -> list:
    if len(ins) != n:
        raise ProgramError(f"{what}: kernel needs {n} input buffer(s), got {len(ins)}")
    return ins


def _tiles(b, reg, what: str) -> np.ndarray:
    return b.block(reg, what).reshape(reg.size, *b.shape)


def zero(t, out, ins, what: str) -> None:
    out.block(t.region, what)[...] = 0


def copy(t, out, ins, what: str) -> None:
    (a,) = _arity(ins, 1, what)
    blk = out.block(t.region, what)
    blk[...] = out.encode(a.as_f32(_tiles(a, t.region, what))).reshape(blk.shape)


def add(t, out, ins, what: str) -> None:
    if not ins:
        raise ProgramError(f"{what}: add needs at least one input")
    reg, d = t.region, t.data
    out_blk = out.block(reg, what)
    shape, off = out.shape, d.param("out_offset")
    if off is not None:  # the sum goes to columns [off, off + n) of a wider tile
        shape, off = ins[0].shape, int(off)
        if len(shape) != 2 or len(out.shape) != 2 or shape[0] != out.shape[0] or \
                not 0 <= off <= out.shape[1] - shape[1]:
            raise ProgramError(f"{what}: add of {shape} tiles into columns {off}.. of "
                               f"{out.name!r} {out.shape}")
        out_blk = out_blk[..., off:off + shape[1]]
    acc = np.zeros((reg.size, *shape), np.float32)
    for b in ins:
        v = b.as_f32(_tiles(b, reg, what))
        if v.shape != acc.shape:
            raise ProgramError(f"{what}: add of {b.name!r} {b.shape} into "
                               f"{out.name!r} {shape}: shapes differ")
        K.residual_add(acc, v, out=acc, parallel=_par(acc.size))
    out_blk[...] = out.encode(acc).reshape(out_blk.shape)


def _a_tiles(a, d, P: int, at: np.ndarray, what: str) -> np.ndarray:
    """`a`'s tiles, each core's column block when `a_k_block` is set."""
    w = d.param("a_k_block")
    if w is None:
        return at
    w = int(w)
    if w * P > at.shape[-1]:
        raise ProgramError(f"{what}: a_k_block {w} x {P} cores > the {at.shape[-1]} "
                           f"columns of {a.name!r}")
    cols = np.arange(P)[:, None] * w + np.arange(w)[None, :]
    return np.take_along_axis(at, np.broadcast_to(cols[:, None, :], (P, at.shape[1], w)), axis=2)


def _w8_scales(b, ins: list, reg, what: str) -> np.ndarray | None:
    """The (P, n) scales of 8-bit weights `b` (the third input); None for float weights."""
    if not b.q8:
        _arity(ins, 2, what)
        return None
    if len(ins) != 3 or ins[2].dtype != "fp32" or ins[2].shape != (b.shape[-1],):
        got = f"{ins[2].name!r} {ins[2].dtype} {ins[2].shape}" if len(ins) == 3 else \
            f"{len(ins)} inputs"
        raise ProgramError(f"{what}: gemm by {b.dtype} weights {b.name!r} needs a third input "
                           f"of fp32 scales shaped ({b.shape[-1]},), got {got}")
    return np.ascontiguousarray(_tiles(ins[2], reg, what))


def _gemm_w8(a, at: np.ndarray, b, bt: np.ndarray, scales: np.ndarray, sparse: bool,
             par: bool) -> np.ndarray:
    """Activations `a` by 8-bit weight codes `bt` with per-column `scales`, fp32 sums."""
    if a.lp and not sparse:
        return K.gemm_tiles_w8(np.ascontiguousarray(at), a.dtype, np.ascontiguousarray(bt),
                               scales, b.dtype, parallel=par)
    ones = np.ones(scales.shape, np.float32)
    bf = K.dequantize(np.ascontiguousarray(bt), ones, b.dtype, parallel=par)  # exact values
    af = np.ascontiguousarray(a.as_f32(at))
    if sparse:
        r = K.sparse_gemm_tiles(af, *K.csc_tiles(bf))
    else:
        r = K.gemm_tiles(af, bf, parallel=par)
    return r * scales[:, None, :]


def gemm(t, out, ins, what: str) -> None:
    """`gemm` and `gemm_acc` (the DataOp's kernel name says which)."""
    reg, d = t.region, t.data
    P = reg.size
    if len(ins) < 2:
        _arity(ins, 2, what)
    a, b = ins[0], ins[1]
    scales = _w8_scales(b, ins, reg, what)
    at, bt = _a_tiles(a, d, P, _tiles(a, reg, what), what), _tiles(b, reg, what)
    if at.ndim != 3 or bt.ndim != 3 or at.shape[2] != bt.shape[1]:
        raise ProgramError(f"{what}: gemm of {a.name!r} {at.shape[1:]} by {b.name!r} "
                           f"{bt.shape[1:]}: inner sizes differ")
    shape = (P, at.shape[1], bt.shape[2])
    out_blk = out.block(reg, what)
    off = d.param("out_offset")
    if off is not None:
        off = int(off)
        if len(out.shape) != 2 or out.shape[0] != shape[1] or \
                not 0 <= off <= out.shape[1] - shape[2]:
            raise ProgramError(f"{what}: gemm gives {shape[1:]} tiles, which do not fit "
                               f"columns {off}.. of {out.name!r} {out.shape}")
        out_blk = out_blk[..., off:off + shape[2]]  # a view: (rows, cols, m, n)
    elif shape[1:] != out.shape:
        raise ProgramError(f"{what}: gemm gives {shape[1:]} tiles, {out.name!r} holds "
                           f"{out.shape}")
    acc = d.kernel == "gemm_acc"
    c = out.as_f32(np.ascontiguousarray(out_blk).reshape(shape)) if acc else None
    c = np.ascontiguousarray(c) if c is not None else None
    par = _par(shape[0] * shape[1] * shape[2] * at.shape[2])
    if scales is not None:
        r = _gemm_w8(a, at, b, bt, scales, t.sparsity > 0, par)
        r = r + c if acc else r
    elif t.sparsity > 0:  # the cores skip zero weights: run the sparse kernel for real
        vals, colptr, rowidx = K.csc_tiles(np.ascontiguousarray(b.as_f32(bt)))
        r = K.sparse_gemm_tiles(np.ascontiguousarray(a.as_f32(at)), vals, colptr, rowidx,
                                out=c, accumulate=acc)
    elif a.lp and b.lp and a.dtype == b.dtype:
        r = K.gemm_tiles_lp(np.ascontiguousarray(at), np.ascontiguousarray(bt), a.dtype,
                            out=c, accumulate=acc, parallel=par)
    else:
        r = K.gemm_tiles(a.as_f32(at), b.as_f32(bt), out=c, accumulate=acc, parallel=par)
    out_blk[...] = out.encode(r).reshape(out_blk.shape)


KERNELS = {"gemm": gemm, "gemm_acc": gemm, "add": add, "copy": copy, "zero": zero}
