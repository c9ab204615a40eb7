"""Built-in presets: every resolved field pinned to its value before presets could inherit."""

import dataclasses
import json
from pathlib import Path

import pytest

import wse_sim
from wse_sim.cli.main import main
from wse_sim.hardware import FIELDS, ConfigError, load_preset, preset_names, resolve_preset

PINNED = json.loads((Path(__file__).parent / "data" / "presets_today.json").read_text())


def test_every_builtin_preset_is_pinned():
    assert sorted(PINNED) == preset_names()


@pytest.mark.parametrize("name", sorted(PINNED))
def test_builtin_preset_resolves_to_its_pinned_fields(name):
    hw = load_preset(name)
    got = hw.to_dict()
    for key, value in PINNED[name]["fields"].items():
        assert got[key] == value and type(got[key]) is type(value), (name, key)
    for key, text in PINNED[name]["sources"].items():
        assert hw.sources[key] == text, (name, key)


# ---- inheritance ---------------------------------------------------------------------------
def write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_mesh_presets_inherit_from_wse2():
    for n in (4, 8, 16, 32, 64):
        r = resolve_preset(f"mesh{n}")
        assert r.chain == (f"mesh{n}", "wse2")
        assert r.origins["mesh_cols"] == f"mesh{n}" and r.origins["clock_ghz"] == "wse2"
    assert resolve_preset("wse2").chain == ("wse2",)


def test_a_three_line_user_preset(tmp_path):
    f = write(tmp_path / "big.toml", 'base = "wse2"\nname = "wse2-96k"\nsram_bytes = 98304\n')
    r = resolve_preset(f)
    wse2 = load_preset("wse2")
    assert r.hardware == dataclasses.replace(wse2, name="wse2-96k", sram_bytes=98304)
    assert r.hardware.sources == wse2.sources
    assert r.chain == (f, "wse2")
    assert r.origins["sram_bytes"] == f and r.origins["name"] == f
    assert {v for k, v in r.origins.items() if k not in ("sram_bytes", "name")} == {"wse2"}


def test_a_chain_of_files_relative_to_each_file(tmp_path, monkeypatch):
    write(tmp_path / "lib" / "slow.toml",
          'base = "mesh16"\n[hardware]\nclock_ghz = 0.85\n[sources]\nclock_ghz = "SDK"\n')
    top = write(tmp_path / "exp" / "top.toml",
                'base = "../lib/slow.toml"\nname = "top"\n[hardware]\nmesh_cols = 8\n')
    monkeypatch.chdir(tmp_path / "lib")   # bases resolve against the file, not the cwd
    r = resolve_preset(top, {"sram_bytes": "98304"})
    slow = str(tmp_path / "lib" / "slow.toml")
    assert r.chain == (top, slow, "mesh16", "wse2")
    hw = r.hardware
    assert (hw.name, hw.mesh_cols, hw.mesh_rows, hw.clock_ghz, hw.sram_bytes) == (
        "top", 8, 16, 0.85, 98304)
    assert hw.sources["clock_ghz"] == "SDK" and hw.sources["mesh"] == "test mesh 16 x 16"
    assert (r.origins["name"], r.origins["mesh_cols"], r.origins["clock_ghz"],
            r.origins["mesh_rows"], r.origins["sram_bytes"], r.origins["hop_latency_cycles"]) == (
        top, top, slow, "mesh16", "--set", "wse2")


def test_fields_without_a_value_anywhere_are_defaults(tmp_path):
    text = (Path(wse_sim.__file__).parent / "presets" / "wse2.toml").read_text()
    text = "\n".join(line for line in text.splitlines() if not line.startswith("static_power_w"))
    r = resolve_preset(write(tmp_path / "old.toml", text))
    assert r.hardware.static_power_w_per_core == 0.0
    assert r.origins["static_power_w_per_core"] == "default"


