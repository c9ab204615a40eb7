"""Sparse weights stored sparse (docs/sparsity.md): the stored bytes of every format to the
byte, SRAM per core, streamed weight bytes and fit decisions that follow them, per-layer
fractions from a file, the refusals, and functional runs on magnitude-pruned weights equal to
numpy on the same weights."""

import json
import math

import numpy as np
import pytest

from mapper.placement import MappingError
from mapper.strategies.tp2d import Layout
from workloads.models import load_model
from workloads.pruning import prune_fraction, prune_n_m
from wse_sim.cli.main import main
from wse_sim.errors import ConfigError
from wse_sim.experiment import build_program
from wse_sim.hardware import load_preset
from wse_sim.program import Compute, IoTransfer, Region
from wse_sim.sparsity import Sparsity, load_fractions

HW = load_preset("mesh16")
TINY = load_model("tiny")


# ---- the stored bytes of a tile -------------------------------------------------------------
def test_stored_bytes_of_each_format():
    pos, vb = 1000, 2
    assert Sparsity().stored_bytes(pos, vb, 0) == 2000
    assert Sparsity("dense", 0.9).stored_bytes(pos, vb, 0) == 2000  # zeros stored
    # unstructured: nnz x (value + 16-bit index)
    assert Sparsity("unstructured", 0.5).stored_bytes(pos, vb, 0) == 500 * 4
    assert Sparsity("unstructured", 0.9).stored_bytes(pos, vb, 0) == 100 * 4
    assert Sparsity("unstructured", 0.9).stored_bytes(pos, 1, 0) == 100 * 3
    assert Sparsity("unstructured", 0.333).stored_bytes(pos, vb, 0) == math.ceil(667.0) * 4
    # bitmap: nnz x value + one bit per position
    assert Sparsity("bitmap", 0.5).stored_bytes(pos, vb, 0) == 500 * 2 + 125
    assert Sparsity("bitmap", 0.5).stored_bytes(1001, vb, 0) == math.ceil(500.5) * 2 + 126
    # 2:4: half the values, 2 bits each; 1:8: an eighth, 3 bits each; groups rounded up
    assert Sparsity.build("2:4").stored_bytes(pos, vb, 0) == 500 * 2 + 500 * 2 // 8
    assert Sparsity.build("2:4").stored_bytes(1002, vb, 0) == 502 * 2 + math.ceil(502 * 2 / 8)
    assert Sparsity.build("1:8").stored_bytes(pos, 1, 0) == 125 + math.ceil(125 * 3 / 8)
    # not a layer's weight (table, LM head): dense
    assert Sparsity("unstructured", 0.9).stored_bytes(pos, vb, None) == 2000


def test_nm_fixes_the_fraction_and_other_refusals():
    assert Sparsity.build("2:4").fraction == 0.5
    assert Sparsity.build("1:4").fraction == 0.75
    assert Sparsity.build("2:4", 0.5).fraction == 0.5
    with pytest.raises(ConfigError, match=r"fixes it at 1 - 2/4 = 0.5"):
        Sparsity.build("2:4", 0.3)
    for bad in ("4:2", "2:2", "0:4", "2:512", "2-4", "x:y", "sparse"):
        with pytest.raises(ConfigError, match="sparse_format: got"):
            Sparsity.build(bad)
    with pytest.raises(ConfigError, match="with sparsity 0"):
        Sparsity.build("unstructured")
    # beyond 65,536 positions: blocks, each after the first with a 16-bit nonzero count
    assert Sparsity("unstructured", 0.5).stored_bytes(140_000, 2, 0) == 70_000 * 4 + 2 * 2


# ---- per-layer fractions --------------------------------------------------------------------
def test_fractions_from_each_file_kind(tmp_path):
    (tmp_path / "a.toml").write_text("fractions = [0.25, 0.5]\n")
    (tmp_path / "a.json").write_text(json.dumps({"fractions": [0.25, 0.5]}))
    (tmp_path / "b.json").write_text(json.dumps([0.25, 0.5]))
    (tmp_path / "a.csv").write_text("layer,fraction\n0,0.25\n1,0.5\n")
    for name in ("a.toml", "a.json", "b.json", "a.csv"):
        assert load_fractions(str(tmp_path / name)) == (0.25, 0.5)


