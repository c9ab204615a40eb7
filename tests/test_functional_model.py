"""Whole-model strategies computed for real: the mapped forward pass equals the numpy reference
(issues 5 and 7), the timing is the same with or without the data, and wrong mappings fail."""

import dataclasses
import json

import numpy as np
import pytest

from mapper.placement import MappingError
from mapper.strategies import strategies
from mapper.strategies.functional_model import (
    model_inputs,
    model_kv_cache,
    model_output,
    random_case,
    round_to,
)
from workloads import reference as ref
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import load_preset
from wse_sim.program import Alloc, DataOp, LineStream, Program, Region

HW = load_preset("mesh16")
STRATEGIES = ("layer-pipelined", "layer-sequential", "weight-streaming")
PROMPT, CONTEXT = 11, 21  # neither divides the 16 columns: padded KV slots, uneven columns


def build(cfg, strategy, phase, *, hw=HW, batch=2, dtype="fp32", functional=True, **kw):
    size = {"prompt": PROMPT} if phase == "prefill" else {"context": CONTEXT}
    return strategies()[strategy](cfg, hw, phase=phase, batch=batch, dtype=dtype,
                                  functional=functional, **size | kw)


def case(cfg, phase, batch=2, seed=3):
    """Weights, tokens, input cache, reference logits of the last tokens and the new cache."""
    w = ref.init_weights(cfg, seed)
    rng = np.random.default_rng(seed)
    kv = None
    if phase == "decode":
        _, kv = ref.forward(cfg, w, rng.integers(0, cfg.vocab_size, (batch, CONTEXT)))
    tokens = rng.integers(0, cfg.vocab_size, (batch, PROMPT if phase == "prefill" else 1))
    logits, cache = ref.forward(cfg, w, tokens, kv_cache=kv, start_pos=CONTEXT if kv else 0)
    return w, tokens, kv, logits[:, -1], cache


def run(program, cfg, w, tokens, kv, hw=HW, mutate=None):
    inputs = model_inputs(program, cfg, w, tokens, kv)
    if mutate:
        mutate(inputs)
    buffers = run_functional(program, hw, inputs)
    return model_output(program, buffers), buffers


def cache_error(program, cfg, buffers, cache) -> float:
    got = model_kv_cache(program, cfg, buffers)
    return max(float(np.abs(a - b).max()) for pair, want in zip(got, cache, strict=True)
               for a, b in zip(pair, want, strict=True))


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mapped_forward_equals_reference(strategy, phase, model):
    cfg = load_model(model)
    w, tokens, kv, want, cache = case(cfg, phase)
    p = build(cfg, strategy, phase)
    got, buffers = run(p, cfg, w, tokens, kv)
    rep = error_report(got, want, "fp32")
    assert rep["ok"] and rep["max_rel_error"] < 1e-5, rep
    assert cache_error(p, cfg, buffers, cache) < 1e-5  # the KV cache, new token appended


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("strategy, phase, model", [
    ("layer-pipelined", "decode", "tiny-llama"), ("layer-sequential", "prefill", "tiny"),
    ("weight-streaming", "decode", "tiny")])
def test_low_precision_within_tolerance(strategy, phase, model, dtype):
    cfg = load_model(model)
    p = build(cfg, strategy, phase, dtype=dtype)
    inputs, want = random_case(p, cfg, seed=0)
    rep = error_report(model_output(p, run_functional(p, HW, inputs)), want, dtype)
    assert rep["ok"], rep
    assert rep["max_rel_error"] > 1e-5  # the storage really is low precision


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_timing_is_the_same_with_or_without_data(strategy, phase, model):
    cfg = load_model(model)
    plain = build(cfg, strategy, phase, dtype="fp16", functional=False)
    func = build(cfg, strategy, phase, dtype="fp16")
    assert all(t.data is None for t in plain.tasks)
    assert not any(a.shape for a in plain.allocs) and "views" not in plain.meta
    assert sum(t.data is not None for t in func.tasks) > len(func.tasks) // 2
    assert [dataclasses.replace(t, data=None) for t in func.tasks] == list(plain.tasks)
    a, b = simulate(plain, HW, engine="fast"), simulate(func, HW, engine="fast")
    assert (a.cycles, a.flops, a.comm_bytes) == (b.cycles, b.flops, b.comm_bytes)
    assert func.total_flops() == plain.total_flops() == plain.meta["graph_flops"]
    sram_a, sram_b = int(a.sram_bytes.max()), int(b.sram_bytes.max())
    extra = func.meta["functional"]["sram_extra_bytes"]
    assert sram_a <= sram_b <= sram_a + extra  # the tiles live in the budgeted SRAM


