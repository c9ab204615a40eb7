"""Whole-model functional runs with 8-bit weights and KV cache (issue 20, item 1): the mapped
forward pass equals the numpy reference that quantizes the same way, within the float
dtype's tolerance, for every 8-bit weights and KV dtype; and the 8-bit path is really taken
(the result is far from the unquantized reference)."""

import dataclasses

import numpy as np
import pytest

from mapper.strategies import functional_model as fm
from mapper.strategies import functional_quant as fq
from mapper.strategies import strategies
from workloads import reference as ref
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.functional import error_report, make_buffers, run_functional
from wse_sim.hardware import load_preset
from wse_sim.precision import Precision
from wse_sim.program import DataOp, ProgramError

HW = load_preset("mesh16")
STRATEGIES = ("layer-pipelined", "layer-sequential", "weight-streaming")
Q8 = ("int8", "fp8_e4m3", "fp8_e5m2")
PROMPT, CONTEXT = 11, 21


def build(model, strategy, phase, dtype="fp32", weights=None, kv=None, functional=True, **kw):
    size = {"prompt": PROMPT} if phase == "prefill" else {"context": CONTEXT}
    prec = Precision.of(dtype, weights, kv)
    return strategies()[strategy](load_model(model), HW, phase=phase, batch=2, dtype=dtype,
                                  functional=functional, precision=prec, **size | kw)


def check(program, model, seed=0):
    """(error report vs the quantizing reference, max rel error vs the float reference,
    buffers)."""
    cfg = load_model(model)
    inputs, want = fm.random_case(program, cfg, seed)
    _, want_float = fm.random_case(program, cfg, seed, quantized=False)
    buffers = run_functional(program, HW, inputs)
    got = fm.model_output(program, buffers)
    rep = error_report(got, want, program.dtype)
    return rep, error_report(got, want_float, program.dtype)["max_rel_error"], buffers


# every 8-bit dtype x model x phase, the strategies in turn
CASES = [(dt, model, phase, STRATEGIES[(i + j + k) % 3])
         for i, dt in enumerate(Q8) for j, model in enumerate(("tiny", "tiny-llama"))
         for k, phase in enumerate(("prefill", "decode"))]


@pytest.mark.parametrize("dt, model, phase, strategy", CASES)
def test_8bit_weights_equal_the_quantizing_reference(dt, model, phase, strategy):
    p = build(model, strategy, phase, weights=dt)
    w8 = [a for a in p.allocs if a.shape and a.dtype == dt]
    assert {a.name.split(".")[-1] for a in w8} >= {"wup", "wdown", "wo", "table"}
    assert all(fq.scale_name(a.name) in {b.name for b in p.allocs} for a in w8)
    rep, float_err, _ = check(p, model)
    assert rep["ok"] and rep["max_rel_error"] < 1e-5, rep
    assert float_err > 1e-3  # the 8-bit weights are really used (see test_..._exercised)


@pytest.mark.parametrize("dt, model, phase, strategy", CASES)
def test_8bit_kv_cache_equals_the_quantizing_reference(dt, model, phase, strategy):
    p = build(model, strategy, phase, kv=dt)
    rep, float_err, buffers = check(p, model)
    assert rep["ok"] and rep["max_rel_error"] < 1e-5, rep
    # the cache the run leaves: every position dequantized as the reference stores it
    cfg = load_model(model)
    fl = fm.layout_of(p, cfg)
    rounder = fq.kv_rounder("fp32", dt, fm.round_to)
    w = fq.reference_weights(ref.init_weights(cfg, 0), "fp32", "fp32", fm.round_to)
    rng = np.random.default_rng(0)
    kv = None
    if fl.start:
        _, kv = ref.forward(cfg, w, rng.integers(0, cfg.vocab_size, (2, fl.start)),
                            kv_round=rounder)
    tokens = rng.integers(0, cfg.vocab_size, (2, fl.sq))
    _, cache = ref.forward(cfg, w, tokens, kv_cache=kv, start_pos=fl.start, kv_round=rounder)
    got = fm.model_kv_cache(p, cfg, buffers)
    for (gk, gv), (k, v) in zip(got, cache, strict=True):
        for g, want in ((gk, rounder(k)), (gv, rounder(v))):
            assert np.abs(g - want).max() <= 1e-5 * np.abs(want).max()


