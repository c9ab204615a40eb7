"""How a phase's tokens split into parts: a prefill's chunks or a training step's
micro-batches (`part_spans`), shared by the strategies and the MoE layer."""

from __future__ import annotations

from wse_sim.timing import split_evenly


def part_spans(run) -> list[tuple]:
    """Each chunk or micro-batch: (tile suffix, first sequence, sequences, first position,
    positions); one part with suffix "" when the phase is not split."""
    n = run.parts
    sq = 1 if run.phase == "decode" else run.prompt
    if n == 1:
        return [("", 0, run.batch, 0, sq)]
    if run.phase == "train":
        per = run.batch // n
        return [(f".m{m}", m * per, per, 0, sq) for m in range(n)]
    out, s0 = [], 0
    for c in range(n):
        ns = split_evenly(sq, n, c)
        out.append((f".c{c}", 0, run.batch, s0, ns))
        s0 += ns
    return out