def test_prefill_cache_feeds_decode():
    """Prefill on the wafer, then decode one token from the cache the prefill left."""
    cfg = load_model("tiny-llama")
    w = ref.init_weights(cfg, 5)
    rng = np.random.default_rng(5)
    prompt, new = rng.integers(0, cfg.vocab_size, (1, 20)), rng.integers(0, cfg.vocab_size, (1, 1))
    pre = strategies()["layer-pipelined"](cfg, HW, phase="prefill", prompt=20, dtype="fp32",
                                          functional=True)
    _, buffers = run(pre, cfg, w, prompt, None)
    kv = model_kv_cache(pre, cfg, buffers)
    dec = strategies()["layer-sequential"](cfg, HW, phase="decode", context=20, dtype="fp32",
                                           functional=True)
    got, _ = run(dec, cfg, w, new, kv)
    want, _ = ref.forward(cfg, w, np.concatenate([prompt, new], axis=1))
    assert error_report(got, want[:, -1], "fp32")["ok"]


def test_gqa_with_two_heads_per_row_and_padding():
    """8 query heads on 4 head rows (two per row, sharing a K/V head); d_model 64 over 12 and
    7 columns (padded shards); three sequences."""
    hw8 = load_preset("mesh8")
    cfg = load_model("tiny-llama").with_overrides(n_heads=8, n_kv_heads=2)
    for strategy, phase, grid, hw in (("layer-sequential", "prefill", 4, hw8),
                                      ("weight-streaming", "decode", 7, HW)):
        w, tokens, kv, want, cache = case(cfg, phase, batch=1)
        p = build(cfg, strategy, phase, hw=hw, batch=1, grid=grid)
        got, buffers = run(p, cfg, w, tokens, kv, hw=hw)
        assert error_report(got, want, "fp32")["max_rel_error"] < 1e-5
        assert cache_error(p, cfg, buffers, cache) < 1e-5
    tiny = load_model("tiny")
    w, tokens, kv, want, _ = case(tiny, "decode", batch=3)
    p = build(tiny, "layer-sequential", "decode", batch=3, grid=12)
    assert error_report(run(p, tiny, w, tokens, kv)[0], want, "fp32")["max_rel_error"] < 1e-5
    odd = cfg.with_overrides(n_heads=6, head_dim=8)  # rows would need 2 K/V heads, budget 1
    with pytest.raises(MappingError, match="K/V heads"):
        build(odd, "layer-sequential", "prefill", hw=hw8, batch=1, grid=4)


def _swap_tiles(name, a, b, *, alt=None):
    def mutate(inputs):
        t = inputs[name if name in inputs else alt]
        t[a], t[b] = t[b].copy(), t[a].copy()
    return mutate


@pytest.mark.parametrize("strategy", ["layer-pipelined", "layer-sequential"])
@pytest.mark.parametrize("wrong", ["swap two W_q tiles", "W_up shard offset by one",
                                   "W_down tiles of two rows swapped", "KV cache one column off",
                                   "tied table shard offset"])
def test_a_wrong_mapping_fails_the_check(strategy, wrong):
    cfg = load_model("tiny")
    w, tokens, kv, want, _ = case(cfg, "decode")
    p = build(cfg, strategy, "decode")
    mutate = {
        "swap two W_q tiles": _swap_tiles("L0.wq", (1, 3), (1, 4), alt="L0.wqkv"),
        "W_up shard offset by one": lambda i: i.update({"L1.wup": np.roll(i["L1.wup"], 1, 2)}),
        "W_down tiles of two rows swapped": _swap_tiles("L0.wdown", 0, 1),
        "KV cache one column off": lambda i: i.update({"L1.kv": np.roll(i["L1.kv"], 1, 1)}),
        "tied table shard offset": lambda i: i.update(
            {"head0.table": np.roll(i["head0.table"], 1, 1)}),
    }[wrong]
    assert error_report(run(p, cfg, w, tokens, kv)[0], want, "fp32")["ok"]
    rep = error_report(run(p, cfg, w, tokens, kv, mutate=mutate)[0], want, "fp32")
    assert not rep["ok"], (wrong, rep)


