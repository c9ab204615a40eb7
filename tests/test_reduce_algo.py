"""The GEMM reduce algorithm of the layer layout (issue 7, `reduce_algo`): chain or two-level
tree for the partial sums of every up / down GEMM, forward, backward and LM head. The tree
computes the same numbers (functional runs equal numpy), every line's reduce ends when the
closed forms of mapper.tree_reduce say (docs/gemm.md), and the search chooses it by cost."""

import dataclasses
import json
import math

import pytest

from mapper.strategies import strategies
from mapper.strategies.functional_model import (
    model_grads,
    model_loss,
    model_output,
    random_case,
    random_train_case,
)
from mapper.tree_reduce import add_cycles, reduce_end, stage_cycles, tree_groups
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.experiment import build_program, run_model
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import ConfigError, load_preset
from wse_sim.program import wavelets_for
from wse_sim.search_mappings import search_mapping
from wse_sim.timing import message_cycles, reduce_pace

HW = load_preset("mesh16")
STRATEGIES = ("layer-pipelined", "layer-sequential", "weight-streaming")


def build(cfg, strategy, phase, *, hw=HW, batch=2, dtype="fp32", functional=True,
          reduce_algo="tree", **kw):
    size = {"prompt": 11 if phase == "prefill" else 8, "context": 21}
    return strategies()[strategy](cfg, hw, phase=phase, batch=batch, dtype=dtype,
                                  functional=functional, reduce_algo=reduce_algo, **size | kw)


# ---- the same numbers ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tree_forward_equals_reference(strategy, phase, model):
    cfg = load_model(model)
    p = build(cfg, strategy, phase)
    assert p.meta["reduce_algo"] == "tree" and p.meta["tree_reduces"] == 2 * 4 + 1
    inputs, want = random_case(p, cfg, seed=3)
    rep = error_report(model_output(p, run_functional(p, HW, inputs)), want, "fp32")
    assert rep["ok"] and rep["max_rel_error"] < 1e-5, rep


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_tree_training_step_equals_reference(strategy, model):
    """Batch 1: fp32 functional tiles of two sequences exceed mesh16's SRAM with the tree's
    receive buffers (the timing budget fits; `sram_extra_bytes`)."""
    cfg = load_model(model)
    p = build(cfg, strategy, "train", batch=1)
    assert p.meta["tree_reduces"] == 2 * 8 + 2  # 4 forward + 4 backward per layer, LM head 2
    inputs, want_loss, want = random_train_case(p, cfg, seed=1)
    buffers = run_functional(p, HW, inputs)
    assert abs(model_loss(p, buffers) - want_loss) < 1e-5 * abs(want_loss)
    got = model_grads(p, buffers, cfg)
    worst = max(error_report(got[k], want[k], "fp32")["max_rel_error"] for k in want)
    assert worst < 1e-5


@pytest.mark.parametrize("algo, axis", [("row-tree", "x"), ("col-tree", "y")])
def test_a_tree_in_one_direction_only(algo, axis):
    """row-tree: the reduces along the rows (up GEMMs forward, down GEMMs backward) are trees,
    the column reduces chains; col-tree the other way round. Forward and training step."""
    cfg = load_model("tiny-llama")
    p = build(cfg, "layer-sequential", "decode", reduce_algo=algo)
    assert p.meta["tree_axes"] == axis
    sends = [t for t in p.tasks if t.op.endswith("reduce_to_root")]
    assert sends and all((t.dy == 0) == (axis == "x") for t in sends)
    inputs, want = random_case(p, cfg, seed=3)
    assert error_report(model_output(p, run_functional(p, HW, inputs)), want,
                        "fp32")["max_rel_error"] < 1e-5
    t = build(cfg, "layer-sequential", "train", batch=1, reduce_algo=algo)
    assert t.meta["tree_reduces"] == 9  # half of 18
    inputs, want_loss, want = random_train_case(t, cfg, seed=1)
    buffers = run_functional(t, HW, inputs)
    assert abs(model_loss(t, buffers) - want_loss) < 1e-5 * abs(want_loss)
    got = model_grads(t, buffers, cfg)
    assert max(error_report(got[k], want[k], "fp32")["max_rel_error"] for k in want) < 1e-5


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_tree_in_low_precision(dtype):
    cfg = load_model("tiny-llama")
    p = build(cfg, "layer-pipelined", "decode", dtype=dtype)
    inputs, want = random_case(p, cfg, seed=0)
    assert error_report(model_output(p, run_functional(p, HW, inputs)), want, dtype)["ok"]


