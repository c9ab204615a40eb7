"""A GEMM algorithm added in one module (docs/gemm.md, "Adding an algorithm").

`my-cannon` is Cannon under another name, with one change a user might try: its shifts
wait for every core's previous multiply even when run without flow control (the library's
Cannon does too; a variant would change `build`). Import this module (or call `register()`)
and the algorithm is in `build_gemm`, `gemm_closed_form`, `wse-sim gemm --algo my-cannon`
(after `register()` in your own entry point), `compare gemm`, and the 2-D prefill layout
(`map_2d(..., gemm_algo="my-cannon")`)."""

from mapper.gemm import GemmAlgo, register_gemm_algo
from mapper.gemm_build import build_cannon


def build(ctx) -> None:
    """The records: here Cannon's (skew, then P multiply-and-shift steps)."""
    build_cannon(ctx)


def register() -> GemmAlgo:
    return register_gemm_algo(GemmAlgo(
        "my-cannon", "gemm", "shift", (("a", 0), ("b", 1)), build,
        "mapper.gemm:closed_form_shift", fragment=("a0", "b0", ("a1", "b1"), "c"),
        align_hops="line", aligns=True, flow_control=True,
        doc="Cannon, registered from examples/gemm_algos/my_cannon.py"), replace=True)
