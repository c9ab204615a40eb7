"""A prefill in chunks on the single-region strategies (layer-sequential, weight-streaming):
the functional run equals numpy (logits and KV cache), the timing is the same with or without
data, and the SRAM budget counts every chunk's output and the chunk in flight."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapper.strategies import strategies
from mapper.strategies.functional_model import model_inputs, model_kv_cache, model_output, round_to
from mapper.strategies.single_region import beat_order
from workloads import reference as ref
from workloads.models import load_model
from wse_sim.engine import simulate
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import load_preset

HW16 = load_preset("mesh16")
SINGLE = ("layer-sequential", "weight-streaming")


def _build(name, cfg, **kw):
    return strategies()[name](cfg, HW16, phase="prefill", **kw)


def _check_against_numpy(p, cfg, dtype, batch, prompt, seed=3):
    """(logits report, max abs error of the KV cache) of a functional run vs numpy."""
    w = ref.init_weights(cfg, seed)
    tokens = np.random.default_rng(seed).integers(0, cfg.vocab_size, (batch, prompt))
    w64 = {k: round_to(v, dtype).astype(np.float64) for k, v in w.items()}
    logits, cache = ref.forward(cfg, w64, tokens)
    buffers = run_functional(p, HW16, model_inputs(p, cfg, w, tokens))
    rep = error_report(model_output(p, buffers), logits[:, -1], dtype)
    got = model_kv_cache(p, cfg, buffers)
    err = max(float(np.abs(a - b).max()) for pair, want in zip(got, cache, strict=True)
              for a, b in zip(pair, want, strict=True))
    return rep, err


@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("name", SINGLE)
def test_functional_prefill_in_chunks_equals_reference(name, model, dtype):
    """11 positions in 3 chunks of unequal length (4, 4, 3): each chunk's attention writes
    its keys at its own positions and sees the earlier chunks'; logits and cache equal numpy."""
    cfg = load_model(model)
    p = _build(name, cfg, batch=2, prompt=11, dtype=dtype, functional=True, chunks=3)
    assert p.meta["chunks"] == 3
    rep, err = _check_against_numpy(p, cfg, dtype, 2, 11)
    assert rep["ok"] and (dtype != "fp32" or rep["max_rel_error"] < 1e-5), rep
    assert err < (1e-5 if dtype == "fp32" else 1e-2)


@pytest.mark.parametrize("name", SINGLE)
def test_functional_chunks_through_four_layers(name):
    """Four layers (two scratch sets, by layer parity, reused by layers 2 and 3), 4 chunks,
    one sequence: still numpy's logits and cache."""
    cfg = load_model("tiny").with_overrides(n_layers=4)
    p = _build(name, cfg, batch=1, prompt=10, dtype="fp32", functional=True, chunks=4)
    rep, err = _check_against_numpy(p, cfg, "fp32", 1, 10)
    assert rep["ok"] and rep["max_rel_error"] < 1e-5, rep
    assert err < 1e-5


@pytest.mark.parametrize("name", SINGLE)
def test_timing_is_the_same_with_or_without_data(name):
    cfg = load_model("tiny-llama")
    kw = {"batch": 2, "prompt": 11, "dtype": "fp16", "chunks": 3}
    plain, func = _build(name, cfg, **kw), _build(name, cfg, functional=True, **kw)
    assert [dataclasses.replace(t, data=None) for t in func.tasks] == list(plain.tasks)
    skip = ("k_proj", "v_proj") if func.meta["attention"]["rows_per_group"] > 1 else ()
    assert all(t.data is not None for t in func.tasks
               if not t.op.endswith(skip) and not t.op.endswith(".in"))
    a, b = simulate(plain, HW16, engine="fast"), simulate(func, HW16, engine="fast")
    assert (a.cycles, a.flops) == (b.cycles, b.flops)


def test_chunk_tiles_own_their_input_and_share_their_scratch():
    """Each chunk's layer input is its own (the embedding rows arrive in it, every layer's
    view is the same bytes); its other activations share bytes with the other chunks' of
    layers of the same parity, not with those of the layer it may overlap."""
    cfg = load_model("tiny")
    p = _build("layer-sequential", cfg, batch=2, prompt=12, functional=True, chunks=4)
    v = p.meta["views"]
    xs = {v[f"act.l0.c{c}.x"] for c in range(4)}
    assert len(xs) == 4
    assert all(v[f"act.l1.c{c}.x"] == v[f"act.l0.c{c}.x"] == v[f"embed.rows.c{c}"]
               for c in range(4))
    assert v["act.l0.c0.qkv"] == v["act.l0.c3.qkv"] != v["act.l1.c0.qkv"]
    assert v["act.l0.c0.h"] == v["act.l0.c2.h"] != v["act.l1.c2.h"]