@pytest.mark.parametrize("phase", ["decode", "train"])
def test_tree_timing_is_the_same_with_or_without_data(phase):
    cfg = load_model("tiny-llama")
    plain = build(cfg, "layer-sequential", phase, batch=1, dtype="fp16", functional=False)
    func = build(cfg, "layer-sequential", phase, batch=1, dtype="fp16")
    assert [dataclasses.replace(t, data=None) for t in func.tasks] == list(plain.tasks)
    assert all(t.data is not None for t in func.tasks if "reduce_" in t.op)
    a, b = simulate(plain, HW, engine="fast"), simulate(func, HW, engine="fast")
    assert (a.cycles, a.flops, a.comm_bytes) == (b.cycles, b.flops, b.comm_bytes)
    # the root's adds are Compute records beyond the graph's FLOPs (a chain's are stream FLOPs)
    assert plain.total_flops() == plain.meta["graph_flops"] + plain.meta["combine_flops"] > \
        plain.meta["graph_flops"]


def test_a_tree_that_drops_a_leader_fails_the_check():
    cfg = load_model("tiny")
    p = build(cfg, "layer-sequential", "decode")
    inputs, want = random_case(p, cfg, seed=3)
    assert error_report(model_output(p, run_functional(p, HW, inputs)), want, "fp32")["ok"]
    i = next(k for k, t in enumerate(p.tasks) if t.op == "L1.down.reduce_add")
    tasks = list(p.tasks)
    tasks[i] = dataclasses.replace(tasks[i], data=None)  # the root never adds one leader's sum
    broken = dataclasses.replace(p, tasks=tuple(tasks))
    got = model_output(broken, run_functional(broken, HW, inputs))
    assert not error_report(got, want, "fp32")["ok"]


# ---- cost: the closed forms ---------------------------------------------------------------------

