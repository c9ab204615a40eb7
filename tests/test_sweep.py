"""Sweeps: file validation, local pool runs, kill + resume, determinism, failed points, plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wse_sim.cli.main import main
from wse_sim.sweep.run import SweepError, load_sweep, load_table, parse_sweep_text, run_sweep
from wse_sim.sweep.table import METRICS

ROOT = Path(__file__).resolve().parents[1]

SMALL = """\
description = "test: tiny on mesh16"
[base]
preset = "mesh16"
model = "tiny"
engine = "reference"
prompt = 16
context = 32

[axes]
clock_ghz = [0.9, 1.1]
phase = ["prefill", "decode"]

[[points]]          # 4 KB of SRAM per core: tiny does not fit
phase = "prefill"
sram_bytes = 1024
"""


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _rows_by_id(directory) -> dict:
    rows = load_table(directory)
    ids = [r["point_id"] for r in rows]
    assert len(ids) == len(set(ids)), "a point appears twice in the table"
    return {r["point_id"]: r for r in rows}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The SMALL sweep run once with --workers 1: (sweep file, out dir, summary)."""
    d = tmp_path_factory.mktemp("small")
    f = _write(d / "small.toml", SMALL)
    summary = run_sweep(f, d / "out", workers=1, progress=False)
    return f, d / "out", summary


def test_small_sweep_runs_and_records_the_failed_point(small):
    _, out, summary = small
    assert summary["points"] == 5 and summary["done"] == 5 and summary["skipped"] == 0
    assert summary["failed"] == 1
    rows = _rows_by_id(out)
    assert len(rows) == 5
    header = (out / "sweep.csv").read_text().splitlines()[0].split(",")
    assert header == ["clock_ghz", "phase", "sram_bytes", "point_id", "status", "error",
                      *METRICS]
    failed = [r for r in rows.values() if r["status"] == "failed"]
    assert len(failed) == 1 and "does not fit" in failed[0]["error"]
    assert failed[0]["sram_bytes"] == "1024" and failed[0]["phase"] == "prefill"
    for r in rows.values():
        if r["status"] == "ok":
            assert int(r["cycles"]) > 0 and float(r["tokens_per_s"]) > 0
            assert r["sram_bytes"] == "49152"  # the preset's value, filled in for grid points
    ok = {(r["clock_ghz"], r["phase"]): r for r in rows.values() if r["status"] == "ok"}
    # same cycles at both clocks, seconds scale with 1/clock
    for phase in ("prefill", "decode"):
        a, b = ok[("0.9", phase)], ok[("1.1", phase)]
        assert a["cycles"] == b["cycles"]
        assert float(a["seconds"]) * 0.9 == pytest.approx(float(b["seconds"]) * 1.1)
    spec = json.loads((out / "sweep.json").read_text())
    assert spec["axes"] == {"clock_ghz": [0.9, 1.1], "phase": ["prefill", "decode"]}
    assert spec["n_points"] == 5


def test_workers_1_and_2_give_the_same_rows(small, tmp_path):
    f, out1, _ = small
    summary = run_sweep(f, tmp_path / "out2", workers=2, progress=False)
    assert summary["done"] == 5
    a, b = _rows_by_id(out1), _rows_by_id(tmp_path / "out2")
    assert a.keys() == b.keys()
    for pid in a:
        ra, rb = dict(a[pid]), dict(b[pid])
        ra.pop("wall_seconds")
        rb.pop("wall_seconds")
        assert ra == rb


