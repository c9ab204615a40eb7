"""Several micro-batches or prompt chunks in flight in layer-pipelined (issue 7): a training step
in GPipe micro-batches (timing, SRAM, FLOPs, the search, the CLI) and the functional runs of a
prefill in chunks and of a training step in micro-batches (equal to numpy)."""

import collections
import dataclasses
import json

import numpy as np
import pytest
from test_engine_fast import assert_same

from mapper.placement import MappingError
from mapper.strategies import strategies
from mapper.strategies.functional_model import (
    model_grads,
    model_kv_cache,
    model_loss,
    model_output,
    random_case,
    random_train_case,
)
from mapper.strategies.tp2d import Layout, layer_buffers
from workloads import reference as ref
from workloads.graph import build_graph, total_flops
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.engine.fast import simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.experiment import build_program
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import load_preset
from wse_sim.program import Compute, Region
from wse_sim.search_mappings import search_mapping

HW16, HW32 = load_preset("mesh16"), load_preset("mesh32")


def pipelined(cfg, hw=HW16, **kw):
    return strategies()["layer-pipelined"](cfg, hw, **kw)


def train(cfg, hw=HW16, *, batch=2, prompt=8, **kw):
    return pipelined(cfg, hw, phase="train", batch=batch, prompt=prompt, **kw)


# ---- timing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("micro_batches", [1, 2, 4])
def test_micro_batches_conserve_the_flops_of_the_training_step(micro_batches):
    cfg = load_model("tiny-llama")
    p = train(cfg, batch=4, micro_batches=micro_batches)
    graph = total_flops(build_graph(cfg, "train", batch=4, prompt=8))
    assert p.meta["micro_batches"] == micro_batches
    assert p.total_flops() == p.meta["graph_flops"] == graph
    r = simulate(p, HW16, engine="fast")
    assert r.flops == graph and r.tokens == 4 * 8


@pytest.mark.parametrize("model, hw, chunks, layers", [
    ("tiny", HW16, 4, None), ("tiny-llama", HW32, 8, None), ("tiny", HW32, 16, None),
    ("tiny", HW16, 4, 7), ("tiny-llama", HW16, 4, 5)])
def test_a_prefill_in_chunks_runs_on_the_step_path_as_the_reference(model, hw, chunks, layers):
    """Emitted in pipeline beats (chunk b - i in layer i, the last layer first), program order
    follows time: every resource is reserved in task order, so the step path runs the pipeline
    (its memory does not grow with the chunks in flight) and equals the reference. With 7 or 5
    layers the slots form a ring: the embedding's region is next to layer 0's, so each chunk's
    hand-off into layer 0 crosses no other region (one slot away)."""
    cfg = load_model(model, {"n_layers": layers} if layers else None)
    p = pipelined(cfg, hw, phase="prefill", prompt=chunks * 4, chunks=chunks)
    assert p.meta["chunks"] == chunks
    if layers:
        h = next(t for t in p.tasks if t.op == "embed.handoff")
        assert (abs(h.dx), abs(h.dy)) in ((p.meta["region_cols"], 0), (0, p.meta["region_rows"]))
    res = simulate_fast(p, hw, path="step", spans=True)
    assert res.fast_path == "step"
    assert_same(simulate_reference(p, hw), res)
    # beats: chunk c's record in layer 0 comes after chunk c - 1's in layer 1
    starts = [j for j, t in enumerate(p.tasks) if t.op == "L0.norm1.stats"]
    later = [j for j, t in enumerate(p.tasks) if t.op == "L1.norm1.stats"]
    assert all(later[c - 1] < starts[c] for c in range(1, chunks))


def test_both_engines_agree_on_a_step_in_micro_batches():
    p = train(load_model("tiny"), micro_batches=2)
    a, b = simulate(p, HW16, engine="reference"), simulate(p, HW16, engine="fast")
    assert (a.cycles, a.flops, a.comm_bytes) == (b.cycles, b.flops, b.comm_bytes)


