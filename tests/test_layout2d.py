"""The 2-D activation layout for prefill (`layout="2d"`, mapper.strategies.layout2d): the
fast engine equals the reference to the cycle, FLOPs and SRAM add up, the GEMM fragments are
the GEMM library's records, and what the layout does not map is refused in one line."""

import itertools

import pytest

from mapper.gemm import build_gemm, choose_gemm_algo, gemm_estimate_cycles, gemm_fragment
from mapper.placement import MappingError
from mapper.strategies import layout2d_data
from mapper.strategies.layout2d import Tiles, gemm_shapes
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.engine.fast import simulate_fast
from wse_sim.experiment import build_program
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import ConfigError, load_preset
from wse_sim.program import ProgramBuilder

MESH8 = load_preset("mesh8")
ALGOS = ("summa", "cannon", "meshgemm")
MESH16 = load_preset("mesh16")


def _2d(hw, model="tiny-llama", **kw):
    kw.setdefault("strategy", "layer-sequential")
    kw.setdefault("prompt", 32)
    return build_program(hw, model, layout="2d", **kw)


@pytest.mark.parametrize("model,algo,strategy,kw", [
    ("tiny-llama", "meshgemm", "layer-sequential", {}),
    ("tiny-llama", "cannon", "weight-streaming", {}),
    ("tiny-llama", "summa", "layer-sequential", {}),
    ("tiny", "auto", "layer-sequential", {"batch": 2, "prompt": 12}),
    ("tiny", "meshgemm", "weight-streaming", {"prompt": 20}),
])
def test_fast_equals_reference(model, algo, strategy, kw):
    p = _2d(MESH8, model, strategy=strategy, gemm_algo=algo, **kw)
    ref = simulate(p, MESH8, engine="reference")
    fast = simulate(p, MESH8, engine="fast")
    assert fast.cycles == ref.cycles
    skip = {"engine": 0, "wall_seconds": 0}
    assert fast.summary() | skip == ref.summary() | skip
    assert (fast.core_busy_cycles == ref.core_busy_cycles).all()


@pytest.mark.parametrize("algo", ["meshgemm", "cannon"])
def test_step_path_with_loops_equals_event_path(algo):
    """The K/V heads loop (tiny: 4 K/V heads) and the GEMM step loops on the step path, with
    fast-forward, give the event path's result."""
    p = _2d(MESH16, "tiny", prompt=64, gemm_algo=algo)
    assert any(lp.name == "L0.kv_heads" and lp.count == 3 for lp in p.loops)
    step = simulate_fast(p, MESH16, path="step")
    event = simulate_fast(p, MESH16, path="event")
    assert step.cycles == event.cycles
    assert (step.core_busy_cycles == event.core_busy_cycles).all()


def test_flops_cover_the_graph_and_padding_is_reported():
    # tiles divide the sizes and one sequence: the executed FLOPs are the graph's exactly
    p = _2d(MESH16, prompt=64)
    assert p.total_flops() == p.meta["graph_flops"] == p.meta["executed_flops"]
    assert p.meta["padding_waste"] == 0.0
    # 2 sequences: key blocks of the other sequence are computed too, and counted
    q = _2d(MESH8, "tiny", batch=2, prompt=12)
    assert q.total_flops() == q.meta["executed_flops"] > q.meta["graph_flops"]
    assert q.meta["padding_waste"] == pytest.approx(1 - q.meta["graph_flops"] / q.total_flops())


