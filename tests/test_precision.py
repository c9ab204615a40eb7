"""Per-tensor precision (docs/precision.md): the compute-dtype rule, SRAM, wavelets and I/O
following each tensor's dtype, to the byte, and the refusals."""

from __future__ import annotations

import json
import math

import pytest

from mapper.strategies.tp2d import Layout, layer_buffers
from workloads.graph import build_graph
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.errors import ConfigError
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset
from wse_sim.precision import Precision, matmul_dtype
from wse_sim.program import Compute, IoTransfer, LineStream, Region, Unicast
from wse_sim.timing import compute_cycles

WSE3 = load_preset("wse3")


# ---- the rule ---------------------------------------------------------------------------------
@pytest.mark.parametrize("a, b, want", [
    ("int8", "fp16", "fp16"), ("fp16", "int8", "fp16"), ("int8", "int8", "int8"),
    ("fp8_e4m3", "bf16", "bf16"), ("fp8_e4m3", "fp8_e4m3", "fp8_e4m3"),
    ("fp8_e4m3", "fp8_e5m2", "fp16"), ("int8", "fp8_e5m2", "fp16"), ("int8", "fp32", "fp32"),
    ("fp16", "fp32", "fp32"), ("fp16", "fp16", "fp16")])
def test_a_matmul_runs_on_the_lanes_of_the_wider_operand(a, b, want):
    assert matmul_dtype(a, b) == want


def test_precision_defaults_and_derived_dtypes():
    p = Precision.of("fp16")
    assert (p.acts, p.weights, p.kv, p.accum, p.uniform) == ("fp16",) * 3 + ("fp32", True)
    w8 = Precision.of("fp16", "int8")
    assert (w8.matmul, w8.attention, w8.vector, w8.uniform) == ("fp16", "fp16", "fp16", False)
    a8 = Precision.of("int8")
    assert (a8.matmul, a8.attention, a8.vector) == ("int8", "int8", "fp16")
    assert Precision.of("bf16", kv="fp8_e5m2").attention == "bf16"
    assert w8.bytes("weights") == 1 and w8.bytes("acts") == 2 and w8.bytes("accum") == 4


@pytest.mark.parametrize("kw, msg", [
    ({"weights": "int4"}, "weights_dtype: got 'int4', must be one of fp32, fp16, bf16, int8"),
    ({"kv": "fp6"}, "kv_dtype: got 'fp6'"),
    ({"accum": "int8"}, "accum_dtype: got 'int8', must be one of fp32, fp16, bf16"),
    ({"acts": "fp4"}, "dtype: got 'fp4'")])
