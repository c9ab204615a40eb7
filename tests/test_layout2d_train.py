"""A training step in the 2-D layout (`mapper.strategies.layout2d_train`): the loss and every
weight's gradient equal numpy (`layout2d_train_data`), fast == reference, every op of the
graph mapped, FLOPs conserved (recompute counted), the SRAM budget, the issue's sizes fit,
and the refusals."""

from __future__ import annotations

import pytest
from test_engine_fast import assert_same

from mapper.placement import MappingError
from mapper.strategies.common import make_run
from mapper.strategies.layout2d import Tiles
from mapper.strategies.layout2d_train import map_train_2d, train_buffers
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.engine.fast import simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.hardware import load_preset
from wse_sim.program import Unicast
from wse_sim.report.text import mapping_line

HW = load_preset("mesh16")


def _train(model="tiny-llama", grid=6, batch=2, prompt=16, micro_batches=2, recompute=True,
           hw=HW, model_set=None, dtype="fp16", streaming=True, **kw):
    return map_train_2d(load_model(model, model_set), hw, streaming=streaming, phase="train",
                  batch=batch, prompt=prompt, context=prompt, dtype=dtype, grid=grid,
                  sparsity=0.0, micro_batches=micro_batches, recompute=recompute, **kw)


@pytest.mark.parametrize("recompute", [True, False])
@pytest.mark.parametrize("algo", ["meshgemm", "cannon", "summa"])
def test_fast_equals_reference(recompute, algo):
    p = _train(recompute=recompute, gemm_algo=algo)
    assert p.meta["gemm_algo"] == algo and set(p.meta["gemm_algos"].values()) == {algo}
    # SUMMA's broadcasts are granted out of task order: the event path runs it
    path = "auto" if algo == "summa" else "step"
    assert_same(simulate_reference(p, HW), simulate_fast(p, HW, path=path, spans=True))


def test_auto_takes_each_projections_least_estimate():
    """The activations stay natural, so each forward projection takes its own algorithm;
    mesh16's 8 x 8 grid at 64 tokens (fp16) mixes Cannon and SUMMA: the step equals the
    reference, and the recompute's GEMMs still run MeshGEMM (the backward's weights)."""
    from mapper.gemm import fragment_algos, gemm_estimate_cycles
    from mapper.strategies.layout2d import gemm_shapes
    p = _train(grid=8, batch=1, prompt=64, micro_batches=1)
    algos = p.meta["gemm_algos"]
    for label, (m, k, n, _) in gemm_shapes(load_model("tiny-llama"), 64, 8).items():
        est = {a: gemm_estimate_cycles(a, HW, grid=8, m=m, k=k, n=n, dtype="fp16")
               for a in fragment_algos()}
        assert est[algos[label]] == min(est.values())
    assert len(set(algos.values())) > 1 and p.meta["gemm_algo"] == "per-projection"
    assert ", ".join(f"{k} {v}" for k, v in algos.items()) in mapping_line(p.meta)
    assert_same(simulate_reference(p, HW), simulate_fast(p, HW, spans=True))
    shifts = {(t.op, t.ring) for t in p.tasks if isinstance(t, Unicast)}
    ops = {getattr(t, "op", "") for t in p.tasks}
    for label, algo in algos.items():
        own = (f"L0.{label}.bcast_a" in ops if algo == "summa" else
               (f"L0.{label}.shift_a", "x" if algo == "meshgemm" else "") in shifts)
        assert own, (label, algo)  # the forward's own algorithm
        assert (f"L0.{label}.shift_a", "x") in shifts  # the recompute's MeshGEMM