@pytest.mark.parametrize("dtype, weights, kv, model, strategy, phase, kw", [
    ("fp16", "int8", "int8", "tiny-llama", "layer-pipelined", "decode", {}),
    ("bf16", "fp8_e4m3", "fp8_e5m2", "tiny", "layer-sequential", "prefill", {}),
    ("fp16", "fp8_e5m2", "fp8_e4m3", "tiny", "weight-streaming", "decode", {}),
    ("fp32", "int8", "fp8_e4m3", "tiny-llama", "layer-pipelined", "prefill", {"chunks": 3}),
    ("fp32", "fp8_e4m3", "int8", "tiny-llama", "layer-pipelined", "decode",
     {"attention": "rows"}),  # head groups of several rows: the fused Q|K|V tiles
    ("fp32", "int8", "int8", "tiny", "weight-streaming", "decode", {"sparsity": 0.5}),
    ("fp32", "bf16", "fp16", "tiny", "layer-pipelined", "decode", {}),  # per-tensor floats
])
def test_mixed_precisions_equal_the_quantizing_reference(dtype, weights, kv, model, strategy,
                                                         phase, kw):
    p = build(model, strategy, phase, dtype, weights, kv, **kw)
    rep, _, _ = check(p, model)
    assert rep["ok"], rep


@pytest.mark.parametrize("weights, kv", [(dt, None) for dt in Q8] + [(None, dt) for dt in Q8])
def test_the_8bit_path_is_exercised(weights, kv):
    """Skipping the quantization (float tiles) would give the float reference's logits: the
    run is further from them than the quantized tolerance, and within it of the quantizing
    reference."""
    p = build("tiny-llama", "layer-pipelined", "decode", weights=weights, kv=kv)
    rep, float_err, buffers = check(p, "tiny-llama")
    assert rep["ok"] and float_err > 10 * rep["tolerance"], (rep, float_err)
    dt = weights or kv
    name = "L0.wup" if weights else "L0.kv"
    assert buffers[name].dtype == np.uint8 and np.count_nonzero(buffers[name])
    assert buffers[fq.scale_name(name)].dtype == np.float32
    assert next(a for a in p.allocs if a.name == name).dtype == dt


def test_timing_is_the_same_with_or_without_the_data():
    """The records are those of the timed run; the scale tiles live in the arena (beyond the
    timing budget by at most `sram_extra_bytes`)."""
    kw = dict(weights="int8", kv="fp8_e4m3")
    plain = build("tiny", "layer-pipelined", "decode", functional=False, **kw)
    func = build("tiny", "layer-pipelined", "decode", **kw)
    assert [dataclasses.replace(t, data=None) for t in func.tasks] == list(plain.tasks)
    a, b = simulate(plain, HW, engine="fast"), simulate(func, HW, engine="fast")
    assert (a.cycles, a.flops, a.comm_bytes) == (b.cycles, b.flops, b.comm_bytes)
    sram_a, sram_b = int(a.sram_bytes.max()), int(b.sram_bytes.max())
    assert sram_a <= sram_b <= sram_a + func.meta["functional"]["sram_extra_bytes"]


def test_8bit_tiles_are_read_only_with_their_scales():
    p = build("tiny", "layer-pipelined", "decode", weights="int8")
    bufs = make_buffers(p)
    w = bufs["L0.wup"]
    with pytest.raises(ProgramError, match="holds int8 codes, which only a kernel given"):
        w.as_f32(w.data)
    inputs, _ = fm.random_case(p, load_model("tiny"))
    del inputs["L0.wup.scale"]
    inputs["L0.wup"] = inputs["L0.wup"].astype(np.float32)
    with pytest.raises(ProgramError, match="a int8 buffer takes uint8 codes, got float32"):
        run_functional(p, HW, inputs)


def test_a_gemm_by_8bit_weights_needs_their_scales():
    p = build("tiny", "layer-pipelined", "decode", weights="int8")

    def drop_scales(t):
        d = t.data
        if d is None or d.inputs[-1:] != ("L0.wup.scale",):
            return t
        return dataclasses.replace(t, data=DataOp(d.kernel, d.inputs[:2], d.output, d.params))
    p = dataclasses.replace(p, tasks=tuple(drop_scales(t) for t in p.tasks))
    inputs, _ = fm.random_case(p, load_model("tiny"))
    with pytest.raises(ProgramError, match="needs a third input of fp32 scales"):
        run_functional(p, HW, inputs)


