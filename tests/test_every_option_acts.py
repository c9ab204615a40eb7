"""Every option of every sub-command is used or refused (issue 17): with
the option changed from the base command, the JSON answer changes, a file appears, or the
command refuses in one line (exit 2). An option added without a probe here fails the test."""

import json

import pytest

from wse_sim.cli.main import build_parser, main

BASE = {
    "run": ["run", "--preset", "mesh16", "--model", "tiny", "--prompt", "16"],
    "gemm": ["gemm", "--preset", "mesh8", "--algo", "cannon", "--grid", "4", "--m", "32",
             "--k", "32", "--n", "32"],
    "gemv": ["gemv", "--preset", "mesh8", "--algo", "chain", "--grid", "4", "--k", "64",
             "--n", "32"],
    "collective": ["collective", "--preset", "mesh8", "--kind", "reduce-chain", "--pes", "8",
                   "--wavelets", "16"],
    "compare": ["compare", "--preset", "mesh8", "--model", "tiny", "--phase", "decode",
                "--context", "8"],
    "search": ["search", "--preset", "mesh8", "--model", "tiny", "--phase", "decode",
               "--context", "8", "--grid", "8", "--budget", "4"],
    "serve": ["serve", "--preset", "mesh8", "--model", "tiny", "--arrivals", "poisson:1000",
              "--requests", "4", "--prompt-dist", "fixed:8", "--output-dist", "fixed:4"],
    "run-program": ["run-program", "examples/programs/row_sum.json", "--preset", "mesh8"],
    "demo": ["demo"],
    "presets": ["presets"],
    "models": ["models"],
    "validate": ["validate", "--case", "P1-reduce-star"],
    "sweep": ["sweep", "<sweep.toml>", "--out", "<tmp>/sw", "--workers", "0"],
    "sweep-plot": ["sweep-plot", "<dir>/made"],
    "plot": ["plot", "<dir>/run/result.json", "--out", "<tmp>/figs"],
}
SWEEP = ('[base]\npreset = "mesh8"\nmodel = "tiny"\nphase = "decode"\ncontext = 8\n'
         '[axes]\nclock_ghz = [0.5, 1.0]\n')
HW = {"--preset": ["--preset", "mesh16"], "--set": ["--set", "clock_ghz=0.5"],
      "--engine": ["--engine", "fast"], "--out": ["--out", "<file>"],
      "--trace": ["--trace", "<file>"], "--trace-region": ["--trace-region", "0,0,2,2"]}
