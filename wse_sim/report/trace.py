"""A run as a Chrome / Perfetto trace (JSON object format; open in ui.perfetto.dev or
chrome://tracing).

Processes and threads:
- pid 1 "cores: compute": one thread per core (tid = core id = y * cols + x), an "X" event per
  compute instance (name = op name, args: task, index, cycles).
- pid 2 "cores: transfers": the transfer / stream instances, on the thread of their source
  core. Streams of one core that overlap in time go to extra lanes (tid = core id + k * cores).
- pid 3 "ops (whole mesh)": one thread per phase (`L3`, `lm_head`, ...), an "X" event per op
  from its first instance's start to its last instance's end.
- pid 4 "fabric (whole mesh)": counters ("C"): cores computing (exact, from the instances) and
  the fabric injection rate, each transfer op's bytes spread evenly over its window. The
  engines do not record per-link spans; per-link utilization is in the heatmaps.
Time: ts and dur in µs of simulated time (cycles / clock).

At full-wafer size only the cores inside a region are kept (default: the whole mesh up to
64 x 64 cores, else a 32 x 32 window at the corner of the busy cores); the region is named in
the file's "otherData".
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wse_sim.hardware import ConfigError

WHOLE_MESH_MAX_CORES = 64 * 64
DEFAULT_WINDOW = 32
MAX_INSTANCE_EVENTS = 600_000   # about 80 MB of JSON
COUNTER_BINS = 2000
PID_COMPUTE, PID_TRANSFER, PID_OPS, PID_FABRIC = 1, 2, 3, 4


# ---- the region ----------------------------------------------------------------------------
def parse_region(text: str) -> tuple[int, int, int, int]:
    """'X0,Y0,COLS,ROWS' -> (x0, y0, cols, rows); raises ValueError with a one-line message."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise ValueError(f"got {text!r}, must be X0,Y0,COLS,ROWS (four integers)") from None
    if len(vals) != 4:
        raise ValueError(f"got {text!r}, must be X0,Y0,COLS,ROWS (four integers)")
    if vals[0] < 0 or vals[1] < 0 or vals[2] < 1 or vals[3] < 1:
        raise ValueError(f"got {text!r}: X0, Y0 must be >= 0 and COLS, ROWS >= 1")
    return vals


def check_region(region, hw) -> tuple[int, int, int, int]:
    """Validate (x0, y0, cols, rows) against the mesh; ConfigError names the problem."""
    if isinstance(region, str):
        try:
            region = parse_region(region)
        except ValueError as e:
            raise ConfigError(f"trace region: {e}") from None
    try:
        x0, y0, c, r = (int(v) for v in region)
    except (TypeError, ValueError):
        raise ConfigError(f"trace region: got {region!r}, must be (x0, y0, cols, rows)") from None
    if x0 < 0 or y0 < 0 or c < 1 or r < 1:
        raise ConfigError(f"trace region: got {region!r}: x0, y0 >= 0 and cols, rows >= 1")
    if x0 + c > hw.mesh_cols or y0 + r > hw.mesh_rows:
        raise ConfigError(f"trace region: {c} x {r} cores at ({x0},{y0}) reach past the "
                          f"{hw.mesh_cols} x {hw.mesh_rows} mesh")
    return x0, y0, c, r


def default_region(result) -> tuple[int, int, int, int]:
    """The whole mesh when it is small; else a 32 x 32 window at the busy cores' corner."""
    hw = result.hardware
    if hw.cores <= WHOLE_MESH_MAX_CORES:
        return 0, 0, hw.mesh_cols, hw.mesh_rows
    busy = np.asarray(result.core_busy_cycles) > 0
    ys, xs = np.nonzero(busy)
    x0, y0 = (int(xs.min()), int(ys.min())) if xs.size else (0, 0)
    c = min(DEFAULT_WINDOW, hw.mesh_cols)
    r = min(DEFAULT_WINDOW, hw.mesh_rows)
    return min(x0, hw.mesh_cols - c), min(y0, hw.mesh_rows - r), c, r


