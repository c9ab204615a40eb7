"""Hardware presets: loading, derived aggregates, overrides and bad values."""

import dataclasses
import math
from pathlib import Path

import pytest

import wse_sim
from wse_sim.hardware import ConfigError, HardwareConfig, load_preset, parse_set, preset_names


def preset_text(name: str) -> str:
    return (Path(wse_sim.__file__).parent / "presets" / f"{name}.toml").read_text()


def test_presets_listed():
    names = preset_names()
    for n in ("wse1", "wse2", "wse3", "mesh4", "mesh16", "mesh64"):
        assert n in names


@pytest.mark.parametrize("name", ["wse1", "wse2", "wse3", "mesh8"])
def test_presets_load_and_have_sources(name):
    hw = load_preset(name)
    assert hw.sram_bytes == 48 * 1024
    assert hw.link_bits_per_cycle == 32
    assert "clock_ghz" in hw.sources


def test_wse2_mesh_and_aggregates():
    hw = load_preset("wse2")
    assert (hw.mesh_cols, hw.mesh_rows) == (750, 994)
    a = hw.aggregates()
    assert a["cores"] == 850_000
    assert a["total_sram_bytes"] == 850_000 * 49152
    assert a["sram_bandwidth_bytes_per_s"] == pytest.approx(850_000 * 24 * 1.1e9)
    assert a["fabric_bandwidth_bits_per_s"] == pytest.approx(850_000 * 4 * 2 * 32 * 1.1e9)
    assert a["peak_flops_per_s"]["fp16"] == pytest.approx(850_000 * 8 * 1.1e9)
    # The vendor's 7.5 PFLOP/s dense fp16 (HARDWARE.md) within 15 %.
    assert math.isclose(a["peak_flops_per_s"]["fp16"], 7.5e15, rel_tol=0.15)


def test_override_parses_strings():
    hw = load_preset("wse2", parse_set(["clock_ghz=0.85", "sram_bytes=98304"]))
    assert hw.clock_ghz == 0.85 and hw.sram_bytes == 98304


def test_user_toml_file_works_like_a_preset(tmp_path):
    text = preset_text("mesh8")
    f = tmp_path / "mine.toml"
    f.write_text(text.replace("mesh_cols = 8", "mesh_cols = 12"))
    hw = load_preset(str(f))
    assert hw.mesh_cols == 12 and hw.mesh_rows == 8


@pytest.mark.parametrize("sets, field", [
    (["clock_ghz=-1"], "clock_ghz"),
    (["clock_ghz=nan"], "clock_ghz"),
    (["mesh_cols=0"], "mesh_cols"),
    (["mesh_cols=abc"], "mesh_cols"),
    (["link_bits_per_cycle=40"], "link_bits_per_cycle"),
    (["static_power_w_per_core=-0.001"], "static_power_w_per_core"),
    (["static_power_w_per_router=inf"], "static_power_w_per_router"),
    (["static_power_w_per_router=lots"], "static_power_w_per_router"),
    (["nonsense=1"], "nonsense"),
    (["noequals"], "--set"),
])
def test_bad_overrides_name_the_field(sets, field):
    with pytest.raises(ConfigError) as e:
        load_preset("mesh8", parse_set(sets))
    msg = str(e.value)
    assert field in msg and "\n" not in msg


def test_bad_toml_type_names_field(tmp_path):
    f = tmp_path / "bad.toml"
    text = preset_text("wse2")
    f.write_text(text.replace("sram_bytes = 49152", 'sram_bytes = "lots"'))
    with pytest.raises(ConfigError, match="sram_bytes"):
        load_preset(str(f))


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="preset"):
        load_preset("wse9")
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset("/nonexistent/x.toml")


def _bad_values(kind: str) -> list:
    return {"int": [-1, 2.5, "8", True, 10**13], "float": [-1.0, float("nan"), float("inf"), "1"],
            "str": [5, None]}[kind]


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(HardwareConfig)])
def test_every_field_is_validated_with_one_line(name):
    """Each field, given a bad value, raises one line naming the field, the value and what is
    allowed."""
    hw = load_preset("mesh8")
    kind = {f.name: f.type for f in dataclasses.fields(HardwareConfig)}[name]
    for value in _bad_values(kind) if kind != "dict" else [{"a": 1}, "x"]:
        with pytest.raises(ConfigError) as e:
            dataclasses.replace(hw, **{name: value})
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"{name}: got {value!r}, must "), msg


def test_static_power_fields_accept_zero_and_roll_up_over_the_chip():
    hw = load_preset("wse2", {"static_power_w_per_core": "0", "static_power_w_per_router": "0"})
    assert hw.static_power_w == 0.0
    hw = load_preset("wse2", {"mesh_cols": "128", "mesh_rows": "128"})
    assert hw.static_cores == 850_000       # the whole chip leaks, whatever part a run uses
    assert hw.static_power_w == pytest.approx((0.00385 + 0.00176) * 850_000, rel=1e-12)
    assert hw.aggregates()["static_power_w"] == pytest.approx(hw.static_power_w, rel=1e-12)
    assert load_preset("mesh16").static_cores == 256
