"""A run's output folder: result.json, summary.txt, ops.csv, phases.csv and the figures.

`write_outputs(result, out_dir)` writes everything into a temporary folder next to `out_dir`
and moves it into place only when all of it is written, so an error leaves no partial folder.
`load_result(path)` reads a saved result.json back into a SimResult (what `wse-sim plot`
re-draws from).

The SimResult does not know its Program, so a few facts the figures want (each task's op name
and kind, each op's SRAM traffic, dtype and core count) come from the Program when the caller
passes it (`program=`), and are saved in result.json under "tasks" for later re-draws.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from wse_sim.report.tasks import op_info, tasks_of

FORMAT = "wse-sim-result/1"
SPANS_INLINE_MAX = 250_000  # instances kept inline in result.json; more go to spans.npz
SPAN_KEYS = ("task", "index", "core", "start", "end")
OPS_COLUMNS = ("op", "phase", "kind", "flops", "busy_cycles", "bytes", "start", "end", "span",
               "share", "cores", "dtype", "compute", "sram_bytes", "flops_per_sram_byte",
               "flops_per_core_s")
PHASES_COLUMNS = ("level", "name", "ops", "start", "end", "span_cycles", "compute_cycles",
                  "comm_cycles", "idle_cycles", "compute_core_cycles", "stream_core_cycles",
                  "flops", "fabric_bytes", "active_share")


class OutputError(ValueError):
    """Writing or reading a run's outputs failed; the message is one line."""


# ---- result.json ---------------------------------------------------------------------------
def jsonable(o):
    """json.dumps `default=`: numpy scalars and arrays, sets and tuples, else str()."""
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


def result_dict(result, tasks: list[dict] | None = None, *, inline_spans: bool = True) -> dict:
    """`result.to_dict()` plus what a re-draw needs: every per-core map, the counters behind
    the energy figures, the task table and (inline or not) the per-instance spans."""
    d = result.to_dict()
    d["format"] = FORMAT
    d["meta"] = {k: v for k, v in (result.meta or {}).items() if k != "tasks"}
    d["maps"]["link_busy_cycles"] = np.asarray(result.link_busy_cycles).tolist()
    d["maps"]["colors"] = np.asarray(result.colors).tolist()
    d["sram_traffic_bytes"] = int(result.sram_traffic_bytes)
    d["flops_by_dtype"] = {k: int(v) for k, v in result.flops_by_dtype.items()}
    if tasks is not None:
        d["tasks"] = tasks
    if result.spans is not None:
        d["spans"] = ({k: np.asarray(result.spans[k]).tolist() for k in SPAN_KEYS}
                      if inline_spans else {"file": "spans.npz"})
    return d


def save_result(result, path, tasks: list[dict] | None = None) -> list[Path]:
    """Write result.json at `path` (and spans.npz beside it for big runs); returns the files."""
    path = Path(path)
    n = 0 if result.spans is None else len(result.spans["task"])
    inline = n <= SPANS_INLINE_MAX
    files = [path]
    # json.dumps (C encoder) then one write: json.dump to a file is pure Python and ~10x slower
    d = result_dict(result, tasks, inline_spans=inline)
    d.pop("wall_seconds", None)  # host time: result.json stays byte-identical across runs
    text = json.dumps(d, default=jsonable, separators=(",", ":"))
    path.write_text(text)
    if not inline:
        npz = path.with_name("spans.npz")
        np.savez_compressed(npz, **{k: np.asarray(result.spans[k]) for k in SPAN_KEYS})
        files.append(npz)
    return files


def _array(maps: dict, key: str, shape: tuple, required: bool = True) -> np.ndarray:
    if key not in maps:
        if required:
            raise KeyError(f"maps.{key}")
        return np.zeros(shape, np.int64)
    a = np.asarray(maps[key], dtype=np.int64)
    if a.shape != shape:
        raise OutputError(f"maps.{key} has shape {a.shape}, the mesh needs {shape}")
    return a