# ---- events --------------------------------------------------------------------------------
def _lanes(keys: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Per event, the lowest lane of its key where it overlaps nothing (events in any order).
    Zero-length events stay in lane 0: they nest in whatever is running there."""
    lane = np.zeros(len(keys), np.int64)
    order = np.lexsort((-ends, starts, keys))
    free: dict[int, list] = {}
    k_list, s_list, e_list = keys.tolist(), starts.tolist(), ends.tolist()
    for i in order.tolist():
        if e_list[i] <= s_list[i]:
            continue
        ends_k = free.setdefault(k_list[i], [])
        for j, last in enumerate(ends_k):
            if last <= s_list[i]:
                ends_k[j] = e_list[i]
                lane[i] = j
                break
        else:
            lane[i] = len(ends_k)
            ends_k.append(e_list[i])
    return lane


def _meta(name: str, pid: int, tid: int, value) -> dict:
    key = "sort_index" if name.endswith("sort_index") else "name"
    return {"ph": "M", "name": name, "pid": pid, "tid": tid, "ts": 0, "args": {key: value}}


def _complete(names, pid, tids, ts, dur, args) -> list[dict]:
    return [{"ph": "X", "name": n, "pid": pid, "tid": t, "ts": a, "dur": d, "args": g}
            for n, t, a, d, g in zip(names, tids, ts, dur, args, strict=True)]


def _active_average(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Mean number of [start, end) intervals active within each bin of `edges`."""
    s = np.sort(starts.astype(np.float64))
    e = np.sort(ends.astype(np.float64))
    cs = np.concatenate(([0.0], np.cumsum(s)))
    ce = np.concatenate(([0.0], np.cumsum(e)))

    def integral(t):  # sum over intervals of clip(t - start, 0, len)
        i = np.searchsorted(s, t, side="right")
        j = np.searchsorted(e, t, side="right")
        return (i * t - cs[i]) - (j * t - ce[j])

    area = integral(edges)
    return np.diff(area) / np.maximum(np.diff(edges), 1e-12)


def _task_fields(tasks, task_ids):
    """(op names, is-compute flags) per span, from the task table (or placeholders)."""
    if tasks:
        names = np.array([t.get("op", f"task {i}") for i, t in enumerate(tasks)], dtype=object)
        comp = np.array([t.get("kind") == "Compute" for t in tasks], dtype=bool)
        ok = task_ids < len(tasks)
        safe = np.where(ok, task_ids, 0)
        n = np.where(ok, names[safe], None)
        n = np.array([x if x is not None else f"task {tid}" for x, tid in
                      zip(n.tolist(), task_ids.tolist(), strict=True)], dtype=object)
        return n, np.where(ok, comp[safe], False), True
    return (np.array([f"task {t}" for t in task_ids.tolist()], dtype=object),
            np.zeros(len(task_ids), bool), False)


def _instance_events(result, tasks, region, us_per_cycle):
    """X events of the instances whose core lies in `region`, and their thread metadata."""
    hw = result.hardware
    cols, n_cores = hw.mesh_cols, hw.cores
    sp = result.spans
    core = np.asarray(sp["core"], np.int64)
    x, y = core % cols, core // cols
    x0, y0, rc, rr = region
    keep = (core >= 0) & (x >= x0) & (x < x0 + rc) & (y >= y0) & (y < y0 + rr)
    idx = np.nonzero(keep)[0]
    truncated = False
    if idx.size > MAX_INSTANCE_EVENTS:  # keep whole cores, lowest ids first
        order = idx[np.argsort(core[idx], kind="stable")]
        cut = core[order[MAX_INSTANCE_EVENTS]]  # the first core that does not fit whole
        whole_cores = order[core[order] < cut]
        idx = np.sort(whole_cores if whole_cores.size else order[:MAX_INSTANCE_EVENTS])
        truncated = True
    task = np.asarray(sp["task"], np.int64)[idx]
    index = np.asarray(sp["index"], np.int64)[idx]
    start = np.asarray(sp["start"], np.int64)[idx]
    end = np.asarray(sp["end"], np.int64)[idx]
    c = core[idx]
    names, is_comp, known = _task_fields(tasks, task)
    pid = np.where(is_comp | (not known), PID_COMPUTE, PID_TRANSFER)
    lane = _lanes(c * 8 + pid, start, end)
    tid = c + lane * n_cores
    ts = np.round(start * us_per_cycle, 4)
    te = np.round(end * us_per_cycle, 4)
    dur = np.round(te - ts, 4)
    args = [{"task": a, "index": b, "cycles": d} for a, b, d in
            zip(task.tolist(), index.tolist(), (end - start).tolist(), strict=True)]
    events = []
    for p in (PID_COMPUTE, PID_TRANSFER):
        m = pid == p
        if m.any():
            events += _complete(names[m].tolist(), p, tid[m].tolist(), ts[m].tolist(),
                                dur[m].tolist(), [a for a, k in zip(args, m, strict=True) if k])
    threads = sorted(set(zip(pid.tolist(), tid.tolist(), strict=True)))
    for p, t in threads:
        cid, ln = t % n_cores, t // n_cores
        label = f"core ({cid % cols},{cid // cols})" + (f" #{ln + 1}" if ln else "")
        events.append(_meta("thread_name", p, t, label))
        events.append(_meta("thread_sort_index", p, t, cid * 8 + ln))
    return events, truncated, known


def _op_events(result, us_per_cycle):
    from wse_sim.report.text import phase_of
    ops = sorted(result.ops.items(), key=lambda kv: (kv[1]["start"], kv[1]["end"]))
    if not ops:
        return []
    phases = list(dict.fromkeys(phase_of(n) for n, _ in ops))
    pidx = np.array([phases.index(phase_of(n)) for n, _ in ops], np.int64)
    start = np.array([o["start"] for _, o in ops], np.int64)
    end = np.array([o["end"] for _, o in ops], np.int64)
    lane = _lanes(pidx, start, end)
    tid = pidx * 64 + np.minimum(lane, 63)
    ts = np.round(start * us_per_cycle, 4)
    dur = np.round(np.round(end * us_per_cycle, 4) - ts, 4)
    args = [{k: o.get(k) for k in ("kind", "flops", "busy_cycles", "bytes")} | {
        "cycles": int(o["end"] - o["start"])} for _, o in ops]
    events = _complete([n for n, _ in ops], PID_OPS, tid.tolist(), ts.tolist(), dur.tolist(),
                       args)
    for t in sorted(set(tid.tolist())):
        p, ln = divmod(t, 64)
        events.append(_meta("thread_name", PID_OPS, t, phases[p] + (f" #{ln + 1}" if ln else "")))
        events.append(_meta("thread_sort_index", PID_OPS, t, t))
    return events


def _changes(ts: list, values, digits: int) -> list[tuple]:
    """(ts, value) where the rounded value changes (a counter holds its value until then)."""
    out, last = [], None
    for t, v in zip(ts, np.round(np.asarray(values, float), digits).tolist(), strict=True):
        if v != last:
            out.append((t, v))
            last = v
    return out


def _counter_events(result, tasks, us_per_cycle):
    from wse_sim.report.text import is_compute
    cycles = int(result.cycles)
    if cycles <= 0:
        return []
    nb = min(COUNTER_BINS, cycles)
    edges = np.linspace(0, cycles, nb + 1)
    ts = np.round(edges[:-1] * us_per_cycle, 4).tolist()
    events = []
    sp = result.spans
    if sp is not None and tasks:
        comp = np.array([t.get("kind") == "Compute" for t in tasks], bool)
        task = np.asarray(sp["task"], np.int64)
        m = comp[np.clip(task, 0, len(comp) - 1)] & (task < len(comp))
        act = _active_average(np.asarray(sp["start"])[m], np.asarray(sp["end"])[m], edges)
        events += [{"ph": "C", "name": "cores computing", "pid": PID_FABRIC, "tid": 0, "ts": t,
                    "args": {"cores": v}} for t, v in _changes(ts, act, 2)]
    comm = [o for o in result.ops.values() if not is_compute(o.get("kind", ""))
            and o["end"] > o["start"] and o["bytes"]]
    if comm:
        rate = np.zeros(nb)
        for o in comm:
            frac = _active_average(np.array([o["start"]]), np.array([o["end"]]), edges)
            rate += frac * o["bytes"] / (o["end"] - o["start"])
        events += [{"ph": "C", "name": "fabric injection (B/cycle)", "pid": PID_FABRIC, "tid": 0,
                    "ts": t, "args": {"bytes per cycle": v}} for t, v in _changes(ts, rate, 3)]
    return events


def trace_events(result, *, tasks: list[dict] | None = None, region=None,
                 program=None) -> dict:
    """The trace as a JSON-able dict {"traceEvents": [...], "displayTimeUnit": "ns",
    "otherData": {...}}. `tasks` (or `program`) names the instances; without it they are
    called `task N` and all go to the compute process."""
    if program is not None and tasks is None:
        from wse_sim.report.tasks import task_table
        tasks = task_table(program)
    if tasks is None and isinstance(result.meta, dict) and isinstance(result.meta.get("tasks"),
                                                                       list):
        tasks = result.meta["tasks"]
    hw = result.hardware
    region = check_region(region, hw) if region is not None else default_region(result)
    us = 1e-3 / hw.clock_ghz
    events = [
        _meta("process_name", PID_COMPUTE, 0, "cores: compute" if tasks else
              "cores: task instances"),
        _meta("process_sort_index", PID_COMPUTE, 0, 1),
        _meta("process_name", PID_TRANSFER, 0, "cores: transfers (by source core)"),
        _meta("process_sort_index", PID_TRANSFER, 0, 2),
        _meta("process_name", PID_OPS, 0, "ops (whole mesh)"),
        _meta("process_sort_index", PID_OPS, 0, 0),
        _meta("process_name", PID_FABRIC, 0, "fabric (whole mesh)"),
        _meta("process_sort_index", PID_FABRIC, 0, 3),
    ]
    truncated = False
    if result.spans is not None:
        inst, truncated, _ = _instance_events(result, tasks, region, us)
        events += inst
    events += _op_events(result, us)
    events += _counter_events(result, tasks, us)
    x0, y0, c, r = region
    whole = (c, r) == (hw.mesh_cols, hw.mesh_rows)
    other = {
        "program": result.program, "engine": result.engine, "hardware": hw.name,
        "mesh": [hw.mesh_cols, hw.mesh_rows], "clock_ghz": hw.clock_ghz,
        "cycles": int(result.cycles), "time_unit": "µs of simulated time (cycles / clock)",
        "region": {"x0": x0, "y0": y0, "cols": c, "rows": r, "whole_mesh": whole},
        "sampled": not whole or truncated, "truncated": truncated,
        "note": ("instances of the cores inside 'region' only" if not whole else
                 "all cores") + ("; cut at the first cores to stay under "
                                 f"{MAX_INSTANCE_EVENTS:,} events" if truncated else "")
        + ". Per-link spans are not recorded: the 'fabric' counters are whole-mesh averages "
          "(injection spread evenly over each transfer op); per-link utilization is in the "
          "heatmaps." + ("" if result.spans is not None else
                         " This result has no per-instance spans: only ops are shown."),
        "tid": "core id = y * cols + x (+ k * cores for overlapping lane k)",
    }
    return {"traceEvents": events, "displayTimeUnit": "ns", "otherData": other}


def write_trace(result, path, *, tasks: list[dict] | None = None, region=None,
                program=None) -> Path:
    """Write the trace JSON to `path`; returns the path."""
    path = Path(path)
    data = trace_events(result, tasks=tasks, region=region, program=program)
    # json.dumps uses the C encoder (json.dump to a file does not)
    path.write_text(json.dumps(data, separators=(",", ":"), ensure_ascii=False),
                    encoding="utf-8")
    return path
