"""MoE models on the wafer (docs/moe.md, "On the wafer"): experts on blocks of each layer
region, tokens routed to them and back as fabric traffic; both engines agree to the cycle,
FLOPs are conserved, skew costs time, routing files are validated, and the mapped tiny-moe
computes the numpy reference's logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mapper.placement import MappingError
from mapper.strategies.functional_model import model_output, random_case
from mapper.strategies.moe_layer import expert_blocks
from workloads.graph import build_graph
from workloads.models import load_model
from workloads.routing import RoutingError, make_routing
from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.experiment import build_program
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import load_preset
from wse_sim.program import Region, Unicast, check_fits

MESH8, MESH16 = load_preset("mesh8"), load_preset("mesh16")
ZOO = Path(__file__).resolve().parents[1] / "workloads" / "zoo"
CFG = load_model("tiny-moe")


def _program(hw=MESH8, **kw):
    args = dict(phase="decode", batch=4, prompt=8, context=16, dtype="fp16") | kw
    return build_program(hw, "tiny-moe", **args)


@pytest.mark.parametrize("strategy, layout, phase, routing", [
    ("layer-pipelined", "blocks", "decode", "uniform"),
    ("layer-pipelined", "strips", "prefill", "skewed:1.5"),
    ("layer-sequential", "bands", "decode", "skewed:1.0"),
    ("layer-sequential", "blocks", "prefill", "uniform"),
    ("weight-streaming", "strips", "decode", "skewed:1.0"),
])
def test_fast_equals_reference(strategy, layout, phase, routing):
    p = _program(strategy=strategy, moe_layout=layout, phase=phase, routing=routing)
    fast = simulate(p, MESH8, engine="fast")
    ref = simulate(p, MESH8, engine="reference")
    assert fast.cycles == ref.cycles and fast.flops == ref.flops
    kinds = {type(t).__name__ for t in p.tasks if ".dispatch" in t.op or ".collect" in t.op}
    assert kinds == {"Unicast"}  # the routing is real traffic


@pytest.mark.parametrize("strategy", ["layer-pipelined", "layer-sequential"])
def test_prefill_in_chunks(strategy):
    """Each chunk's experts take that chunk's tokens (its rows of the routing)."""
    p = _program(strategy=strategy, phase="prefill", batch=2, prompt=13, chunks=3,
                 routing="skewed:1.5")
    fast, ref = simulate(p, MESH8, engine="fast"), simulate(p, MESH8, engine="reference")
    assert p.meta["chunks"] == 3 and fast.cycles == ref.cycles
    counts = make_routing("uniform", CFG, 26).counts(1)
    g = build_graph(CFG, "prefill", batch=2, prompt=13, dtype="fp16",
                    expert_tokens=list(counts))
    assert fast.flops == p.meta["graph_flops"] == sum(op.flops for _, op in g.nodes(data="op"))


@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_flops_conserved(phase):
    p = _program(MESH16, phase=phase, routing="uniform")
    r = simulate(p, MESH16, engine="fast")
    T = 4 * (8 if phase == "prefill" else 1)
    counts = make_routing("uniform", CFG, T).counts(1)
    g = build_graph(CFG, phase, batch=4, prompt=8, context=16, dtype="fp16",
                    expert_tokens=list(counts))
    graph = sum(op.flops for _, op in g.nodes(data="op"))
    assert r.flops == p.meta["graph_flops"] == graph
    skewed = _program(MESH16, phase=phase, routing="skewed:2")
    assert simulate(skewed, MESH16, engine="fast").flops == graph  # same tokens x top_k


def test_skew_is_slower_and_seeded(tmp_path):
    """The layer waits for its busiest expert. (tiny-moe's shared expert takes every token,
    so it is the slowest whatever the routing: the skew shows without it.)"""
    text = (ZOO / "tiny-moe.toml").read_text()
    model = tmp_path / "routed-only.toml"
    model.write_text("\n".join(line for line in text.splitlines() if "published" not in line)
                     .replace("n_shared_experts = 1", "n_shared_experts = 0"))

    def cycles(routing, seed=0):
        p = build_program(MESH16, str(model), phase="decode", batch=16, context=16,
                          routing=routing, seed=seed)
        return simulate(p, MESH16).cycles, p.meta["moe"]["max_imbalance"]

    uni, skewed, again, other = cycles("uniform"), cycles("skewed:2"), cycles("skewed:2"), \
        cycles("skewed:2", seed=1)
    assert skewed == again and uni[1] == 1.0 and skewed[1] > 2
    assert skewed[0] > 1.1 * uni[0] and other[0] > 1.1 * uni[0]


def test_placement_layouts():
    reg = Region(0, 0, 8, 8)
    assert len(set(expert_blocks(reg, 9, "blocks"))) == 9
    strips = expert_blocks(reg, 4, "strips")
    assert [b.cols for b in strips] == [2] * 4 and all(b.rows == 8 for b in strips)
    bands = expert_blocks(reg, 9, "bands")
    assert all(b.cols == 8 and b.rows == 1 for b in bands) and bands[8] == bands[0]
    p = _program(MESH16, moe_layout="bands")  # bands: dispatch straight down the columns
    sends = [t for t in p.tasks if isinstance(t, Unicast) and t.op.endswith(".dispatch")]
    assert sends and all(t.region.cols == 8 and (t.dx, t.to) == (0, None) and t.dy > 0
                         for t in sends)


def test_sram_and_colors_respected():
    with pytest.raises(MappingError, match=r"does not fit: its weights need \d+ bytes"):
        build_program(load_preset("mesh32"), "mixtral-8x7b", phase="decode", context=8)
    with pytest.raises(MappingError, match=r"needs \d+ bytes per core \(weights \d+.*"
                       r"expert_x \d+, expert_outputs \d+.*> sram_bytes 49152"):
        build_program(load_preset("mesh4"), "tiny-moe", phase="decode", context=8, batch=16,
                      strategy="layer-sequential")
    p = _program(MESH16)
    used = check_fits(p, MESH16)  # what every simulation checks first
    assert used["colors"].max() <= MESH16.colors_per_core
    assert used["sram_bytes"].max() <= MESH16.sram_bytes


def test_routing_file(tmp_path):
    good = {"layers": {"1": [[0, 1], [2, 3], [4, 5], [6, 7]], "2": [[7, 0]] * 4}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(good))
    p = _program(MESH16, routing=str(path))
    assert p.meta["moe"]["expert_tokens"]["2"] == [4, 0, 0, 0, 0, 0, 0, 4]
    csv = tmp_path / "r.csv"
    csv.write_text("layer,token,e0,e1\n" + "".join(
        f"{layer},{t},{a},{b}\n" for layer in (1, 2) for t, (a, b) in
        enumerate(good["layers"][str(layer)])))
    assert _program(MESH16, routing=str(csv)).meta["moe"] == p.meta["moe"] | {
        "routing": str(csv)}
    bad = [({"layers": {"1": good["layers"]["1"]}}, "field layer: got 2"),
           ({"layers": {"1": [[0, 9]] * 4, "2": good["layers"]["2"]}},
            r"field layers.1\[0\]\[1\]: got 9, must be an expert id in 0..7"),
           ({"layers": {"1": [[3, 3]] * 4, "2": good["layers"]["2"]}}, "distinct"),
           ({"layers": {"0": [[0, 1]] * 4}}, "an MoE layer index, one of"),
           ({"layers": {"1": [[0, 1]] * 3, "2": good["layers"]["2"]}}, "exactly once")]
    for data, match in bad:
        path.write_text(json.dumps(data))
        with pytest.raises(RoutingError, match=match) as e:
            _program(MESH16, routing=str(path))
        assert str(path) in str(e.value) and "\n" not in str(e.value)
    csv.write_text("layer,token,e0,e1\n1,0,0,x\n")
    with pytest.raises(RoutingError, match=r"line 2 experts\[1\]: got 'x'"):
        _program(MESH16, routing=str(csv))
    for spec in ("skewed:-1", "skewed:abc", "zipf"):
        with pytest.raises(RoutingError, match="routing"):
            _program(MESH16, routing=spec)


def test_router_routing_is_the_models():
    p = _program(MESH16, routing="router", dtype="fp32")
    counts = p.meta["moe"]["expert_tokens"]
    assert all(sum(c) == 4 * 2 for c in counts.values())
    assert p.meta["moe"] == _program(MESH16, routing="router", dtype="fp32").meta["moe"]


def test_cli_runs_moe(capsys):
    argv = ["run", "--preset", "mesh16", "--model", "tiny-moe", "--phase", "decode",
            "--context", "16", "--routing", "skewed:1.0", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flops"] > 0
    assert main(argv[:-3] + ["--routing", "nope.json"]) != 0
    err = capsys.readouterr().err.strip()
    assert "routing file nope.json: field path" in err and "\n" not in err


def test_weight_streaming_brings_only_the_chosen_experts():
    p = _program(strategy="weight-streaming", batch=1)  # decode: 2 of 8 experts per layer
    streamed = {t.op: t.bytes for t in p.tasks if t.op.endswith(".weights.in")}
    expert = sum(k * n for k, n in CFG.expert_weight_shapes().values()) * 2
    assert streamed["L1.weights.in"] == (CFG.layer_params(1) * 2 - 6 * expert)
    assert streamed["L0.weights.in"] == CFG.layer_params(0) * 2


def test_unmapped_parts_say_so():
    with pytest.raises(NotImplementedError, match="functional weight-streaming of an MoE"):
        _program(strategy="weight-streaming", functional=True)
    with pytest.raises(NotImplementedError, match="MoE training is not mapped"):
        _program(phase="train", batch=1)
    with pytest.raises(ValueError, match="routing: got 'uniform', which applies only to a "
                                         "mixture-of-experts model; tiny is dense"):
        build_program(MESH8, "tiny", phase="decode", context=8, routing="uniform")
    assert np.isfinite(_program(MESH16).meta["moe"]["max_imbalance"])


@pytest.mark.parametrize("phase", ["decode", "prefill"])
def test_over_wafers_each_slice_keeps_the_whole_models_routing(phase):
    """Two wafers: each slice's MoE layers route exactly as the one-wafer mapping does (its
    layers renumbered from 0), and the FLOPs add up to the one-wafer mapping's."""
    from wse_sim.experiment import run_multi_wafer
    hw = load_preset("mesh32")
    kw = {"context": 64} if phase == "decode" else {"prompt": 8}
    one = build_program(hw, "tiny-moe", phase=phase, routing="skewed:1.5", seed=3, **kw)
    two = run_multi_wafer(hw, "tiny-moe", wafers=2, phase=phase, routing="skewed:1.5", seed=3,
                          engine="fast", **kw)
    whole = one.meta["moe"]["expert_tokens"]
    seen = {}
    for stage in two["stages"]:
        first = stage.meta["first_layer"]
        for layer, counts in stage.meta["moe"]["expert_tokens"].items():
            seen[str(first + int(layer))] = counts
    assert seen == whole and len(seen) == 2
    assert sum(s.meta["graph_flops"] for s in two["stages"]) == one.meta["graph_flops"]
    with pytest.raises(NotImplementedError, match="routing router .* is not mapped over wafers"):
        run_multi_wafer(hw, "tiny-moe", wafers=2, phase=phase, routing="router", **kw)