FILE = "<file>"   # a path in the test's folder: the option must write it (or be refused)
SITUATIONAL = None  # acts only in a situation the generic probe cannot make: a test of its own
# option -> the arguments that change it (the option itself first); FILE: must be written;
# (context, arguments): both runs take the context, the probe adds the arguments
PROBES = {
    "run": {
        "--preset": ["--preset", "mesh32"], "--set": ["--set", "clock_ghz=0.5"],
        "--engine": ["--engine", "fast"], "--out": ["--out", FILE],
        "--trace": ["--trace", FILE], "--trace-region": ["--trace-region", "0,0,2,2"],
        "--model": ["--model", "tiny-llama"], "--phase": ["--phase", "train"],
        "--batch": ["--batch", "2"], "--prompt": ["--prompt", "8"],
        "--context": ["--context", "8"], "--generate": ["--generate", "2"],
        "--dtype": ["--dtype", "fp32"], "--sparsity": ["--sparsity", "0.5"],
        "--model-set": ["--model-set", "n_layers=1"],
        "--weights-dtype": ["--weights-dtype", "int8"], "--kv-dtype": ["--kv-dtype", "int8"],
        "--accum-dtype": ["--accum-dtype", "fp16"],
        "--sparse-format": ["--sparse-format", "2:4"],
        "--sparsity-file": ["--sparsity-file", "/nonexistent.csv"],
        "--strategy": ["--strategy", "layer-sequential"], "--grid": ["--grid", "8"],
        "--region-shape": ["--region-shape", "1"], "--chunks": ["--chunks", "2"],
        "--micro-batches": ["--micro-batches", "2"], "--wafers": ["--wafers", "2"],
        "--prefill-grid": ["--prefill-grid", "8"], "--decode-grid": ["--decode-grid", "8"],
        "--reduce-algo": ["--reduce-algo", "tree"],
        "--attention": (["--preset", "mesh32"], ["--attention", "rows"]),
        "--layout": (["--strategy", "layer-sequential"], ["--layout", "2d"]),
        "--gemm-algo": (["--strategy", "layer-sequential", "--layout", "2d"],
                        ["--gemm-algo", "summa"]),
        "--recompute": (["--phase", "train", "--prompt", "16", "--strategy", "weight-streaming",
                         "--layout", "2d", "--engine", "fast"], ["--recompute", "off"]),
        "--optimizer": (["--phase", "train", "--prompt", "16", "--strategy", "weight-streaming",
                         "--layout", "2d", "--engine", "fast"], ["--optimizer", "onwafer"]),
        "--routing": ["--routing", "skewed:1.5"], "--moe-layout": ["--moe-layout", "strips"],
        "--spec": ["--spec", "/nonexistent.toml"], "--save-spec": ["--save-spec", FILE],
        "--show-program": ["--show-program"], "--functional": ["--functional"],
        "--save-program": ["--save-program", FILE],
    },
    "gemm": {
        "--preset": ["--preset", "mesh16"], "--set": ["--set", "clock_ghz=0.5"],
        "--engine": ["--engine", "fast"], "--out": ["--out", FILE],
        "--trace": ["--trace", FILE], "--trace-region": ["--trace-region", "0,0,2,2"],
        "--algo": ["--algo", "summa"], "--grid": ["--grid", "2"], "--m": ["--m", "64"],
        "--k": ["--k", "64"], "--n": ["--n", "64"], "--dtype": ["--dtype", "fp16"],
        "--functional": ["--functional"], "--seed": ["--seed", "3"],
        "--layout": ["--layout", "line"], "--no-skew": ["--no-skew"],
        "--flow-control": ["--flow-control"],
        "--save-program": ["--save-program", FILE],
    },
    "gemv": {
        "--preset": ["--preset", "mesh16"], "--set": ["--set", "clock_ghz=0.5"],
        "--engine": ["--engine", "fast"], "--out": ["--out", FILE],
        "--trace": ["--trace", FILE], "--trace-region": ["--trace-region", "0,0,2,2"],
        "--algo": ["--algo", "tree"], "--grid": ["--grid", "2"], "--k": ["--k", "128"],
        "--n": ["--n", "64"], "--dtype": ["--dtype", "fp16"], "--functional": ["--functional"],
        "--seed": ["--seed", "3"], "--save-program": ["--save-program", FILE],
    },
    "compare": HW | {
        "--model": ["--model", "tiny-llama"], "--phase": ["--phase", "prefill"],
        "--batch": ["--batch", "2"], "--prompt": ["--prompt", "8"],
        "--context": ["--context", "4"], "--grid": ["--grid", "4"],
        "--dtype": ["--dtype", "fp32"], "--sparsity": ["--sparsity", "0.5"],
        "--reduce-algo": ["--reduce-algo", "tree"], "--model-set": ["--model-set", "n_layers=1"],
        "--weights-dtype": ["--weights-dtype", "int8"], "--kv-dtype": ["--kv-dtype", "int8"],
        "--accum-dtype": ["--accum-dtype", "fp16"], "--m": ["--m", "64"], "--k": ["--k", "64"],
        "--sparse-format": ["--sparse-format", "2:4"],
        "--sparsity-file": ["--sparsity-file", "/nonexistent.csv"],
        "--n": ["--n", "64"],
    },
    "search": HW | {
        "--model": ["--model", "tiny-llama"], "--phase": ["--phase", "prefill"],
        "--batch": ["--batch", "2"], "--prompt": ["--prompt", "8"],
        "--context": ["--context", "4"], "--grid": ["--grid", "4"],
        "--dtype": ["--dtype", "fp32"], "--sparsity": ["--sparsity", "0.5"],
        "--budget": ["--budget", "1"], "--reduce-algo": ["--reduce-algo", "tree"],
        "--model-set": ["--model-set", "n_layers=1"],
        "--weights-dtype": ["--weights-dtype", "int8"], "--kv-dtype": ["--kv-dtype", "int8"],
        "--accum-dtype": ["--accum-dtype", "fp16"],
        "--sparse-format": ["--sparse-format", "2:4"],
        "--sparsity-file": ["--sparsity-file", "/nonexistent.csv"],
        "--wafers": ["--wafers", "2"], "--routing": ["--routing", "skewed:1.5"],
        "--moe-layout": ["--moe-layout", "bands"],
        # a decode: the 2-D layout's options are refused (tests/test_search_speed.py has
        # the 2-D training search)
        "--layout": ["--layout", "2d"], "--gemm-algo": ["--gemm-algo", "summa"],
        "--recompute": ["--recompute", "off"],
    },
    "serve": {
        "--preset": ["--preset", "mesh16"], "--set": ["--set", "clock_ghz=0.5"],
        "--decode-preset": ["--decode-preset", "mesh16"], "--model": ["--model", "tiny-llama"],
        "--arrivals": ["--arrivals", "poisson:10"], "--trace": ["--trace", "/nonexistent.csv"],
        "--requests": ["--requests", "3"], "--prompt-dist": ["--prompt-dist", "fixed:16"],
        "--output-dist": ["--output-dist", "fixed:2"],
        "--mode": ["--mode", "disaggregated"], "--seed": ["--seed", "5"],
        "--slo-ttft-ms": ["--slo-ttft-ms", "0.000001"],
        "--slo-tpot-ms": ["--slo-tpot-ms", "0.000001"], "--max-batch": ["--max-batch", "1"],
        "--max-prefill-batch": ["--max-prefill-batch", "4"], "--bucket": ["--bucket", "16"],
        "--strategy": ["--strategy", "layer-sequential"], "--grid": ["--grid", "4"],
        "--dtype": ["--dtype", "fp32"], "--reduce-algo": ["--reduce-algo", "tree"],
        "--attention": ["--attention", "rows"], "--engine": ["--engine", "fast"],
        "--cost-cache": ["--cost-cache", FILE], "--out": ["--out", FILE],
        "--wafers": ["--wafers", "2"], "--prefill": ["--prefill", "per-token"],
        "--routing": ["--routing", "skewed:1.5"], "--moe-layout": ["--moe-layout", "bands"],
    },
    "demo": {"--out": ["--out", FILE], "--trace": ["--trace", FILE],
             "--trace-region": ["--trace-region", "0,0,2,2"]},
    "presets": {"--show": ["--show", "mesh8"], "--set": ["--set", "clock_ghz=0.5"]},
    "models": {},
    "validate": {"--fast": ["--fast"], "--engine": ["--engine", "fast"],
                 "--case": ["--case", "P1-reduce-chain"]},
    "sweep": {"--out": ["--out", FILE], "--workers": ["--workers", "-1"],
              "--dask": ["--dask", "localhost:1"], "--force": SITUATIONAL,
              "--retry-failed": SITUATIONAL},
    "sweep-plot": {"--metric": ["--metric", "seconds"], "--x": ["--x", "phase"],
                   "--out": ["--out", FILE]},
    "plot": {"--out": ["--out", FILE], "--format": ["--format", "pdf"]},
    "run-program": HW | {
        "--show-program": ["--show-program"],
        "--kernels": ["--kernels", "/nonexistent.py"],
        "--inputs": ["--inputs", "/nonexistent.npz"],
        "--save-buffers": ["--save-buffers", FILE],
    },
    "collective": {
        "--preset": ["--preset", "mesh16"], "--set": ["--set", "clock_ghz=0.5"],
        "--engine": ["--engine", "fast"], "--out": ["--out", FILE],
        "--trace": ["--trace", FILE], "--trace-region": ["--trace-region", "0,0,2,2"],
        "--kind": ["--kind", "broadcast"], "--pes": ["--pes", "4"],
        "--rows": ["--rows", "2", "--cols", "2"], "--cols": ["--cols", "2"],
        "--wavelets": ["--wavelets", "32"], "--root": ["--root", "centre"],
        "--dtype": ["--dtype", "fp16"], "--save-program": ["--save-program", FILE],
    },
}
SKIP = {"--json", "--help"}  # every probe runs with --json