@pytest.mark.parametrize("name,text,msg", [
    ("x.toml", "fractions = [0.2, 1.5]\n", r"layer 1: got 1.5, must be a number in \[0, 1\)"),
    ("x.json", "[0.2, -0.1]", r"layer 1: got -0.1"),
    ("x.json", "[0.2, true]", r"layer 1: got True"),
    ("x.csv", "0,0.2\n1,0.3\n", "header layer,fraction"),
    ("x.csv", "layer,fraction\n0,0.2\n2,0.3\n", r"row 3: got '2,0.3', must be 1,FRACTION"),
    ("x.csv", "layer,fraction\n0,0.2\n1,abc\n", r"layer 1: got 'abc'"),
    ("x.toml", "other = 1\n", "non-empty list of fractions"),
    ("x.json", "{", "not valid json"),
    ("x.txt", "0.2\n", r"must end in .toml, .json or .csv"),
])
def test_a_bad_fractions_file_is_refused_in_one_line(tmp_path, name, text, msg):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=msg) as e:
        load_fractions(str(tmp_path / name))
    assert "\n" not in str(e.value)


def test_fractions_must_name_every_layer(tmp_path):
    f = tmp_path / "three.toml"
    f.write_text("fractions = [0.1, 0.2, 0.3]\n")
    with pytest.raises(ConfigError, match="got 3 fractions, model tiny has 2 layers"):
        build_program(HW, "tiny", phase="decode", context=16, sparse_format="unstructured",
                      sparsity_file=str(f))
    with pytest.raises(ConfigError, match="give one of them"):
        build_program(HW, "tiny", phase="decode", context=16, sparsity=0.5,
                      sparsity_file=str(f))
    with pytest.raises(ConfigError, match="fixes every layer"):
        build_program(HW, "tiny", phase="decode", context=16, sparse_format="2:4",
                      sparsity_file=str(f))


def test_per_layer_fractions_set_each_layers_compute_and_storage(tmp_path):
    f = tmp_path / "two.csv"
    f.write_text("layer,fraction\n0,0.25\n1,0.75\n")
    p = build_program(HW, "tiny", phase="decode", context=16, sparse_format="unstructured",
                      sparsity_file=str(f))
    skips = {t.op.split(".")[0]: t.sparsity for t in p.tasks
             if isinstance(t, Compute) and t.sparsity > 0}
    assert skips == {"L0": 0.25, "L1": 0.75}
    # every layer region is sized for the fullest layer, layer 0 (25 % zeros)
    u25 = build_program(HW, "tiny", phase="decode", context=16, sparse_format="unstructured",
                        sparsity=0.25)
    assert p.meta["sram_buffers_per_core"] == u25.meta["sram_buffers_per_core"]
    assert p.meta["sparsity_layers"] == [0.25, 0.75]


# ---- SRAM per core, I/O bytes, fit ----------------------------------------------------------
def _tiles(p) -> tuple[int, int, int]:
    """(attention tile, FFN tile, norm params) per core of the program's layer regions, by the
    formula of docs/precision.md, 'What follows each dtype'."""
    m = p.meta
    C, R = m["region_cols"], m["region_rows"]
    lay = Layout(Region(0, 0, C, R), m["attention"]["groups"], m["attention"]["rows_per_group"])
    shapes = TINY.layer_weight_shapes()
    attn = sum(k * n for w, (k, n) in shapes.items() if w in ("w_q", "w_k", "w_v", "w_o"))
    ffn = sum(k * n for w, (k, n) in shapes.items()) - attn
    return (math.ceil(attn / (lay.rows_att * C)), math.ceil(ffn / (R * C)),
            math.ceil(TINY.layer_small_params() / C))