@pytest.mark.parametrize("strategy, phase, dtype", [
    ("layer-pipelined", "prefill", "fp32"), ("layer-pipelined", "decode", "fp16"),
    ("layer-sequential", "decode", "fp32"), ("layer-sequential", "prefill", "fp16")])
def test_functional_equals_numpy(strategy, phase, dtype):
    """The routing is the router's own (routing `router`, computed from the seed's weights):
    the simulated router picks the experts the records were sized for, and the logits equal
    workloads.reference's."""
    p = build_program(MESH16, "tiny-moe", phase=phase, strategy=strategy, batch=2, prompt=11,
                      context=21, dtype=dtype, functional=True, seed=0)
    assert p.meta["moe"]["routing"] == "router" and p.meta["moe"]["moe_layout"] == "bands"
    inputs, want = random_case(p, CFG, seed=0)
    got = model_output(p, run_functional(p, MESH16, inputs))
    rep = error_report(got, want, dtype)
    assert rep["ok"] and rep["max_rel_error"] < (1e-5 if dtype == "fp32" else 5e-3), rep
    timing = build_program(MESH16, "tiny-moe", phase=phase, strategy=strategy, batch=2,
                           prompt=11, context=21, dtype=dtype, routing="router",
                           moe_layout="bands", seed=0)
    assert simulate(timing, MESH16).cycles == simulate(p, MESH16).cycles


