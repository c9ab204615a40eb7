"""`layout="auto"` (the default): the top-row layout where it maps, else the 2-D layout; the
error when neither maps names both, and the grid from which the 2-D layout fits."""

import json
import re
from functools import partial

import pytest

from mapper.placement import MappingError
from mapper.strategies.choose_layout import candidates, smallest_grid
from mapper.strategies.single_region import map_layer_sequential
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.experiment import build_program
from wse_sim.hardware import ConfigError, load_preset

MESH16 = load_preset("mesh16")
WSE2 = load_preset("wse2")
PREFILL = {"strategy": "weight-streaming", "prompt": 128}
# one LLaMA3-8B layer, 4,096 tokens: the top-row layout does not fit 720 x 720 cores (its
# partial sums alone need 6 MB per core), the 2-D one does (issue 18)
LONG = {"strategy": "weight-streaming", "prompt": 4096, "model_set": {"n_layers": 1}}
TRAIN = {"phase": "train", "strategy": "weight-streaming", "prompt": 64, "batch": 2}


def _same(a, b) -> bool:
    return a.tasks == b.tasks and a.meta["layout"] == b.meta["layout"]


def test_auto_is_the_top_row_layout_where_it_fits():
    auto = build_program(MESH16, "tiny-llama", **PREFILL)
    assert auto.meta["layout"] == "top-row"
    assert _same(auto, build_program(MESH16, "tiny-llama", layout="top-row", **PREFILL))


@pytest.mark.parametrize("strategy", ["layer-sequential", "weight-streaming"])
def test_auto_is_the_2d_layout_where_the_top_row_does_not_fit(strategy):
    kw = LONG | {"strategy": strategy, "grid": 720}
    with pytest.raises(MappingError, match="does not fit"):
        build_program(WSE2, "llama3-8b", layout="top-row", **kw)
    auto = build_program(WSE2, "llama3-8b", **kw)
    assert auto.meta["layout"] == "2d"
    assert _same(auto, build_program(WSE2, "llama3-8b", layout="2d", **kw))


def test_auto_trains_in_2d_where_the_top_row_step_does_not_fit():
    # tiny at batch 2 x 64: the top-row step needs 56,352 bytes per core, the 2-D one 11,360
    with pytest.raises(MappingError, match="does not fit"):
        build_program(MESH16, "tiny", layout="top-row", **TRAIN)
    auto = build_program(MESH16, "tiny", **TRAIN)
    assert auto.meta["layout"] == "2d" and auto.meta["phase"] == "train"
    ls = build_program(MESH16, "tiny", **(TRAIN | {"strategy": "layer-sequential"}))
    assert ls.meta["layout"] == "2d" and ls.meta["strategy"] == "layer-sequential"


def test_decode_and_layer_pipelined_prefill_are_top_row():
    assert build_program(MESH16, "tiny-llama", phase="decode", context=16,
                         strategy="weight-streaming").meta["layout"] == "top-row"
    assert build_program(MESH16, "tiny-llama").meta["layout"] == "top-row"
    assert candidates("auto", "prefill", "layer-pipelined") == ("top-row",)
    # a layer-pipelined training step: a square region per layer where top-row does not fit
    assert candidates("auto", "train", "layer-pipelined") == ("top-row", "2d")
    assert candidates("auto", "train", "layer-sequential") == ("top-row", "2d")
    assert candidates("auto", "prefill", "weight-streaming") == ("top-row", "2d")
    assert candidates("2d", "prefill", "weight-streaming") == ("2d",)


@pytest.mark.parametrize("kw", [{"gemm_algo": "cannon"}, {"recompute": "off", **TRAIN}])
def test_an_option_only_the_2d_layout_has_asks_for_it(kw):
    kw = PREFILL | kw
    assert build_program(MESH16, "tiny-llama", **kw).meta["layout"] == "2d"


