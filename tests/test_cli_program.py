"""`wse-sim run-program` and `--save-program`: a mapping written to a file and run from it
gives the same figures; a program file with user kernels runs its arithmetic from the CLI."""

import json

import numpy as np
import pytest

from wse_sim.cli.main import main
from wse_sim.program import Alloc, Compute, DataOp, Dep, Program, Region, Unicast
from wse_sim.program_io import load_program, save_program


def _json(capsys, argv):
    assert main(argv) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_saved_mapping_reruns_to_the_same_figures(engine, tmp_path, capsys):
    f = tmp_path / "tiny.json"
    a = _json(capsys, ["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode",
                       "--context", "16", "--engine", engine, "--json", "--save-program", str(f)])
    b = _json(capsys, ["run-program", str(f), "--preset", "mesh16", "--engine", engine,
                       "--json"])
    for key in ("cycles", "flops", "comm_bytes", "bytes_hops", "peak_fraction", "program"):
        assert a[key] == b[key], key
    assert b["file"] == str(f) and b["tasks"] == len(load_program(f).tasks)
    assert b["preset"] == "mesh16" and b["hardware"]["mesh_cols"] == 16


def test_run_program_outputs_and_listing(tmp_path, capsys):
    f = tmp_path / "g.json"
    assert main(["gemm", "--preset", "mesh8", "--algo", "cannon", "--grid", "4", "--m", "16",
                 "--k", "16", "--n", "16", "--save-program", str(f)]) == 0
    assert "wrote program" in capsys.readouterr().err
    assert main(["run-program", str(f), "--preset", "mesh8", "--show-program"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("program gemm") and "loop cannon.step x 2" in out
    assert out.strip() == load_program(f).describe().strip()
    r = _json(capsys, ["run-program", str(f), "--preset", "mesh8", "--out", str(tmp_path / "o"),
                       "--trace", str(tmp_path / "t.json"), "--json"])
    assert (tmp_path / "o" / "result.json").is_file() and (tmp_path / "t.json").is_file()
    assert r["out"] == str(tmp_path / "o")
    c = tmp_path / "c.json"
    assert main(["collective", "--preset", "mesh8", "--kind", "reduce-chain", "--pes", "8",
                 "--wavelets", "16", "--save-program", str(c)]) == 0
    assert len(load_program(c).tasks) >= 1


KERNEL_FILE = '''
from wse_sim.kernels.registry import register_kernel

@register_kernel("cli_square_plus", replace=True)
def square_plus(call):
    return call.inputs[0] ** 2 + call.params["plus"]
'''


def test_run_program_with_user_kernels_and_buffers(tmp_path, capsys):
    reg = Region(0, 0, 2, 2)
    p = Program("k", (Unicast("u", reg, 3, dx=1, wrap=True, data=DataOp("copy", ("a",), "a")),
                      Compute("sq", reg, 12, kind="vector", deps=(Dep(0),),
                              data=DataOp("cli_square_plus", ("a",), "b", (("plus", 1.0),)))),
                (Alloc("a", reg, 12, (3,)), Alloc("b", reg, 12, (3,))))
    prog, kern = tmp_path / "p.json", tmp_path / "k.py"
    save_program(p, prog)
    kern.write_text(KERNEL_FILE)
    a = np.arange(12, dtype=np.float32).reshape(2, 2, 3)
    np.savez(tmp_path / "in.npz", a=a)
    r = _json(capsys, ["run-program", str(prog), "--preset", "mesh4", "--kernels", str(kern),
                       "--inputs", str(tmp_path / "in.npz"), "--save-buffers",
                       str(tmp_path / "out.npz"), "--json"])
    assert r["buffers"] == str(tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["b"], np.roll(a, 1, axis=1) ** 2 + 1)


@pytest.mark.parametrize("argv, message", [
    (["run-program", "{d}/missing.json"], "missing.json: cannot read"),
    (["run-program", "{d}/bad.json"], "bad.json: tasks[0] Compute: missing field 'flops'"),
    (["run-program", "{d}/ok.json", "--kernels", "{d}/nokernel.py"], "no such file"),
    (["run-program", "{d}/ok.json", "--kernels", "{d}/raise.py"], "ZeroDivisionError"),
    (["run-program", "{d}/ok.json", "--inputs", "{d}/ok.json"], "cannot read an .npz"),
    (["run", "--preset", "mesh16", "--model", "tiny", "--generate", "2", "--save-program",
      "{d}/x.json"], "--save-program: saves one mapping"),
])
def test_bad_input_is_one_error_line(argv, message, tmp_path, capsys):
    save_program(Program("ok", (Compute("c", Region(0, 0, 1, 1), 1),)), tmp_path / "ok.json")
    (tmp_path / "bad.json").write_text(json.dumps(
        {"format": "wse-sim-program", "version": 1,
         "program": {"name": "b", "tasks": [{"type": "Compute", "op": "c",
                                             "region": {"x": 0, "y": 0, "cols": 1, "rows": 1}}]}}))
    (tmp_path / "raise.py").write_text("1 / 0\n")
    code = main([a.format(d=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1
