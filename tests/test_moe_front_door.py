"""MoE models at the front door: `wse-sim models` lists total and active parameters, and the
mappers map an MoE model (tests/test_moe_mapping.py) or say in one line what is not mapped."""

from __future__ import annotations

import json

import pytest

from mapper.placement import MappingError
from mapper.strategies.common import make_run
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.hardware import load_preset


def test_models_lists_active_params(capsys):
    assert main(["models"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()}
    assert lines["model"][1:3] == ["params", "active"] and lines["model"][-1] == "experts"
    assert lines["tiny-moe"][1:3] == ["251,328", "177,600"] and lines["tiny-moe"][-1] == "2/8+1"
    assert lines["mixtral-8x7b"][1:3] == ["46,702,792,704", "12,879,925,248"]
    assert lines["deepseek-v3-gqa"][-1] == "8/256+1" and lines["gpt-oss-120b"][-1] == "4/128"
    assert lines["tiny"][1] == lines["tiny"][2] == "141,056" and lines["tiny"][-1] == "-"
    assert main(["models", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["qwen3-30b-a3b"]["active_param_count"] == 3_353_020_416
    assert info["qwen3-30b-a3b"]["moe"]["top_k"] == 8 and info["tiny"]["moe"] is None


@pytest.mark.parametrize("strategy", ["layer-pipelined", "layer-sequential",
                                      "weight-streaming"])
def test_run_maps_moe(strategy, capsys):
    argv = ["run", "--preset", "mesh32", "--model", "tiny-moe", "--strategy", strategy,
            "--phase", "decode", "--context", "16"]
    assert main(argv) == 0
    assert "tiny-moe decode" in capsys.readouterr().out


def test_run_says_what_is_not_mapped(capsys):
    argv = ["run", "--preset", "mesh32", "--model", "tiny-moe", "--phase", "train"]
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "MoE training is not mapped" in err and "\n" not in err


def test_run_maps_moe_over_wafers(capsys):
    argv = ["run", "--preset", "mesh32", "--model", "tiny-moe", "--phase", "decode",
            "--context", "16", "--wafers", "2"]
    assert main(argv) == 0
    assert "tiny-moe decode on 2 x mesh32" in capsys.readouterr().out


def test_make_run_routes_moe():
    run = make_run(load_model("mixtral-8x7b"), load_preset("mesh32"), phase="decode", batch=1,
                   prompt=8, context=8, dtype="fp16", grid=None, sparsity=0.0)  # fmt: skip
    assert run.routing.counts(0) == (1, 1, 0, 0, 0, 0, 0, 0)
    with pytest.raises(MappingError, match="has no experts"):
        make_run(load_model("tiny"), load_preset("mesh32"), phase="decode", batch=1, prompt=8,
                 context=8, dtype="fp16", grid=None, sparsity=0.0, routing="uniform")
