"""A prefill in chunks on the single-region strategies (layer-sequential, weight-streaming):
the functional run equals numpy (logits and KV cache), the timing is the same with or without
data, and the SRAM budget counts every chunk's output and the chunk in flight."""

import dataclasses
import math

import numpy as np
import pytest

from mapper.strategies import strategies
from mapper.strategies.functional_model import model_inputs, model_kv_cache, model_output, round_to
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