def test_more_micro_batches_shorten_the_step_of_a_deep_model():
    """Six layer regions: GPipe overlaps micro-batch m + 1 in layer l - 1 with m in layer l, so
    the step shrinks towards (M + L - 1) / (M L) of the single-batch step (what is left: the
    LM head per micro-batch and each part's pipeline latency)."""
    cfg = load_model("tiny-llama").with_overrides(n_layers=6)
    L = cfg.n_layers
    progs = {m: train(cfg, HW32, batch=8, prompt=8, micro_batches=m) for m in (1, 2, 4)}
    assert len({(p.meta["region_cols"], p.meta["region_rows"]) for p in progs.values()}) == 1
    cycles = {m: simulate(p, HW32, engine="fast").cycles for m, p in progs.items()}
    assert cycles[1] > cycles[2] > cycles[4]
    for m in (2, 4):
        assert cycles[m] <= 1.25 * cycles[1] * (m + L - 1) / (m * L), (m, cycles)


def test_one_micro_batch_is_the_unsplit_step():
    """micro_batches=1 is the default program; with M micro-batches every per-part record
    appears M times with 1/M of the FLOPs and the Adam updates once, after the last."""
    cfg = load_model("tiny")
    one, default = train(cfg, batch=4, micro_batches=1), train(cfg, batch=4)
    assert one.tasks == default.tasks and one.allocs == default.allocs
    two = train(cfg, batch=4, micro_batches=2)
    n1 = collections.Counter(t.op for t in one.tasks)
    n2 = collections.Counter(t.op for t in two.tasks)
    assert n2 == collections.Counter({op: n if op.endswith(".adam") else 2 * n
                                      for op, n in n1.items()})

    def flops(p):
        out = collections.Counter()
        for t in p.tasks:
            if isinstance(t, Compute):
                out[t.op] += t.flops
        return out

    assert flops(one) == flops(two)  # each record's FLOPs, split over the micro-batches
    last_bwd = max(i for i, t in enumerate(two.tasks) if t.op == "L0.norm1.bwd")
    first_adam = min(i for i, t in enumerate(two.tasks) if t.op.endswith(".adam"))
    assert first_adam > max(i for i, t in enumerate(two.tasks) if t.op == "L1.norm1.bwd")
    assert last_bwd > first_adam  # layer 1 updates while layer 0 runs its last backward


def test_sram_counts_the_saved_activations_of_every_micro_batch():
    cfg = load_model("tiny-llama").with_overrides(n_layers=4)
    p = train(cfg, HW32, batch=8, prompt=16, micro_batches=4)
    lay = Layout.of(Region(0, 0, p.meta["region_cols"], p.meta["region_rows"]), cfg, True)
    one = layer_buffers(cfg, lay, 2 * 16, 16, 8, "fp16", train=True)  # a micro-batch
    got = p.meta["sram_buffers_per_core"]
    assert got["saved_activations"] == 4 * one["saved_activations"]
    assert got["partial"] == one["partial"]  # transient buffers: one micro-batch at a time
    assert got["kv_cache"] == one["kv_cache"]  # the K/V of the whole batch
    # The stash does not shrink with more micro-batches: a step that does not fit says so.
    with pytest.raises(MappingError, match=r"micro-batches in flight.*saved_activations \d+.*"
                                           r"> sram_bytes"):
        train(cfg, HW16, batch=8, prompt=16, micro_batches=4)


def test_search_tries_micro_batches_for_training():
    # the top-row layout only (the 2-D layout's micro-batches: tests/test_search_speed.py)
    found, best = search_mapping(HW16, "tiny", phase="train", batch=4, prompt=8,
                                 layout="top-row", engine="fast")
    assert {c["layout"] for c, _, _ in found.tried} == {"top-row"}
    tried = {c["micro_batches"] for c, cost, _ in found.tried
             if cost is not None and c["strategy"] == "layer-pipelined"}
    assert tried == {1, 2, 4}
    assert all(c["micro_batches"] == 1 for c, _, _ in found.tried
               if c["strategy"] != "layer-pipelined")
    assert best.meta.get("micro_batches", 1) == found.best["micro_batches"]
    assert best.seconds / best.tokens == pytest.approx(found.best_cost)


