"""A run's output folder: files, tables, figures, re-drawing with `wse-sim plot`, energy."""

import csv
import importlib.machinery
import io
import json
import sys
import types
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset
from wse_sim.report import figures, outputs, plots
from wse_sim.report.metrics import SimResult
from wse_sim.report.text import busy_core_power, format_report, human, phase_of

FIGURES = ("core_busy", "sram", "links_ew", "links_ns", "colors", "timeline", "phases",
           "roofline")
RUN = ["run", "--preset", "mesh16", "--model", "tiny", "--prompt", "32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`wse-sim run ... --out DIR --trace FILE --json`, and the same run's SimResult."""
    d = tmp_path_factory.mktemp("run")
    out, trace = d / "out", d / "trace.json"
    code = main(RUN + ["--out", str(out), "--trace", str(trace), "--json"])
    assert code == 0
    hw = load_preset("mesh16")
    program = build_program(hw, "tiny", prompt=32)
    result = simulate(program, hw, engine="reference")
    return {"out": out, "trace": trace, "result": result, "program": program}


def synthetic(hw, cycles=10_000, seed=0) -> SimResult:
    """A SimResult with random counters on `hw`'s mesh (no simulation)."""
    rng = np.random.default_rng(seed)
    r, c = hw.mesh_rows, hw.mesh_cols
    n = 2000
    start = rng.integers(0, cycles // 2, n)
    return SimResult(
        program="synthetic", engine="reference", hardware=hw, cycles=cycles, flops=10**9,
        executed_flops=10**9, stream_flops=0, flops_by_dtype={"fp16": 10**9}, comm_bytes=10**6,
        delivered_bytes=10**6, bytes_hops=3 * 10**6, sram_traffic_bytes=10**8, io_bytes=0,
        compute_cycles=6000, comm_cycles=4000,
        core_busy_cycles=rng.integers(0, cycles, (r, c)),
        link_bytes=rng.integers(0, 4 * cycles, (r, c, 4)),
        link_busy_cycles=rng.integers(0, cycles, (r, c, 4)),
        sram_bytes=rng.integers(0, hw.sram_bytes, (r, c)), colors=rng.integers(0, 24, (r, c)),
        ops={"L0.mm": {"flops": 10**9, "busy_cycles": 5 * 10**5, "bytes": 0, "start": 0,
                       "end": 6000, "kind": "Compute"},
             "L0.reduce": {"flops": 0, "busy_cycles": 1000, "bytes": 10**6, "start": 5000,
                           "end": 9000, "kind": "LineStream"}},
        instances=n, tokens=1, dtype="fp16", cores_used=r * c,
        spans={"task": rng.integers(0, 2, n), "index": np.arange(n),
               "core": rng.integers(0, r * c, n), "start": start,
               "end": start + rng.integers(0, 100, n)},
    )


# ---- the folder ------------------------------------------------------------------------------
def test_folder_has_every_file(run):
    names = {p.name for p in run["out"].iterdir()}
    want = {"result.json", "summary.txt", "ops.csv", "phases.csv"}
    want |= {f"{f}.{ext}" for f in FIGURES for ext in ("png", "svg")}
    assert want <= names
    assert not [n for n in names if n.endswith(".tmp")]
    assert run["trace"].is_file()


def test_result_json_round_trips(run):
    saved = json.loads((run["out"] / "result.json").read_text())
    assert saved["format"] == outputs.FORMAT and saved["tasks"]
    r = outputs.load_result(run["out"] / "result.json")
    ref = run["result"]
    for key in ("cycles", "flops", "comm_bytes", "bytes_hops", "sram_traffic_bytes",
                "compute_cycles", "comm_cycles", "tokens", "cores_used"):
        assert getattr(r, key) == getattr(ref, key), key
    for key in ("core_busy_cycles", "link_bytes", "link_busy_cycles", "sram_bytes", "colors"):
        np.testing.assert_array_equal(getattr(r, key), getattr(ref, key))
    for key in outputs.SPAN_KEYS:
        np.testing.assert_array_equal(r.spans[key], ref.spans[key])
    assert r.ops == ref.ops
    assert r.energy_joules() == pytest.approx(ref.energy_joules())
    s1, s2 = r.summary(), ref.summary()
    s1.pop("wall_seconds"), s2.pop("wall_seconds")
    assert s1.keys() == s2.keys()
    for k, v in s1.items():
        if isinstance(v, int | float):
            assert v == pytest.approx(s2[k]), k
        elif isinstance(v, dict):
            assert v == pytest.approx(s2[k]), k
        else:
            assert v == s2[k], k
    assert r.meta["tasks"][0]["op"] == run["program"].tasks[0].op


def test_big_runs_keep_spans_beside_the_json(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "SPANS_INLINE_MAX", 10)
    r = synthetic(load_preset("mesh8"))
    files = outputs.save_result(r, tmp_path / "result.json")
    assert [f.name for f in files] == ["result.json", "spans.npz"]
    back = outputs.load_result(tmp_path)
    np.testing.assert_array_equal(back.spans["end"], r.spans["end"])


def _csv(path):
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return path.read_text().splitlines()[0].split(","), rows


def test_ops_csv(run):
    header, rows = _csv(run["out"] / "ops.csv")
    assert tuple(header) == outputs.OPS_COLUMNS
    ref = run["result"]
    assert {r["op"] for r in rows} == set(ref.ops)
    for r in rows:
        o = ref.ops[r["op"]]
        assert int(r["span"]) == o["end"] - o["start"] == int(r["end"]) - int(r["start"])
        assert int(r["flops"]) == o["flops"] and int(r["busy_cycles"]) == o["busy_cycles"]
        assert float(r["share"]) == pytest.approx((o["end"] - o["start"]) / ref.cycles, rel=1e-5)
        assert r["phase"] == phase_of(r["op"])
        if r["kind"] == "Compute" and int(r["flops"]):
            assert float(r["flops_per_sram_byte"]) > 0 and int(r["cores"]) > 0
    assert [int(r["start"]) for r in rows] == sorted(int(r["start"]) for r in rows)


def test_phases_csv_adds_up(run):
    header, rows = _csv(run["out"] / "phases.csv")
    assert tuple(header) == outputs.PHASES_COLUMNS
    ref = run["result"]
    for r in rows:
        parts = int(r["compute_cycles"]) + int(r["comm_cycles"]) + int(r["idle_cycles"])
        assert parts == int(r["span_cycles"]) and min(int(r["idle_cycles"]), 0) == 0
    levels = {r["level"] for r in rows}
    assert levels == {"phase", "family", "total"}
    total = [r for r in rows if r["level"] == "total"][0]
    assert int(total["span_cycles"]) == ref.cycles
    assert int(total["flops"]) == sum(o["flops"] for o in ref.ops.values())
    phases = [r for r in rows if r["level"] == "phase"]
    assert {r["name"] for r in phases} >= {"L0", "L1"}
    assert sum(int(r["fabric_bytes"]) for r in phases) == sum(o["bytes"] for o in ref.ops.values())


def test_figures_are_well_formed(run):
    from matplotlib.image import imread
    for f in FIGURES:
        img = imread(run["out"] / f"{f}.png")
        assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 200
        root = ET.parse(run["out"] / f"{f}.svg").getroot()
        assert root.tag.endswith("svg")


def test_summary_text_has_units_and_energy_breakdown(run):
    text = (run["out"] / "summary.txt").read_text()
    for word in ("µs", "tokens/s", "FLOP/s", "energy", "compute", "SRAM", "fabric", "I/O",
                 "J/token"):
        assert word in text, word
    assert "e-0" not in text  # human units, not exponents


# ---- the arrays the heatmaps draw ------------------------------------------------------------
def test_heatmap_arrays_equal_the_counters(run):
    r = run["result"]
    a = plots.heatmap_arrays(r)
    np.testing.assert_allclose(a["core_busy_fraction"] * r.cycles, r.core_busy_cycles)
    np.testing.assert_array_equal(a["sram_bytes"], r.sram_bytes)
    np.testing.assert_array_equal(a["colors"], r.colors)
    lb = r.link_busy_cycles
    np.testing.assert_allclose(a["link_util_east_west"] * r.cycles,
                               np.maximum(lb[..., 0], lb[..., 1]))
    np.testing.assert_allclose(a["link_util_north_south"] * r.cycles,
                               np.maximum(lb[..., 2], lb[..., 3]))
    assert all(v.shape == (16, 16) for v in a.values())


def test_block_max_keeps_hot_cores():
    a = np.zeros((994, 750))
    a[993, 749] = 5.0
    a[10, 11] = 3.0
    b, k = plots.block_max(a, 500)
    assert k == 2 and b.shape == (497, 375)
    assert b.max() == 5.0 and b[5, 5] == 3.0
    same, k1 = plots.block_max(np.ones((16, 16)))
    assert k1 == 1 and same.shape == (16, 16)


def test_full_wafer_heatmaps_render(tmp_path):
    r = synthetic(load_preset("wse2"))
    assert r.core_busy_cycles.shape == (994, 750)
    files = figures.draw_figures(r, tmp_path, formats=("png",), only=("core_busy",))
    from matplotlib.image import imread
    assert len(files) == 5
    for f in files:
        assert imread(f).ndim == 3


# ---- energy --------------------------------------------------------------------------------
def test_energy_is_counters_times_unit_costs(run):
    r = run["result"]
    hw = r.hardware
    e = r.energy_joules()
    compute = sum(f * getattr(hw, f"energy_pj_per_flop_{d}") for d, f in r.flops_by_dtype.items())
    assert e["compute"] == pytest.approx(compute * 1e-12)
    assert e["sram"] == pytest.approx(r.sram_traffic_bytes * hw.energy_pj_per_sram_byte * 1e-12)
    assert e["fabric"] == pytest.approx(r.bytes_hops * 8 * hw.energy_pj_per_bit_hop * 1e-12)
    assert e["io"] == pytest.approx(r.io_bytes * hw.energy_pj_per_io_byte * 1e-12)
    s = r.summary()
    assert s["average_power_w"] == pytest.approx(e["total"] / r.seconds)
    assert s["energy_per_token_j"] == pytest.approx(e["total"] / r.tokens)
    text = format_report(r)
    assert human(e["total"], "J") in text and human(s["average_power_w"], "W") in text


def test_busy_wse2_core_lands_near_the_published_power():
    hw = load_preset("wse2")
    p = busy_core_power(hw, "fp16")
    # 8 FLOP x 1.0 pJ + 24 B x 0.25 pJ + 4 links x 32 bit x 0.05 pJ = 20.4 pJ per cycle
    assert p["pj_per_cycle"] == pytest.approx(20.4)
    assert p["total"] == pytest.approx(20.4e-12 * 1.1e9)
    assert 0.010 < p["total"] < 0.040          # ~20-30 mW per busy core (HARDWARE.md)
    assert 0.5 * 15e3 < p["wafer_w"] < 2 * 15e3   # ~15 kW per CS-2 system
    assert p["cores"] == 850_000


def test_human_units():
    assert human(8.74e-6, "J") == "8.74 µJ"
    assert human(0.323, "W") == "323 mW"
    assert human(2.2e16, "FLOP/s") == "22 PFLOP/s"
    assert human(1.2e13, "B/s") == "12 TB/s"
    assert human(27.3e-6, "s") == "27.3 µs"
    assert human(512, "B") == "512 B"


# ---- re-drawing ----------------------------------------------------------------------------
def test_plot_redraws_from_saved_json(run, tmp_path, capsys):
    assert main(["plot", str(run["out"] / "result.json"), "--out", str(tmp_path / "a"),
                 "--format", "png"]) == 0
    assert {p.name for p in (tmp_path / "a").iterdir()} == {f"{f}.png" for f in FIGURES}
    assert main(["plot", str(run["out"]), "--out", str(tmp_path / "b"), "--format", "svg"]) == 0
    assert (tmp_path / "b" / "roofline.svg").is_file()
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("content", [None, "{\"cycles\": ", "[1, 2]", "{\"hardware\": {}}",
                                     "{\"program\": \"x\"}"])
def test_plot_of_a_bad_file_is_one_error_line(tmp_path, capsys, content):
    path = tmp_path / "result.json"
    if content is not None:
        path.write_text(content)
    assert main(["plot", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_plot_of_a_sweep_folder_calls_the_sweep_hook(tmp_path, monkeypatch, capsys):
    (tmp_path / "sweep.csv").write_text("a,b\n")
    calls = []
    mod = types.ModuleType("wse_sim.sweep.plots")
    mod.__spec__ = importlib.machinery.ModuleSpec("wse_sim.sweep.plots", None)
    mod.plot_sweep = lambda d, out=None: calls.append((d, out)) or []
    monkeypatch.setitem(sys.modules, "wse_sim.sweep.plots", mod)
    assert main(["plot", str(tmp_path)]) == 0
    assert calls and calls[0][0] == tmp_path


# ---- failure leaves nothing behind ---------------------------------------------------------
def test_an_error_leaves_no_partial_folder(run, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("figure failed")
    monkeypatch.setattr(figures, "draw_figures", boom)
    with pytest.raises(RuntimeError):
        outputs.write_outputs(run["result"], tmp_path / "new", program=run["program"])
    assert list(tmp_path.iterdir()) == []


def test_rewriting_a_folder_replaces_its_files(run, tmp_path):
    out = tmp_path / "o"
    outputs.write_outputs(run["result"], out, formats=(), program=run["program"])
    (out / "notes.md").write_text("mine")
    w = outputs.write_outputs(run["result"], out, formats=("png",), program=run["program"])
    assert (out / "notes.md").read_text() == "mine" and (out / "roofline.png").is_file()
    assert "result.json" in w["files"] and [p.name for p in tmp_path.iterdir()] == ["o"]


def test_bad_formats_and_regions_are_rejected(run, tmp_path):
    with pytest.raises(ValueError, match="formats"):
        outputs.write_outputs(run["result"], tmp_path / "x", formats=("gif",))
    with pytest.raises(ValueError, match="trace region"):
        outputs.write_outputs(run["result"], tmp_path / "x", trace=True,
                              trace_region=(10, 10, 10, 10))
    assert not (tmp_path / "x").exists()


def test_results_without_spans_or_ops_still_write(tmp_path):
    r = synthetic(load_preset("mesh8"))
    r.spans = None
    w = outputs.write_outputs(r, tmp_path / "a", formats=("png",), trace=True)
    assert "timeline.png" in w["files"] and "trace.json" in w["files"]
    assert outputs.load_result(tmp_path / "a").spans is None
    r.ops, r.cycles = {}, 0
    w = outputs.write_outputs(r, tmp_path / "b", formats=("png",))
    assert "roofline.png" in w["files"]


@pytest.mark.parametrize("name, published_w", [("wse1", 20e3), ("wse2", 15e3), ("wse3", 23e3)])
def test_busy_wafer_within_a_third_of_the_published_system_power(name, published_w):
    from wse_sim.hardware import load_preset
    p = busy_core_power(load_preset(name), "fp16")
    assert abs(p["wafer_w"] - published_w) / published_w < 1 / 3
