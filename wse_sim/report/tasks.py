"""What the Program knows that a SimResult does not: the per-task table (op, kind, dtype,
cores, SRAM bytes) that reports, figures and traces label their rows with."""

from __future__ import annotations


def task_table(program) -> list[dict]:
    """Per task index (the `task` of result.spans): op name, kind and, for computes, the
    compute kind, dtype, core count and SRAM bytes read + written (all cores together)."""
    from wse_sim.program import Compute
    out = []
    for t in program.tasks:
        row = {"op": t.op, "kind": type(t).__name__}
        region = getattr(t, "region", None)
        if region is not None:
            row["cores"] = int(region.size)
        if isinstance(t, Compute):
            row.update(dtype=t.dtype, compute=t.kind,
                       sram_bytes=int(t.sram_read_bytes) + int(t.sram_write_bytes))
        out.append(row)
    return out


def tasks_of(result, program=None) -> list[dict] | None:
    """The task table: from `program` if given, else from a loaded result's meta."""
    if program is not None:
        return task_table(program)
    tasks = result.meta.get("tasks") if isinstance(result.meta, dict) else None
    return tasks if isinstance(tasks, list) else None


def op_info(tasks: list[dict] | None) -> dict:
    """Per op name: SRAM bytes, dtype, compute kind, cores (summed over the op's computes)."""
    info: dict[str, dict] = {}
    for t in tasks or []:
        if t.get("kind") != "Compute":
            continue
        d = info.setdefault(t["op"], {"sram_bytes": 0, "cores": 0})
        d["sram_bytes"] += int(t.get("sram_bytes", 0))
        d["cores"] += int(t.get("cores", 0))
        d["dtype"] = t.get("dtype", "")
        d["compute"] = t.get("compute", "")
    return info