def test_the_model_flops_utilization_leaves_out_the_padding():
    """`peak_fraction` counts every FLOP the tasks execute, `useful_peak_fraction` the model's
    (`graph_flops`): the report says both where they differ, and they are one figure where
    nothing is padded (a GEMM's useful FLOPs are its 2 M K N)."""
    from wse_sim.report.text import format_report
    q = _2d(MESH8, "tiny", batch=2, prompt=12)
    r = simulate(q, MESH8, engine="reference")
    s = r.summary()
    assert s["flops"] == q.total_flops() > s["useful_flops"] == q.meta["graph_flops"]
    assert s["useful_peak_fraction"] == pytest.approx(
        s["peak_fraction"] * q.meta["graph_flops"] / q.total_flops())
    assert f"the model's FLOPs {100 * s['useful_peak_fraction']:.2f} %" in format_report(r)
    p = _2d(MESH16, prompt=64)
    r = simulate(p, MESH16, engine="fast")
    assert r.useful_flops == r.flops and r.useful_peak_fraction == r.peak_fraction
    assert "the model's FLOPs" not in format_report(r)
    g = build_gemm("cannon", MESH8, grid=4, m=10, k=12, n=14)
    r = simulate(g, MESH8, engine="reference")
    assert r.useful_flops == 2 * 10 * 12 * 14 < r.flops


def test_sram_budget_is_the_tiles():
    p = _2d(MESH16, prompt=64)
    b = p.meta["sram_buffers_per_core"]
    t = Tiles.of(load_model("tiny-llama"), 16, 64)
    assert (t.tm, t.d, t.q, t.qkv, t.ffn, t.f) == (4, 4, 4, 8, 24, 12)
    # two layers of weight tiles (fp16) and RMSNorm gains (one row of d / P per norm)
    per_layer = (4 * 8 + 4 * 4 + 4 * 24 + 12 * 4) * 2 + 2 * 4 * 2
    assert b["weights"] == 2 * per_layer
    assert b["kv_cache"] == 2 * 4 * 8 * 2
    assert sum(b.values()) <= MESH16.sram_bytes
    allocated = {a.name: a.bytes_per_core for a in p.allocs}
    assert sum(allocated.values()) == sum(b.values())


def test_functional_tiles_fit_the_timing_budget():
    """A functional run's tiles are views into one allocation of the timing model's total;
    on tiny-llama they need no byte more."""
    p = _2d(MESH16, prompt=64, functional=True)
    assert p.meta["sram_extra_bytes"] == 0
    assert [a.bytes_per_core for a in p.allocs if not a.shape] == \
        [sum(p.meta["sram_buffers_per_core"].values())]


def test_two_d_beats_the_top_row_layout_on_a_prefill():
    top = simulate(build_program(MESH16, "tiny-llama", strategy="layer-sequential", prompt=64),
                   MESH16, engine="fast")
    two = simulate(_2d(MESH16, prompt=64), MESH16, engine="fast")
    assert two.cycles < top.cycles


def test_fragment_is_the_library_gemm():
    """A fragment with B aligned at run time is build_gemm's program, record for record
    (names aside), so it takes the same cycles."""
    kw = dict(grid=6, m=12, k=18, n=24, dtype="fp16")
    for algo in ("summa", "cannon", "meshgemm"):
        lib = build_gemm(algo, MESH8, **kw)
        pb = ProgramBuilder("frag")
        plan, end = gemm_fragment(pb, algo, MESH8, label="x", skew_b=True, **kw)
        frag = pb.build(dtype="fp16")
        assert len(frag.tasks) == len(lib.tasks)
        assert simulate(frag, MESH8, engine="fast").cycles == \
            simulate(lib, MESH8, engine="fast").cycles
        assert all(t.op.startswith("x.") for t in frag.tasks)
        assert end and all(d.task < len(frag.tasks) for d in end)