def test_a_memory_plan_that_reuses_a_live_tile_fails():
    """Tiles are views into one SRAM arena; the residual stream placed in the scratch slot
    that qkv later overwrites breaks the arithmetic (so running checks the plan)."""
    cfg = load_model("tiny")
    w, tokens, kv, want, _ = case(cfg, "prefill")
    p = build(cfg, "layer-sequential", "prefill")
    views = dict(p.meta["views"])
    assert views["act.x"][1] != views["act.qkv"][1]
    views["act.x"] = views["act.qkv"]
    bad = dataclasses.replace(p, meta=p.meta | {"views": views})
    assert error_report(run(p, cfg, w, tokens, kv)[0], want, "fp32")["ok"]
    assert not error_report(run(bad, cfg, w, tokens, kv)[0], want, "fp32")["ok"]


def test_softmax_combine_of_a_reduce_stream_is_exact():
    """Four cores hold disjoint key blocks; the combine along the line gives full attention."""
    rng = np.random.default_rng(0)
    hd, T, heads, cols = 8, 3, 2, 4
    s = rng.normal(size=(cols, T, heads, 5)) * 3  # scores of 5 keys per core
    s[2, 0, 1] = -np.inf  # a core that sees no key for one query
    v = rng.normal(size=(cols, 5, hd))
    m = s.max(-1)
    p = np.where(np.isfinite(m)[..., None], np.exp(s - np.where(np.isfinite(m), m, 0)[..., None]),
                 0)
    o = np.einsum("cthk,ckd->cthd", p, v)
    part = np.concatenate([o, m[..., None], p.sum(-1)[..., None]], -1).reshape(cols, T, -1)
    reg = Region(0, 0, cols, 1)
    prog = Program("c", (LineStream("r", reg, "x", -1, T * heads * (hd + 2), reduce=True,
                                    data=DataOp("reduce", ("part",), "out",
                                                (("combine", "softmax"), ("heads", heads)))),),
                   (Alloc("part", reg, T * heads * (hd + 2) * 4, (T, heads * (hd + 2))),
                    Alloc("out", reg, T * heads * hd * 4, (T, heads * hd))))
    got = run_functional(prog, HW, {"part": part[None].astype(np.float32)})["out"][0, 0]
    full = np.concatenate(list(s), -1)  # every key of every core
    keys = np.concatenate(list(v), 0)
    att = np.exp(full - full.max(-1, keepdims=True))
    want = np.einsum("thk,kd->thd", att / att.sum(-1, keepdims=True), keys)
    np.testing.assert_allclose(got.reshape(T, heads, hd), want, rtol=1e-5, atol=1e-6)


def test_round_to_matches_the_hardware_codecs():
    from wse_sim import kernels
    x = np.random.default_rng(1).normal(size=1000).astype(np.float32) * 3
    for dt in ("fp16", "bf16"):
        np.testing.assert_array_equal(round_to(x, dt), kernels.round_to(x, dt))


def test_training_and_multi_wafer_are_refused():
    cfg = load_model("tiny")
    with pytest.raises(NotImplementedError, match="sparse training"):
        strategies()["weight-streaming"](cfg, HW, phase="train", prompt=8, functional=True,
                                         sparsity=0.5)
    with pytest.raises(NotImplementedError, match="multi-wafer"):
        strategies()["layer-pipelined"](cfg, HW, phase="decode", context=8, functional=True,
                                        stage=(0, 1, True, False))


def test_cli_functional(capsys, monkeypatch):
    argv = ["run", "--preset", "mesh16", "--model", "tiny-llama", "--phase", "decode",
            "--context", "24", "--batch", "2", "--strategy", "layer-sequential"]
    assert main(argv + ["--json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(argv + ["--functional", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    f = out["functional"]
    assert f["checked_against"] == "numpy" and f["ok"] and 0 < f["max_rel_error"] < 1e-2
    assert out["cycles"] == plain["cycles"]
    assert main(argv + ["--functional", "--dtype", "fp32"]) == 0
    assert "functional     ok" in capsys.readouterr().out
    import mapper.strategies.functional_model as fm
    monkeypatch.setattr(fm, "model_output", lambda program, buffers: np.zeros((2, 512)))
    assert main(argv + ["--functional", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["functional"]["ok"] is False
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "train",
                 "--prompt", "8", "--functional"]) == 0  # checks the loss and the gradients
    assert "worst gradient" in capsys.readouterr().out