def options(command: str) -> set:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {a.option_strings[0] for a in sub.choices[command]._actions
            if a.option_strings} - SKIP - {"-h"}


@pytest.mark.parametrize("command", sorted(BASE))
def test_every_option_has_a_probe(command):
    assert options(command) == set(PROBES[command]), "add a probe for each new option"


@pytest.fixture(scope="module")
def materials(tmp_path_factory) -> dict:
    """What the sweep and plot commands read (made once): a sweep file, a finished sweep and
    a run's folder."""
    d = tmp_path_factory.mktemp("materials")
    (d / "sweep.toml").write_text(SWEEP)
    assert main(["sweep", str(d / "sweep.toml"), "--out", str(d / "made"), "--workers", "0",
                 "--json"]) == 0
    assert main(["run", "--preset", "mesh8", "--model", "tiny", "--phase", "decode",
                 "--context", "8", "--out", str(d / "run"), "--json"]) == 0
    return {"<sweep.toml>": str(d / "sweep.toml"), "<dir>": str(d)}


_BASE_ANSWERS: dict = {}  # base argv -> answer (the same base serves every option's probe)


def _fill(argv, names: dict) -> list:
    out = []
    for a in argv:
        for k, v in names.items():
            a = a.replace(k, v)
        out.append(a)
    return out