@pytest.mark.parametrize("kw,text", [
    ({"phase": "decode", "context": 16, "strategy": "weight-streaming", "gemm_algo": "summa"},
     "gemm_algo: got 'summa', which applies only with layout 2d"),
    ({"phase": "prefill", "strategy": "layer-pipelined", "prompt": 16, "gemm_algo": "cannon"},
     "gemm_algo: got 'cannon'"),
    ({"phase": "train", "strategy": "layer-sequential", "prompt": 16, "optimizer": "onwafer"},
     "optimizer: got 'onwafer', which applies only to a weight-streaming training step"),
    ({"layout": "sideways"}, "layout: got 'sideways', must be one of auto, top-row, 2d"),
])
def test_refusals_name_the_field(kw, text):
    with pytest.raises(ConfigError, match=re.escape(text)):
        build_program(MESH16, "tiny-llama", **kw)


def test_neither_layout_names_both_and_the_grid_that_fits():
    with pytest.raises(MappingError) as err:
        build_program(WSE2, "llama3-8b", grid=400, **LONG)
    msg = str(err.value)
    assert "\n" not in msg
    assert "top-row: model llama3-8b does not fit" in msg
    assert "2d: model llama3-8b does not fit: the 2-D region is 400 x 400 cores" in msg
    at = int(re.search(r"the 2-D layout fits from grid (\d+)", msg).group(1))
    assert build_program(WSE2, "llama3-8b", grid=at, layout="2d", **LONG)
    with pytest.raises(MappingError):
        build_program(WSE2, "llama3-8b", grid=at - 1, layout="2d", **LONG)
    with pytest.raises(MappingError, match="fits from grid"):  # the hint with layout 2d too
        build_program(WSE2, "llama3-8b", grid=400, layout="2d", **LONG)


def test_no_grid_hint_when_no_grid_fits():
    with pytest.raises(MappingError) as err:
        build_program(WSE2.with_overrides({"sram_bytes": 8192}), "llama3-8b", grid=400, **LONG)
    assert "no layout maps this run" in str(err.value)
    assert "fits from grid" not in str(err.value)


def test_smallest_grid_is_the_least_that_fits():
    assert smallest_grid(lambda g: g >= 11, 8, 16) == 11
    assert smallest_grid(lambda g: g >= 9, 8, 16) == 9
    assert smallest_grid(lambda g: g >= 17, 8, 16) is None
    assert smallest_grid(lambda g: True, 16, 16) is None  # nothing above the grid given


def test_cli_reports_the_layout_auto_chose(capsys):
    rc = main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "train",
               "--strategy", "weight-streaming", "--prompt", "64", "--batch", "2", "--json",
               "--engine", "fast"])  # (the reference engine takes 20 s for the same answer)
    assert rc == 0
    assert json.loads(capsys.readouterr().out)["layout"] == "2d"


