"""Strategy comparison, search, end-to-end generation and the multi-wafer pipeline."""

import json

import pytest

from workloads.graph import build_graph, total_flops
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.experiment import compare_strategies, run_generate, run_multi_wafer
from wse_sim.hardware import load_preset
from wse_sim.search_mappings import search_mapping

HW = load_preset("mesh16")


def test_compare_runs_every_strategy_and_rejects_what_does_not_fit():
    out = compare_strategies(HW, "tiny", phase="decode", context=32)
    assert set(out) == {"layer-pipelined", "layer-sequential", "weight-streaming"}
    assert all(not isinstance(r, str) and r.cycles > 0 for r in out.values())
    big = compare_strategies(load_preset("mesh4"), "gpt2-small", phase="decode", context=16)
    assert all(isinstance(r, str) and "does not fit" in r for r in big.values())


def test_long_prefill_runs_in_chunks_that_pipeline_through_the_layers():
    from wse_sim.engine import simulate
    from wse_sim.experiment import build_program
    hw = load_preset("mesh8")
    p = build_program(hw, "tiny", phase="prefill", prompt=128)
    assert p.meta["chunks"] >= 2
    assert p.total_flops() == p.meta["graph_flops"]
    r = simulate(p, hw, engine="reference")
    assert r.flops == p.meta["graph_flops"] and r.tokens == 128
    one = build_program(hw, "tiny", phase="prefill", prompt=128 // p.meta["chunks"])
    t_one = simulate(one, hw, engine="reference").cycles
    # Chunks overlap across layer regions: faster than running them one after another.
    assert r.cycles < p.meta["chunks"] * t_one


def test_search_picks_the_least_time_per_token():
    found, best = search_mapping(HW, "tiny", phase="decode", context=32)
    costs = [c for _, c, _ in found.tried if c is not None]
    assert found.best_cost == min(costs)
    assert best.seconds / best.tokens == pytest.approx(found.best_cost)
    assert "best" in found.explain()


def test_generate_combines_prefill_and_decode():
    g = run_generate(HW, "tiny", generate=4, prompt=16)
    res = g["results"]
    assert g["seconds"] == pytest.approx(res["prefill"].seconds + g["decode_seconds"])
    assert res["decode_last"].cycles >= res["decode_first"].cycles  # longer context
    assert g["tokens_per_s"] == pytest.approx(4 / g["seconds"])


def test_multi_wafer_conserves_flops_and_pays_io():
    one = run_multi_wafer(HW, "tiny-llama", wafers=1, phase="prefill", prompt=16)
    two = run_multi_wafer(HW, "tiny-llama", wafers=2, phase="prefill", prompt=16)
    graph = total_flops(build_graph(load_model("tiny-llama"), "prefill", prompt=16))
    assert one["flops"] == two["flops"] == graph
    assert one["io_bytes"] == 0 and two["io_bytes"] == 16 * 64 * 2
    assert two["pipelined_tokens_per_s"] > two["tokens_per_s"]
    train = run_multi_wafer(HW, "tiny", wafers=2, phase="train", prompt=16)
    assert train["flops"] == total_flops(build_graph(load_model("tiny"), "train", prompt=16))
    assert train["io_bytes"] == 2 * 16 * 64 * 2  # activations forward, gradient back


@pytest.mark.parametrize("argv", [
    ["compare", "--preset", "mesh16", "--model", "tiny", "--phase", "decode", "--context", "16"],
    ["search", "--preset", "mesh16", "--model", "tiny", "--phase", "decode", "--context", "16"],
    ["run", "--preset", "mesh16", "--model", "tiny", "--generate", "3", "--prompt", "16"],
    ["run", "--preset", "mesh16", "--model", "tiny", "--wafers", "2", "--phase", "decode",
     "--context", "16"],
    ["run", "--preset", "mesh16", "--model", "tiny", "--strategy", "auto", "--phase", "decode",
     "--context", "16"],
])
def test_cli_json(argv, capsys):
    assert main(argv + ["--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d


def test_cli_compare_needs_a_model(capsys):
    assert main(["compare", "--preset", "mesh16"]) == 2
    assert "--model" in capsys.readouterr().err


def test_search_also_chooses_the_prefill_chunks():
    found, best = search_mapping(load_preset("mesh8"), "tiny", phase="prefill", prompt=64,
                                 engine="fast")
    tried = {c["chunks"] for c, cost, _ in found.tried if cost is not None}
    assert {1, 2, 4, 8} <= tried
    assert best.meta["chunks"] >= found.best["chunks"]


def test_chunks_flag_and_its_bounds(capsys):
    assert main(["run", "--preset", "mesh8", "--model", "tiny", "--prompt", "64", "--chunks",
                 "4", "--json"]) == 0
    capsys.readouterr()
    assert main(["run", "--preset", "mesh8", "--model", "tiny", "--prompt", "8", "--chunks",
                 "16"]) == 2
    assert "chunks" in capsys.readouterr().err


def test_search_tries_region_shapes_and_they_differ():
    from wse_sim.experiment import build_program
    hw = load_preset("mesh32")
    shapes = {(p.meta["region_cols"], p.meta["region_rows"]) for p in (
        build_program(hw, "tiny", phase="decode", context=32, region_shape=r) for r in (0, 1, 2))}
    assert len(shapes) >= 2
    found, best = search_mapping(hw, "tiny", phase="decode", context=32)
    tried = [c for c, cost, _ in found.tried if c["strategy"] == "layer-pipelined"]
    assert {c["region_shape"] for c in tried} == {0, 1, 2}
    assert best.seconds / best.tokens == pytest.approx(found.best_cost)
    with pytest.raises(ValueError, match="region_shape"):
        build_program(hw, "tiny", strategy="layer-sequential", region_shape=1)
