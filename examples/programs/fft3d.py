"""A 3-D FFT of an nx x ny x nz complex grid on an nx x ny region: a z-pencil per core, then
two all-to-all transposes along the mesh lines, each followed by local FFTs.

Core (x, y) holds the pencil A[x, y, :] (nz complex values, stored as (real, imag) fp32
pairs: 2 wavelets per value). With m = nz / nx and n = nz / ny:

1. `fft.z`: the pencil's FFT, 5 nz log2 nz FLOPs.
2. all-to-all along every row: for each shift s = 1..nx-1, a 0-FLOP `pack.x<s>` copies the
   block of m values that core x + s needs (its z range) and a `Unicast` with `wrap` sends it
   s hops (mod nx) east; then `fft.x` lays the nx blocks side by side (nx x m) and transforms
   along x: m FFTs of length nx.
3. the same along every column with the (kx, z) items of each core split into ny blocks of n:
   `fft.y`, n FFTs of length ny.

The result is the full 3-D DFT, transposed: core (x, y) holds, for every ky, the items
q = y n .. y n + n - 1, item q being kx = q // m, kz = x m + q % m (`gather` undoes it).
FLOPs: 5 N log2 N for N = nx ny nz, the usual count. Not implemented (NotImplementedError
naming it): sizes that are not powers of two, nz smaller than nx or ny. It is not a loop (an
FFT does not iterate).

    python examples/programs/fft3d.py                       # 8 x 8 x 64 on mesh8: numpy check, both engines
    python examples/programs/fft3d.py --preset mesh64 --nz 256 --engines fast
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import star3d  # noqa: E402

from wse_sim.kernels.registry import register_kernel  # noqa: E402
from wse_sim.program import (  # noqa: E402
    Compute,
    DataOp,
    Dep,
    Program,
    ProgramBuilder,
    Region,
    Unicast,
)

AXES = {"x": (1, 0), "y": (0, 1)}


def _c(t: np.ndarray) -> np.ndarray:
    return t[..., 0].astype(np.float64) + 1j * t[..., 1]


def _ri(z: np.ndarray) -> np.ndarray:
    return np.stack([z.real, z.imag], -1)


def _items(t: np.ndarray) -> np.ndarray:
    """A core's values as one list of items (rows, cols, N, 2)."""
    return t.reshape(*t.shape[:2], -1, 2)


@register_kernel("fft_z", replace=True)
def fft_z(call):
    """The FFT of every core's pencil."""
    return _ri(np.fft.fft(_c(call.inputs[0]), axis=-1))


@register_kernel("fft_pack", replace=True)
def fft_pack(call):
    """The block of the core's items that the core `shift` ahead along `axis` needs."""
    items = _items(call.inputs[0])
    xs, ys = call.cores()
    r = call.region
    pos, lines = (xs - r.x, r.cols) if call.params["axis"] == "x" else (ys - r.y, r.rows)
    b = items.shape[2] // lines
    first = ((pos + call.params["shift"]) % lines) * b
    idx = first[..., None] + np.arange(b)
    return np.take_along_axis(items, idx[..., None].repeat(2, -1), axis=2)


@register_kernel("fft_line", replace=True)
def fft_line(call):
    """The line's blocks side by side (from the core at position j of the line: row j), then
    the FFT along that axis. Inputs: own items, then the blocks received at shifts 1..L-1."""
    own, *recv = call.inputs
    xs, ys = call.cores()
    r = call.region
    pos, lines = (xs - r.x, r.cols) if call.params["axis"] == "x" else (ys - r.y, r.rows)
    items = _items(own)
    b = items.shape[2] // lines
    mine = np.take_along_axis(items, (pos[..., None] * b + np.arange(b))[..., None]
                              .repeat(2, -1), axis=2)
    got = np.stack([mine, *recv], 0)  # [s]: the block that came s positions back (0: own)
    ri, ci = np.indices(pos.shape)
    out = np.empty((*items.shape[:2], lines, b, 2), np.float32)
    for j in range(lines):
        out[:, :, j] = got[(pos - j) % lines, ri, ci]
    return _ri(np.fft.fft(_c(out), axis=2))


def _check_sizes(cols: int, rows: int, nz: int) -> None:
    for name, v in (("cols", cols), ("rows", rows), ("nz", nz)):
        star3d.check_int("fft3d", name, v, 2)
        if v & (v - 1):
            raise NotImplementedError(f"fft3d {name}: got {v}; sizes that are not powers of "
                                      "two (mixed-radix FFTs) are not implemented")
    if nz % cols or nz % rows:
        raise NotImplementedError(f"fft3d nz: got {nz} < cols {cols} or rows {rows}; "
                                  "transposes with fewer values than cores on a line (uneven "
                                  "blocks) are not implemented")


