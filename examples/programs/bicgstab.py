"""BiCGStab iterations on the 3-D 7-point operator, one z-column per core (Rocki et al. SC20).

A = c0 I + c1 (the 6 neighbours), zero outside the nx x ny x nz grid; core (x, y) holds the
columns of x, r, r0, p, v, s, t. One iteration (unpreconditioned BiCGStab):

    v = A p;  alpha = rho / (r0.v);  s = r - alpha v;  t = A s;  omega = (t.s) / (t.t)
    x += alpha p;  x += omega s;  r = s - omega t;  rho' = r0.r;  beta = (rho'/rho)(alpha/omega)
    p = r + beta (p - omega v)

- each SpMV is a radius-1 halo exchange and star update (`star3d`, 8 FLOPs per point);
- each dot product is a local FMAC pass, then a wafer-wide allreduce: a reduce along every row
  (`LineStream`, reduce), a reduce down the last column, a broadcast back up that column and
  along every row; the two dots t.s and t.t share one allreduce (3 allreduces per iteration);
- alpha, omega, beta are computed redundantly on every core (1, 1 and 3 FLOPs);
- six AXPYs (2 FLOPs per point each). FLOPs per iteration: 36 per point + 5 per core.

The state before the first iteration (x = 0, r = r0 = p = b, rho = b.b) is the input; the
iterations after the first are a loop (`ProgramBuilder.repeat`).

    python examples/programs/bicgstab.py                         # mesh8: numpy check, both engines
    python examples/programs/bicgstab.py --preset wse1 --nz 1536 --dtype fp16 --iters 4 --engines fast
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import star3d  # noqa: E402

from wse_sim.hardware import DTYPE_BYTES  # noqa: E402
from wse_sim.kernels.registry import register_kernel  # noqa: E402
from wse_sim.program import (  # noqa: E402
    Compute,
    DataOp,
    Dep,
    LineStream,
    Program,
    ProgramBuilder,
    Region,
)

VECTORS = ("x", "r", "r0", "p", "v", "s", "t")
SCALARS = ("rho", "alpha", "omega", "beta")  # the tile of buffer `sc`
FLOPS_PER_POINT = 2 * star3d.flops_per_point(1) + 2 * 4 + 6 * 2  # 36
FLOPS_PER_CORE = 1 + 1 + 3  # alpha, omega, beta


@register_kernel("dots", replace=True)
def dots(call):
    """out[i] = sum over z of a * b_i, for inputs (a, b_1, ..., b_k)."""
    a, *bs = call.inputs
    return np.stack([(a.astype(np.float64) * b).sum(-1) for b in bs], -1)


@register_kernel("bicg_axpy", replace=True)
def bicg_axpy(call):
    """out = a + sign * sc[coef] * b, the coefficient read from the core's scalars."""
    a, b, sc = call.inputs
    coef = sc[..., SCALARS.index(call.params["coef"])][..., None]
    return a + call.params["sign"] * coef * b


@register_kernel("bicg_scalar", replace=True)
def bicg_scalar(call):
    """Update the scalars from an allreduced dot: step alpha, omega or beta."""
    (d,) = call.inputs
    sc = call.out.copy()
    rho, alpha, omega = sc[..., 0], sc[..., 1], sc[..., 2]
    step = call.params["step"]
    if step == "alpha":
        sc[..., 1] = rho / d[..., 0]
    elif step == "omega":
        sc[..., 2] = d[..., 0] / d[..., 1]
    else:
        sc[..., 3] = (d[..., 0] / rho) * (alpha / omega)
        sc[..., 0] = d[..., 0]
    return sc


def allreduce(pb: ProgramBuilder, grid: Region, part: str, name: str, values: int,
              deps: tuple) -> int:
    """Sum `part` over the grid into buffer `name` at every core; the last task's index."""
    last_col = Region(grid.x1, grid.y, 1, grid.rows)
    t = pb.add(LineStream(f"{name}.rows", grid, "x", 1, values, reduce=True, color=4,
                          deps=deps, data=DataOp("reduce", (part,), f"{name}_row")))
    t = pb.add(LineStream(f"{name}.col", last_col, "y", 1, values, reduce=True, color=5,
                          deps=(Dep(t),), data=DataOp("reduce", (f"{name}_row",), name)))
    t = pb.add(LineStream(f"{name}.bcol", last_col, "y", -1, values, color=6, deps=(Dep(t),),
                          data=DataOp("copy", (name,), name)))
    return pb.add(LineStream(f"{name}.brows", grid, "x", -1, values, color=7, deps=(Dep(t),),
                             data=DataOp("copy", (name,), name)))