def test_layers_loop_fast_forwards_and_equals_reference():
    p = _train(model_set={"n_layers": 6}, batch=1, micro_batches=1)
    assert {"layers", "layers_bwd"} <= {lp.name for lp in p.loops}
    ref, fast = simulate_reference(p, HW), simulate_fast(p, HW, path="step")
    assert_same(ref, fast)
    assert fast.loop_iterations == ref.loop_iterations > 0


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
def test_flops_conserved_and_recompute_counted(model):
    on, off = _train(model, recompute=True), _train(model, recompute=False)
    for p in (on, off):
        m = p.meta
        assert m["phase"] == "train" and m["layout"] == "2d" and m["micro_batches"] == 2
        assert m["executed_flops"] == p.total_flops()
        # every FLOP of the graph but the off-wafer optimizer's runs (tiles padded, every
        # attention block computed, the forward recomputed)
        assert m["executed_flops"] - m["recompute_flops"] >= m["graph_flops"] - m["offwafer_flops"]
        assert m["offwafer_flops"] > 0
    assert off.meta["recompute_flops"] == 0
    assert on.meta["executed_flops"] == off.meta["executed_flops"] + on.meta["recompute_flops"]
    # recompute = one more forward of every layer (the LM head is not recomputed)
    fwd = sum(t.flops for t in off.tasks if hasattr(t, "flops") and ".bwd" not in t.op
              and "bwd" not in t.op and not t.op.startswith(("lm_head", "loss", "ln_f", "embed")))
    assert on.meta["recompute_flops"] <= fwd


def test_checkpointing_saves_sram():
    on, off = _train(recompute=True), _train(recompute=False)
    a, b = on.meta["sram_buffers_per_core"], off.meta["sram_buffers_per_core"]
    assert a["saved_activations"] < b["saved_activations"]
    assert sum(a.values()) < sum(b.values())


def _budget(preset, model, batch, micro_batches, recompute=True):
    hw = load_preset(preset)
    run = make_run(load_model(model), hw, phase="train", batch=batch, prompt=2048,
                   context=2048, dtype="fp16", grid=None, sparsity=0.0,
                   micro_batches=micro_batches)
    P = min(run.cols, run.rows)
    return sum(train_buffers(run, Tiles.of(run.cfg, P, run.chunk_tokens), recompute).values()), \
        hw.sram_bytes


def test_issue_sizes_fit():
    """Cerebras-GPT-1.3B at sequence 2048 on wse2; LLaMA3-8B at 2048 x 64 on wse3 in 32
    micro-batches (16 do not fit: refused with the numbers before anything is built)."""
    need, have = _budget("wse2", "cerebras-gpt-1.3b", 1, 1)
    assert need <= have
    need, have = _budget("wse3", "llama3-8b", 64, 32)
    assert need <= have
    need, have = _budget("wse3", "llama3-8b", 64, 16)
    assert need > have
    with pytest.raises(MappingError, match="bytes"):
        map_train_2d(load_model("llama3-8b"), load_preset("wse3"), streaming=True,
                     phase="train",
               batch=64, prompt=2048, context=2048, dtype="fp16", grid=None, sparsity=0.0,
               micro_batches=16)


BIG = load_preset("mesh16", {"sram_bytes": 262144})  # a functional run keeps every layer's weights


@pytest.mark.parametrize("model,grid,dtype,recompute,batch,prompt,algo", [
    ("tiny-llama", 8, "fp32", True, 1, 16, "meshgemm"),
    ("tiny-llama", 8, "fp32", False, 1, 16, "meshgemm"),
    ("tiny", 8, "fp32", True, 1, 16, "meshgemm"),
    ("tiny-llama", 7, "fp16", True, 2, 12, "meshgemm"),  # odd grid: weights in the other buffer
    ("tiny", 5, "bf16", False, 3, 7, "meshgemm"),         # padded tokens and features
    ("tiny-llama", 8, "fp32", True, 1, 4, "meshgemm"),    # token rows 4..7 empty
    ("tiny", 6, "bf16", False, 1, 3, "cannon"),           # token rows 3..5 empty
    ("tiny-llama", 8, "fp32", True, 1, 16, "cannon"),
    ("tiny", 5, "bf16", False, 3, 7, "cannon"),
    ("tiny-llama", 7, "fp16", True, 2, 12, "summa"),
    ("tiny", 8, "fp32", False, 1, 16, "summa"),
    ("tiny-llama", 8, "fp16", True, 1, 64, "auto"),       # Cannon and SUMMA mixed
])
def test_functional_loss_and_gradients_equal_numpy(model, grid, dtype, recompute, batch,
                                                   prompt, algo):
    from mapper.strategies import layout2d_train_data as td
    from wse_sim.functional import error_report, run_functional
    cfg = load_model(model)
    p = _train(model, grid=grid, batch=batch, prompt=prompt, micro_batches=1,
               recompute=recompute, hw=BIG, functional=True, dtype=dtype, gemm_algo=algo)
    inputs, tokens, want_loss, want = td.random_train_case(p, cfg, seed=3)
    loss, got = td.train_grads(p, run_functional(p, BIG, inputs), cfg, tokens)
    assert abs(loss - want_loss) <= 1e-3 * abs(want_loss)
    assert set(got) == set(want)  # every weight's gradient
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert error_report(got[k], want[k], dtype)["ok"], k