@pytest.mark.parametrize("kw,per_value", [
    ({}, lambda t: 2 * t),
    ({"sparse_format": "unstructured", "sparsity": 0.75}, lambda t: math.ceil(t * 0.25) * 4),
    ({"sparse_format": "bitmap", "sparsity": 0.5}, lambda t: math.ceil(t * 0.5) * 2
     + math.ceil(t / 8)),
    ({"sparse_format": "2:4"}, lambda t: math.ceil(t / 4) * 2 * 2
     + math.ceil(math.ceil(t / 4) * 2 * 2 / 8)),
])
def test_sram_weights_per_core_to_the_byte(kw, per_value):
    p = build_program(HW, "tiny", phase="decode", context=16, **kw)
    attn, ffn, small = _tiles(p)
    want = per_value(attn) + per_value(ffn) + small * 2
    assert p.meta["sram_buffers_per_core"]["weights"] == want
    assert p.meta["sparse_format"] == kw.get("sparse_format", "dense")


def test_dense_format_keeps_todays_figures():
    a = build_program(HW, "tiny", phase="decode", context=16, sparsity=0.5)
    b = build_program(HW, "tiny", phase="decode", context=16)
    assert a.meta["sram_buffers_per_core"] == b.meta["sram_buffers_per_core"]


@pytest.mark.parametrize("fmt,sparsity", [("2:4", 0.0), ("unstructured", 0.8)])
def test_streamed_weight_bytes_follow_the_stored_size(fmt, sparsity):
    p = build_program(HW, "tiny", phase="decode", context=16, strategy="weight-streaming",
                      sparse_format=fmt, sparsity=sparsity)
    io = {t.op: t.bytes for t in p.tasks if isinstance(t, IoTransfer)}
    matrices = TINY.layer_matmul_params()
    small = TINY.layer_small_params() * 2
    if fmt == "2:4":
        kept = math.ceil(matrices / 4) * 2
        want = kept * 2 + math.ceil(kept * 2 / 8)
    else:
        want = math.ceil(matrices * (1 - sparsity)) * 4
    assert io["L0.weights.in"] == io["L1.weights.in"] == want + small
    dense = build_program(HW, "tiny", phase="decode", context=16, strategy="weight-streaming")
    d_io = {t.op: t.bytes for t in dense.tasks if isinstance(t, IoTransfer)}
    assert d_io["L0.weights.in"] == matrices * 2 + small
    assert io["lm_head.weights.in"] == d_io["lm_head.weights.in"]  # the LM head stays dense


def test_a_model_refused_dense_fits_sparse():
    small = load_preset("mesh16", {"sram_bytes": 24576})
    kw = {"phase": "decode", "context": 16, "grid": 4}
    with pytest.raises(MappingError, match="does not fit: each layer region"):
        build_program(small, "tiny", **kw)
    with pytest.raises(MappingError, match="does not fit"):  # 16-bit indices: no saving at 50 %
        build_program(small, "tiny", sparse_format="unstructured", sparsity=0.5, **kw)
    for sp in ({"sparse_format": "2:4"}, {"sparse_format": "bitmap", "sparsity": 0.5},
               {"sparse_format": "unstructured", "sparsity": 0.75}):
        p = build_program(small, "tiny", **kw, **sp)
        assert sum(p.meta["sram_buffers_per_core"].values()) <= 24576
    tight = load_preset("mesh16", {"sram_bytes": 16384})  # the total-weights check
    with pytest.raises(MappingError, match="its weights need 282112 bytes"):
        build_program(tight, "tiny", strategy="layer-sequential", **kw)
    build_program(tight, "tiny", strategy="layer-sequential", sparse_format="2:4", **kw)


def test_refused_where_not_modelled():
    with pytest.raises(MappingError, match="phase train"):
        build_program(HW, "tiny", phase="train", prompt=8, sparse_format="2:4")
    with pytest.raises(NotImplementedError, match="MoE"):
        build_program(load_preset("mesh32"), "tiny-moe", phase="decode", context=16,
                      sparse_format="2:4")


