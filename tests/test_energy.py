"""Whole power: energy = static power x simulated seconds + dynamic (counters x unit costs)."""

import dataclasses
import json

import pytest

from wse_sim.cli.main import main
from wse_sim.experiment import run_model
from wse_sim.hardware import load_preset
from wse_sim.report.metrics import ENERGY_PARTS
from wse_sim.report.outputs import load_result
from wse_sim.report.text import busy_core_power, format_report, human, wafer_power

RUN = dict(phase="decode", context=16, engine="reference")
NO_STATIC = {"static_power_w_per_core": "0", "static_power_w_per_router": "0"}
# `wse-sim run --preset mesh8 --model tiny --phase decode --context 16 --engine reference --json`
# before static power existed: energy was the dynamic part alone.
DYNAMIC_BEFORE = {"energy_joules": 3.636509999999999e-07,
                  "breakdown": {"compute": 2.8401799999999997e-07, "sram": 7.1153e-08,
                                "fabric": 8.48e-09, "io": 0.0}}


@pytest.fixture(scope="module")
def mesh8():
    return run_model("mesh8", "tiny", **RUN)


def test_energy_is_static_power_times_seconds_plus_dynamic_exactly(mesh8):
    r = mesh8
    e = r.energy_joules()
    assert r.hardware.static_cores == 64
    assert e["static"] == (0.00385 + 0.00176) * 64 * r.seconds
    assert e["total"] == e["static"] + e["dynamic"]
    assert e["dynamic"] == e["compute"] + e["sram"] + e["fabric"] + e["io"]
    assert e["static"] > 3 * e["dynamic"]    # a small run on an idle mesh: leakage dominates
    s = r.summary()
    assert s["energy_joules"] == e["total"]
    assert (s["energy_static_j"], s["energy_dynamic_j"]) == (e["static"], e["dynamic"])
    assert s["power_w"] == s["average_power_w"] == e["total"] / r.seconds
    assert s["power_static_w"] == e["static"] / r.seconds
    assert s["power_static_w"] == pytest.approx(r.hardware.static_power_w, rel=1e-12)
    assert s["power_dynamic_w"] == e["dynamic"] / r.seconds
    assert s["energy_per_token_j"] == e["total"] / r.tokens
    assert list(s["energy_breakdown_joules"]) == list(ENERGY_PARTS)
    assert sum(s["energy_breakdown_joules"].values()) == pytest.approx(e["total"], rel=1e-12)


def test_zero_static_reproduces_the_dynamic_only_numbers(mesh8):
    zero = run_model("mesh8", "tiny", overrides=NO_STATIC, **RUN)
    s = zero.summary()
    assert s["energy_joules"] == DYNAMIC_BEFORE["energy_joules"]
    assert s["energy_breakdown_joules"] == DYNAMIC_BEFORE["breakdown"] | {"static": 0.0}
    assert s["energy_static_j"] == 0.0 and s["power_static_w"] == 0.0
    assert s["average_power_w"] == DYNAMIC_BEFORE["energy_joules"] / zero.seconds
    # ... and the dynamic part does not depend on static power
    assert mesh8.summary()["energy_dynamic_j"] == DYNAMIC_BEFORE["energy_joules"]


def test_static_energy_scales_with_time_and_dynamic_does_not(mesh8):
    e1 = mesh8.energy_joules()
    e2 = dataclasses.replace(mesh8, cycles=2 * mesh8.cycles).energy_joules()
    e3 = dataclasses.replace(mesh8, cycles=3 * mesh8.cycles).energy_joules()
    assert e2["static"] == 2 * e1["static"]
    assert e3["static"] == pytest.approx(3 * e1["static"], rel=1e-15)
    assert e2["dynamic"] == e3["dynamic"] == e1["dynamic"]
    assert dataclasses.replace(mesh8, cycles=0).energy_joules()["static"] == 0.0