def test_functional_catches_a_wrong_weight():
    from mapper.strategies import layout2d_train_data as td
    from wse_sim.functional import error_report, run_functional
    cfg = load_model("tiny-llama")
    p = _train(grid=8, batch=1, micro_batches=1, hw=BIG, functional=True, dtype="fp32")
    inputs, tokens, _, want = td.random_train_case(p, cfg, seed=3)
    inputs["L1.o_proj.wb"][2, 3] += 0.5  # the backward's copy: only the gradients change
    _, got = td.train_grads(p, run_functional(p, BIG, inputs), cfg, tokens)
    assert not error_report(got["L1.w_o"], want["L1.w_o"], "fp32")["ok"] or \
        not error_report(got["L0.w_q"], want["L0.w_q"], "fp32")["ok"]


def test_refusals():
    with pytest.raises(NotImplementedError, match="functional training step runs one"):
        _train(functional=True)
    with pytest.raises(NotImplementedError, match="optimizer onwafer with layer-sequential"):
        _train(streaming=False, optimizer="onwafer")


def test_a_micro_batch_shorter_than_the_grid_leaves_token_rows_empty():
    """4 tokens on 8 x 8 cores: rows 4..7 hold no token (padding, as in a prefill); the step
    runs, the fast engine equals the reference (spans too), and the functional cases above
    check its loss and gradients against numpy."""
    from wse_sim.engine.reference import simulate_reference
    p = _train(grid=8, batch=1, prompt=4, micro_batches=1)
    assert p.meta["tiles"]["tokens"] == 1 and p.meta["region_cols"] == 8
    assert_same(simulate_reference(p, HW), simulate_fast(p, HW, spans=True))


def test_layer_loops_are_tried_from_their_first_iteration(monkeypatch):
    """Layers 0 and 1, emitted before the forward's layers loop, stand for its iterations -2
    and -1 (a layer's weights wait for the layer two back: the loop reaches two iterations
    back), the last layer before the backward's loop for its iteration -1: both loops are
    first tried from iteration 0, more iterations are skipped, and every counter and span is
    still the reference's (docs/hardware-model.md, "The peeled iteration")."""
    from wse_sim.engine import fast_loops, fast_step
    from wse_sim.engine.fast_tables import Tables
    from wse_sim.engine.reference import simulate_reference
    p = _train(grid=6, batch=1, prompt=16, micro_batches=1, model_set={"n_layers": 8})
    tables = Tables(p, HW)
    plans = fast_loops.plan_loops(tables, fast_step.plan(tables)[0])
    assert {(q.lp.name, q.peeled) for q in plans if q.lp.name.startswith("layers")} == \
        {("layers", 2), ("layers_bwd", 1)}
    fast = simulate_fast(p, HW, path="step", spans=True)
    assert_same(simulate_reference(p, HW), fast)
    monkeypatch.setattr(fast_loops, "PEELED_MIN_INSTANCES", 10**12)  # tried from iteration 1
    later = simulate_fast(p, HW, path="step", spans=True)
    assert later.cycles == fast.cycles
    assert fast.loop_iterations_skipped > later.loop_iterations_skipped


def test_cli(capsys):
    args = ["run", "--preset", "mesh16", "--model", "tiny-llama", "--phase", "train",
            "--batch", "2", "--prompt", "16", "--strategy", "weight-streaming", "--layout",
            "2d", "--micro-batches", "2", "--grid", "6", "--engine", "fast", "--json"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert '"layout": "2d"' in out and '"recompute": "on"' in out
    assert main(args[:-1] + ["--recompute", "off", "--json"]) == 0
    assert '"recompute": "off"' in capsys.readouterr().out
    # each projection's forward algorithm: one for all, or each its least estimate
    assert main(args[:-1] + ["--gemm-algo", "cannon", "--json"]) == 0
    assert '"gemm_algo": "cannon"' in capsys.readouterr().out
    # the functional check of a training step: loss and every gradient against numpy
    fargs = [a for a in args if a not in ("--json",)]
    fargs[fargs.index("--micro-batches") + 1] = "1"
    fargs[fargs.index("--grid") + 1] = "8"
    assert main(fargs + ["--functional"]) == 0
    assert "functional     ok: worst gradient" in capsys.readouterr().out
    # --recompute applies to a 2-D training step only: exit 2, one line
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "train",
                 "--prompt", "16", "--layout", "top-row", "--recompute", "off"]) == 2
    assert "recompute" in capsys.readouterr().err


