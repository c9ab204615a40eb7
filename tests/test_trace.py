"""The Chrome / Perfetto trace: schema, timing, processes and threads, region sampling."""

import json

import numpy as np
import pytest

from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.experiment import build_program
from wse_sim.hardware import ConfigError, load_preset
from wse_sim.report import trace
from wse_sim.report.metrics import SimResult
from wse_sim.report.tasks import task_table


@pytest.fixture(scope="module")
def run():
    hw = load_preset("mesh16")
    program = build_program(hw, "tiny", prompt=32)
    result = simulate(program, hw, engine="reference")
    return result, program, task_table(program)


def check_schema(data: dict) -> None:
    assert set(data) >= {"traceEvents", "displayTimeUnit"}
    assert data["displayTimeUnit"] in ("ms", "ns")
    for e in data["traceEvents"]:
        for key in ("ph", "name", "pid", "tid", "ts"):
            assert key in e, (key, e)
        assert e["ph"] in ("X", "M", "C")
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int)
        assert isinstance(e["ts"], int | float) and e["ts"] >= 0
        if e["ph"] == "X":
            assert e["dur"] >= 0
        if e["ph"] == "M":
            assert e["name"] in ("process_name", "thread_name", "process_sort_index",
                                 "thread_sort_index")
        if e["ph"] == "C":
            assert e["args"] and all(isinstance(v, int | float) for v in e["args"].values())


def test_schema_and_metadata(run):
    result, _, tasks = run
    data = trace.trace_events(result, tasks=tasks)
    check_schema(data)
    json.dumps(data)
    ev = data["traceEvents"]
    procs = {e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    assert {"cores: compute", "ops (whole mesh)"} <= procs
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev
               if e["ph"] == "M" and e["name"] == "thread_name"}
    for e in ev:
        if e["ph"] == "X":
            assert (e["pid"], e["tid"]) in threads
    assert threads[(trace.PID_COMPUTE, 160)] == "core (0,10)"
    other = data["otherData"]
    assert other["region"] == {"x0": 0, "y0": 0, "cols": 16, "rows": 16, "whole_mesh": True}
    assert not other["sampled"] and "note" in other


def test_every_instance_is_an_event_at_its_simulated_time(run):
    result, program, tasks = run
    data = trace.trace_events(result, tasks=tasks)
    inst = [e for e in data["traceEvents"] if e["ph"] == "X"
            and e["pid"] in (trace.PID_COMPUTE, trace.PID_TRANSFER)]
    assert len(inst) == len(result.spans["task"])
    us = 1e-3 / result.hardware.clock_ghz
    sp = result.spans
    key = {(int(t), int(i)): (int(c), int(s), int(e)) for t, i, c, s, e in
           zip(sp["task"], sp["index"], sp["core"], sp["start"], sp["end"], strict=True)}
    for e in inst:
        core, start, end = key[(e["args"]["task"], e["args"]["index"])]
        assert e["name"] == program.tasks[e["args"]["task"]].op
        assert e["tid"] % result.hardware.cores == core
        assert e["ts"] == pytest.approx(start * us, abs=1e-4)
        assert e["dur"] == pytest.approx((end - start) * us, abs=2e-4)
        assert e["args"]["cycles"] == end - start
        is_compute = tasks[e["args"]["task"]]["kind"] == "Compute"
        assert e["pid"] == (trace.PID_COMPUTE if is_compute else trace.PID_TRANSFER)
        if is_compute:
            assert e["tid"] == core


def test_events_on_one_thread_never_overlap(run):
    result, _, tasks = run
    data = trace.trace_events(result, tasks=tasks)
    by: dict = {}
    for e in data["traceEvents"]:
        if e["ph"] == "X":
            by.setdefault((e["pid"], e["tid"]), []).append((e["ts"], e["ts"] + e["dur"]))
    for spans in by.values():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
            assert start >= end - 1e-3