@pytest.mark.parametrize("name", SINGLE)
def test_budget_counts_every_chunks_output_and_the_chunk_in_flight(name):
    """With n chunks all n chunks' layer inputs wait between the layers (the timing's
    x_shard holds one chunk's input and norm output), and a second chunk runs in the layer
    before with its own scratch."""
    cfg = load_model("tiny")
    one = _build(name, cfg, batch=2, prompt=12)
    p = _build(name, cfg, batch=2, prompt=12, chunks=4)
    b, reg = p.meta["sram_buffers_per_core"], p.meta["region_cols"]
    x = 2 * 3 * math.ceil(cfg.d_model / reg) * 2  # one chunk's (6 tokens) shard in fp16
    assert b["x_shard"] == 2 * x and b["chunk_outputs"] == 3 * x
    assert b["chunk_in_flight"] == x + b["partial"] + b["scores"]
    assert "chunk_outputs" not in one.meta["sram_buffers_per_core"]
    # a functional run's arena is this budget (fp16: the tiles need nothing beyond it)
    func = _build(name, cfg, batch=2, prompt=12, chunks=4, functional=True)
    assert func.meta["functional"]["sram_extra_bytes"] == 0


def test_at_most_two_layers_run_at_once():
    """Chunks pipeline through the layers two at a time: no record of layer i starts before
    the last one of layer i - 2 has ended (the scratch sets alternate by layer)."""
    cfg = load_model("tiny").with_overrides(n_layers=4)
    p = _build("layer-sequential", cfg, batch=1, prompt=16, chunks=4)
    r = simulate(p, HW16, engine="reference")
    sp = r.spans
    first, last = {}, {}
    for k, t in enumerate(sp["task"]):
        op = p.tasks[int(t)].op
        if not op.startswith("L"):
            continue
        i = int(op.split(".")[0][1:])
        first[i] = min(first.get(i, math.inf), int(sp["start"][k]))
        last[i] = max(last.get(i, 0), int(sp["end"][k]))
    assert all(first[i] >= last[i - 2] for i in range(2, 4))
    assert first[1] < last[0]  # but layers i and i + 1 overlap (the pipeline)


@settings(max_examples=60, deadline=None)
@given(layers=st.integers(1, 12), chunks=st.integers(1, 6), looped=st.booleans())
def test_beat_order_is_a_schedule_whose_iterations_repeat(layers, chunks, looped):
    """Every (layer, chunk) block once, each after what it waits for (the chunk in the layer
    below, the chunk before in its layer, for a first chunk the last one two layers down);
    every loop iteration is the first one moved by two layers."""
    pre, its, post = beat_order(layers, chunks, looped)
    seq = pre + [b for it in its for b in it] + post
    assert sorted(seq) == [(i, c) for i in range(layers) for c in range(chunks)]
    at = {b: k for k, b in enumerate(seq)}
    for (i, c), k in at.items():
        need = [(i - 1, c), (i, c - 1)] + ([(i - 2, chunks - 1)] if c == 0 else [])
        assert all(at[b] < k for b in need if b[0] >= 0 and b[1] >= 0)
    assert all(it == [(i + 2 * j, c) for i, c in its[0]] for j, it in enumerate(its))
    assert len(its) == (max(0, (layers - 2) // 2) if looped else 0)


def test_chunked_blocks_are_emitted_in_the_order_they_run():
    """Layer-sequential's blocks go into the program in pipeline beats: a block never starts
    before one emitted two or more blocks earlier (layer by layer, layer 1's first chunk came
    after all of layer 0's and started long before them: the window path's window held a whole
    layer, 22 GiB for LLaMA3-8B at 32 chunks on wse2). Weight streaming stays layer by layer:
    there a layer's chunks wait for its weights, which come after the layer before's chunks."""
    cfg = load_model("tiny-llama").with_overrides(n_layers=8)
    ws = _build("weight-streaming", cfg, batch=1, prompt=16, chunks=4)
    assert [(lp.name, lp.count) for lp in ws.loops] == [("layers", 6)]
    p = _build("layer-sequential", cfg, batch=1, prompt=16, chunks=4)
    assert [(lp.name, lp.count) for lp in p.loops] == [("layer-pairs", 3)]
    r = simulate(p, HW16, engine="reference")
    start = {}
    for t, s in zip(r.spans["task"], r.spans["start"], strict=True):
        start[int(t)] = min(start.get(int(t), math.inf), int(s))
    blocks = [start[k] for k, t in enumerate(p.tasks) if t.op.endswith("norm1.stats")]
    assert len(blocks) == 8 * 4
    assert all(blocks[k] >= max(blocks[:k - 1]) for k in range(2, len(blocks)))


@pytest.mark.parametrize("phase", ["prefill", "train"])
def test_weight_streaming_inputs_queue_on_one_channel_in_program_order(phase):
    """Every input transfer of weight streaming (each chunk's embeddings, every layer's
    weights, the LM head's, the backward's) waits for the one before it: the off-wafer
    channel delivers them in order (a chunk's embeddings once waited for nothing when the one
    before was the program's first record)."""
    cfg = load_model("tiny-llama").with_overrides(n_layers=4)
    kw = {"chunks": 4} if phase == "prefill" else {}
    p = strategies()["weight-streaming"](cfg, HW16, phase=phase, batch=1, prompt=16, **kw)
    ins = [k for k, t in enumerate(p.tasks)
           if type(t).__name__ == "IoTransfer" and t.direction == "in"]
    assert len(ins) >= 4 + (4 if phase == "prefill" else 1)
    assert ins[0] == 0
    for before, k in zip(ins, ins[1:], strict=False):
        assert before in [d.task for d in p.tasks[k].deps], p.tasks[k].op