# ---- layer-sequential: the weights resident ------------------------------------------------------

def _io(p, direction: str) -> dict:
    from wse_sim.program import IoTransfer
    return {t.op: t.bytes for t in p.tasks
            if isinstance(t, IoTransfer) and t.direction == direction}


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_layer_sequential_streams_no_weights_in_and_equals_reference(micro_batches):
    """Nothing streams in but the embeddings and, after the last micro-batch's backward of a
    layer, its updated weights (both copies of the matrices, the gains once): exactly what
    goes out as its gradients, plus the second copy. The step equals the reference."""
    from mapper.strategies.single_region import layer_weight_bytes
    ls = _train(streaming=False, micro_batches=micro_batches)
    assert ls.meta["strategy"] == "layer-sequential" and ls.meta["layout"] == "2d"
    cfg, run = load_model("tiny-llama"), make_run(load_model("tiny-llama"), HW, phase="train",
                                                  batch=2, prompt=16, context=16, dtype="fp16",
                                                  grid=6, sparsity=0.0,
                                                  micro_batches=micro_batches)
    ins, outs = _io(ls, "in"), _io(ls, "out")
    head = cfg.d_model * cfg.vocab_size * 2
    for i in range(cfg.n_layers):
        w, small = layer_weight_bytes(run, i), cfg.layer_small_params(i) * 2
        assert outs[f"L{i}.grads.out"] == w
        assert ins[f"L{i}.weights.update.in"] == 2 * w - small
    assert outs["lm_head.grads.out"] == ins["lm_head.weights.update.in"] == head
    assert {k for k in ins if "weights" in k} == \
        {f"L{i}.weights.update.in" for i in range(cfg.n_layers)} | {"lm_head.weights.update.in"}
    n_embed = sum(1 for k in ins if k == "embed.in")  # dict: one key, the size of one
    assert n_embed == 1 and sum(1 for t in ls.tasks if t.op == "embed.in") == micro_batches
    # the gradients go out once, after the last micro-batch
    assert sum(1 for t in ls.tasks if t.op == "L0.grads.out") == 1
    assert_same(simulate_reference(ls, HW), simulate_fast(ls, HW, path="step", spans=True))


def test_layer_sequential_holds_every_layers_weights_twice():
    cfg = load_model("tiny-llama")
    one, two = (_train(streaming=False, micro_batches=m, batch=2) for m in (1, 2))
    ws = _train(micro_batches=1).meta["sram_buffers_per_core"]
    a, b = one.meta["sram_buffers_per_core"], two.meta["sram_buffers_per_core"]
    t = Tiles.of(cfg, 6, 32)
    gains = 2 * t.d * 2  # two RMSNorms' gains (fp16), once
    assert a["weights"] == cfg.n_layers * (2 * t.weight_values() * 2 + gains)
    assert a["weights"] > ws["weights"] and "grad_accumulators" not in a
    assert b["grad_accumulators"] == (cfg.n_layers - 1) * Tiles.of(cfg, 6, 16).weight_values() * 4


def test_layer_sequential_layers_loop_fast_forwards():
    p = _train(streaming=False, model_set={"n_layers": 6}, batch=1, micro_batches=1, grid=8)
    assert {"layers", "layers_bwd"} <= {lp.name for lp in p.loops}
    ref, fast = simulate_reference(p, HW), simulate_fast(p, HW, path="step")
    assert_same(ref, fast)
    assert fast.loop_iterations_skipped > 0