def load_result(path):
    """Read result.json (or a folder holding one) back into a SimResult. The saved task table,
    if any, is put in `result.meta["tasks"]`. Raises OutputError with a one-line message."""
    from wse_sim.hardware import ConfigError, from_dict
    from wse_sim.report.metrics import SimResult
    p = Path(path)
    if p.is_dir():
        p = p / "result.json"
    try:
        with open(p) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise OutputError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise OutputError(f"{p}: is a directory") from None
    except json.JSONDecodeError as e:
        raise OutputError(f"{p}: not valid JSON ({e.msg}, line {e.lineno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OutputError(f"{p}: cannot read ({e})") from None
    if not isinstance(d, dict):
        raise OutputError(f"{p}: not a wse-sim result (expected a JSON object)")
    try:
        hw = from_dict({"hardware": d["hardware"]}, "result")
        rows, cols = hw.mesh_rows, hw.mesh_cols
        maps = d["maps"]
        spans = d.get("spans")
        if isinstance(spans, dict) and "file" in spans:
            npz = p.with_name(Path(spans["file"]).name)
            if npz.is_file():
                with np.load(npz) as z:
                    spans = {k: z[k].astype(np.int64) for k in SPAN_KEYS}
            else:
                spans = None
        elif isinstance(spans, dict):
            spans = {k: np.asarray(spans[k], dtype=np.int64) for k in SPAN_KEYS}
        else:
            spans = None
        meta = dict(d.get("meta") or {})
        if isinstance(d.get("tasks"), list):
            meta["tasks"] = d["tasks"]
        ops = {str(k): dict(v) for k, v in d["ops"].items()}
        for o in ops.values():
            for key in ("flops", "busy_cycles", "bytes", "start", "end"):
                o[key] = int(o[key])
        result = SimResult(
            program=str(d["program"]), engine=str(d["engine"]), hardware=hw,
            cycles=int(d["cycles"]), flops=int(d["flops"]),
            executed_flops=int(d.get("executed_flops", d["flops"])),
            stream_flops=int(d.get("stream_flops", 0)),
            flops_by_dtype={k: int(v) for k, v in
                            (d.get("flops_by_dtype") or {d.get("dtype", "fp32"): d["flops"]}).items()},
            comm_bytes=int(d["comm_bytes"]), delivered_bytes=int(d.get("delivered_bytes", 0)),
            bytes_hops=int(d["bytes_hops"]),
            sram_traffic_bytes=int(d.get("sram_traffic_bytes", 0)),
            io_bytes=int(d.get("io_bytes", 0)),
            compute_cycles=int(d["compute_cycles"]), comm_cycles=int(d["comm_cycles"]),
            core_busy_cycles=_array(maps, "core_busy_cycles", (rows, cols)),
            link_bytes=_array(maps, "link_bytes", (rows, cols, 4)),
            link_busy_cycles=_array(maps, "link_busy_cycles", (rows, cols, 4), required=False),
            sram_bytes=_array(maps, "sram_bytes", (rows, cols)),
            colors=_array(maps, "colors", (rows, cols), required=False),
            ops=ops, instances=int(d.get("instances", 0)), tokens=int(d.get("tokens", 0)),
            dtype=str(d.get("dtype", "fp32")), cores_used=int(d.get("cores_used", 0)),
            wall_seconds=float(d.get("wall_seconds", 0.0)), meta=meta, spans=spans,
            loop_iterations=int(d.get("loop_iterations", 0)),
            loop_iterations_skipped=int(d.get("loop_iterations_skipped", 0)),
        )
    except OutputError:
        raise
    except ConfigError as e:
        raise OutputError(f"{p}: not a wse-sim result ({e})") from None
    except KeyError as e:
        raise OutputError(f"{p}: not a wse-sim result (missing {e.args[0]!s})") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise OutputError(f"{p}: not a wse-sim result ({type(e).__name__}: {e})") from None
    return result


# ---- tables --------------------------------------------------------------------------------
def _csv_text(rows: list[dict], columns: tuple) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def ops_csv(result, tasks: list[dict] | None = None) -> str:
    from wse_sim.report.text import op_rows
    return _csv_text(op_rows(result, op_info(tasks)), OPS_COLUMNS)


def phases_csv(result) -> str:
    from wse_sim.report.text import phase_rows
    return _csv_text(phase_rows(result), PHASES_COLUMNS)


# ---- the folder ----------------------------------------------------------------------------
def run_title(result) -> str:
    m = result.meta or {}
    if m.get("model") and m.get("phase"):
        return f"{m['model']} {m['phase']} on {result.hardware.name}"
    return f"{result.program} on {result.hardware.name}"


def _install(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder into place (files of an existing folder that the new
    run also wrote are replaced; other files there are left alone)."""
    if not out.exists():
        os.replace(tmp, out)
        return
    if not out.is_dir():
        raise OutputError(f"{out}: exists and is not a directory")
    for f in sorted(tmp.iterdir()):
        os.replace(f, out / f.name)
    tmp.rmdir()


def write_outputs(result, out_dir, *, formats=("png", "svg"), trace=None, trace_region=None,
                  program=None, title: str | None = None) -> dict:
    """Write a run's output folder; returns {"dir": Path, "files": [names], "trace": Path?}.

    `trace`: None (no trace), True (trace.json inside the folder) or a path (the trace goes
    there). `trace_region`: (x0, y0, cols, rows) of the cores whose instances the trace keeps
    (see `wse_sim.report.trace`). `program` supplies op names and SRAM traffic per task (kept in
    result.json). `formats`: figure formats, any of png, svg, pdf."""
    from wse_sim.report import figures, plots
    from wse_sim.report import trace as trace_mod
    from wse_sim.report.text import format_report
    formats = tuple(formats)
    bad = [f for f in formats if f not in plots.FORMATS]
    if bad:
        raise OutputError(f"formats: got {bad}, allowed: {', '.join(plots.FORMATS)}")
    out = Path(out_dir)
    tasks = tasks_of(result, program)
    region = trace_mod.check_region(trace_region, result.hardware) if trace_region else None
    title = title or run_title(result)
    parent = out.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
    except OSError as e:
        raise OutputError(f"{out}: cannot create ({e.strerror or e})") from None
    trace_tmp = None
    trace_path = None
    try:
        save_result(result, tmp / "result.json", tasks)
        (tmp / "summary.txt").write_text(format_report(result, title) + "\n")
        (tmp / "ops.csv").write_text(ops_csv(result, tasks))
        (tmp / "phases.csv").write_text(phases_csv(result))
        if formats:
            figures.draw_figures(result, tmp, formats=formats, tasks=tasks, title=title)
        if trace is True:
            trace_mod.write_trace(result, tmp / "trace.json", tasks=tasks, region=region)
        elif trace:
            trace_path = Path(trace)
            trace_path.parent.mkdir(parents=True, exist_ok=True)
            trace_tmp = trace_path.with_name(f".{trace_path.name}.tmp")
            trace_mod.write_trace(result, trace_tmp, tasks=tasks, region=region)
        files = sorted(f.name for f in tmp.iterdir())
        _install(tmp, out)
        if trace_tmp is not None:
            os.replace(trace_tmp, trace_path)
    except OSError as e:
        raise OutputError(f"{out}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if trace_tmp is not None and trace_tmp.exists():
            trace_tmp.unlink()
    if trace is True:
        trace_path = out / "trace.json"
    return {"dir": out, "files": files, "trace": trace_path}