def test_auto_picks_the_least_estimate():
    kw = dict(grid=720, m=4096, k=4096, n=6144, dtype="fp16")
    hw = load_preset("wse2")
    est = {a: gemm_estimate_cycles(a, hw, **kw) for a in ("summa", "cannon", "meshgemm")}
    assert choose_gemm_algo(hw, **kw) == min(est, key=est.get)
    # the layout's choice: the least sum of the projections' estimates among the choices
    # whose activations agree (MeshGEMM's on its rings for every projection, or Cannon and
    # SUMMA mixed in the natural layout): brute force over every assignment
    for hw, grid, prompt, dtype in ((MESH16, 16, 64, "fp16"), (MESH8, 8, 64, "fp16"),
                                    (MESH8, 6, 20, "fp32")):
        p = _2d(hw, prompt=prompt, grid=grid, dtype=dtype)
        shapes = gemm_shapes(load_model("tiny-llama"), prompt, grid)
        est = {(label, a): gemm_estimate_cycles(a, hw, grid=grid, m=m, k=k, n=n, dtype=dtype)
               for label, (m, k, n, _) in shapes.items() for a in ALGOS}
        ok = [c for c in itertools.product(ALGOS, repeat=len(shapes))
              if len(set(c)) == 1 or "meshgemm" not in c]
        best = min(sum(est[lb, a] for lb, a in zip(shapes, c, strict=True)) for c in ok)
        got = p.meta["gemm_algos"]
        assert sum(est[lb, a] for lb, a in got.items()) == best
        assert p.meta["gemm_algo"] == (got["qkv_proj"] if len(set(got.values())) == 1
                                       else "per-projection")
    assert len(set(got.values())) > 1  # mesh8, 6 x 6, 20 tokens: Cannon and SUMMA mixed


def test_projections_mixed_equal_reference_and_numpy():
    """Cannon and SUMMA per projection (auto on 6 x 6, 20 tokens, fp32): the program equals
    the reference engine and its logits numpy's."""
    p = _2d(MESH8, prompt=20, grid=6, dtype="fp32", functional=True)
    assert set(p.meta["gemm_algos"].values()) == {"cannon", "summa"}
    ref, fast = simulate(p, MESH8, engine="reference"), simulate(p, MESH8, engine="fast")
    skip = {"engine": 0, "wall_seconds": 0}
    assert fast.summary() | skip == ref.summary() | skip
    inputs, want = layout2d_data.random_case(p, load_model("tiny-llama"), seed=1)
    got = layout2d_data.model_logits(p, run_functional(p, MESH8, inputs))
    assert error_report(got, want, "fp32")["ok"]


FUNCTIONAL = [("tiny-llama", "meshgemm", "fp32", 1, 16), ("tiny-llama", "cannon", "fp16", 2, 20),
              ("tiny-llama", "summa", "bf16", 1, 24), ("tiny", "meshgemm", "fp16", 3, 12),
              ("tiny", "cannon", "fp32", 1, 16), ("tiny", "summa", "fp16", 2, 10)]


@pytest.mark.parametrize("model,algo,dtype,batch,prompt", FUNCTIONAL)
def test_functional_logits_equal_numpy(model, algo, dtype, batch, prompt):
    """The real arithmetic through every record of the layout (GEMM fragments, the gathers,
    the diagonal multicasts, the masked scores, the online-softmax reduce, the LM head)
    gives numpy's logits, for both model families, every algorithm and dtype."""
    p = _2d(MESH8, model, gemm_algo=algo, dtype=dtype, batch=batch, prompt=prompt,
            functional=True, strategy="weight-streaming" if batch == 2 else "layer-sequential")
    inputs, want = layout2d_data.random_case(p, load_model(model), seed=1)
    got = layout2d_data.model_logits(p, run_functional(p, MESH8, inputs))
    rep = error_report(got, want, dtype)
    assert rep["ok"], rep


def test_functional_check_can_fail():
    """A wrong tile (one weight block of one layer zeroed) is caught."""
    p = _2d(MESH8, "tiny-llama", prompt=16, functional=True)
    inputs, want = layout2d_data.random_case(p, load_model("tiny-llama"), seed=1)
    inputs["L1.ffn_down.w"][3, 5] = 0.0
    got = layout2d_data.model_logits(p, run_functional(p, MESH8, inputs))
    assert not error_report(got, want, "fp16")["ok"]