@pytest.mark.parametrize("model,grid,dtype,recompute,batch,prompt,algo", [
    ("tiny-llama", 8, "fp32", True, 1, 16, "meshgemm"),
    ("tiny", 5, "bf16", False, 3, 7, "cannon"),
    ("tiny-llama", 7, "fp16", True, 2, 12, "summa"),
])
def test_layer_sequential_functional_equals_numpy(model, grid, dtype, recompute, batch,
                                                  prompt, algo):
    """The resident copies are the tiles the stream would bring in: the same loss and
    gradients as numpy."""
    from mapper.strategies import layout2d_train_data as td
    from wse_sim.functional import error_report, run_functional
    cfg = load_model(model)
    p = _train(model, grid=grid, batch=batch, prompt=prompt, micro_batches=1,
               recompute=recompute, hw=BIG, functional=True, dtype=dtype, gemm_algo=algo,
               streaming=False)
    inputs, tokens, want_loss, want = td.random_train_case(p, cfg, seed=3)
    loss, got = td.train_grads(p, run_functional(p, BIG, inputs), cfg, tokens)
    assert abs(loss - want_loss) <= 1e-3 * abs(want_loss)
    assert set(got) == set(want)
    for k in want:
        assert error_report(got[k], want[k], dtype)["ok"], k


@pytest.mark.parametrize("preset", ["wse2", "wse3"])
def test_layer_sequential_issue_sizes(preset):
    """Cerebras-GPT-1.3B at sequence 2048 fits with its weights resident; LLaMA3-8B's
    weights alone (16 GB, twice) do not fit any wafer's SRAM: one line with the numbers."""
    kw = dict(streaming=False, phase="train", prompt=2048, context=2048, dtype="fp16",
              grid=None, sparsity=0.0, check_only=True)
    hw = load_preset(preset)
    assert map_train_2d(load_model("cerebras-gpt-1.3b"), hw, batch=1, **kw) is None
    with pytest.raises(MappingError) as err:
        map_train_2d(load_model("llama3-8b"), hw, batch=1, **kw)
    msg = str(err.value)
    need = int(msg.split("alone need ")[1].split()[0])
    assert "\n" not in msg and need > hw.sram_bytes and "use weight-streaming" in msg


def test_layer_sequential_cli(capsys):
    """`--strategy layer-sequential --phase train` takes the 2-D layout where the top-row
    step does not fit; its functional check passes; the on-wafer optimizer is refused."""
    args = ["run", "--preset", "mesh16", "--model", "tiny-llama", "--phase", "train",
            "--batch", "2", "--prompt", "16", "--strategy", "layer-sequential", "--grid", "8",
            "--micro-batches", "1", "--engine", "fast"]
    assert main(args + ["--json"]) == 0
    out = capsys.readouterr().out
    assert '"layout": "2d"' in out and '"strategy": "layer-sequential"' in out
    assert main(args + ["--set", "sram_bytes=262144", "--layout", "2d", "--functional"]) == 0
    assert "functional     ok: worst gradient" in capsys.readouterr().out
    assert main(args + ["--optimizer", "onwafer"]) == 2
    err = capsys.readouterr().err
    assert "optimizer: got 'onwafer'" in err and "\n" not in err.strip()


@pytest.mark.parametrize("streaming", [True, False])
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_io_bytes_per_step_closed_form(streaming, micro_batches):
    """docs/strategies.md's table: the bytes in and out over the I/O of a step of M
    micro-batches under weight streaming and layer-sequential."""
    from mapper.strategies.single_region import layer_weight_bytes
    cfg, M = load_model("tiny-llama"), micro_batches
    p = _train(streaming=streaming, micro_batches=M)
    ins, outs = (sum(t.bytes for t in p.tasks if getattr(t, "direction", None) == d)
                 for d in ("in", "out"))
    run = make_run(cfg, HW, phase="train", batch=2, prompt=16, context=16, dtype="fp16",
                   grid=6, sparsity=0.0, micro_batches=M)
    W = [layer_weight_bytes(run, i) for i in range(cfg.n_layers)]
    s = [cfg.layer_small_params(i) * run.bytes for i in range(cfg.n_layers)]
    H = cfg.d_model * cfg.vocab_size * run.weight_bytes
    Hg = cfg.d_model * cfg.vocab_size * run.bytes
    E = run.chunk_tokens * cfg.d_model * run.bytes
    if streaming:
        want = (M * (E + 2 * sum(W) + H), M * (sum(W) + Hg + E))
    else:
        want = (M * E + sum(2 * w - si for w, si in zip(W, s, strict=True)) + H,
                sum(W) + Hg + M * E)
    assert (ins, outs) == want
