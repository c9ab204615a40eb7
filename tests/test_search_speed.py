"""The search's pruning is exact (issue 16): `mapper.search_bound.cycles_lower_bound` never exceeds
the simulated cycles, a pruned candidate's bound is above the winner's simulated cost, and a
search with pruning picks the same mapping, at the same cost, as one that simulates every
candidate."""

import pytest

from mapper.gemm import build_gemm
from mapper.search import pruned, search
from mapper.search_bound import cycles_lower_bound, tracked_cores
from wse_sim.engine import simulate
from wse_sim.experiment import build_program
from wse_sim.hardware import ConfigError, load_preset
from wse_sim.search_mappings import search_mapping

MESH8 = load_preset("mesh8")
MESH16 = load_preset("mesh16")

RUNS = [  # (strategy, phase, options): every kind of record the whole-model mappers emit
    ("layer-pipelined", "decode", {"reduce_algo": "chain"}),
    ("layer-pipelined", "decode", {"reduce_algo": "tree"}),
    ("layer-pipelined", "decode", {"reduce_algo": "row-tree", "region_shape": 1}),
    ("layer-pipelined", "decode", {"reduce_algo": "tree", "grid": 8}),
    ("layer-pipelined", "decode", {"reduce_algo": "tree", "attention": "rows"}),
    ("layer-sequential", "decode", {"reduce_algo": "chain"}),
    ("layer-sequential", "decode", {"reduce_algo": "col-tree"}),
    ("weight-streaming", "decode", {"reduce_algo": "tree"}),
    ("layer-pipelined", "prefill", {"chunks": 2}),
    ("layer-sequential", "prefill", {"chunks": 4, "reduce_algo": "tree"}),
    ("weight-streaming", "prefill", {}),
    ("layer-sequential", "prefill", {"layout": "2d", "gemm_algo": "meshgemm", "grid": 4}),
    ("weight-streaming", "prefill", {"layout": "2d", "gemm_algo": "summa", "grid": 4}),
    ("layer-sequential", "prefill", {"layout": "2d", "gemm_algo": "cannon", "grid": 4}),
    ("layer-pipelined", "train", {"batch": 2, "micro_batches": 2}),
    ("weight-streaming", "train", {}),
]


@pytest.mark.parametrize("strategy, phase, opts", RUNS)
def test_the_bound_is_at_most_the_simulated_cycles(strategy, phase, opts):
    kw = {"context": 16} if phase == "decode" else {"prompt": 16}
    program = build_program(MESH16, "tiny", strategy=strategy, phase=phase, **kw, **opts)
    bound = cycles_lower_bound(program, MESH16)
    cycles = simulate(program, MESH16, engine="reference").cycles
    assert 0 < bound <= cycles
    if phase == "decode":  # a latency-bound chain: the bound follows it closely
        assert bound >= 0.5 * cycles


@pytest.mark.parametrize("algo, flow", [("summa", False), ("cannon", True),
                                        ("meshgemm", True), ("cannon", False)])
def test_the_bound_holds_for_gemms_with_flow_control(algo, flow):
    """Multicasts, torus and ring shifts, head dependencies (flow control: they count 0)."""
    program = build_gemm(algo, MESH8, grid=4, m=16, k=16, n=16, flow_control=flow)
    bound = cycles_lower_bound(program, MESH8)
    assert 0 < bound <= simulate(program, MESH8, engine="reference").cycles


@pytest.mark.parametrize("strategy, algo", [("layer-pipelined", "chain"),
                                             ("layer-sequential", "tree")])
def test_the_bound_holds_with_defects_and_their_detours(strategy, algo):
    hw = load_preset("mesh16", {"spare_cols": 2, "spare_rows": 2, "defect_fraction": 0.02,
                                "defect_seed": 3})
    program = build_program(hw, "tiny", strategy=strategy, phase="decode", context=16,
                            reduce_algo=algo)
    bound = cycles_lower_bound(program, hw)
    assert 0 < bound <= simulate(program, hw, engine="reference").cycles


def test_following_fewer_cores_gives_a_lower_bound():
    program = build_program(MESH16, "tiny", phase="decode", context=16, reduce_algo="tree")
    every = cycles_lower_bound(program, MESH16)
    corners = cycles_lower_bound(program, MESH16, tracked_cores(program, max_cores=1))
    assert len(tracked_cores(program, max_cores=1)) <= 4
    assert corners <= every


def test_search_prunes_only_what_cannot_win():
    """`search` with bounds: the candidates evaluated by increasing bound, the winner the
    exhaustive one (ties to the earlier candidate), every pruned bound above the winner."""
    costs = [5.0, 3.0, 7.0, 3.0, 9.0]
    bounds = [4.0, 1.0, 6.0, 3.0, 8.5]
    cands = [{"i": i} for i in range(5)]
    evaluated = []

    def evaluate(c):
        evaluated.append(c["i"])
        return costs[c["i"]]

    full = search(cands, evaluate)
    evaluated.clear()
    fast = search(cands, evaluate, bound=lambda c: bounds[c["i"]])
    assert fast.best is full.best and fast.best_cost == full.best_cost == 3.0
    assert fast.best["i"] == 1 and evaluated == [1, 3]
    assert [c["i"] for c, _, _ in fast.tried] == list(range(5))  # candidate order kept
    for c, cost, why in fast.tried:
        assert (cost is None) == pruned(why)
        if cost is None:
            assert bounds[c["i"]] > fast.best_cost
    # an equal cost found later in the evaluation but earlier in the list wins the tie
    evaluated.clear()
    tie = search(cands, evaluate, bound=lambda c: {1: 2.0, 3: 1.0}.get(c["i"], 10.0))
    assert tie.best["i"] == 1 and evaluated == [3, 1]
    # an enclosing search's best prunes too
    assert search(cands, evaluate, bound=lambda c: bounds[c["i"]], prune_above=0.5).best is None