def _line_ends(program, result, gemm: str, reduce: str, axis: str, values: int) -> list:
    """(simulated, closed form) end of `reduce` on every line of its region: each line's
    cores are ready when their last GEMM record `gemm` ends there (read off the spans)."""
    names = [t.op for t in program.tasks]
    cols = result.hardware.mesh_cols
    sp = result.spans
    g = max(i for i, n in enumerate(names) if n == gemm)
    ready = {int(c): int(e) for c, e, t in zip(sp["core"], sp["end"], sp["task"], strict=True)
             if t == g}
    algo = program.meta["reduce_algo"]
    last = max(i for i, n in enumerate(names) if n == (reduce + "_add" if algo == "tree"
                                                       else reduce))
    got = {}
    for c, e, t in zip(sp["core"], sp["end"], sp["task"], strict=True):
        if t == last:  # tree: the root's last add; chain: the line's stream (its root event)
            got[int(c) // cols if axis == "x" else int(c) % cols] = int(e)
    reg = program.tasks[g].region
    w = wavelets_for(values, program.dtype)
    out = []
    for line in sorted(got):
        if axis == "x":
            rd = [ready[line * cols + x] for x in range(reg.x, reg.x1 + 1)]
        else:
            rd = [ready[y * cols + line] for y in range(reg.y, reg.y1 + 1)]
        out.append((got[line], reduce_end(algo, result.hardware, rd, w, values, program.dtype)))
    return out


@pytest.mark.parametrize("engine", ["reference", "fast"])
@pytest.mark.parametrize("phase", ["decode", "prefill"])
@pytest.mark.parametrize("algo", ["chain", "tree"])
def test_every_line_of_a_layers_reduces_follows_the_closed_form(algo, phase, engine):
    """FFN up (rows into the leaders) and FFN down (columns into the top row) of tiny-llama on
    32 x 32 cores, and the LM head's rows: to the cycle, line by line."""
    hw = load_preset("mesh32")
    cfg = load_model("tiny-llama")
    p = build_program(hw, "tiny-llama", phase=phase, prompt=8, context=32,
                      strategy="layer-sequential", reduce_algo=algo)
    r = simulate(p, hw, engine=engine)
    t = 1 if phase == "decode" else 8
    R, C = p.meta["region_rows"], p.meta["region_cols"]
    checks = [("L0.ffn_gate", "L0.ffn.reduce", "x", t * 2 * math.ceil(cfg.d_ffn / R)),
              ("L1.ffn_down", "L1.down.reduce", "y", t * math.ceil(cfg.d_model / C)),
              ("lm_head.0", "lm_head.reduce0", "x", math.ceil(cfg.vocab_size / R))]
    for gemm, red, axis, values in checks:
        ends = _line_ends(p, r, gemm, red, axis, values)
        assert len(ends) == 32 and all(got == want for got, want in ends), (red, ends)


def test_backward_reduces_follow_the_closed_form():
    hw = load_preset("mesh32")
    cfg = load_model("tiny")
    p = build_program(hw, "tiny", phase="train", prompt=4, strategy="layer-sequential",
                      reduce_algo="tree")
    r = simulate(p, hw, engine="fast")
    R, C = p.meta["region_rows"], p.meta["region_cols"]
    for gemm, red, axis, values in (
            ("L1.ffn_down.bwd_weight", "L1.down.bwd.reduce", "x", 4 * math.ceil(cfg.d_ffn / R)),
            ("L1.ffn_up.bwd_weight", "L1.ffn.bwd.reduce", "y", 4 * math.ceil(cfg.d_model / C))):
        assert all(got == want for got, want in _line_ends(p, r, gemm, red, axis, values))


def _equal_ready(algo: str, hw, n: int, values: int, dtype: str) -> int:
    return reduce_end(algo, hw, [0] * n, wavelets_for(values, dtype), values, dtype)


def test_tree_beats_chain_on_a_decode_with_long_rows():
    """Closed form, every line ready together (docs/gemm.md): chain (n - 1) S + (W - 1) p;
    tree (g - 1) S + (W - 1) p + 2 T_R + r0 h + m W - 1 + a when W >= g h and a <= W: the tree
    wins when (m - 1) W + a + 2 T_R + r0 h < (n - g) S, i.e. for W below about sqrt(n) S.
    Decode of tiny-llama on 32 x 32 cores: W = 6 (FFN up) and 1 (down), n = 32, S = 6: the
    tree saves about 4/5 of every reduce; a prefill of 64 tokens (W = 384 and 64) loses."""
    hw = load_preset("mesh32")
    S, p = stage_cycles(hw), reduce_pace(hw, "fp16")
    n = 32
    g, m, r0 = tree_groups(n)
    for values in (12, 2, 768, 128):  # decode FFN up / down, prefill of 64 tokens up / down
        w = wavelets_for(values, "fp16")
        a = add_cycles(hw, values, "fp16")
        chain = _equal_ready("chain", hw, n, values, "fp16")
        tree = _equal_ready("tree", hw, n, values, "fp16")
        msg = message_cycles(hw)  # start + receive: the chain is one message, the tree two deep
        assert chain == (n - 1) * S + (w - 1) * p + msg
        if w >= g * hw.hop_latency_cycles:
            assert tree == (g - 1) * S + (w - 1) * p + 2 * hw.ramp_latency_cycles \
                + r0 * hw.hop_latency_cycles + m * w - 1 + a + 2 * msg
        wins = (m - 1) * w + a + 2 * hw.ramp_latency_cycles + r0 * hw.hop_latency_cycles + msg \
            < (n - g) * S
        assert (tree < chain) == wins == (values < 100)
    cycles = {}
    for algo in ("chain", "tree"):
        for phase in ("decode", "prefill"):
            prog = build_program(hw, "tiny-llama", phase=phase, prompt=64, context=32,
                                 strategy="layer-sequential", reduce_algo=algo)
            cycles[algo, phase] = simulate(prog, hw, engine="fast").cycles
    assert cycles["tree", "decode"] < 0.85 * cycles["chain", "decode"]
    assert cycles["tree", "prefill"] > cycles["chain", "prefill"]


# ---- budgets ------------------------------------------------------------------------------------

def test_the_tree_budgets_its_receive_buffers():
    cfg = load_model("tiny")
    chain = strategies()["layer-sequential"](cfg, HW, phase="decode", context=16)
    tree = strategies()["layer-sequential"](cfg, HW, phase="decode", context=16,
                                            reduce_algo="tree")
    assert "tree_recv" not in chain.meta["sram_buffers_per_core"]
    _, m, _ = tree_groups(16)
    # one tile per leader (m = 3 on 16 cores) of the largest partial: q, k, v of one head (48
    # values; the LM head's 32 logits and the down GEMMs' 4 values are smaller), fp16
    assert tree.meta["attention"]["rows_per_group"] == 1
    assert tree.meta["sram_buffers_per_core"]["tree_recv"] == m * 48 * 2
    rows = strategies()["layer-sequential"](cfg, HW, phase="decode", context=16,
                                            reduce_algo="tree", attention="rows")
    # with the row split a head group's 4 rows split its 48 q, k, v values: the LM head's
    # 32 logits are the largest partial
    assert rows.meta["attention"]["rows_per_group"] == 4
    assert rows.meta["sram_buffers_per_core"]["tree_recv"] == m * 32 * 2
    assert tree.meta["combine_flops"] > 0 and chain.meta["combine_flops"] == 0


# ---- the front door -----------------------------------------------------------------------------

def test_run_model_and_its_validation():
    r = run_model("mesh16", "tiny", phase="decode", context=16, strategy="layer-sequential",
                  reduce_algo="tree", engine="fast")
    assert r.meta["reduce_algo"] == "tree" and r.meta["tree_reduces"] == 9
    with pytest.raises(ConfigError, match="reduce_algo: got 'ring', must be one of chain, tree, "
                                          "row-tree, col-tree"):
        build_program(HW, "tiny", reduce_algo="ring")
    with pytest.raises(ValueError, match="reduce_algo"):
        strategies()["layer-pipelined"](load_model("tiny"), HW, reduce_algo="ring")


def test_cli_reduce_algo(capsys):
    argv = ["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode", "--context",
            "16", "--strategy", "layer-sequential"]
    assert main(argv + ["--reduce-algo", "tree", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["reduce_algo"] == "tree" and d["strategy"] == "layer-sequential"
    assert main(argv + ["--reduce-algo", "tree"]) == 0
    assert "GEMM reduce tree" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(argv + ["--reduce-algo", "ring"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--reduce-algo" in err and "'ring'" in err \
        and "chain, tree" in err
    assert main(argv + ["--reduce-algo", "tree", "--functional", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["functional"]["ok"]


def test_search_chooses_the_reduce_algorithm_and_says_why(capsys):
    found, best = search_mapping(HW, "tiny", phase="decode", context=16)
    tried = [c for c, cost, _ in found.tried if cost is not None]
    assert {c["reduce_algo"] for c in tried} == {"chain", "tree", "row-tree", "col-tree"}
    assert sum(c["reduce_algo"] in ("row-tree", "col-tree") for c in tried) == 2  # on the best
    algo = found.best["reduce_algo"]
    assert algo != "chain" and algo == best.meta["reduce_algo"]  # decode: a tree wins
    assert found.best_cost == min(cost for _, cost, _ in found.tried if cost is not None)
    why = found.why("reduce_algo")
    assert why.startswith(f"{algo}: the least time per token on this mapping")
    others = {"chain", "tree", "row-tree", "col-tree"} - {algo}
    assert all(f"{a} " in why for a in others)  # tried on the best
    argv = ["--preset", "mesh16", "--model", "tiny", "--phase", "decode", "--context", "16"]
    assert main(["search", *argv]) == 0
    out = capsys.readouterr().out
    assert f"reduce: {algo}: the least time" in out and "reduce_algo=chain" in out
    assert main(["run", *argv, "--strategy", "auto", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reduce_algo"] == algo


def test_every_entry_point_takes_it(capsys):
    """Multi-wafer stages, prefill + generate, compare and a search with the algorithm fixed."""
    from wse_sim.experiment import run_generate, run_multi_wafer
    two = run_multi_wafer(HW, "tiny", wafers=2, phase="decode", context=16, reduce_algo="tree")
    assert all(r.meta["tree_reduces"] > 0 for r in two["stages"])
    g = run_generate(HW, "tiny", generate=2, prompt=16, reduce_algo="col-tree")
    assert {r.meta["tree_axes"] for r in g["results"].values()} == {"y"}
    assert main(["compare", "--preset", "mesh16", "--model", "tiny", "--phase", "decode",
                 "--context", "16", "--reduce-algo", "tree", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["strategies"]
    found, _ = search_mapping(HW, "tiny", phase="decode", context=16, reduce_algo="row-tree")
    assert {c["reduce_algo"] for c, _, _ in found.tried} == {"row-tree"}