class _Iteration:
    """Adds the tasks of BiCGStab iterations; `last` is each core's latest compute."""

    def __init__(self, pb: ProgramBuilder, grid: Region, nz: int, dtype: str, coeffs: tuple):
        self.pb, self.grid, self.nz, self.dtype, self.coeffs = pb, grid, nz, dtype, coeffs
        self.last: int | None = None
        self.spmv_t: int | None = None

    def compute(self, op: str, flops_per_point: int, kernel: str, ins: tuple, out: str,
                params: tuple = (), extra: tuple = (), per_core: int = 0) -> int:
        pts = self.nz * self.grid.size
        nbytes = DTYPE_BYTES[self.dtype]
        deps = extra + (() if self.last is None else (Dep(self.last),))
        kind = "vector" if per_core else "fmac"
        self.last = self.pb.add(Compute(
            op, self.grid, flops_per_point * pts + per_core * self.grid.size,
            dtype="fp32" if per_core else self.dtype, kind=kind,
            sram_read_bytes=sum(i in VECTORS for i in ins) * nbytes * pts,
            sram_write_bytes=0 if per_core else nbytes * pts, deps=deps,
            data=DataOp(kernel, ins, out, params)))
        return self.last

    def spmv(self, src: str, dst: str, used: int | None) -> int:
        g, nz, dt = self.grid, self.nz, self.dtype
        sends = star3d.halo_exchange(self.pb, g, src, 1, nz, dt, self.last, used)
        deps = tuple(Dep(s) for s in sends) + (() if self.last is None else (Dep(self.last),))
        self.last = self.pb.add(star3d.update_task(f"spmv.{dst}", g, 1, nz, dt, src, dst,
                                                   self.coeffs, deps))
        return self.last

    def dot(self, name: str, a: str, bs: tuple, step: str) -> None:
        self.compute(f"dot.{name}", 2 * len(bs), "dots", (a, *bs), f"part{len(bs)}")
        red = allreduce(self.pb, self.grid, f"part{len(bs)}", f"dot{len(bs)}", len(bs),
                        (Dep(self.last),))
        self.compute(step, 0, "bicg_scalar", (f"dot{len(bs)}",), "sc", (("step", step),),
                     (Dep(red, "all"),), per_core=1 if step != "beta" else 3)

    def axpy(self, out: str, a: str, b: str, coef: str, sign: float) -> None:
        self.compute(f"{out}={a}{'+' if sign > 0 else '-'}{coef}*{b}", 2, "bicg_axpy",
                     (a, b, "sc"), out, (("coef", coef), ("sign", sign)))

    def __call__(self, _i: int) -> None:
        spmv_v = self.spmv("p", "v", self.spmv_t)
        self.dot("r0v", "r0", ("v",), "alpha")
        self.axpy("s", "r", "v", "alpha", -1.0)
        self.spmv_t = self.spmv("s", "t", spmv_v)
        self.dot("ts_tt", "t", ("s", "t"), "omega")
        self.axpy("x", "x", "p", "alpha", 1.0)
        self.axpy("x", "x", "s", "omega", 1.0)
        self.axpy("r", "s", "t", "omega", -1.0)
        self.dot("r0r", "r0", ("r",), "beta")
        self.axpy("p", "p", "v", "omega", -1.0)
        self.axpy("p", "r", "p", "beta", 1.0)