def test_cli_prints_ok_and_the_float_error(capsys):
    argv = ["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode", "--context",
            "8", "--weights-dtype", "int8", "--kv-dtype", "fp8_e4m3", "--functional"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "functional     ok: logits" in out
    assert "quantization   weights int8, kv fp8_e4m3: logits max rel error" in out


@pytest.mark.parametrize("argv, msg", [
    (["--preset", "wse3", "--grid", "16", "--dtype", "int8", "--functional"],
     "not implemented: functional: int8 activations (W8A8) are timed only; missing: "),
    (["--preset", "mesh16", "--accum-dtype", "bf16", "--functional"],
     "not implemented: functional: accum_dtype bf16 is timed only"),
])
def test_what_stays_timed_only_is_refused_in_one_line(argv, msg, capsys):
    code = main(["run", "--model", "tiny", "--prompt", "8"] + argv)
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and msg in err, err


def test_the_scales_are_counted_in_the_sram_budget():
    """The timing model budgets the scales (`scales`): a layer's weight-scale tiles of the
    functional run to the byte; the KV cache's one fp32 scale per hd int8 values; the tables'
    one per row (token, position) and LM-head column."""
    cfg = load_model("tiny-llama")
    w8 = build("tiny-llama", "layer-pipelined", "decode", weights="int8")
    tiles = sum(4 * int(np.prod(a.shape)) for a in w8.allocs
                if a.name.startswith("L0.") and a.name.endswith(".scale"))
    assert w8.meta["sram_buffers_per_core"]["scales"] == tiles
    kv8 = build("tiny-llama", "layer-pipelined", "decode", kv="int8",
                functional=False).meta["sram_buffers_per_core"]
    assert kv8["scales"] == kv8["kv_cache"] // cfg.hd * 4
    f32 = build("tiny-llama", "layer-pipelined", "decode", functional=False)
    assert "scales" not in f32.meta["sram_buffers_per_core"]
    from mapper.strategies.common import make_run
    run = make_run(cfg, HW, phase="decode", batch=1, prompt=1, context=8, dtype="fp16",
                   grid=None, sparsity=0.0, precision=Precision.of("fp16", "fp8_e4m3"))
    params = cfg.embedding_params() + cfg.lm_head_params()
    assert run.table_bytes == params + 4 * 2 * cfg.vocab_size  # untied: table and LM head


@pytest.mark.parametrize("weights, kv", [("int8", "fp8_e4m3"), ("fp8_e5m2", "int8")])
def test_a_quantized_prefill_cache_feeds_decode(weights, kv):
    """Prefill with 8-bit weights and KV cache on the wafer, then decode one token from the
    cache it left (dequantized by model_kv_cache, quantized again by model_inputs: the same
    codes); equal to the quantizing reference over the whole sequence."""
    cfg = load_model("tiny-llama")
    w = ref.init_weights(cfg, 5)
    rng = np.random.default_rng(5)
    prompt, new = rng.integers(0, cfg.vocab_size, (1, 20)), rng.integers(0, cfg.vocab_size, (1, 1))
    prec = Precision.of("fp32", weights, kv)
    pre = strategies()["layer-pipelined"](cfg, HW, phase="prefill", prompt=20, dtype="fp32",
                                          functional=True, precision=prec)
    cache = fm.model_kv_cache(pre, cfg, run_functional(pre, HW, fm.model_inputs(
        pre, cfg, w, prompt)))
    dec = strategies()["layer-sequential"](cfg, HW, phase="decode", context=20, dtype="fp32",
                                           functional=True, precision=prec)
    got = fm.model_output(dec, run_functional(dec, HW, fm.model_inputs(dec, cfg, w, new, cache)))
    w64 = fq.reference_weights(w, weights, "fp32", fm.round_to)
    want, _ = ref.forward(cfg, w64, np.concatenate([prompt, new], axis=1),
                          kv_round=fq.kv_rounder("fp32", kv, fm.round_to))
    rep = error_report(got, want[:, -1], "fp32")
    assert rep["ok"] and rep["max_rel_error"] < 1e-5, rep