def test_functional_refuses_what_it_cannot_check():
    with pytest.raises(NotImplementedError, match="routing must be 'router'"):
        _program(MESH16, functional=True, routing="uniform")
    with pytest.raises(NotImplementedError, match="needs moe_layout bands"):
        _program(MESH16, functional=True, moe_layout="blocks")


def test_cli_functional_moe(capsys):
    argv = ["run", "--preset", "mesh16", "--model", "tiny-moe", "--phase", "decode",
            "--context", "16", "--dtype", "fp32", "--functional"]
    assert main(argv) == 0
    assert "functional     ok" in capsys.readouterr().out


def test_search_tries_every_placement():
    from wse_sim.search_mappings import search_mapping
    found, best = search_mapping(MESH16, "tiny-moe", phase="decode", batch=4, context=16,
                                 budget=12)
    layouts = {cand["moe_layout"] for cand, cost, _ in found.tried if cost is not None}
    assert layouts == {"blocks", "strips", "bands"} and best is not None
    assert found.best["moe_layout"] == best.meta["moe"]["moe_layout"]


def test_search_tries_the_expert_parallelism_on_the_best_placement():
    """After the placements, the best one with its 8 experts over 4, 2 and 1 blocks
    (`layout:N`); the winner is the least time per token of all."""
    from wse_sim.search_mappings import search_mapping
    found, best = search_mapping(MESH16, "tiny-moe", phase="decode", batch=4, context=16,
                                 grids=(16,), budget=64, engine="fast")
    tried = {c["moe_layout"]: cost for c, cost, _ in found.tried}
    base = next(lay for lay in tried if ":" in lay).split(":")[0]
    assert {f"{base}:{n}" for n in (4, 2, 1)} <= set(tried)
    assert found.best_cost == min(cost for _, cost, _ in found.tried if cost is not None)
    assert best is not None and best.meta["moe"]["moe_layout"] == found.best["moe_layout"]


def test_fewer_expert_blocks_share_them():
    reg = Region(0, 0, 16, 16)
    blocks = expert_blocks(reg, 9, "strips:3")
    assert len(set(blocks)) == 3 and blocks[0] == blocks[3] == blocks[6]
    with pytest.raises(MappingError, match="optionally :N"):
        expert_blocks(reg, 9, "strips:0")