@pytest.mark.parametrize("kw,exc,text", [
    ({"phase": "decode"}, NotImplementedError, "not decode"),
    ({"phase": "train", "strategy": "layer-sequential", "optimizer": "onwafer"}, ConfigError,
     "optimizer: got 'onwafer', which applies only to a weight-streaming training step"),
    ({"functional": True, "prompt": 1}, NotImplementedError, "1 token"),
    ({"chunks": 2}, NotImplementedError, "chunks"),
    ({"sparsity": 0.5}, NotImplementedError, "sparse"),
    ({"weights_dtype": "int8"}, NotImplementedError, "per-tensor"),
    ({"attention": "rows"}, MappingError, "attention"),
    ({"strategy": "layer-pipelined"}, ConfigError, "layer-sequential or weight-streaming"),
    ({"gemm_algo": "fox"}, ConfigError, "gemm_algo"),
    ({"model": "tiny-moe"}, NotImplementedError, "MoE"),
])
def test_refusals(kw, exc, text):
    model = kw.pop("model", "tiny-llama")
    with pytest.raises(exc, match=text):
        _2d(MESH16, model, **kw)


def test_does_not_fit_names_the_numbers():
    with pytest.raises(MappingError, match=r"2-D region is 8 x 8 cores and needs \d+ bytes"):
        _2d(MESH16, "tiny", grid=8, prompt=1024, strategy="weight-streaming")


def test_gemm_algo_with_the_top_row_layout_is_an_error():
    with pytest.raises(ConfigError, match="gemm_algo"):
        build_program(MESH16, "tiny-llama", strategy="layer-sequential", gemm_algo="summa",
                      layout="top-row")
    with pytest.raises(ConfigError, match="gemm_algo"):  # auto: layer-pipelined is top-row
        build_program(MESH16, "tiny-llama", gemm_algo="summa")


@pytest.mark.parametrize("argv,text", [
    (["--layout", "2d", "--phase", "decode"], "layout"),
    (["--layout", "2d"], "layout"),  # the default strategy is layer-pipelined
    (["--gemm-algo", "cannon", "--strategy", "layer-sequential", "--layout", "top-row"],
     "gemm_algo"),
    (["--gemm-algo", "cannon"], "gemm_algo"),  # layout auto with layer-pipelined: top-row
    (["--layout", "3d", "--strategy", "layer-sequential"], "--layout"),
])
def test_cli_refusals_exit_2(capsys, argv, text):
    try:
        rc = main(["run", "--preset", "mesh16", "--model", "tiny-llama"] + argv)
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and text in err[0]