@pytest.mark.parametrize("args, needle", [
    (["--batch", "4", "--micro-batches", "3"], "micro_batches: got 3, must divide the batch (4): "
                                               "one of 1, 2, 4"),
    (["--phase", "prefill", "--micro-batches", "2"],
     "micro_batches: got 2, which does not apply to this run (phase prefill"),
    (["--batch", "4", "--chunks", "2"],
     "chunks: got 2, which does not apply to this run (phase train"),
    (["--batch", "2", "--micro-batches", "0"], "--micro-batches: got 0, must be an integer >= 1"),
    (["--batch", "2", "--micro-batches", "2", "--strategy", "layer-sequential", "--layout",
      "top-row"],
     "micro_batches: got 2, which does not apply to this run (phase train, strategy "
     "layer-sequential); it applies only with phase train with strategy layer-pipelined"),
    (["--batch", "2", "--micro-batches", "2", "--wafers", "2"], "not pipelined over wafers"),
])
def test_bad_micro_batches_give_one_line_and_exit_2(args, needle, capsys):
    argv = ["run", "--preset", "mesh16", "--model", "tiny", "--phase", "train", "--prompt", "8"]
    try:
        code = main(argv + args)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and needle in err, err


def test_cli_runs_a_step_in_micro_batches(capsys):
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "train", "--batch",
                 "4", "--prompt", "8", "--micro-batches", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["micro_batches"] == 2 and d["chunks"] == 1 and d["tokens"] == 32
    p = build_program(HW16, "tiny", phase="train", batch=4, prompt=8, micro_batches=2)
    assert d["cycles"] == simulate(p, HW16, engine="fast").cycles


# ---- functional -----------------------------------------------------------------------------

def _prefill_case(cfg, batch, prompt, seed=3):
    w = ref.init_weights(cfg, seed)
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt))
    logits, cache = ref.forward(cfg, w, tokens)
    return w, tokens, logits[:, -1], cache


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("chunks", [2, 3])
def test_functional_prefill_in_chunks_equals_reference(model, dtype, chunks):
    """11 positions in 2 or 3 chunks of unequal length: each chunk's attention sees the keys
    of the earlier chunks (causal); the logits and the KV cache equal numpy."""
    from mapper.strategies.functional_model import model_inputs, round_to
    cfg = load_model(model)
    p = pipelined(cfg, phase="prefill", batch=2, prompt=11, dtype=dtype, functional=True,
                  chunks=chunks)
    assert p.meta["chunks"] == chunks
    w, tokens, _, _ = _prefill_case(cfg, 2, 11)
    w64 = {k: round_to(v, dtype).astype(np.float64) for k, v in w.items()}
    logits, cache = ref.forward(cfg, w64, tokens)
    buffers = run_functional(p, HW16, model_inputs(p, cfg, w, tokens))
    rep = error_report(model_output(p, buffers), logits[:, -1], dtype)
    assert rep["ok"] and (dtype != "fp32" or rep["max_rel_error"] < 1e-5), rep
    got = model_kv_cache(p, cfg, buffers)
    err = max(float(np.abs(a - b).max()) for pair, want in zip(got, cache, strict=True)
              for a, b in zip(pair, want, strict=True))
    assert err < (1e-5 if dtype == "fp32" else 1e-2)


def test_chunks_share_their_tiles_and_fit_the_unchunked_arena():
    """A chunk's activation tiles start where the other chunks' do (one chunk per layer at a
    time), so the functional arena needs no more than the whole prompt's."""
    cfg = load_model("tiny")
    kw = {"phase": "prefill", "batch": 2, "prompt": 12, "functional": True}
    whole, four = pipelined(cfg, **kw), pipelined(cfg, **kw, chunks=4)
    v = four.meta["views"]
    assert v["L0.c0.qkv"] == v["L0.c3.qkv"] and v["L0.c0.x"] == v["L0.c1.x"]
    assert four.meta["functional"]["sram_extra_bytes"] <= \
        whole.meta["functional"]["sram_extra_bytes"]