def test_cli_neither_layout_is_one_line_exit_2(capsys):
    rc = main(["run", "--preset", "wse2", "--model", "llama3-8b", "--strategy",
               "weight-streaming", "--prompt", "4096", "--grid", "400", "--model-set",
               "n_layers=1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "layout auto: no layout maps this run" in err[0] and "fits from grid" in err[0]


def test_issue_18s_first_command_says_which_grid_fits(capsys):
    """The issue's command, as typed: neither layout fits a 660 x 660 prefill grid; the one
    line gives both layouts' bytes and the grid from which the 2-D prefill fits."""
    rc = main(["run", "--preset", "wse2", "--model", "llama3-8b", "--dtype", "fp16",
               "--prompt", "2048", "--generate", "128", "--prefill-grid", "660",
               "--decode-grid", "360", "--strategy", "layer-sequential"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "top-row: model llama3-8b does not fit: the region is 660 x 660 cores" in err[0]
    assert "needs 53651 bytes per core" in err[0]
    assert err[0].endswith("the 2-D layout fits from grid 683 (683 x 683 cores)")


def test_a_top_row_decode_refusal_says_from_which_grid_it_fits():
    """A decode (top-row only) refused on its grid names the least grid on which its budget
    holds (checked without building: `check_only`): it fits there, not one narrower. The
    issue's first command, its prefill on 683 x 683, stops at its 360 x 360 decode grid: 6.4 GB
    of SRAM for LLaMA3-8B's 16.1 GB of weights."""
    kw = {"phase": "decode", "context": 2048, "strategy": "layer-sequential"}
    with pytest.raises(MappingError) as err:
        build_program(WSE2, "llama3-8b", grid=360, **kw)
    msg = str(err.value)
    assert "\n" not in msg and "at least 572 x 572" in msg
    at = int(re.search(r"the top-row layout fits from grid (\d+) \(", msg).group(1))
    fits = partial(map_layer_sequential, load_model("llama3-8b"), WSE2, phase="decode",
                   context=2048, check_only=True)
    assert fits(grid=at) is None
    with pytest.raises(MappingError):
        fits(grid=at - 1)


def test_cli_a_top_row_refusal_names_the_grid_that_fits_exit_2(capsys):
    rc = main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode",
               "--context", "16", "--grid", "2", "--strategy", "layer-sequential"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert err[0].endswith("the top-row layout fits from grid 3 (3 x 3 cores)")
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode",
                 "--context", "16", "--grid", "3", "--strategy", "layer-sequential",
                 "--show-program"]) == 0


@pytest.mark.parametrize("strategy", ["layer-pipelined", "layer-sequential", "weight-streaming"])
def test_every_top_row_strategy_names_the_least_grid_that_fits(strategy):
    """Each strategy checks its budgets (and the layer-pipelined placement) without building
    (`check_only`), so a top-row refusal names the grid from which it maps."""
    from mapper.strategies import strategies
    hw = MESH16.with_overrides({"sram_bytes": 16384})
    kw = {"phase": "decode", "context": 16}
    with pytest.raises(MappingError) as err:
        build_program(hw, "tiny", grid=2, strategy=strategy, **kw)
    at = int(re.search(r"the top-row layout fits from grid (\d+) \(", str(err.value)).group(1))
    check = partial(strategies()[strategy], load_model("tiny"), hw, check_only=True, **kw)
    assert check(grid=at) is None
    with pytest.raises(MappingError):
        check(grid=at - 1)
    assert build_program(hw, "tiny", grid=at, strategy=strategy, **kw).tasks


CHUNKED = {"strategy": "layer-sequential", "prompt": 64, "grid": 128,
           "model_set": {"n_layers": 2}}  # the top-row layout takes it in 4 chunks


def test_auto_says_when_the_top_row_chunks_a_prompt_the_2d_layout_takes_whole():
    """`auto` stays "fits first" (the same program as `top-row`), and says that the 2-D layout
    fits too where the top-row one split the prompt into chunks (docs/strategies.md: which is
    faster depends on the prompt and grid)."""
    from wse_sim.report.text import mapping_line
    auto = build_program(WSE2, "cerebras-gpt-111m", **CHUNKED)
    top = build_program(WSE2, "cerebras-gpt-111m", layout="top-row", **CHUNKED)
    assert auto.tasks == top.tasks and auto.meta["chunks"] == 4
    assert auto.meta["layout_2d_fits"] is True and "layout_2d_fits" not in top.meta
    assert "4 chunks (the 2-D layout fits this prompt whole: --layout 2d" in \
        mapping_line(auto.meta)
    build_program(WSE2, "cerebras-gpt-111m", layout="2d", **CHUNKED)  # it does fit
    whole = build_program(WSE2, "cerebras-gpt-111m", **(CHUNKED | {"prompt": 16}))
    asked = build_program(WSE2, "cerebras-gpt-111m", **(CHUNKED | {"chunks": 4}))
    assert whole.meta["chunks"] == 1 and asked.meta["chunks"] == 4
    assert "layout_2d_fits" not in whole.meta and "layout_2d_fits" not in asked.meta