def test_static_power_is_the_whole_chip_not_the_grid():
    hw = load_preset("wse2", {"mesh_cols": "16", "mesh_rows": "16"})   # what --grid 16 runs
    r = run_model(hw, "tiny", **RUN)
    assert r.energy_joules()["static"] == (0.00385 + 0.00176) * 850_000 * r.seconds


def test_reports_show_static_dynamic_and_total(tmp_path, capsys):
    argv = ["run", "--preset", "mesh8", "--model", "tiny", "--phase", "decode", "--context",
            "16", "--engine", "reference"]
    assert main(argv + ["--json", "--out", str(tmp_path / "out")]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("energy_joules", "energy_breakdown_joules", "average_power_w",
                "energy_per_token_j", "energy_static_j", "energy_dynamic_j", "power_w",
                "power_static_w", "power_dynamic_w"):
        assert key in d, key
    assert d["energy_joules"] == d["energy_static_j"] + d["energy_dynamic_j"]
    saved = json.loads((tmp_path / "out" / "result.json").read_text())
    for key in ("energy_static_j", "energy_dynamic_j", "power_w"):
        assert saved[key] == d[key]
    back = load_result(tmp_path / "out")
    assert back.energy_joules() == pytest.approx(run_model("mesh8", "tiny", **RUN).energy_joules())
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert main(argv) == 0
    text = capsys.readouterr().out
    for t in (summary, text):
        assert f"{human(d['energy_joules'], 'J')} = static {human(d['energy_static_j'], 'J')}" in t
        assert f"dynamic {human(d['energy_dynamic_j'], 'J')}" in t
        assert f"average {human(d['power_w'], 'W')} = static {human(d['power_static_w'], 'W')}" in t


def test_a_result_saved_before_static_power_loads_as_dynamic_only(tmp_path, mesh8):
    from wse_sim.report.outputs import save_result
    save_result(mesh8, tmp_path / "result.json")
    d = json.loads((tmp_path / "result.json").read_text())
    for key in ("static_power_w_per_core", "static_power_w_per_router"):
        del d["hardware"][key]
    (tmp_path / "result.json").write_text(json.dumps(d))
    e = load_result(tmp_path / "result.json").energy_joules()
    assert e["static"] == 0.0 and e["total"] == e["dynamic"] == mesh8.energy_joules()["dynamic"]


# ---- the chips' idle and busy power (docs/hardware-model.md, "Whole power") -------------------
@pytest.mark.parametrize("name", ["wse1", "wse2", "wse3"])
def test_static_power_is_a_quarter_of_each_units_busy_dynamic_power(name):
    """The stated assumption behind the presets' static fields, checked against their other
    fields so that a change to one without the other shows."""
    hw = load_preset(name)
    p = busy_core_power(hw, "fp16")
    assert hw.static_power_w_per_core == pytest.approx(0.25 * (p["compute"] + p["sram"]), rel=1e-9)
    assert hw.static_power_w_per_router == pytest.approx(0.25 * p["fabric"], rel=1e-9)


@pytest.mark.parametrize("name, idle_kw, busy_kw", [
    ("wse1", 5.10, 25.5), ("wse2", 4.77, 23.8), ("wse3", 4.92, 24.6)])
def test_idle_and_busy_wafer_power_as_documented(name, idle_kw, busy_kw):
    w = wafer_power(load_preset(name))
    assert w["idle_w"] / 1e3 == pytest.approx(idle_kw, abs=0.005)
    assert w["busy_w"] / 1e3 == pytest.approx(busy_kw, abs=0.05)
    assert w["busy_w"] == pytest.approx(w["idle_w"] + w["busy_dynamic_w"], rel=1e-12)


def test_report_text_without_static_power_says_zero(mesh8):
    r = dataclasses.replace(mesh8, hardware=load_preset("mesh8", NO_STATIC))
    text = format_report(r)
    assert "= static 0 J + dynamic" in text and "static 0 W" in text