@pytest.mark.parametrize("files, needles", [
    ({"a.toml": 'base = "a.toml"\n'}, ["a.toml: base", "cycle (a.toml -> a.toml)"]),
    ({"a.toml": 'base = "b/b.toml"\n', "b/b.toml": 'base = "../a.toml"\n'},
     ["b.toml: base: got '../a.toml'", "cycle", "a.toml -> ", " -> a.toml"]),
    ({"a.toml": 'base = "wse9"\n'}, ["a.toml: base: got 'wse9'", "built-in preset (", "wse2"]),
    ({"a.toml": 'base = "gone.toml"\n'}, ["a.toml: base: got 'gone.toml'", "does not exist"]),
    ({"a.toml": "base = 3\n"}, ["a.toml: base: got 3", "built-in preset"]),
    ({"a.toml": 'base = "wse2"\nturbo = true\n'},
     ["a.toml: turbo: got True, is not a hardware field", "allowed: base, [hardware]",
      "sram_bytes"]),
    ({"a.toml": 'base = "wse2"\n[hardware]\nturbo = 1\n'},
     ["a.toml: hardware.turbo: got 1, is not a known field", "sram_bytes"]),
    ({"a.toml": 'base = "wse2"\n[gpu]\nx = 1\n'}, ["a.toml: gpu: got a table", "[sources]"]),
    ({"a.toml": '[hardware]\nbase = "wse2"\n'}, ["hardware.base", "belongs at the top"]),
    ({"a.toml": 'base = "wse2"\nname = "x"\n[hardware]\nname = "y"\n'}, ["a.toml: name", "once"]),
    ({"a.toml": 'base = "wse2"\n[sources]\nclock_ghz = 1\n'}, ["a.toml: sources.clock_ghz"]),
    ({"a.toml": 'base = "b.toml"\n', "b.toml": 'base = "wse2"\nclock_ghz = -1\n'},
     ["a.toml (clock_ghz from ", "b.toml): hardware.clock_ghz: got -1", "positive"]),
    ({"a.toml": 'name = "lonely"\n'}, ["a.toml: missing hardware field(s): mesh_cols",
                                       'base = "wse2"']),
])
def test_bad_chains_are_one_line_errors(tmp_path, monkeypatch, files, needles):
    monkeypatch.chdir(tmp_path)
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(ConfigError) as e:
        load_preset("a.toml")
    msg = str(e.value)
    assert "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


# ---- presets --show ------------------------------------------------------------------------
def test_show_prints_every_field_with_its_origin(capsys):
    assert main(["presets", "--show", "mesh16", "--set", "clock_ghz=0.85"]) == 0
    out = capsys.readouterr().out.split("[sources]")[0]
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    for name in FIELDS:
        assert name in lines, name
    def comment(name):
        return lines[name].split("#")[1].split()

    assert comment("mesh_cols") == ["mesh16", "acts", "on:", "mesh"]
    assert lines["mesh_cols"].startswith("mesh_cols = 16 ")
    assert comment("hop_latency_cycles") == ["wse2", "acts", "on:", "cycles"]
    assert lines["clock_ghz"].startswith("clock_ghz = 0.85 ") and comment("clock_ghz")[0] == "--set"


def test_show_output_is_a_preset_that_loads_to_the_same_fields(tmp_path, capsys):
    assert main(["presets", "--show", "wse3", "--set", "sram_bytes=98304"]) == 0
    f = write(tmp_path / "copy.toml", capsys.readouterr().out)
    assert load_preset(f) == load_preset("wse3", {"sram_bytes": 98304})
    assert load_preset(f).sources == load_preset("wse3").sources


def test_show_output_of_a_user_file_with_odd_citation_keys_loads_back(tmp_path, capsys):
    f = write(tmp_path / "odd.toml", 'base = "mesh8"\n[sources]\n"my key" = "a \\"quoted\\" note"\n'
              '"é" = "x"\n')
    assert main(["presets", "--show", f]) == 0
    copy = write(tmp_path / "copy.toml", capsys.readouterr().out)
    assert load_preset(copy).sources == load_preset(f).sources
    assert load_preset(f).sources["my key"] == 'a "quoted" note'


def test_show_json(tmp_path, capsys):
    f = write(tmp_path / "big.toml", 'base = "mesh8"\nsram_bytes = 98304\n')
    assert main(["presets", "--show", f, "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["chain"] == [f, "mesh8", "wse2"]
    assert d["fields"] == load_preset(f).to_dict()
    assert set(d["origins"]) == set(FIELDS)
    assert d["origins"]["sram_bytes"] == f and d["origins"]["mesh_cols"] == "mesh8"
    assert d["origins"]["clock_ghz"] == "wse2"
    assert d["sources"]["mesh"] == "test mesh 8 x 8"


def test_presets_listing_names_the_base(capsys):
    assert main(["presets", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["mesh16"]["chain"] == ["mesh16", "wse2"] and d["wse3"]["chain"] == ["wse3"]


@pytest.mark.parametrize("argv, needle", [
    (["presets", "--show", "cyc.toml"], "cycle"),
    (["presets", "--show", "wse9"], "wse9"),
    (["presets", "--show", "mesh8", "--set", "warp=1"], "warp"),
    (["presets", "--set", "clock_ghz=1"], "--show"),
])
def test_show_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys, argv, needle):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "cyc.toml", 'base = "cyc.toml"\n')
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    assert needle in err and captured.out == ""
