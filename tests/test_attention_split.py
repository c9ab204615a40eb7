"""Attention over every row of a region (issue 7): when a region has more rows than heads, a
head group owns G rows and its keys are split over G x C cores. The split and its KV-cache
closed form, the full-wafer mapping it enables, and the forward pass computed for real."""

import math

import numpy as np
import pytest

from mapper.attention import split
from mapper.strategies import strategies
from mapper.strategies.functional_model import model_inputs, model_kv_cache, model_output
from mapper.strategies.tp2d import TP2D, Layout, layer_buffers
from workloads import reference as ref
from workloads.models import load_model
from wse_sim.experiment import build_program
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import ConfigError, load_preset
from wse_sim.program import (
    Alloc,
    DataOp,
    Dep,
    LineStream,
    Program,
    ProgramBuilder,
    Region,
    check_fits,
)

HW = load_preset("mesh16")
TOL = {"fp32": 1e-5, "fp16": 1e-2, "bf16": 5e-2}


# ---- the split ------------------------------------------------------------------------------

def test_rows_up_to_heads_keep_one_row_per_group():
    cfg = load_model("llama3-8b")  # 32 heads, 8 K/V heads
    for rows in (1, 5, 16, 32):
        a = split(cfg, rows, 7)
        assert (a.groups, a.rows_per_group, a.rows_used) == (rows, 1, rows)
        assert a.heads_per_group == math.ceil(32 / rows)
        assert a.kv_heads_per_group == math.ceil(8 / rows)
        assert a.kv_bytes_per_core(100, "fp16") == 2 * a.kv_heads_per_group * 128 * 15 * 2


def test_more_rows_than_heads_make_groups_of_rows_per_kv_head():
    cfg = load_model("llama3-8b")
    a = split(cfg, 994, 750)
    assert (a.groups, a.rows_per_group, a.rows_used) == (8, 124, 992)
    assert (a.heads_per_group, a.kv_heads_per_group) == (4, 1)
    assert a.cores_per_group == 124 * 750
    # one cache: 2 x kv heads per group x head_dim x ceil(keys / (G C)) x bytes
    for keys in (1, 129, 93_000, 93_001):
        assert a.kv_bytes_per_core(keys, "fp16") == 2 * 1 * 128 * math.ceil(keys / 93_000) * 2
    assert a.max_tokens(2 * 128 * 2, "fp16") == 93_000
    assert a.max_tokens(2 * 128 * 2 - 1, "fp16") == 0


def brute_force_slots(n: int, keys: int, offsets) -> int:
    """Cached positions on the fullest of n cores, cache m's position p at (p + o_m) mod n."""
    per_core = np.zeros(n, np.int64)
    for o in offsets:
        q, s = divmod(keys, n)
        per_core += q
        per_core[(o + np.arange(s)) % n] += 1
    return int(per_core.max())


