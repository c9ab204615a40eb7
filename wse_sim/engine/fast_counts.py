"""The fast engine's counters that come from the task records, once per distinct record.

A loop's iterations repeat iteration 0's timing fields (`wse_sim.program_loops`), so the
FLOPs, SRAM traffic, I/O bytes and stream FLOPs of a program are those of its distinct records
(iteration 0's and the tasks outside loops) times how often each occurs: a 32-layer model
reads 1/32 of its records in Python instead of all of them. The per-op table (`ops`) adds up
each op's tasks with numpy. Both equal the per-task sums they replace (`tests/test_loops.py`
and every fast == reference test compare them with the reference engine's).
"""

from __future__ import annotations

import numpy as np

from wse_sim.engine import fast_sched as S
from wse_sim.hardware import DTYPE_BYTES
from wse_sim.program import Compute, IoTransfer, LineStream
from wse_sim.timing import executed_flops


def _task_counts(t) -> tuple:
    """(FLOPs, executed FLOPs, stream FLOPs, SRAM bytes, I/O bytes, dtype) of one record."""
    if isinstance(t, Compute):
        n = t.region.size
        lo, extra = divmod(int(t.flops), n)
        if t.kind == "fmac":
            q = t.density_q20
            ex = extra * executed_flops(lo + 1, q) + (n - extra) * executed_flops(lo, q)
        else:
            ex = int(t.flops)
        return int(t.flops), ex, 0, int(t.sram_read_bytes) + int(t.sram_write_bytes), 0, t.dtype
    if isinstance(t, IoTransfer):
        return 0, 0, 0, 0, int(t.bytes), None
    if isinstance(t, LineStream) and t.reduce:
        lines = t.region.rows if t.axis == "x" else t.region.cols
        sf = lines * (t.length - 1) * t.wavelets * (4 // DTYPE_BYTES[t.dtype])
        return 0, 0, sf, 0, 0, t.dtype
    return 0, 0, 0, 0, 0, None


def static_counts(program, root: np.ndarray) -> dict:
    """FLOPs, executed FLOPs (sparsity skips zeros), stream FLOPs (reduce lines' adds), SRAM
    traffic, I/O bytes and executed FLOPs by dtype of every task. `root`: per task, the
    distinct record it repeats (`Tables.roots`)."""
    ids, reps = np.unique(root, return_counts=True)
    out = {"flops": 0, "executed_flops": 0, "stream_flops": 0, "sram_traffic_bytes": 0,
           "io_bytes": 0}
    by_dtype: dict[str, int] = {}
    for ti, k in zip(ids.tolist(), reps.tolist(), strict=True):
        f, ex, sf, sram, io, dtype = _task_counts(program.tasks[ti])
        out["flops"] += k * f
        out["executed_flops"] += k * ex
        out["stream_flops"] += k * sf
        out["sram_traffic_bytes"] += k * sram
        out["io_bytes"] += k * io
        if dtype is not None:
            by_dtype[dtype] = by_dtype.get(dtype, 0) + k * (ex + sf)
    out["flops_by_dtype"] = dict(sorted(by_dtype.items()))
    return out


def op_table(program, tacc: np.ndarray, root: np.ndarray) -> dict[str, dict]:
    """Per op name, in the order of its tasks' first grant: FLOPs, busy cycles, bytes (the
    streams' and the I/O's), the earliest start and latest end of its tasks, and the kind of
    its first-granted task. `root`: as for `static_counts`."""
    tasks = program.tasks
    nt = len(tasks)
    if nt == 0:
        return {}
    ids = np.unique(root)
    flops_of = np.zeros(nt, np.int64)
    io_of = np.zeros(nt, np.int64)
    for ti in ids.tolist():
        t = tasks[ti]
        if isinstance(t, Compute):
            flops_of[ti] = int(t.flops)
        elif isinstance(t, IoTransfer):
            io_of[ti] = int(t.bytes)
    names: dict[str, int] = {}
    op_id = np.fromiter((names.setdefault(t.op, len(names)) for t in tasks), np.int64, nt)
    order = np.argsort(tacc[:, S.A_FIRST], kind="stable")  # tasks in order of first grant
    rank = np.empty(nt, np.int64)
    rank[order] = np.arange(nt)
    m = len(names)
    first = np.full(m, nt, np.int64)
    np.minimum.at(first, op_id, rank)
    start = np.full(m, np.iinfo(np.int64).max)
    np.minimum.at(start, op_id, tacc[:, S.A_START])
    end = np.full(m, np.iinfo(np.int64).min)
    np.maximum.at(end, op_id, tacc[:, S.A_END])
    sums = {"flops": flops_of[root], "busy_cycles": tacc[:, S.A_BUSY],
            "bytes": tacc[:, S.A_BYTES] + io_of[root]}
    totals = {k: np.zeros(m, np.int64) for k in sums}
    for k, v in sums.items():
        np.add.at(totals[k], op_id, v)
    by_id = list(names)
    ops: dict[str, dict] = {}
    for i in np.argsort(first, kind="stable").tolist():
        t = tasks[int(order[first[i]])]
        ops[by_id[i]] = {"flops": int(totals["flops"][i]),
                         "busy_cycles": int(totals["busy_cycles"][i]),
                         "bytes": int(totals["bytes"][i]), "start": int(start[i]),
                         "end": int(end[i]), "kind": type(t).__name__}
    return ops