def test_cli_json_and_rerun_skips_everything(small, tmp_path, capsys):
    f, _, _ = small
    out = tmp_path / "cli"
    assert main(["sweep", str(f), "--out", str(out), "--workers", "0", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["points"] == 5 and first["done"] == 5 and first["failed"] == 1
    assert first["table"] == str(out / "sweep.csv")
    assert main(["sweep", str(f), "--out", str(out), "--workers", "0", "--json"]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out)
    assert again == {**first, "done": 0, "failed": 0, "skipped": 5}
    assert captured.err == ""  # no progress bar with --json
    assert len(load_table(out)) == 5


def test_killed_sweep_resumes_without_losing_or_repeating_points(tmp_path):
    f = _write(tmp_path / "kill.toml", SMALL.split("[[points]]")[0].replace(
        "clock_ghz = [0.9, 1.1]", "clock_ghz = [0.8, 0.9, 1.0, 1.1]\nbatch = [1, 2]"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "wse_sim.cli.main", "sweep", str(f), "--out", str(out),
           "--workers", "1", "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    table = out / "sweep.csv"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if table.exists() and len(table.read_bytes().splitlines()) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the sweep finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    before = len(load_table(out))
    assert 1 <= before < 16
    with open(table, "ab") as fh:  # a torn last line, as if killed in the middle of a write
        fh.write(b"0.9,decode,1,abc")
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["points"] == 16 and summary["skipped"] == before
    assert summary["done"] == 16 - before and summary["failed"] == 0
    rows = _rows_by_id(out)
    assert len(rows) == 16 and all(r["status"] == "ok" for r in rows.values())
    assert {p.id for p in load_sweep(f).points} == set(rows)


def test_torn_line_is_repaired_in_process(tmp_path):
    f = _write(tmp_path / "s.toml", SMALL.split("[axes]")[0] + '[axes]\nbatch = [1, 2]\n')
    out = tmp_path / "out"
    run_sweep(f, out, workers=0, progress=False)
    good = (out / "sweep.csv").read_bytes()
    (out / "sweep.csv").write_bytes(good + b"3,deadbeef,ok,,12")
    summary = run_sweep(f, out, workers=0, progress=False)
    assert summary["done"] == 0 and summary["skipped"] == 2
    assert (out / "sweep.csv").read_bytes() == good


@pytest.mark.parametrize("axes, line, words", [
    ('sram_bytez = [1, 2]', 10, ["axes.sram_bytez", "unknown", "did you mean 'sram_bytes'"]),
    ('sram_bytes = []', 10, ["axes.sram_bytes", "empty axis"]),
    ('sram_bytes = [49152, "48K"]', 10, ["axes.sram_bytes", "'48K'", "must be an integer"]),
    ('sram_bytes = [\n  49152,\n  "48K",\n]', 12, ["'48K'", "must be an integer"]),
    ('clock_ghz = [1.0]\nphase = ["decode"]\nclock_ghz = [2.0]', 12,
     ["axes.clock_ghz", "duplicate axis (first on line 10)"]),
    ('phase = ["prefil"]', 10, ["axes.phase", "must be one of prefill, decode, train"]),
    ('strategy = ["no-such-strategy"]', 10, ["axes.strategy", "must be one of",
                                            "layer-pipelined"]),
    ('clock_ghz = 1.1', 10, ["axes.clock_ghz", "must be a list"]),
    ('sram_bytes = [-5]', 10, ["axes.sram_bytes", "-5"]),
    ('batch = [1, 2, 1]', 10, ["axes.batch", "duplicate value"]),
    ("batch = [%s]\nprompt = [%s]\ncontext = [%s]" % ((", ".join(map(str, range(1, 51))),) * 3),
     9, ["axes", "50 x 50 x 50", "125000 points", "at most 100000"]),
])
def test_bad_sweep_files_name_the_line(tmp_path, axes, line, words):
    text = SMALL.split("[axes]")[0] + "[axes]\n" + axes + "\n"
    f = _write(tmp_path / "bad.toml", text)
    with pytest.raises(SweepError) as e:
        load_sweep(f)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(f"{f}:{line}: "), msg
    for w in words:
        assert w in msg, msg


def test_bad_base_and_points_name_the_line(tmp_path):
    cases = [
        (SMALL.replace('prompt = 16', 'prompt = "16"'), 6, "base.prompt"),
        (SMALL.replace('engine = "reference"', 'sram_bytes = 4'), 5, "hardware fields go in"),
        (SMALL.replace('sram_bytes = 1024', 'sram_bytes = 1024.5'), 15, "points[0].sram_bytes"),
        (SMALL + "[base.set]\nclock_ghz = 'fast'\n", 17, "base.set.clock_ghz"),
        (SMALL + "[axess]\nx = [1]\n", 16, "axess: unknown table"),
    ]
    for text, line, word in cases:
        with pytest.raises(SweepError) as e:
            parse_sweep_text(text, "s.toml")
        assert str(e.value).startswith(f"s.toml:{line}: ") and word in str(e.value), str(e.value)


def test_cli_error_is_one_line(tmp_path, capsys):
    f = _write(tmp_path / "bad.toml", SMALL.replace('phase = ["prefill", "decode"]',
                                                    'phase = []'))
    assert main(["sweep", str(f), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {f}:11: axes.phase: ")
    assert not (tmp_path / "o").exists()


def test_point_ids_are_stable_and_deduplicated():
    a = parse_sweep_text(SMALL)
    swapped = SMALL.replace('clock_ghz = [0.9, 1.1]\nphase = ["prefill", "decode"]',
                            'phase = ["decode", "prefill"]\nclock_ghz = [1.1, 0.9]')
    b = parse_sweep_text(swapped)
    assert {p.id for p in a.points} == {p.id for p in b.points}
    assert [p.id for p in a.points] == [p.id for p in parse_sweep_text(SMALL).points]
    dup = parse_sweep_text(SMALL + '[[points]]\nphase = "decode"\nclock_ghz = 1.1\n'
                                   '[[points]]\nclock_ghz = 1.1\nphase = "decode"\n'
                                   'sram_bytes = 49152\n')
    assert len(dup.points) == 5 and dup.duplicates == 2


def test_refuses_a_folder_with_another_sweep_unless_forced(small, tmp_path):
    f, out, _ = small
    other = _write(tmp_path / "other.toml", SMALL.replace("[0.9, 1.1]", "[0.9, 1.1, 1.3]"))
    with pytest.raises(SweepError, match=r"sweep\.json: this folder holds another sweep "
                                         r"\(differs in axes, n_points\)"):
        run_sweep(other, out, workers=0, progress=False)
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("sweep.csv", "sweep.json"):
        (copy / name).write_bytes((out / name).read_bytes())
    summary = run_sweep(other, copy, workers=0, progress=False, force=True)
    assert summary["points"] == 7 and summary["skipped"] == 5 and summary["done"] == 2
    assert len(_rows_by_id(copy)) == 7
    summary = run_sweep(other, copy, workers=0, progress=False, retry_failed=True)
    assert summary["skipped"] == 6 and summary["done"] == 1 and summary["failed"] == 1


def test_dask_missing_is_a_clear_error(small, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(SweepError, match=r"--dask needs dask.distributed.*pip install"):
        run_sweep(small[0], tmp_path / "d", dask="local", progress=False)


def test_plot_sweep_writes_png_and_svg(small, tmp_path, capsys):
    from wse_sim.sweep.plots import plot_sweep
    _, out, _ = small
    files = plot_sweep(out, out=tmp_path)
    assert [p.name for p in files] == ["sweep_tokens_per_s_vs_clock_ghz.png",
                                       "sweep_tokens_per_s_vs_clock_ghz.svg"]
    assert all(p.stat().st_size > 1000 for p in files)
    assert files[0].read_bytes()[:4] == b"\x89PNG"
    assert main(["sweep-plot", str(out), "--metric", "cycles", "--x", "phase",
                 "--out", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)["files"]
    assert shown[0].endswith("sweep_cycles_vs_phase.png") and Path(shown[1]).exists()
    with pytest.raises(SweepError, match="metric: got 'nope'"):
        plot_sweep(out, metric="nope", out=tmp_path)


def _dies_on_batch_2(params, overrides):
    """A point function whose worker dies (as on a segfault) for batch 2."""
    if params["batch"] == 2:
        os._exit(1)
    return {"status": "ok", "error": "", "wall_seconds": 0.0}


def test_a_point_that_kills_its_worker_is_failed_and_the_others_run():
    from wse_sim.sweep.run import _run_pool
    spec = parse_sweep_text(SMALL.split("[axes]")[0] + "[axes]\nbatch = [1, 2, 3, 4]\n")
    got = {}
    _run_pool(spec.points, lambda p, row: got.setdefault(p.params["batch"], row), 2,
              fn=_dies_on_batch_2)
    assert sorted(got) == [1, 2, 3, 4]
    assert got[2]["status"] == "failed" and "worker process died" in got[2]["error"]
    assert all(got[b]["status"] == "ok" for b in (1, 3, 4))