def test_bad_dtypes_are_refused_naming_the_field(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        Precision(**kw)


# ---- SRAM, to the byte -------------------------------------------------------------------------
def expected_buffers(cfg, lay, tokens, keys, b, wb, kvb, ab):
    """layer_buffers' formula written out (tp2d.layer_buffers' docstring)."""
    R, C = lay.reg.rows, lay.reg.cols
    att = lay.split(cfg)
    shapes = cfg.layer_weight_shapes()
    attn = sum(k * n for w, (k, n) in shapes.items() if w in ("w_q", "w_k", "w_v", "w_o"))
    ffn = sum(k * n for w, (k, n) in shapes.items() if w not in ("w_q", "w_k", "w_v", "w_o"))
    matrices = math.ceil(attn / (lay.rows_att * C)) + math.ceil(ffn / (R * C))
    small = math.ceil(cfg.layer_small_params() / C)
    return {"weights": matrices * wb + small * b,
            "kv_cache": 2 * att.kv_heads_per_group * cfg.hd * att.kv_slots(keys, 1) * kvb,
            "scores": tokens * att.heads_per_group * att.positions_per_core(keys) * ab}


@pytest.mark.parametrize("weights, kv, accum", [
    ("fp16", "fp16", "fp32"), ("int8", "fp16", "fp32"), ("int8", "int8", "fp32"),
    ("fp8_e4m3", "fp8_e5m2", "fp16"), ("fp32", "int8", "bf16")])
def test_layer_buffers_follow_each_tensor_dtype(weights, kv, accum):
    cfg = load_model("cerebras-gpt-111m")
    lay = Layout.of(Region(0, 0, 16, 12), cfg)
    prec = Precision.of("fp16", weights, kv, accum)
    got = layer_buffers(cfg, lay, 1, 129, 1, "fp16", prec=prec)
    want = expected_buffers(cfg, lay, 1, 129, 2, prec.bytes("weights"), prec.bytes("kv"),
                            prec.bytes("accum"))
    assert {k: got[k] for k in want} == want
    base = layer_buffers(cfg, lay, 1, 129, 1, "fp16")
    assert got["x_shard"] == base["x_shard"]  # activations stay fp16


def test_int8_weights_shrink_the_fullest_core_by_the_weight_bytes_saved():
    """End to end: LLaMA-style tiny decode on wse3; the weights buffer halves its matrices'
    bytes, nothing else moves but the KV cache when it is int8 too."""
    kw = dict(phase="decode", context=64, grid=32)
    meta = {k: build_program(WSE3, "tiny-llama", **kw, **x).meta["sram_buffers_per_core"]
            for k, x in (("fp16", {}), ("w8", {"weights_dtype": "int8"}),
                         ("w8kv8", {"weights_dtype": "int8", "kv_dtype": "int8"}))}
    cfg = load_model("tiny-llama")
    small = meta["fp16"]["weights"] - 2 * (meta["fp16"]["weights"] - meta["w8"]["weights"])
    assert 0 <= small <= 2 * math.ceil(cfg.layer_small_params() / 2)  # only the norms at fp16
    assert meta["w8"]["kv_cache"] == meta["fp16"]["kv_cache"]
    assert meta["w8kv8"]["kv_cache"] * 2 == meta["fp16"]["kv_cache"]
    for k in meta["fp16"]:
        if k not in ("weights", "kv_cache"):
            assert meta["w8"][k] == meta["fp16"][k] == meta["w8kv8"][k], k


# ---- compute dtypes and wavelets ---------------------------------------------------------------
def tasks(program, cls):
    return {t.op: t for t in program.tasks if isinstance(t, cls)}


def test_compute_dtypes_follow_the_rule():
    mixed = tasks(build_program(WSE3, "tiny-llama", phase="decode", context=32, grid=16,
                                weights_dtype="int8", kv_dtype="int8"), Compute)
    assert mixed["L0.ffn_up"].dtype == "fp16" and mixed["L0.attn_qk"].dtype == "fp16"
    a8 = tasks(build_program(WSE3, "tiny-llama", phase="decode", context=32, grid=16,
                             dtype="int8"), Compute)
    assert a8["L0.ffn_up"].dtype == "int8" and a8["L0.attn_av"].dtype == "int8"
    assert a8["L0.softmax"].dtype == "fp16" and a8["L0.act"].dtype == "fp16"
    up = a8["L0.ffn_up"]
    # int8 x int8 on wse3: 16 lanes, twice the fp16 rate (SRAM permitting)
    per_core = -(-up.flops // up.region.size)
    assert compute_cycles(WSE3, per_core, "int8") * 2 == compute_cycles(WSE3, 2 * per_core, "int8")
    assert compute_cycles(WSE3, 3200, "int8") == 100 and compute_cycles(WSE3, 3200, "fp16") == 200


def test_activations_travel_four_to_a_wavelet_and_partial_sums_in_fp16():
    kw = dict(phase="prefill", prompt=16, grid=16)
    p16 = build_program(WSE3, "tiny", **kw)
    p8 = build_program(WSE3, "tiny", dtype="int8", **kw)
    h16, h8 = tasks(p16, Unicast)["L0.handoff"], tasks(p8, Unicast)["L0.handoff"]
    values = h16.wavelets * 2  # fp16: two values per wavelet (an even count here)
    assert h8.wavelets == -(-values // 4)
    s16, s8 = tasks(p16, LineStream), tasks(p8, LineStream)
    bcast = next(k for k in s16 if k.endswith(".bcast") and not s16[k].reduce
                 and s16[k].dtype == "fp16")
    assert s8[bcast].wavelets == -(-s16[bcast].wavelets * 2 // 4)
    red = next(k for k in s16 if s16[k].reduce and s16[k].dtype == "fp16")
    assert s8[red].dtype == "fp16" and s8[red].wavelets == s16[red].wavelets


def test_streamed_weights_follow_the_weights_dtype():
    cfg = load_model("tiny")
    kw = dict(phase="decode", context=16, grid=16, strategy="weight-streaming")
    io16 = tasks(build_program(WSE3, "tiny", **kw), IoTransfer)
    io8 = tasks(build_program(WSE3, "tiny", weights_dtype="int8", **kw), IoTransfer)
    small = cfg.layer_small_params(0)
    matrices = cfg.layer_params(0) - small
    assert io16["L0.weights.in"].bytes == (matrices + small) * 2
    assert io8["L0.weights.in"].bytes == matrices + small * 2
    assert io8["lm_head.weights.in"].bytes * 2 == io16["lm_head.weights.in"].bytes


def test_the_graph_counts_weight_and_kv_bytes_in_their_dtypes():
    cfg = load_model("tiny")
    g16 = build_graph(cfg, "decode", context=31)
    g8 = build_graph(cfg, "decode", context=31, weights_dtype="int8", kv_dtype="fp8_e4m3")
    o16, o8 = g16.nodes["L0.ffn_up"]["op"], g8.nodes["L0.ffn_up"]["op"]
    assert o8.weight_bytes * 2 == o16.weight_bytes and o8.bytes_in == o16.bytes_in
    q16, q8 = g16.nodes["L0.attn_qk"]["op"], g8.nodes["L0.attn_qk"]["op"]
    assert q16.bytes_in - q8.bytes_in == 32 * cfg.kv_dim  # K of 32 positions, 2 -> 1 byte
    assert g8.graph["weights_dtype"] == "int8" and g8.graph["kv_dtype"] == "fp8_e4m3"
    with pytest.raises(ValueError, match="weights_dtype: got 'int8', must be the run's dtype 'fp16' with phase train"):
        build_graph(cfg, "train", prompt=8, weights_dtype="int8")


# ---- refusals, one line, exit 2 ----------------------------------------------------------------
@pytest.mark.parametrize("argv, msg", [
    (["--preset", "mesh16", "--dtype", "int8"], "dtype: got 'int8', but mesh16 has no int8 lanes"),
    (["--preset", "wse3", "--grid", "16", "--dtype", "fp8_e4m3"],
     "but wse3 has no fp8_e4m3 lanes"),
    (["--preset", "mesh16", "--weights-dtype", "int4"], "--weights-dtype: got 'int4'"),
    (["--preset", "mesh16", "--accum-dtype", "int8"], "--accum-dtype: got 'int8'"),
    (["--preset", "mesh16", "--phase", "train", "--kv-dtype", "int8"],
     "kv_dtype: got 'int8', which does not apply"),
    (["--preset", "wse3", "--grid", "16", "--phase", "train", "--dtype", "int8"],
     "precision: acts int8, weights int8, kv int8, accum fp32 with phase train"),
    (["--preset", "wse3", "--grid", "16", "--dtype", "int8", "--functional"],
     "not implemented: functional: int8 activations (W8A8) are timed only"),
    (["--preset", "mesh16", "--model", "tiny-moe", "--kv-dtype", "int8"],
     "not implemented: precision: acts fp16, weights fp16, kv int8"),
])
def test_refused_in_one_line(argv, msg, capsys):
    base = ["run", "--model", "tiny", "--prompt", "8"]
    try:
        code = main(base + argv)
    except SystemExit as e:  # argparse's refusal of a value outside the choices
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and msg in err, err


def test_the_what_if_fp8_lanes_run(capsys):
    """fp8 activations and weights on a what-if mesh16 with 8 fp8 lanes: the matmuls run in
    fp8, the element-wise ops in fp16."""
    from wse_sim.engine import simulate
    hw = load_preset("mesh16", {"fmac_lanes_fp8_e4m3": 8})
    r = simulate(build_program(hw, "tiny", phase="decode", context=8, dtype="fp8_e4m3"), hw,
                 engine="reference")
    assert set(r.flops_by_dtype) >= {"fp8_e4m3", "fp16"}
    argv = ["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode", "--context",
            "8", "--dtype", "fp8_e4m3", "--json"]
    assert main(argv + ["--set", "fmac_lanes_fp8_e4m3=8"]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "fp8_e4m3"


@pytest.mark.parametrize("option", [["--weights-dtype", "int8"], ["--kv-dtype", "int8"],
                                    ["--accum-dtype", "fp16"]])
def test_each_option_acts_on_the_sram(option, capsys):
    base = ["run", "--preset", "mesh16", "--model", "tiny", "--prompt", "16", "--json"]
    assert main(base) == 0
    before = json.loads(capsys.readouterr().out)["sram_bytes_per_core"]
    assert main(base + option) == 0
    assert json.loads(capsys.readouterr().out)["sram_bytes_per_core"] < before


def test_a_spec_file_carries_the_dtypes(tmp_path, capsys):
    f = tmp_path / "run.toml"
    argv = ["run", "--preset", "mesh16", "--model", "tiny", "--prompt", "16", "--json"]
    assert main(argv + ["--weights-dtype", "int8", "--save-spec", str(f)]) == 0
    first = json.loads(capsys.readouterr().out)
    assert 'weights_dtype = "int8"' in f.read_text()
    assert main(["run", "--spec", str(f), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["sram_bytes_per_core"] == first["sram_bytes_per_core"]


def test_an_8bit_buffer_holds_codes_read_only_with_their_scales():
    """Functional 8-bit tiles are uint8 codes; nothing decodes them without their scales
    (whole-model runs: tests/test_functional_quant.py)."""
    from wse_sim.functional import make_buffers
    from wse_sim.program import Alloc, Program, ProgramError
    p = Program("p", (Compute("c", Region(0, 0, 1, 1), 1),),
                (Alloc("w", Region(0, 0, 1, 1), 64, (8, 8), "int8"),))
    w = make_buffers(p)["w"]
    assert w.data.dtype.name == "uint8" and w.data.shape == (1, 1, 8, 8)
    with pytest.raises(ProgramError, match="buffer 'w' holds int8 codes, which only a kernel"):
        w.as_f32(w.data)


def test_an_int8_program_saves_and_runs_again(tmp_path, capsys):
    f = str(tmp_path / "p.json")
    base = ["--preset", "wse3", "--json"]
    assert main(["run", "--model", "tiny", "--phase", "decode", "--context", "8", "--grid", "16",
                 "--dtype", "int8", "--save-program", f] + base) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["run-program", f] + base) == 0
    assert json.loads(capsys.readouterr().out)["cycles"] == first["cycles"]
