"""The wse-sim command: JSON interface, reports, and one-line errors with exit code 2."""

import json

import pytest

from wse_sim.cli.main import main


def test_demo_prints_a_report(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "tokens/s" in out and "critical path" in out


def test_run_json_has_interface_keys(capsys):
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode",
                 "--context", "16", "--json", "--set", "clock_ghz=1.0"]) == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("cycles", "seconds", "engine", "preset", "hardware", "wall_seconds",
                "compute_cycles", "comm_cycles", "peak_fraction", "tokens_per_s", "flops",
                "comm_bytes", "bytes_hops", "sram_bytes_per_core", "colors_per_core"):
        assert key in d
    assert d["hardware"]["clock_ghz"] == 1.0
    assert d["seconds"] == pytest.approx(d["cycles"] / 1e9)
    assert d["engine"] == "reference"


def test_presets_json(capsys):
    assert main(["presets", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    a = d["wse2"]["aggregates"]
    for key in ("cores", "total_sram_bytes", "sram_bandwidth_bytes_per_s",
                "fabric_bandwidth_bits_per_s", "peak_flops_per_s"):
        assert key in a


def test_show_program_is_readable(capsys):
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--show-program"]) == 0
    out = capsys.readouterr().out
    assert "L0.q_proj" in out and "line-reduce" in out


BAD = [
    (["run", "--model", "nope"], "nope"),
    (["run", "--preset", "wse9", "--model", "tiny"], "preset"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--prompt", "0"], "--prompt"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--batch", "-2"], "--batch"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--set", "bogus=1"], "bogus"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--set", "mesh_cols=0"], "mesh_cols"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--set", "clock_ghz=x"], "clock_ghz"),
    (["run", "--preset", "mesh16", "--model", "gpt2-small"], "does not fit"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--grid", "99"], "grid"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--sparsity", "2"], "--sparsity"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--engine", "warp"], "--engine"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("argv, needle", BAD)
def test_bad_input_one_line_exit_2(argv, needle, capsys):
    with pytest.raises(SystemExit) as e:
        raise SystemExit(main(argv))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err