@pytest.mark.parametrize("hw, phase, kw", [(MESH8, "decode", {"context": 16}),
                                           (MESH8, "decode", {"context": 8, "batch": 2}),
                                           (MESH8, "train", {"prompt": 4, "batch": 2,
                                                             "layout": "top-row"})])
def test_search_with_and_without_pruning_picks_the_same_mapping(hw, phase, kw):
    exhaustive, best_all = search_mapping(hw, "tiny", phase=phase, grids=(None,), **kw)
    fast, best = search_mapping(hw, "tiny", phase=phase, grids=(None,), prune=True, **kw)
    assert fast.best == exhaustive.best and fast.best_cost == exhaustive.best_cost
    assert best.cycles == best_all.cycles
    simulated = {tuple(c.values()): cost for c, cost, _ in exhaustive.tried}
    n_pruned = 0
    for c, cost, why in fast.tried:
        if pruned(why):  # its bound, and so its simulated cost, is above the winner's
            n_pruned += 1
            assert simulated[tuple(c.values())] > fast.best_cost
            program = build_program(hw, "tiny", phase=phase, **(kw | {
                k: v for k, v in c.items() if v is not None}))
            assert cycles_lower_bound(program, hw) > best.cycles
        else:
            assert cost == simulated[tuple(c.values())]
    assert n_pruned > 0
    assert [c for c, _, _ in fast.tried] == [c for c, _, _ in exhaustive.tried]


def test_the_command_prunes_beyond_32_x_32_cores_and_says_so(capsys):
    """`wse-sim search` on mesh64 (fast engine): pruned candidates are listed as pruned, with
    their bound, and the choice is the exhaustive search's."""
    import json

    from wse_sim.cli.main import main
    hw = load_preset("mesh64")
    argv = ["search", "--preset", "mesh64", "--model", "tiny", "--phase", "decode",
            "--context", "16"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cut = [t for t in out["tried"] if t["pruned"]]
    assert cut and all(t["seconds_per_token"] is None and t["rejected"] is None for t in cut)
    exhaustive, _ = search_mapping(hw, "tiny", phase="decode", context=16)
    assert out["choice"] == exhaustive.best
    costs = {json.dumps(c, sort_keys=True): cost for c, cost, _ in exhaustive.tried}
    for t in cut:
        assert costs[json.dumps(t["candidate"], sort_keys=True)] > exhaustive.best_cost
    assert main(argv) == 0
    assert "pruned   strategy=" in capsys.readouterr().out


def test_a_training_search_tries_the_2d_layout():
    """Layer-sequential and weight-streaming 2-D steps, checkpointing on and off, in the
    fewest micro-batches that fit (more are refused, with the reason), and layer-pipelined
    ones in every micro-batch count (it pipelines them); pruning picks what the exhaustive
    search picks; the winner's cost is its simulation's."""
    kw = dict(phase="train", prompt=4, batch=2, grids=(None,), layout="2d",
              gemm_algo="meshgemm", engine="fast")  # (the reference engine: ten times as long)
    exhaustive, best_all = search_mapping(MESH8, "tiny", **kw)
    fast, best = search_mapping(MESH8, "tiny", prune=True, **kw)
    assert fast.best == exhaustive.best and best.cycles == best_all.cycles
    tried = {(c["strategy"], c["micro_batches"], c["recompute"]): (cost, why)
             for c, cost, why in exhaustive.tried}
    assert set(tried) == {(s, mb, rc) for s in ("layer-sequential", "weight-streaming",
                                                "layer-pipelined")
                          for mb in (1, 2) for rc in ("on", "off")}
    for (s, mb, rc), (cost, why) in tried.items():
        assert (cost is not None) == (mb == 1 or s == "layer-pipelined"), (s, mb, rc, why)
        if mb == 2 and s != "layer-pipelined":
            assert why.startswith("more micro-batches than the 1 this mapping fits in")
    assert exhaustive.best_cost == min(c for c, _ in tried.values() if c is not None)
    assert exhaustive.best["layout"] == "2d" and best_all.meta["layout"] == "2d"
    assert best_all.meta["recompute"] == exhaustive.best["recompute"]
    assert best_all.seconds / best_all.tokens == pytest.approx(exhaustive.best_cost)


def test_a_given_layout_is_kept_or_refused(capsys):
    from wse_sim.cli.main import main
    found, _ = search_mapping(MESH8, "tiny", phase="train", prompt=4, batch=2, grids=(None,),
                              layout="top-row")
    assert {c["layout"] for c, _, _ in found.tried} == {"top-row"}
    assert main(["search", "--preset", "mesh8", "--model", "tiny", "--phase", "decode",
                 "--context", "4", "--layout", "2d"]) == 2
    err = capsys.readouterr().err.strip()
    assert "layout: got '2d'" in err and "\n" not in err
    with pytest.raises(ConfigError, match="recompute: got 'off', which applies only to a "
                                          "training step"):
        search_mapping(MESH8, "tiny", phase="prefill", prompt=8, recompute="off")


def test_candidates_beyond_the_budget_are_counted(capsys):
    """A budget smaller than the candidates: the rest are not tried, and both the table and
    the JSON say how many."""
    import json

    from wse_sim.cli.main import main
    argv = ["search", "--preset", "mesh8", "--model", "tiny", "--phase", "decode", "--context",
            "8", "--grid", "8", "--budget", "2"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["tried"]) == 2 and out["candidates_not_tried"] > 0
    assert main(argv) == 0
    assert f"{out['candidates_not_tried']} more candidates not tried: beyond --budget" in \
        capsys.readouterr().out