def test_a_chunk_that_attends_as_if_it_were_first_fails():
    """The second chunk's attention placed at position 0 (it overwrites the first chunk's
    keys and sees none of them): the check sees it."""
    cfg = load_model("tiny")
    p = pipelined(cfg, phase="prefill", batch=1, prompt=8, functional=True, dtype="fp32",
                  chunks=2)
    inputs, want = random_case(p, cfg, seed=1)
    assert error_report(model_output(p, run_functional(p, HW16, inputs)), want, "fp32")["ok"]
    i = [k for k, t in enumerate(p.tasks) if t.op == "L1.attn_qk"][1]
    second = p.tasks[i]
    assert second.data.param("start") == 4
    tasks = list(p.tasks)
    tasks[i] = dataclasses.replace(second, data=dataclasses.replace(
        second.data, params=tuple((k, 0 if k == "start" else v) for k, v in
                                  second.data.params)))
    broken = dataclasses.replace(p, tasks=tuple(tasks))
    got = model_output(broken, run_functional(broken, HW16, inputs))
    assert not error_report(got, want, "fp32")["ok"]


def _train_check(p, cfg, seed=1):
    inputs, want_loss, want = random_train_case(p, cfg, seed)
    buffers = run_functional(p, HW16, inputs)
    loss, grads = model_loss(p, buffers), model_grads(p, buffers, cfg)
    reps = [error_report(grads[k], want[k], p.dtype) | {"name": k} for k in want]
    return abs(loss - want_loss) / abs(want_loss), max(reps, key=lambda r: r["max_rel_error"])


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
def test_functional_training_in_micro_batches_equals_reference(model, dtype):
    """Four sequences in two micro-batches: the loss (the mean over both) and every weight
    gradient (summed over both) equal numpy."""
    cfg = load_model(model)
    p = train(cfg, batch=4, prompt=6, dtype=dtype, functional=True, micro_batches=2)
    loss_err, rep = _train_check(p, cfg)
    assert rep["ok"], rep
    assert loss_err < (1e-6 if dtype == "fp32" else 1e-3)
    if dtype == "fp32":
        assert rep["max_rel_error"] < 1e-5, rep


def test_micro_batches_must_add_their_gradients():
    """Without the accumulation (each micro-batch overwrites the weight gradients) the
    gradients are wrong: the check sees it."""
    cfg = load_model("tiny")
    p = train(cfg, batch=2, prompt=6, dtype="fp32", functional=True, micro_batches=2)
    assert _train_check(p, cfg)[1]["ok"]
    tasks = [dataclasses.replace(t, data=dataclasses.replace(t.data, params=tuple(
        kv for kv in t.data.params if kv[0] not in ("accumulate", "accumulate_gain"))))
        if t.data is not None and t.op.endswith(".bwd_weight") else t for t in p.tasks]
    broken = dataclasses.replace(p, tasks=tuple(tasks))
    assert not _train_check(broken, cfg)[1]["ok"]


@pytest.mark.parametrize("kw", [{"phase": "prefill", "prompt": 11, "chunks": 3},
                                {"phase": "train", "prompt": 6, "micro_batches": 2}])
def test_timing_is_the_same_with_or_without_data(kw):
    cfg = load_model("tiny-llama")
    plain = pipelined(cfg, batch=2, dtype="fp16", **kw)
    func = pipelined(cfg, batch=2, dtype="fp16", functional=True, **kw)
    assert [dataclasses.replace(t, data=None) for t in func.tasks] == list(plain.tasks)
    # (with several rows per head group the fused Q|K|V GEMM runs on q_proj's record)
    skip = (".adam", "k_proj", "v_proj") if func.meta["attention"]["rows_per_group"] > 1 \
        else (".adam",)
    assert all(t.data is not None for t in func.tasks if not t.op.endswith(skip))
    a, b = simulate(plain, HW16, engine="fast"), simulate(func, HW16, engine="fast")
    assert (a.cycles, a.flops) == (b.cycles, b.flops)

