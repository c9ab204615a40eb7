"""MoE models weight-resident over several wafers (issue 21): the `over_wafers` section of
bench_moe on its own (minutes): for each of qwen3-30b-a3b, mixtral-8x7b, gpt-oss-120b and
qwen3-235b-a22b, the fewest wse3 wafers that hold its fp16 weights, and its decode tokens/s
(batch 1, context 128, uniform routing): one token through every wafer (latency), and with
every wafer busy (pipelined). `--quick`: qwen3-30b-a3b only."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import emit, machine_info, parse_args  # noqa: E402
from bench_moe import WAFER_MODELS, over_wafers  # noqa: E402


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    figures: dict = {}
    over_wafers(figures, WAFER_MODELS[:1] if args.quick else WAFER_MODELS)
    emit("bench_moe_wafers", figures, {}, args.json, machine_info())


if __name__ == "__main__":
    main()