def _transpose(pb: ProgramBuilder, grid: Region, axis: str, src: str, dst: str, ready: int,
               flops: int) -> int:
    """All-to-all of `src` blocks along every line of `axis`, then the line FFT into `dst`."""
    lines = grid.cols if axis == "x" else grid.rows
    block = 2 * (pb_items(pb, src) // lines)  # wavelets: (real, imag) fp32 per value
    sends = []
    for s in range(1, lines):
        pack = pb.add(Compute(f"pack.{axis}{s}", grid, 0, kind="vector", deps=(Dep(ready),),
                              data=DataOp("fft_pack", (src,), f"p{axis}{s}",
                                          (("axis", axis), ("shift", s)))))
        dx, dy = (s * AXES[axis][0], s * AXES[axis][1])
        sends.append(pb.add(Unicast(f"a2a.{axis}{s}", grid, block, dx=dx, dy=dy, wrap=True,
                                    color=1 if axis == "x" else 2, deps=(Dep(pack),),
                                    data=DataOp("copy", (f"p{axis}{s}",), f"r{axis}{s}"))))
    recv = tuple(f"r{axis}{s}" for s in range(1, lines))
    return pb.add(Compute(f"fft.{axis}", grid, flops, kind="fmac",
                          deps=tuple(Dep(u) for u in sends) + (Dep(ready),),
                          data=DataOp("fft_line", (src, *recv), dst, (("axis", axis),))))


def pb_items(pb: ProgramBuilder, name: str) -> int:
    """Complex values per core of buffer `name`."""
    shape = next(a.shape for a in pb.allocs if a.name == name)
    return int(np.prod(shape[:-1]))


def line_fft_flops(n: int) -> int:
    """5 n log2 n: the usual FLOP count of a complex FFT of length n (a power of two)."""
    return 5 * n * (n.bit_length() - 1)


def build(cols: int = 8, rows: int = 8, nz: int = 64) -> Program:
    """The 3-D FFT of a cols x rows x nz grid on cores [0, cols) x [0, rows); input `a`,
    result `out` (see `gather`)."""
    _check_sizes(cols, rows, nz)
    grid, m, n = Region(0, 0, cols, rows), nz // cols, nz // rows
    pb = ProgramBuilder("fft3d")
    for name, shape in (("a", (nz, 2)), ("bx", (cols, m, 2)), ("out", (rows, n, 2))):
        pb.alloc(name, grid, 8 * nz, shape=shape)
    for axis, lines, b in (("x", cols, m), ("y", rows, n)):
        for s in range(1, lines):
            for kind in "pr":
                pb.alloc(f"{kind}{axis}{s}", grid, 8 * b, shape=(b, 2))
    P = grid.size
    fz = pb.add(Compute("fft.z", grid, P * line_fft_flops(nz), kind="fmac",
                        data=DataOp("fft_z", ("a",), "a")))
    fx = _transpose(pb, grid, "x", "a", "bx", fz, P * m * line_fft_flops(cols))
    _transpose(pb, grid, "y", "bx", "out", fx, P * n * line_fft_flops(rows))
    return pb.build(cores_used=P)


def closed_form_flops(cols: int, rows: int, nz: int) -> int:
    """5 N log2 N, N = cols rows nz."""
    return line_fft_flops(cols * rows * nz)


def to_tiles(a: np.ndarray) -> np.ndarray:
    """A complex (nx, ny, nz) grid as the tiles of buffer `a` (rows, cols, nz, 2)."""
    return _ri(a.transpose(1, 0, 2)).astype(np.float32)


def gather(out: np.ndarray) -> np.ndarray:
    """The complex (nx, ny, nz) DFT from the tiles of buffer `out` (rows, cols, ny, n, 2)."""
    rows, cols, _, n, _ = out.shape
    nz = rows * n
    m = nz // cols
    f = np.empty((cols, rows, nz), np.complex128)
    q = np.arange(n)
    for x in range(cols):
        for y in range(rows):
            items = y * n + q
            f[items // m, :, x * m + items % m] = _c(out[y, x]).T
    return f


def check(cols=8, rows=8, nz=64, hw=None, seed=0) -> float:
    """Max error of a functional run against numpy's fftn, relative to its largest value."""
    from wse_sim.functional import run_functional
    from wse_sim.hardware import load_preset
    hw = hw or load_preset("mesh8")
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (cols, rows, nz)) + 1j * rng.uniform(-1, 1, (cols, rows, nz))
    out = run_functional(build(cols, rows, nz), hw, {"a": to_tiles(a)})
    want = np.fft.fftn(a)
    return float(np.abs(gather(out["out"]) - want).max() / np.abs(want).max())


def main(argv=None) -> int:
    from wse_sim.hardware import load_preset
    from wse_sim.program_io import save_program
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mesh8")
    ap.add_argument("--cols", type=int, default=None, help="default: the mesh's columns")
    ap.add_argument("--rows", type=int, default=None, help="default: the mesh's rows")
    ap.add_argument("--nz", type=int, default=64)
    ap.add_argument("--engines", default="reference,fast")
    ap.add_argument("--save", metavar="FILE", help="write the program file")
    args = ap.parse_args(argv)
    hw = load_preset(args.preset)
    cols, rows = args.cols or hw.mesh_cols, args.rows or hw.mesh_rows
    prog = build(cols, rows, args.nz)
    if args.save:
        print(f"wrote {save_program(prog, args.save)}")
    if cols * rows <= 16 * 16:
        print(f"functional: max error vs numpy fftn {check(cols, rows, args.nz, hw):.2g} "
              "(relative to its largest value)")
    star3d.report(prog, hw, args.engines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