def test_region_keeps_only_its_cores(run, tmp_path):
    result, _, tasks = run
    path = trace.write_trace(result, tmp_path / "t.json", tasks=tasks, region=(2, 10, 4, 3))
    data = json.loads(path.read_text())
    check_schema(data)
    cols, n = result.hardware.mesh_cols, result.hardware.cores
    cores = {e["tid"] % n for e in data["traceEvents"] if e["ph"] == "X"
             and e["pid"] in (trace.PID_COMPUTE, trace.PID_TRANSFER)}
    assert cores and all(2 <= c % cols < 6 and 10 <= c // cols < 13 for c in cores)
    assert data["otherData"]["region"]["cols"] == 4 and data["otherData"]["sampled"]


def test_without_names_instances_are_numbered(run):
    result, _, _ = run
    data = trace.trace_events(result)
    check_schema(data)
    names = {e["name"] for e in data["traceEvents"] if e["ph"] == "X"
             and e["pid"] == trace.PID_COMPUTE}
    assert "task 0" in names


def test_full_wafer_default_region_is_a_window_at_the_busy_corner():
    hw = load_preset("wse2")
    r, c = hw.mesh_rows, hw.mesh_cols
    busy = np.zeros((r, c), np.int64)
    busy[100:300, 40:200] = 5
    n = 200_000
    rng = np.random.default_rng(1)
    ys, xs = rng.integers(100, 300, n), rng.integers(40, 200, n)
    start = rng.integers(0, 1000, n)
    res = SimResult(
        program="p", engine="fast", hardware=hw, cycles=2000, flops=1, executed_flops=1,
        stream_flops=0, flops_by_dtype={}, comm_bytes=0, delivered_bytes=0, bytes_hops=0,
        sram_traffic_bytes=0, io_bytes=0, compute_cycles=0, comm_cycles=0,
        core_busy_cycles=busy, link_bytes=np.zeros((r, c, 4), np.int64),
        link_busy_cycles=np.zeros((r, c, 4), np.int64), sram_bytes=np.zeros((r, c), np.int64),
        colors=np.zeros((r, c), np.int64),
        ops={"mm": {"flops": 1, "busy_cycles": 5, "bytes": 0, "start": 0, "end": 1100,
                    "kind": "Compute"}},
        instances=n, spans={"task": np.zeros(n, np.int64), "index": np.arange(n),
                            "core": ys * c + xs, "start": start, "end": start + 50})
    assert trace.default_region(res) == (40, 100, 32, 32)
    data = trace.trace_events(res, tasks=[{"op": "mm", "kind": "Compute"}])
    check_schema(data)
    x = [e for e in data["traceEvents"] if e["ph"] == "X" and e["pid"] == trace.PID_COMPUTE]
    inside = ((xs >= 40) & (xs < 72) & (ys >= 100) & (ys < 132)).sum()
    assert len(x) == inside < n
    assert data["otherData"]["sampled"] and data["otherData"]["region"]["x0"] == 40


def test_region_parsing_and_checks():
    hw = load_preset("mesh16")
    assert trace.parse_region("1, 2,3,4") == (1, 2, 3, 4)
    for bad in ("1,2,3", "a,b,c,d", "0,0,0,4", "-1,0,2,2"):
        with pytest.raises(ValueError):
            trace.parse_region(bad)
    assert trace.check_region("0,0,16,16", hw) == (0, 0, 16, 16)
    with pytest.raises(ConfigError, match="reach past"):
        trace.check_region((8, 8, 9, 1), hw)


def test_cli_trace_without_out(tmp_path, capsys):
    path = tmp_path / "deep" / "run.json"
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode",
                 "--context", "16", "--trace", str(path), "--trace-region", "0,0,8,8",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trace"] == str(path)
    check_schema(json.loads(path.read_text()))
    assert [p.name for p in path.parent.iterdir()] == ["run.json"]


def test_cli_rejects_a_region_without_a_trace(capsys):
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--trace-region",
                 "0,0,4,4"]) == 2
    assert capsys.readouterr().err.startswith("error: --trace-region")
