"""The worked example of docs/programs.md: a row of P cores computes z = a x + y on its
n-value vectors, sums the z along the row with a pipelined reduce, multicasts the sum to the
Q rows below, and every core there scales it: out = b * sum over the row of (a x + y).

    python examples/programs/row_sum.py                      # mesh8: both engines vs the closed form
    python examples/programs/row_sum.py --save examples/programs/row_sum.json
    wse-sim run-program examples/programs/row_sum.json --preset mesh8

The closed form (`closed_form_cycles`) is derived step by step in docs/programs.md.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

from wse_sim.kernels.registry import register_kernel
from wse_sim.program import (
    Compute,
    DataOp,
    Dep,
    LineStream,
    Multicast,
    Program,
    ProgramBuilder,
    ProgramError,
    Region,
)


@register_kernel("axpy", replace=True)
def axpy(call):
    """z = a x + y on every core (params: a)."""
    x, y = call.inputs
    return call.params["a"] * x + y


@register_kernel("scale", replace=True)
def scale(call):
    """out = b s on every core (params: b)."""
    (s,) = call.inputs
    return call.params["b"] * s


def build(P: int = 8, Q: int = 4, n: int = 64, a: float = 2.0, b: float = 0.5) -> Program:
    """The program on cores [0, P) x [0, Q + 1) of any mesh at least that large."""
    for name, v, low in (("P", P, 2), ("Q", Q, 1), ("n", n, 1)):
        if not isinstance(v, int) or v < low:
            raise ProgramError(f"row_sum {name}: got {v!r}, must be an integer >= {low}")
    row, below = Region(0, 0, P, 1), Region(0, 1, P, Q)
    pb = ProgramBuilder("row_sum")
    vec = 4 * n  # bytes of n fp32 values
    for name, region in (("x", row), ("y", row), ("z", row), ("s", Region(0, 0, P, Q + 1)),
                         ("out", below)):
        pb.alloc(name, region, vec, shape=(n,))
    t0 = pb.add(Compute("axpy", row, flops=2 * n * P, kind="fmac", sram_read_bytes=2 * vec * P,
                        sram_write_bytes=vec * P,
                        data=DataOp("axpy", ("x", "y"), "z", (("a", a),))))
    t1 = pb.add(LineStream("sum", row, axis="x", direction=1, wavelets=n, reduce=True, color=1,
                           deps=(Dep(t0),), data=DataOp("reduce", ("z",), "s")))
    t2 = pb.add(Multicast("spread", (P - 1, 0), below, wavelets=n, color=2,
                          deps=(Dep(t1),), data=DataOp("copy", ("s",), "s")))
    pb.add(Compute("scale", below, flops=n * P * Q, kind="vector", deps=(Dep(t2),),
                   data=DataOp("scale", ("s",), "out", (("b", b),))))
    return pb.build(cores_used=P * (Q + 1))


def closed_form_cycles(hw, P: int = 8, Q: int = 4, n: int = 64) -> int:
    """The run's cycles, term by term as docs/programs.md derives them (fp32: 1 lane)."""
    tr, hop, op = hw.ramp_latency_cycles, hw.hop_latency_cycles, hw.stream_op_latency_cycles
    lanes = hw.lanes("fp32")
    axpy = max(math.ceil(2 * n / (2 * lanes)), math.ceil(8 * n / hw.sram_read_bytes_per_cycle),
               math.ceil(4 * n / hw.sram_write_bytes_per_cycle))
    m = hw.message_start_cycles + hw.message_receive_cycles  # each message's core costs
    reduce = (P - 1) * (2 * tr + hop + op) + (n - 1) + m
    spread = 2 * tr + (P - 1 + Q) * hop + (n - 1) + m
    scale = math.ceil(n / lanes)
    return axpy + reduce + spread + scale


def reference(x: np.ndarray, y: np.ndarray, a: float, b: float, Q: int) -> np.ndarray:
    """numpy: out at each of the Q x P cores below the row, (Q, P, n)."""
    s = (a * x.astype(np.float64) + y).sum(axis=(0, 1))
    return np.broadcast_to(b * s, (Q, x.shape[1], x.shape[2]))


def main(argv=None) -> int:
    from wse_sim.engine import simulate
    from wse_sim.hardware import load_preset
    from wse_sim.program_io import save_program
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="mesh8")
    ap.add_argument("--P", type=int, default=8)
    ap.add_argument("--Q", type=int, default=4)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--save", metavar="FILE", help="write the program file")
    args = ap.parse_args(argv)
    hw = load_preset(args.preset)
    prog = build(args.P, args.Q, args.n)
    if args.save:
        print(f"wrote {save_program(prog, args.save)}")
    rng = np.random.default_rng(0)
    x, y = (rng.uniform(-1, 1, (1, args.P, args.n)).astype(np.float32) for _ in range(2))
    want = closed_form_cycles(hw, args.P, args.Q, args.n)
    for engine in ("reference", "fast"):
        r = simulate(prog, hw, engine=engine, functional={"x": x, "y": y})
        err = np.abs(r.buffers["out"] - reference(x, y, 2.0, 0.5, args.Q)).max()
        print(f"{engine:9} {r.cycles:,} cycles (closed form {want:,}), "
              f"{r.flops_per_s / 1e9:.2f} GFLOP/s = {100 * r.peak_fraction:.2f} % of peak, "
              f"max abs error {err:.2g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
