"""The same command twice gives a byte-identical result.json (engines and sweeps alike)."""

import pytest

from wse_sim.cli.main import main
from wse_sim.engine import fast_available

ENGINES = ["reference"] + (["fast"] if fast_available() else [])


@pytest.mark.parametrize("engine", ENGINES)
def test_run_twice_byte_identical(tmp_path, engine, capsys):
    outs = []
    for i in range(2):
        d = tmp_path / f"run{i}"
        assert main(["run", "--preset", "mesh16", "--model", "tiny-llama", "--phase", "prefill",
                     "--prompt", "16", "--engine", engine, "--out", str(d)]) == 0
        outs.append((d / "result.json").read_bytes())
    capsys.readouterr()
    assert outs[0] == outs[1]