@pytest.mark.parametrize("args,msg", [
    (["--sparse-format", "unstructured"], "with sparsity 0"),
    (["--sparse-format", "2:4", "--sparsity", "0.3"], "fixes it at"),
    (["--sparse-format", "3:2"], "sparse_format: got '3:2'"),
    (["--sparsity-file", "/nonexistent.csv"], "cannot read"),
    (["--phase", "train", "--prompt", "8", "--context", "", "--sparse-format", "2:4"], ""),
])
def test_cli_refuses_in_one_line(capsys, args, msg):
    base = ["run", "--preset", "mesh16", "--model", "tiny", "--phase", "decode",
            "--context", "16"]
    if "train" in args:
        base, args = ["run", "--preset", "mesh16", "--model", "tiny"], \
            ["--phase", "train", "--prompt", "8", "--sparse-format", "2:4"]
        msg = "sparse_format: got '2:4', which does not apply"
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and msg in err and "\n" not in err


# ---- pruning and functional runs ------------------------------------------------------------
def test_pruning_patterns():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((10, 7)).astype(np.float32)
    p = prune_fraction(w, 0.4)
    assert np.count_nonzero(p == 0) == 28
    assert np.abs(w[p == 0]).max() <= np.abs(w[p != 0]).min()
    q = prune_n_m(w, 2, 4)
    for g0 in range(0, 10, 4):
        blk, orig = q[g0:g0 + 4], w[g0:g0 + 4]
        assert (np.count_nonzero(blk, axis=0) == min(2, len(blk))).all()
        kept = np.where(blk != 0, np.abs(orig), np.inf).min(axis=0)
        dropped = np.where(blk == 0, np.abs(orig), -np.inf).max(axis=0)
        assert (dropped <= kept).all()


@pytest.mark.parametrize("strategy,kw", [
    ("layer-pipelined", {"sparse_format": "2:4"}),
    ("layer-pipelined", {"sparse_format": "unstructured", "sparsity": 0.7}),
    ("layer-sequential", {"sparse_format": "bitmap", "sparsity": 0.4}),
    ("weight-streaming", {"sparse_format": "1:4"}),
])
def test_functional_on_pruned_weights_equals_numpy(strategy, kw):
    from mapper.strategies import functional_model as fm
    from wse_sim.functional import error_report, run_functional
    p = build_program(HW, "tiny", phase="decode", context=8, strategy=strategy,
                      functional=True, **kw)
    inputs, want = fm.random_case(p, TINY, seed=0)
    got = fm.model_output(p, run_functional(p, HW, inputs))
    rep = error_report(got, want, p.dtype)
    assert rep["ok"], rep


def test_functional_prunes_each_layer_to_its_file_fraction(tmp_path):
    from mapper.strategies.functional_model import sparsify
    from workloads import reference
    f = tmp_path / "two.json"
    f.write_text("[0.25, 0.75]")
    p = build_program(HW, "tiny", phase="prefill", prompt=8, functional=True,
                      sparse_format="unstructured", sparsity_file=str(f))
    w = sparsify(reference.init_weights(TINY, 0), 0.0, None, p.meta)
    assert np.mean(w["L0.w_q"] == 0) == pytest.approx(0.25, abs=1e-3)
    assert np.mean(w["L1.w_up"] == 0) == pytest.approx(0.75, abs=1e-3)
    assert np.count_nonzero(w["embed"] == 0) == 0  # the table stays dense
    from mapper.strategies import functional_model as fm
    from wse_sim.functional import error_report, run_functional
    inputs, want = fm.random_case(p, TINY, seed=0)
    got = fm.model_output(p, run_functional(p, HW, inputs))
    assert error_report(got, want, p.dtype)["ok"]


def test_the_total_weights_refusal_names_the_least_grid_that_holds_them():
    """The least N with N x N cores x sram_bytes >= the weights: the bound the refusal gives
    (the weights alone; the other buffers may need more)."""
    tight = load_preset("mesh16", {"sram_bytes": 16384})
    with pytest.raises(MappingError, match=r"need 282112 bytes .* at least 5 x 5\)") as e:
        build_program(tight, "tiny", strategy="layer-sequential", phase="decode", context=16,
                      grid=4)
    assert 4 * 4 * 16384 < 282112 <= 5 * 5 * 16384 and "at least 5 x 5" in str(e.value)
