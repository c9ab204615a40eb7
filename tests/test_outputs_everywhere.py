"""--out, --trace and --json work on every sub-command that offers them (issue 17), or are
refused in one line where they cannot apply."""

import json

import pytest

from wse_sim.cli.main import main

TINY = ["--preset", "mesh16", "--model", "tiny"]


def run_json(argv, capsys) -> dict:
    assert main(argv + ["--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_compare_writes_its_scorecard_and_every_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    d = run_json(["compare", *TINY, "--phase", "decode", "--context", "16", "--out", str(out),
                  "--trace", str(tmp_path / "t.json")], capsys)
    names = {r["strategy"] for r in d["strategies"]}
    assert names and set(d["outputs"]) == names
    card = json.loads((out / "scorecard.json").read_text())
    assert card["strategies"] == d["strategies"]
    assert len((out / "scorecard.csv").read_text().splitlines()) == 1 + len(names) + len(
        d["rejected"])
    assert {r["layout"] for r in d["strategies"]} == {"top-row"}  # a decode's layout
    for name in names:
        assert (out / name / "result.json").exists()
        assert (tmp_path / f"t.{name}.json").exists()


def test_search_writes_its_choice(tmp_path, capsys):
    out = tmp_path / "s"
    d = run_json(["search", *TINY, "--phase", "decode", "--context", "16", "--grid", "16",
                  "--out", str(out)], capsys)
    assert d["out"] == str(out) and (out / "result.json").exists()
    assert json.loads((out / "search.json").read_text())["choice"] == d["choice"]


@pytest.mark.parametrize("argv, names", [
    (["--generate", "2", "--prompt", "16"], {"prefill", "decode_first", "decode_last"}),
    (["--wafers", "2", "--prompt", "16"], {"wafer0", "wafer1"}),
])
def test_run_generate_and_wafers_write_each_run(tmp_path, capsys, argv, names):
    out = tmp_path / "o"
    d = run_json(["run", *TINY, *argv, "--out", str(out)], capsys)
    assert set(d["outputs"]) == names
    for name in names:
        assert (out / name / "summary.txt").exists()


def test_compare_gemm_writes_its_table_and_refuses_what_does_not_apply(tmp_path, capsys):
    out = tmp_path / "g"
    gemm = ["compare", "gemm", "--preset", "mesh16", "--grid", "4", "--m", "32", "--k", "32",
            "--n", "32"]
    d = run_json([*gemm, "--out", str(out)], capsys)
    assert json.loads((out / "compare_gemm.json").read_text())["algorithms"] == d["algorithms"]
    for extra, needle in ((["--trace", str(tmp_path / "t.json")], "--trace"),
                          (["--model", "tiny"], "--model")):
        assert main([*gemm, *extra]) == 2
        assert capsys.readouterr().err.startswith(f"error: compare gemm: {needle}")
    assert main(["compare", *TINY, "--m", "64"]) == 2
    assert "--m: a GEMM size" in capsys.readouterr().err
