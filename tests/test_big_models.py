"""Big models over several wafers (issue 18, item 3): each wafer holds only the tables it
uses, the layers split so that every slice fits (the wafers with the embedding or the LM head
take fewer when they must), and the fewest wafers that fit is found by mapping, not guessed."""

import pytest

from mapper.strategies.common import stage_table_params
from mapper.strategies.layer_pipelined import fewest_wafers, stage_split
from workloads.models import load_model
from wse_sim.hardware import load_preset

WSE3 = load_preset("wse3")
DECODE = dict(phase="decode", batch=1, prompt=128, context=4096, dtype="fp16", grid=None,
              sparsity=0.0)


def test_a_stage_holds_the_tables_it_uses():
    untied, tied = load_model("llama3-8b"), load_model("tiny")
    e, v, d = untied.embedding_params(), untied.vocab_size, untied.d_model
    assert stage_table_params(untied, True, False) == e
    assert stage_table_params(untied, False, True) == d * v
    assert stage_table_params(untied, False, False) == 0
    assert stage_table_params(untied, True, True) == e + d * v
    # tied: the head's wafer needs the token table too, unless it is the embedding's
    assert stage_table_params(tied, False, True) == tied.vocab_size * tied.d_model
    assert stage_table_params(tied, True, True) == tied.embedding_params()


def test_llama_70b_decode_splits_evenly_over_four_wse3():
    cfg = load_model("llama3.1-70b")
    assert stage_split(cfg, WSE3, 4, **DECODE) == [20, 20, 20, 20]
    assert stage_split(cfg, WSE3, 3, **DECODE) is None
    assert fewest_wafers(cfg, WSE3, **DECODE) == 4


def test_llama_405b_takes_the_fewest_wafers_with_lighter_ends():
    cfg = load_model("llama3.1-405b")
    w = fewest_wafers(cfg, WSE3, **DECODE)
    split = stage_split(cfg, WSE3, w, **DECODE)
    assert sum(split) == cfg.n_layers and len(split) == w
    assert split[0] <= max(split[1:-1]) and split[-1] <= max(split[1:-1])
    assert stage_split(cfg, WSE3, w - 1, **DECODE) is None
    # the weights alone need 19 wafers' SRAM; equal slots and the tables cost 3 more
    assert w == 22


@pytest.mark.parametrize("wafers", [1, 2])
def test_a_small_model_keeps_the_even_split(wafers):
    cfg = load_model("tiny")
    hw = load_preset("mesh16")
    assert stage_split(cfg, hw, wafers, **DECODE | {"context": 16}) == \
        [cfg.n_layers // wafers] * wafers


def test_too_few_wafers_is_refused_with_the_wafers_that_would_fit(capsys):
    from wse_sim.cli.main import main
    rc = main(["run", "--preset", "wse3", "--model", "llama3.1-70b", "--phase", "decode",
               "--context", "4096", "--wafers", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "over 3 wafers no split of the 80 layers fits: 4 wafers would" in err[0]
    assert "bytes per core" in err[0]


def test_405b_maps_on_its_fewest_wafers_with_the_uneven_split():
    from wse_sim.experiment import stage_programs
    ps = stage_programs(WSE3, "llama3.1-405b", wafers=22, phase="decode", context=4096,
                        dtype="fp16")
    layers = [p.meta["layers"] for p in ps]
    assert sum(layers) == 126 and layers[0] == 5 and max(layers) == 6
    assert [p.meta["with_embed"] for p in ps] == [True] + [False] * 21
