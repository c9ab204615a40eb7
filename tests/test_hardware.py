"""Hardware presets: loading, derived aggregates, overrides and bad values."""

import math

import pytest

from wse_sim.hardware import ConfigError, load_preset, parse_set, preset_names


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
    text = (load_preset.__globals__["resources"].files("wse_sim") / "presets" / "mesh8.toml").read_text()
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
    text = (load_preset.__globals__["resources"].files("wse_sim") / "presets" / "mesh8.toml").read_text()
    f.write_text(text.replace("sram_bytes = 49152", 'sram_bytes = "lots"'))
    with pytest.raises(ConfigError, match="sram_bytes"):
        load_preset(str(f))


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="preset"):
        load_preset("wse9")
    with pytest.raises(ConfigError, match="does not exist"):
        load_preset("/nonexistent/x.toml")
