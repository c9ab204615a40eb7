"""The run specification (wse_sim.spec): one declaration of every run option, used by the CLI,
the sweeps and the Python API; options that do not apply are refused, never dropped."""

import json

import pytest

from wse_sim.cli.main import build_parser, main
from wse_sim.errors import ConfigError
from wse_sim.experiment import run_model
from wse_sim.hardware import load_preset
from wse_sim.spec import FIELDS, Mapping, RunSpec, Workload, load_spec
from wse_sim.sweep.run import run_point
from wse_sim.sweep.spec import AXIS_NAMES, parse_sweep_text


def run_options() -> set:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.dest for a in sub.choices["run"]._actions}


def test_every_field_is_a_run_option_and_a_sweep_axis():
    assert set(FIELDS) <= run_options()
    assert set(FIELDS) <= set(AXIS_NAMES)


@pytest.mark.parametrize("argv, field", [
    (["--phase", "train", "--generate", "4"], "generate"),
    (["--phase", "decode", "--chunks", "2"], "chunks"),
    (["--prefill-grid", "8"], "prefill_grid"),
    (["--decode-grid", "8"], "decode_grid"),
    (["--phase", "decode", "--prompt", "64"], "prompt"),
    (["--context", "64"], "context"),
    (["--strategy", "layer-sequential", "--region-shape", "2"], "region_shape"),
    (["--micro-batches", "2", "--batch", "2"], "micro_batches"),
    (["--strategy", "layer-sequential", "--wafers", "2"], "wafers"),
])
def test_an_option_that_does_not_apply_is_refused(argv, field, capsys):
    assert main(["run", "--preset", "mesh16", "--model", "tiny", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"error: {field}: got ") \
        and "does not apply" in err and "applies only with" in err, err


def test_the_default_context_runs_on_a_small_model(capsys):
    assert main(["run", "--preset", "mesh32", "--model", "tiny", "--phase", "decode",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cycles"] > 0


def test_save_spec_then_run_it_gives_the_same_run(tmp_path, capsys):
    f = tmp_path / "run.toml"
    argv = ["--preset", "mesh16", "--set", "clock_ghz=0.9", "--model", "tiny", "--phase",
            "decode", "--context", "40", "--reduce-algo", "tree", "--engine", "fast", "--json"]
    assert main(["run", *argv, "--save-spec", str(f)]) == 0
    first = json.loads(capsys.readouterr().out)
    spec = load_spec(f)
    assert spec.preset == "mesh16" and spec.overrides == {"clock_ghz": 0.9}
    assert spec.engine == "fast" and spec.mapping.reduce_algo == "tree"
    assert spec.workload.context == 40
    assert main(["run", "--spec", str(f), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["cycles"] == first["cycles"] and again["seconds"] == first["seconds"]
    # an option on the command line overrides the file; one that does not apply is refused
    assert main(["run", "--spec", str(f), "--context", "20", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cycles"] != first["cycles"]
    assert main(["run", "--spec", str(f), "--chunks", "2"]) == 2
    assert "chunks" in capsys.readouterr().err


@pytest.mark.parametrize("text, needle", [
    ('[workload]\nmodel = "tiny"\nbogus = 1\n', "workload.bogus: not a workload field"),
    ('[workload]\nmodel = "tiny"\nbatch = 0\n', "batch: got 0, must be at least 1"),
    ('[workload]\nmodel = "tiny"\n[mapping]\nchunks = "two"\n', "chunks: got 'two', must be an integer"),
    ('colour = 1\n', "colour: not a key of a run spec"),
    ('format = "other/9"\n', "format: got 'other/9'"),
    ('[workload\n', "not valid TOML"),
])
def test_a_bad_spec_file_is_one_line_naming_the_file_and_field(tmp_path, text, needle):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_spec(f)
    assert needle in str(e.value) and str(f) in str(e.value) and "\n" not in str(e.value)


def test_a_missing_spec_file_names_it(capsys):
    assert main(["run", "--spec", "/nonexistent/run.toml"]) == 2
    assert "/nonexistent/run.toml: cannot read" in capsys.readouterr().err


def test_spec_validation_in_python():
    with pytest.raises(ConfigError, match="batch: got 0"):
        Workload(model="tiny", batch=0)
    with pytest.raises(ConfigError, match="phase: got 'serve'"):
        Workload(model="tiny", phase="serve")
    with pytest.raises(ConfigError, match="grid: got 1.5"):
        Mapping(grid=1.5)
    with pytest.raises(ConfigError, match="colour: not a run option"):
        RunSpec.from_values({"model": "tiny", "colour": 1})
    s = RunSpec.from_values({"model": "tiny", "phase": "decode", "chunks": 1})
    s.check_applies()  # a default value applies everywhere: it changes nothing


def test_run_model_honours_overrides_on_a_hardware_config():
    hw = load_preset("mesh16")
    fast = run_model(hw, "tiny", phase="decode", context=16)
    slow = run_model(hw, "tiny", phase="decode", context=16, overrides={"clock_ghz": 0.55})
    assert slow.cycles == fast.cycles and slow.hardware.clock_ghz == 0.55
    assert slow.seconds == pytest.approx(2 * fast.seconds)


def test_run_model_refuses_what_does_not_apply_and_unknown_names():
    with pytest.raises(ConfigError, match="chunks: got 2, which does not apply"):
        run_model("mesh16", "tiny", phase="decode", context=16, chunks=2)
    with pytest.raises(ConfigError, match="reduce_algorithm: not a run option"):
        run_model("mesh16", "tiny", reduce_algorithm="tree")


def test_a_sweep_varies_any_field_and_a_point_it_does_not_apply_to_fails():
    spec = parse_sweep_text('[base]\npreset = "mesh16"\nmodel = "tiny"\nprompt = 32\n'
                            'context = 32\n[axes]\nphase = ["prefill", "decode"]\n'
                            'reduce_algo = ["chain", "tree"]\nchunks = [1, 2]\n')
    rows = {tuple(p.values.values()): run_point(p.params, p.overrides) for p in spec.points}
    assert len(rows) == 8
    ok = {k: r for k, r in rows.items() if r["status"] == "ok"}
    assert len(ok) == 6  # chunks = 2 applies to the prefill points only
    assert ok[("prefill", "chain", 2)]["cycles"] < ok[("prefill", "chain", 1)]["cycles"]
    assert ok[("decode", "tree", 1)]["cycles"] != ok[("decode", "chain", 1)]["cycles"]
    failed = rows[("decode", "tree", 2)]
    assert failed["status"] == "failed" and failed["error"].startswith("chunks: got 2")


def test_model_set_times_one_layer_and_refuses_unknown_fields(tmp_path, capsys):
    base = ["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode", "--context",
            "16", "--json"]
    one = run_json_cycles(base + ["--model-set", "n_layers=1"], capsys)
    two = run_json_cycles(base + ["--model-set", "n_layers=2"], capsys)
    assert one < two
    assert main(base + ["--model-set", "n_layer=1"]) == 2
    assert "model_set.n_layer: not a model field" in capsys.readouterr().err
    assert main(base + ["--model-set", "n_layers=0"]) == 2
    assert "n_layers: got 0, must be a positive integer" in capsys.readouterr().err
    f = tmp_path / "one.toml"
    assert main(base + ["--model-set", "n_layers=1", "--save-spec", str(f)]) == 0
    capsys.readouterr()
    assert load_spec(f).workload.model_set == {"n_layers": 1}
    assert run_json_cycles(["run", "--spec", str(f), "--json"], capsys) == one


def run_json_cycles(argv, capsys) -> int:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)["cycles"]


def test_a_sweep_varies_a_model_dimension():
    spec = parse_sweep_text('[base]\npreset = "mesh16"\nmodel = "tiny"\nprompt = 16\n'
                            '[axes]\nmodel.n_layers = [1, 2]\n')
    cycles = [run_point(p.params, p.overrides)["cycles"] for p in spec.points]
    assert [p.values["model.n_layers"] for p in spec.points] == [1, 2]
    assert cycles[0] < cycles[1]
    with pytest.raises(ConfigError, match="axes.model.n_layer: unknown"):
        parse_sweep_text('[base]\npreset = "mesh16"\nmodel = "tiny"\n[axes]\n'
                         'model.n_layer = [1]\n')


def test_simulate_spec_runs_a_saved_spec_like_the_cli(tmp_path, capsys):
    from wse_sim.spec_run import simulate_spec
    f = tmp_path / "r.toml"
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode",
                 "--context", "16", "--reduce-algo", "tree", "--save-spec", str(f),
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    r = simulate_spec(load_spec(f))
    assert r.cycles == cli["cycles"]
    gen = simulate_spec(RunSpec.from_values({"model": "tiny", "prompt": 16, "generate": 2},
                                            preset="mesh16"))
    assert gen["generated_tokens"] == 2 and gen["seconds"] > 0
    with pytest.raises(ConfigError, match="chunks: got 2, which does not apply"):
        simulate_spec(RunSpec.from_values({"model": "tiny", "phase": "decode", "chunks": 2},
                                          preset="mesh16"))
    with pytest.raises(TypeError, match="simulate_spec: spec got dict"):
        simulate_spec({"model": "tiny"})
