"""The step path's planned memory before and after its signal store (issue 16): weight
streaming with the 2-D layout, where a layer's weights (an I/O transfer) and the residual
are read thousands of task groups after they are made.

Before: the signal ring (`old_ring_size`, the former `fast_step.ring_size`, kept here): while
a group runs, every task's slots from the oldest one still needed up to the group's, one
contiguous power-of-two ring. After: `fast_step.plan`, a block per task, live from its group
to its last reader's (`fast_step.store_plan`); `live_rows_max`: the rows live in one group
at most, the least any placement of the blocks needs. Both in bytes by the formula of
`fast_step.estimate_bytes` (spans off), in the same process, from the same tables.
Runs (wse2, fp16): Cerebras-GPT-1.3B prefill of 2,048 tokens with 4 layers, and (not with
--quick) all 24 layers, and LLaMA3-8B prefill of 4,096 tokens.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from _common import emit, machine_info, parse_args  # noqa: E402

RUNS = {  # name: (model, prompt, model fields set)
    "gpt1.3b_4layers_2048": ("cerebras-gpt-1.3b", 2048, {"n_layers": 4}),
    "gpt1.3b_2048": ("cerebras-gpt-1.3b", 2048, None),
    "llama3_8b_4096": ("llama3-8b", 4096, None),
}


def old_ring_size(tables, groups: np.ndarray) -> int:
    """The former signal ring (a power of two): while a group runs, the slots of every task
    from the oldest one still needed by it or a later group, up to the group's last task."""
    from wse_sim.engine.fast_tasks import D_OWNER, D_TASK, F_SA, F_SB
    td, deps = tables.td, tables.deps
    if not len(td):
        return 1
    grp_of = np.repeat(np.arange(len(groups) - 1), np.diff(groups))
    last_use = grp_of.copy()
    if len(deps):
        np.maximum.at(last_use, deps[:, D_TASK], grp_of[deps[:, D_OWNER]])
    first_task = np.searchsorted(np.maximum.accumulate(last_use), np.arange(len(groups) - 1),
                                 side="left")
    span = int((td[groups[1:] - 1, F_SA] + 1 - td[first_task, F_SB]).max())
    return 1 << max(0, span - 1).bit_length()


def measure(name: str, hw) -> dict:
    from wse_sim.engine import fast_step as P
    from wse_sim.engine.fast_tables import Tables
    from wse_sim.engine.fast_tasks import F_SA, F_SB
    from wse_sim.experiment import build_program
    model, prompt, model_set = RUNS[name]
    prog = build_program(hw, model, phase="prefill", prompt=prompt,
                         strategy="weight-streaming", layout="2d", model_set=model_set)
    tables = Tables(prog, hw)
    t0 = time.perf_counter()
    groups, rows, off = P.plan(tables)
    plan_s = time.perf_counter() - t0
    ring = old_ring_size(tables, groups)
    first, last = P.live_groups(tables, groups)  # the least any placement needs: rows live
    size = tables.td[:, F_SA] + 1 - tables.td[:, F_SB]  # at once (in one group)
    live = np.zeros(len(groups), np.int64)
    np.add.at(live, first, size)
    np.add.at(live, last + 1, -size)
    after = P.estimate_bytes(tables, hw.cores, False, (groups, rows, off))
    before = after + P.BYTES_PER_SLOT * (ring - rows)
    return {f"{name}_tasks": len(prog.tasks), f"{name}_instances": tables.n_instances,
            f"{name}_groups": len(groups) - 1, f"{name}_ring_rows_before": ring,
            f"{name}_store_rows_after": rows,
            f"{name}_live_rows_max": int(np.cumsum(live).max()), f"{name}_bytes_before": before,
            f"{name}_bytes_after": after, f"{name}_gib_before": before / 2**30,
            f"{name}_gib_after": after / 2**30, f"{name}_ratio": before / after,
            f"{name}_plan_seconds": plan_s}


def main(argv=None) -> None:
    args = parse_args(__doc__.splitlines()[0], argv)
    from wse_sim.hardware import load_preset
    hw = load_preset("wse2")
    figures, targets = {}, {}
    names = list(RUNS)[:1] if args.quick else list(RUNS)
    for name in names:
        figures.update(measure(name, hw))
        targets[f"{name}_gib_after"] = {"max": 16}
    emit("bench_step_memory", figures, targets, args.json, machine_info())


if __name__ == "__main__":
    main()