def test_cli_runs_the_layout(capsys):
    import json
    rc = main(["run", "--preset", "mesh16", "--model", "tiny-llama", "--prompt", "64",
               "--strategy", "weight-streaming", "--layout", "2d", "--gemm-algo", "cannon",
               "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc in (0, None)
    assert out["layout"] == "2d" and out["gemm_algo"] == "cannon"


def test_an_algorithm_added_in_one_module_reaches_every_entry_point():
    """examples/gemm_algos/my_cannon.py registers Cannon under another name: build_gemm,
    the closed form, functional C, and the 2-D layout (timing and logits) all take it."""
    import importlib.util

    from mapper.gemm import gemm_algos, unregister_gemm_algo
    spec = importlib.util.spec_from_file_location("my_cannon",
                                                  "examples/gemm_algos/my_cannon.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.register()
    try:
        _my_cannon_everywhere()
    finally:
        unregister_gemm_algo("my-cannon")
    assert "my-cannon" not in gemm_algos()


def _my_cannon_everywhere():
    import numpy as np

    from mapper.gemm import (
        fragment_algos,
        gemm_algos,
        gemm_closed_form,
        gemm_inputs,
        gemm_output,
    )
    from mapper.strategies.layout2d import map_2d
    assert "my-cannon" in gemm_algos("gemm") and "my-cannon" in fragment_algos()
    kw = dict(grid=4, m=8, k=12, n=16, dtype="fp32")
    mine, lib = build_gemm("my-cannon", MESH8, **kw), build_gemm("cannon", MESH8, **kw)
    assert simulate(mine, MESH8, engine="fast").cycles == \
        simulate(lib, MESH8, engine="fast").cycles
    assert gemm_closed_form("my-cannon", MESH8, **kw) == gemm_closed_form("cannon", MESH8, **kw)
    f = build_gemm("my-cannon", MESH8, functional=True, **kw)
    rng = np.random.default_rng(0)
    A, B = rng.standard_normal((8, 12)), rng.standard_normal((12, 16))
    C = gemm_output(f, run_functional(f, MESH8, gemm_inputs(f, A, B)))
    assert np.allclose(C, A @ B, atol=1e-4)
    cfg = load_model("tiny-llama")
    p = map_2d(cfg, MESH8, streaming=False, gemm_algo="my-cannon", functional=True,
               phase="prefill", batch=1, prompt=16, context=16, dtype="fp32", grid=None,
               sparsity=0.0)
    assert p.meta["gemm_algo"] == "my-cannon"
    inputs, want = layout2d_data.random_case(p, cfg, seed=2)
    got = layout2d_data.model_logits(p, run_functional(p, MESH8, inputs))
    assert error_report(got, want, "fp32")["ok"]


def test_the_layers_loop_fast_forwards_to_the_reference_cycle():
    """Layers 1.. are one loop around their GEMM-step and K/V-head loops (layers 2.. when
    weights stream: double-buffered, a layer also waits for the one two back): the step
    path's nested fast-forward gives the reference's numbers."""
    p = _2d(MESH8, prompt=16, model_set={"n_layers": 8}, gemm_algo="cannon")
    assert [lp.count for lp in p.loops if lp.name == "layers"] == [7]
    ws = _2d(MESH8, prompt=16, model_set={"n_layers": 8}, gemm_algo="cannon",
             strategy="weight-streaming")
    assert [lp.count for lp in ws.loops if lp.name == "layers"] == [6]
    ref = simulate(p, MESH8, engine="reference")
    fast = simulate_fast(p, MESH8, path="step")
    skip = {"engine": 0, "wall_seconds": 0, "loop_iterations_skipped": 0}
    assert fast.summary() | skip == ref.summary() | skip
    assert fast.loop_iterations_skipped > 0


def test_the_layers_loop_is_tried_from_its_first_iteration(monkeypatch):
    """Layer 0, emitted just before the layers' loop, stands for its iteration -1 (same
    records, slots and places): the first try compares from iteration 0, so one layer fewer
    is simulated (skipping starts at iteration 2, not 3), and every counter and span is
    still the reference's (docs/hardware-model.md, "Loops": the peeled iteration)."""
    from test_engine_fast import assert_same

    from wse_sim.engine import fast_loops
    from wse_sim.engine.reference import simulate_reference
    starts = []
    skip = fast_loops.Forward._skip

    def spy(self, p, i, *a, **k):
        if p.lp.name == "layers":
            starts.append(i)
        return skip(self, p, i, *a, **k)
    monkeypatch.setattr(fast_loops.Forward, "_skip", spy)
    p = _2d(MESH8, prompt=16, model_set={"n_layers": 8}, gemm_algo="cannon")
    (plan,) = [q for q in fast_loops.plan_loops(*_tables(p)) if q.lp.name == "layers"]
    assert plan.peeled == 1
    fast = simulate_fast(p, MESH8, path="step", spans=True)
    assert_same(simulate_reference(p, MESH8), fast)
    monkeypatch.setattr(fast_loops, "PEELED_MIN_INSTANCES", 10**12)  # from iteration 1
    later = simulate_fast(p, MESH8, path="step", spans=True)
    assert starts == [2, 3] and later.cycles == fast.cycles
    assert fast.loop_iterations_skipped > later.loop_iterations_skipped


def _tables(p):
    """The fast engine's tables of `p` and its task groups (what `plan_loops` reads)."""
    from wse_sim.engine import fast_step
    from wse_sim.engine.fast_tables import Tables
    tables = Tables(p, MESH8)
    return tables, fast_step.plan(tables)[0]


def test_search_tries_the_2d_layout_and_finds_it_faster_on_a_prefill():
    from wse_sim.search_mappings import search_mapping
    found, best = search_mapping(MESH8, "tiny-llama", phase="prefill", prompt=64, batch=1,
                                 grids=(8,), engine="fast", budget=64)
    tried = [c for c, cost, _ in found.tried if c["layout"] == "2d" and cost is not None]
    # each algorithm for all, and auto: here Cannon and SUMMA mixed (a mapping of its own)
    assert {c["gemm_algo"] for c in tried} == {"summa", "cannon", "meshgemm", "auto"}
    assert found.best["layout"] == "2d"
    assert best is not None and best.seconds / best.tokens == pytest.approx(found.best_cost)
    top = [cost for c, cost, _ in found.tried if c["layout"] == "top-row" and cost is not None]
    assert found.best_cost < min(top)


def test_strategy_auto_runs_the_2d_winner_and_generate_takes_the_2d_prefill(capsys):
    import json
    rc = main(["run", "--preset", "mesh8", "--model", "tiny-llama", "--prompt", "64",
               "--grid", "8", "--strategy", "auto", "--engine", "fast", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc in (0, None) and out["layout"] == "2d"
    ttft, handoff, moved = {}, {}, {}
    for layout in ("top-row", "2d"):
        rc = main(["run", "--preset", "mesh16", "--model", "tiny-llama", "--prompt", "64",
                   "--generate", "4", "--strategy", "layer-sequential", "--layout", layout,
                   "--engine", "fast", "--json"])
        out = json.loads(capsys.readouterr().out)
        ttft[layout], handoff[layout] = out["time_to_first_token_s"], out["kv_handoff"]
        moved[layout] = out["kv_handoff_bytes"]
    assert ttft["2d"] < ttft["top-row"]
    # the 2-D prefill leaves its KV cache in its tiles, not where the decode reads it: said,
    # with what the move would carry (every layer's keys and values of the prompt, fp16)
    assert handoff == {"top-row": "in place", "2d": "not simulated"}
    cfg = load_model("tiny-llama")
    assert moved == {"top-row": 0, "2d": 2 * cfg.n_layers * cfg.kv_dim * 64 * 2}
    main(["run", "--preset", "mesh16", "--model", "tiny-llama", "--prompt", "64", "--generate",
          "4", "--strategy", "layer-sequential", "--prefill-grid", "16", "--decode-grid", "8",
          "--engine", "fast"])
    assert f"its move ({moved['2d']:,} bytes) is not simulated" in capsys.readouterr().out


def test_gemm_steps_skipped_by_pairs_inside_the_layers_loop(monkeypatch):
    """3-token tiles (48 tokens on 16 x 16): the QKV and O projections' MeshGEMM steps repeat
    only every two steps; inside the layers loop they are skipped by pairs, and the whole
    prefill (spans too) is the reference's (docs/hardware-model.md, "Period two")."""
    from test_engine_fast import assert_same

    from wse_sim.engine import fast_loops
    from wse_sim.engine.reference import simulate_reference
    periods = []
    skip = fast_loops.Forward._skip

    def spy(self, p, i, q, c, *a, **k):
        periods.append((p.lp.name, c))
        return skip(self, p, i, q, c, *a, **k)
    monkeypatch.setattr(fast_loops.Forward, "_skip", spy)
    p = _2d(MESH16, prompt=48, grid=16, model_set={"n_layers": 6}, gemm_algo="meshgemm")
    fast = simulate_fast(p, MESH16, path="step", spans=True)
    assert_same(simulate_reference(p, MESH16), fast)
    assert ("L0.qkv_proj.step", 2) in periods and ("layers", 1) in periods