@pytest.mark.parametrize("n, streams", [(93_000, 64), (93_000, 32), (16, 3), (12, 40)])
def test_caches_of_layers_and_sequences_start_on_different_cores(n, streams):
    """M caches (layers x sequences) on a group of N cores: cache m starts at core m N div M,
    so the fullest core holds about M keys / N positions (the closed form), not M ceil(keys /
    N)."""
    a = split(load_model("tiny"), 1, n)  # one row of n columns: N = n
    assert a.cores_per_group == n
    offs = a.kv_offsets(streams)
    assert offs == tuple(m * n // streams for m in range(streams))
    for keys in (1, 2, 7, n // 3, n - 1, n, n + 1, 5 * n // 2):
        got = a.kv_slots(keys, streams)
        assert got == brute_force_slots(n, keys, offs)
        assert math.ceil(streams * keys / n) <= got <= math.ceil(streams * keys / n) + 1
        limit = a.max_tokens(a.kv_bytes_per_core(keys, "bf16", streams), "bf16", streams)
        assert limit >= keys and a.kv_slots(limit + 1, streams) > got
    mha = split(load_model("tiny"), 16, 16)  # 4 heads = 4 K/V heads
    assert (mha.groups, mha.rows_per_group, mha.heads_per_group) == (4, 4, 1)
    assert split(load_model("tiny"), 16, 16, seq_rows=False).rows_per_group == 1


def test_llama3_8b_layer_sequential_decode_maps_on_wse2():
    """The whole wafer: it used to be rejected (every layer's attention weights and KV cache
    on 32 of the 994 rows); now the program builds, fits and conserves the FLOPs."""
    hw = load_preset("wse2")
    cfg = load_model("llama3-8b")
    p = build_program(hw, "llama3-8b", strategy="layer-sequential", phase="decode",
                      context=2048, batch=2)
    assert p.meta["attention"] == {"groups": 8, "rows_per_group": 124}
    buf = p.meta["sram_buffers_per_core"]
    G, C, L = 124, 750, cfg.n_layers
    # 2 x kv heads per group x head_dim x (the fullest core's share of 32 layers x 2
    # sequences x 2049 positions over G x C cores) x fp16 bytes
    slots = brute_force_slots(G * C, 2049, [m * G * C // 64 for m in range(64)])
    assert slots == math.ceil(64 * 2049 / (G * C)) == 2
    assert buf["kv_cache"] == 2 * 1 * cfg.hd * slots * 2
    assert p.meta["kv_context_limit"] >= 2049
    assert p.total_flops() == p.meta["graph_flops"]
    maps = check_fits(p, hw)
    assert int(maps["sram_bytes"].max()) == sum(buf.values()) <= hw.sram_bytes
    assert int(maps["colors"].max()) <= hw.colors_per_core
    # the head-parallel split (32 rows) would not fit
    old = layer_buffers(cfg, Layout(Region(0, 0, C, 994), 32, 1), 2, 2049, 2, "fp16",
                        weight_layers=L)
    assert sum(old.values()) > hw.sram_bytes


def test_cerebras_gpt_1p3b_layer_sequential_decode_maps_on_wse2():
    p = build_program(load_preset("wse2"), "cerebras-gpt-1.3b", strategy="layer-sequential",
                      phase="decode", context=1024)
    assert p.meta["attention"]["rows_per_group"] == 994 // 16
    assert p.total_flops() == p.meta["graph_flops"]


def test_training_keeps_one_row_per_group():
    p = build_program(HW, "tiny", strategy="layer-sequential", phase="train", prompt=8)
    assert p.meta["attention"] == {"groups": 4, "rows_per_group": 1}
    cfg = load_model("tiny")
    run = build_program(HW, "tiny", strategy="layer-sequential", phase="prefill", prompt=8,
                        attention="rows")
    assert run.meta["attention"] == {"groups": 4, "rows_per_group": 4}
    auto = build_program(HW, "tiny", strategy="layer-sequential", phase="prefill", prompt=8)
    assert auto.meta["attention"] == {"groups": 4, "rows_per_group": 1}  # heads: it fits
    tp = TP2D(ProgramBuilder("t"), cfg, {}, "fp16", 0.0, 8)
    with pytest.raises(NotImplementedError, match="4 rows per head group"):
        tp.backward(0, Layout.of(Region(0, 0, 16, 16), cfg), None)


def test_group_streams_stay_in_the_color_budget_and_timing_records_balance():
    for model in ("tiny", "tiny-llama"):
        seq = build_program(HW, model, strategy="layer-sequential", phase="decode", context=40,
                            attention="rows")
        head = build_program(HW, model, strategy="layer-sequential", phase="decode",
                             context=40, grid=4)
        assert seq.meta["attention"]["rows_per_group"] > 1
        assert head.meta["attention"]["rows_per_group"] == 1
        colors = [int(check_fits(q, HW)["colors"].max()) for q in (seq, head)]
        assert colors[0] == colors[1] <= HW.colors_per_core
        assert seq.total_flops() == seq.meta["graph_flops"]
        ops = [t.op for t in seq.tasks]
        groups = seq.meta["attention"]["groups"]
        assert ops.count("L0.qkv.gather") == ops.count("L0.attn.combine") == groups
        assert "L0.qkv.gather" not in {t.op for t in head.tasks}


# ---- computed for real ----------------------------------------------------------------------

def case(cfg, phase, batch, prompt, context, dtype="fp32", seed=4):
    """Weights, tokens, the prompt's cache, the reference logits of the last tokens and the
    new cache; the reference runs on the weights rounded to `dtype` (as the cores hold them)."""
    from mapper.strategies.functional_model import round_to
    w = ref.init_weights(cfg, seed)
    w64 = {k: round_to(v, dtype).astype(np.float64) for k, v in w.items()}
    rng = np.random.default_rng(seed)
    kv = None
    if phase == "decode":
        _, kv = ref.forward(cfg, w64, rng.integers(0, cfg.vocab_size, (batch, context)))
    tokens = rng.integers(0, cfg.vocab_size, (batch, prompt if phase == "prefill" else 1))
    logits, cache = ref.forward(cfg, w64, tokens, kv_cache=kv, start_pos=context if kv else 0)
    return w, tokens, kv, logits[:, -1], cache


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
@pytest.mark.parametrize("model, heads, grid, G", [
    ("tiny", 2, 6, 3),          # 2 heads on 6 rows: several slots per core
    ("tiny", 4, 11, 2),         # 3 rows hold no attention, padded d-shards
    ("tiny-llama", 4, 11, 5),   # GQA: a group per K/V head, padded Q|K|V and O slices
])
def test_forward_over_row_groups_equals_reference(model, heads, grid, G, phase, dtype):
    base = load_model(model)
    cfg = base.with_overrides(n_heads=heads, n_kv_heads=min(heads, base.n_kv_heads))
    batch, prompt, context = 2, 11, 21
    w, tokens, kv, want, cache = case(cfg, phase, batch, prompt, context, dtype)
    p = strategies()["layer-sequential"](cfg, HW, phase=phase, batch=batch, prompt=prompt,
                                         context=context, dtype=dtype, grid=grid,
                                         functional=True, attention="rows")
    assert p.meta["attention"]["rows_per_group"] == G
    buffers = run_functional(p, HW, model_inputs(p, cfg, w, tokens, kv))
    rep = error_report(model_output(p, buffers), want, dtype)
    assert rep["ok"] and rep["max_rel_error"] < TOL[dtype], rep
    got = model_kv_cache(p, cfg, buffers)  # the new K/V landed on the cores that own them
    err = max(float(np.abs(a - b).max() / np.abs(b).max())
              for pair, ref_pair in zip(got, cache, strict=True)
              for a, b in zip(pair, ref_pair, strict=True))
    assert err < TOL[dtype]


def test_a_kv_cache_one_row_off_inside_a_group_fails():
    cfg = load_model("tiny").with_overrides(n_heads=2, n_kv_heads=2)
    w, tokens, kv, want, _ = case(cfg, "decode", 1, 1, 21)
    p = strategies()["layer-sequential"](cfg, HW, phase="decode", context=21, dtype="fp32",
                                         grid=4, functional=True, attention="rows")
    inputs = model_inputs(p, cfg, w, tokens, kv)
    ok = error_report(model_output(p, run_functional(p, HW, inputs)), want, "fp32")
    kv0 = inputs["L0.kv"]  # (4 rows: 2 groups of G = 2, C, ...)
    kv0[0], kv0[1] = kv0[1].copy(), kv0[0].copy()  # the two rows of group 0 swapped
    bad = error_report(model_output(p, run_functional(p, HW, inputs)), want, "fp32")
    assert ok["ok"] and not bad["ok"]


# ---- the streams' data semantics ------------------------------------------------------------

def _run(tasks, allocs, inputs):
    return run_functional(Program("t", tuple(tasks), tuple(allocs)), HW, inputs)


def test_gather_and_scatter_streams():
    col = Region(0, 0, 1, 3)
    x = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 1, 2, 4)  # a (2, 4) tile per core
    out = _run([LineStream("g", col, "y", -1, 20, reduce=True,
                           data=DataOp("reduce", ("s",), "f", (("gather", True),)))],
               [Alloc("s", col, 32, (2, 4)), Alloc("f", col, 80, (2, 10))], {"s": x})["f"]
    np.testing.assert_array_equal(out[0, 0], np.concatenate([x[0, 0], x[1, 0], x[2, 0]],
                                                            1)[:, :10])
    full = np.zeros((3, 1, 2, 10), np.float32)
    full[0, 0] = np.arange(20).reshape(2, 10)
    got = _run([LineStream("b", col, "y", 1, 20,
                           data=DataOp("bcast", ("f",), "s", (("scatter", 4),)))],
               [Alloc("s", col, 32, (2, 4)), Alloc("f", col, 80, (2, 10))], {"f": full})["s"]
    for i in range(3):
        want = np.zeros((2, 4))
        part = full[0, 0][:, 4 * i:4 * i + 4]
        want[:, :part.shape[1]] = part
        np.testing.assert_array_equal(got[i, 0], want)


def test_two_level_softmax_combine_equals_one_line():
    """Partials merged along rows (kept unnormalised), then up the column, equal a merge of
    every core's partial in one line."""
    rng = np.random.default_rng(2)
    heads, hd, T, R, C = 2, 4, 3, 3, 4
    s = rng.normal(size=(R, C, T, heads, 5)) * 2
    s[1, 2, 0] = -np.inf  # a core that sees no key
    v = rng.normal(size=(R, C, 5, hd))
    m = s.max(-1)
    p = np.where(np.isfinite(m)[..., None],
                 np.exp(s - np.where(np.isfinite(m), m, 0)[..., None]), 0)
    o = np.einsum("rcthk,rckd->rcthd", p, v)
    part = np.concatenate([o, m[..., None], p.sum(-1)[..., None]], -1).reshape(R, C, T, -1)
    reg, col = Region(0, 0, C, R), Region(0, 0, 1, R)
    n = T * heads * (hd + 2)
    softmax = (("combine", "softmax"), ("heads", heads))
    tasks = [LineStream("rows", reg, "x", -1, n, reduce=True,
                        data=DataOp("reduce", ("p",), "p", softmax + (("partial", True),))),
             LineStream("col", col, "y", -1, n, reduce=True, deps=(Dep(0, "all"),),
                        data=DataOp("reduce", ("p",), "o", softmax))]
    got = _run(tasks, [Alloc("p", reg, n * 4, (T, heads * (hd + 2))),
                       Alloc("o", reg, T * heads * hd * 4, (T, heads * hd))],
               {"p": part.astype(np.float32)})["o"][0, 0]
    scores = np.concatenate(list(s.reshape(R * C, T, heads, 5)), -1)
    keys = np.concatenate(list(v.reshape(R * C, 5, hd)), 0)
    att = np.exp(scores - scores.max(-1, keepdims=True))
    want = np.einsum("thk,kd->thd", att / att.sum(-1, keepdims=True), keys)
    np.testing.assert_allclose(got.reshape(T, heads, hd), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["layer-pipelined", "weight-streaming"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_row_split_under_the_other_strategies_equals_reference(strategy, phase):
    cfg = load_model("tiny-llama")
    batch, prompt, context = 2, 11, 21
    w, tokens, kv, want, _ = case(cfg, phase, batch, prompt, context)
    p = strategies()[strategy](cfg, HW, phase=phase, batch=batch, prompt=prompt,
                               context=context, dtype="fp32", functional=True, attention="rows")
    assert p.meta["attention"]["rows_per_group"] > 1
    rep = error_report(model_output(p, run_functional(p, HW, model_inputs(p, cfg, w, tokens,
                                                                           kv))), want, "fp32")
    assert rep["ok"] and rep["max_rel_error"] < TOL["fp32"], rep


def test_auto_takes_heads_when_they_fit_and_rows_when_not():
    hw = load_preset("wse2")
    small = build_program(HW, "tiny", strategy="layer-sequential", phase="decode", context=16)
    big = build_program(hw, "llama3-8b", strategy="layer-sequential", phase="decode",
                        context=128)
    assert small.meta["attention"]["rows_per_group"] == 1
    assert big.meta["attention"]["rows_per_group"] > 1
    # heads whenever some chunking or slot shape fits with them: a weight-streaming prefill
    # in chunks, and layer-pipelined slots that the row split would let shrink
    ws = build_program(hw, "cerebras-gpt-1.3b", strategy="weight-streaming", phase="prefill",
                       prompt=128)
    assert ws.meta["attention"]["rows_per_group"] == 1 and ws.meta["chunks"] > 1
    lp = build_program(hw, "cerebras-gpt-1.3b", strategy="layer-pipelined", phase="decode",
                       context=1024)
    assert lp.meta["attention"]["rows_per_group"] == 1
    with pytest.raises(ConfigError, match="attention: got 'cols', must be one of auto, heads, rows"):
        build_program(HW, "tiny", attention="cols")


def test_search_tries_the_row_split_on_the_best_mapping():
    from wse_sim.search_mappings import search_mapping
    found, best = search_mapping(HW, "tiny", phase="decode", context=16, budget=40)
    tried = [c for c, cost, _ in found.tried if cost is not None]
    rows = [c for c in tried if c["attention"] == "rows"]
    assert len(rows) == 1
    assert {k: v for k, v in rows[0].items() if k != "attention"} == \
        {k: v for k, v in found.best.items() if k != "attention"} or found.best is rows[0]
    assert found.best_cost == min(cost for _, cost, _ in found.tried if cost is not None)
    assert found.why("attention").startswith(found.best["attention"])
    fixed, _ = search_mapping(HW, "tiny", phase="decode", context=16, budget=6,
                              attention="heads")
    assert {c["attention"] for c, _, _ in fixed.tried} == {"heads"}