def build(cols: int = 4, rows: int = 4, nz: int = 16, iters: int = 2, dtype: str = "fp32",
          coeffs: tuple = (6.5, -1.0)) -> Program:
    """`iters` BiCGStab iterations on an nx = cols by ny = rows by nz grid; the state is in
    buffers x, r, r0, p and sc (rho, alpha, omega, beta)."""
    for field, v, low in (("cols", cols, 2), ("rows", rows, 2), ("nz", nz, 1),
                          ("iters", iters, 1)):
        star3d.check_int("bicgstab", field, v, low)
    star3d.check_dtype("bicgstab", dtype)
    grid = Region(0, 0, cols, rows)
    pb = ProgramBuilder("bicgstab")
    for name in VECTORS:
        pb.alloc(name, grid, DTYPE_BYTES[dtype] * nz, shape=(nz,), dtype=dtype)
    star3d.alloc_halos(pb, grid, 1, nz, dtype)
    for k in (1, 2):
        for name in (f"part{k}", f"dot{k}_row", f"dot{k}"):
            pb.alloc(name, grid, 4 * k, shape=(k,))
    pb.alloc("sc", grid, 4 * len(SCALARS), shape=(len(SCALARS),))
    body = _Iteration(pb, grid, nz, dtype, tuple(coeffs))
    body(0)  # the first iteration waits for nothing: peeled off the loop
    pb.repeat("bicgstab.iteration", iters - 1, lambda i: body(i + 1))
    return pb.build(cores_used=grid.size, dtype=dtype)


def closed_form_flops(cols: int, rows: int, nz: int, iters: int) -> int:
    return iters * (FLOPS_PER_POINT * nz + FLOPS_PER_CORE) * cols * rows


def apply_a(u: np.ndarray, coeffs: tuple = (6.5, -1.0)) -> np.ndarray:
    """A u on the (nx, ny, nz) grid, float64, zeros outside."""
    return star3d.reference(u, 1, 1, coeffs)


def reference(b: np.ndarray, iters: int, coeffs: tuple = (6.5, -1.0)) -> dict:
    """numpy, float64: the same iterations from x = 0; the final x, r, p and scalars."""
    b = b.astype(np.float64)
    x, r, r0, p = np.zeros_like(b), b.copy(), b.copy(), b.copy()
    rho = float((b * b).sum())
    for _ in range(iters):
        v = apply_a(p, coeffs)
        alpha = rho / float((r0 * v).sum())
        s = r - alpha * v
        t = apply_a(s, coeffs)
        omega = float((t * s).sum()) / float((t * t).sum())
        x = x + alpha * p + omega * s
        r = s - omega * t
        rho_new = float((r0 * r).sum())
        beta = (rho_new / rho) * (alpha / omega)
        rho = rho_new
        p = r + beta * (p - omega * v)
    return {"x": x, "r": r, "p": p, "rho": rho}


def inputs(b: np.ndarray) -> dict:
    """The state before the first iteration, as per-core tiles."""
    t = star3d.to_tiles(b.astype(np.float32))
    sc = np.zeros((*t.shape[:2], len(SCALARS)), np.float32)
    sc[..., 0] = float((b.astype(np.float64) ** 2).sum())
    return {"r": t, "r0": t, "p": t, "sc": sc}


def check(cols=4, rows=4, nz=16, iters=2, hw=None, seed=0) -> float:
    """Max relative error of x after a functional run against `reference` (random b)."""
    from wse_sim.functional import run_functional
    from wse_sim.hardware import load_preset
    hw = hw or load_preset("mesh8")
    b = np.random.default_rng(seed).uniform(-1, 1, (cols, rows, nz))
    out = run_functional(build(cols, rows, nz, iters), hw, inputs(b))
    want = reference(b, iters)["x"]
    return float(np.abs(star3d.from_tiles(out["x"]) - want).max() / np.abs(want).max())


def main(argv=None) -> int:
    from wse_sim.hardware import load_preset
    from wse_sim.program_io import save_program
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mesh8")
    ap.add_argument("--cols", type=int, default=None, help="default: the mesh's columns")
    ap.add_argument("--rows", type=int, default=None, help="default: the mesh's rows")
    ap.add_argument("--nz", type=int, default=64, help="z values per core")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--engines", default="reference,fast")
    ap.add_argument("--save", metavar="FILE", help="write the program file")
    args = ap.parse_args(argv)
    hw = load_preset(args.preset)
    cols, rows = args.cols or hw.mesh_cols, args.rows or hw.mesh_rows
    prog = build(cols, rows, args.nz, args.iters, args.dtype)
    if args.save:
        print(f"wrote {save_program(prog, args.save)}")
    if cols * rows <= 16 * 16:
        err = check(cols, rows, args.nz, args.iters, hw)
        print(f"functional (fp32): max relative error of x vs numpy {err:.2g}")
    star3d.report(prog, hw, args.engines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