def _answer(argv, capsys) -> tuple[int, object]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    has_json = "--json" in sub.choices[argv[0]]._option_string_actions
    try:
        code = main(argv + (["--json"] if has_json else []))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    if code == 2:
        assert err.startswith("error:") and err.count("\n") == 1, err
        return 2, err
    assert code in (0, 1), (argv, code, err)
    try:
        d = json.loads(out)
    except json.JSONDecodeError:
        return code, out + err  # e.g. --show-program prints the program; plot, its files
    if isinstance(d, dict):
        for k in ("wall_seconds", "out", "trace", "outputs"):
            d.pop(k, None)
    return code, d


@pytest.mark.parametrize("command, option", [(c, o) for c in sorted(PROBES) for o in PROBES[c]
                                             if PROBES[c][o] is not SITUATIONAL])
def test_the_option_is_used_or_refused(command, option, tmp_path, capsys, materials):
    probe = PROBES[command][option]
    context, probe = probe if isinstance(probe, tuple) else ([], probe)
    capsys.readouterr()
    base_argv = _fill(BASE[command] + context, materials | {"<tmp>": str(tmp_path)})
    key = tuple(_fill(base_argv, {str(tmp_path): "<tmp>"}))
    def norm(answer):  # this test's folder named alike in every test (the base is shared)
        code, x = answer
        return code, json.loads(json.dumps(x).replace(str(tmp_path), "<tmp>"))

    if key not in _BASE_ANSWERS:
        _BASE_ANSWERS[key] = norm(_answer(base_argv, capsys))
    base_code, base = _BASE_ANSWERS[key]
    assert base_code in (0, 1)  # validate exits 1 when a case misses (the known wse3 one)
    probe = [str(tmp_path / "written") if a == FILE else a for a in probe]
    code, got = norm(_answer(base_argv + probe, capsys))
    if code == 2:
        return  # refused, in one line
    wrote = any(tmp_path.glob("written*"))  # several runs write written.<run>.json
    assert wrote or got != base, f"{command} {' '.join(probe)}: accepted, and nothing changed"


def test_sweep_force_and_retry_failed_act_where_they_apply(tmp_path, capsys):
    """--force: a folder holding another sweep is refused without it, reused with it.
    --retry-failed: a failed point runs again only with it."""
    other = tmp_path / "other.toml"
    other.write_text(SWEEP.replace("[0.5, 1.0]", "[0.7]"))
    first = tmp_path / "first.toml"
    first.write_text(SWEEP.replace("clock_ghz = [0.5, 1.0]", "chunks = [1, 2]"))  # 2: fails
    out = str(tmp_path / "sw")
    assert main(["sweep", str(first), "--out", out, "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["failed"] == 1
    assert main(["sweep", str(first), "--out", out, "--workers", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 0  # nothing to do: resumed
    assert main(["sweep", str(first), "--out", out, "--workers", "0", "--json",
                 "--retry-failed"]) == 0
    assert json.loads(capsys.readouterr().out)["done"] == 1  # the failed point, again
    assert main(["sweep", str(other), "--out", out, "--workers", "0", "--json"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["sweep", str(other), "--out", out, "--workers", "0", "--json", "--force"]) == 0
