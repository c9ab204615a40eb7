"""The layer-pipelined strategy end to end: FLOPs conserved, fit checks, sensible trends."""

import pytest

from mapper.placement import MappingError
from mapper.strategies.layer_pipelined import map_layer_pipelined
from wse_sim.engine import simulate
from wse_sim.experiment import build_program, run_model
from wse_sim.hardware import ConfigError, load_preset
from workloads.graph import build_graph, total_flops
from workloads.models import load_model

HW = load_preset("mesh16")


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("phase", ["prefill", "decode"])
def test_flops_conserved_graph_program_result(model, phase):
    cfg = load_model(model)
    g = build_graph(cfg, phase, batch=2, prompt=16, context=24, dtype="fp16")
    p = map_layer_pipelined(cfg, HW, phase=phase, batch=2, prompt=16, context=24)
    r = simulate(p, HW, engine="reference")
    assert p.total_flops() == total_flops(g) == r.flops
    assert r.tokens == (32 if phase == "prefill" else 2)
    assert r.cycles > 0 and r.tokens_per_s > 0
    assert 0 < r.peak_fraction < 1
    assert r.compute_cycles + r.comm_cycles == r.cycles
    assert r.comm_bytes > 0 and r.bytes_hops >= r.comm_bytes


def test_every_layer_gets_its_own_region():
    p = map_layer_pipelined(load_model("tiny"), HW, phase="decode", context=64)
    assert p.meta["regions"] == 2 + p.meta["table_regions"]
    ops = {t.op for t in p.tasks}
    assert {"L0.q_proj", "L1.ffn_down", "L0.handoff", "lm_head.0"} <= ops


def test_model_that_does_not_fit_is_rejected_with_numbers():
    with pytest.raises(MappingError, match=r"does not fit.*bytes.*sram_bytes 49152"):
        map_layer_pipelined(load_model("gpt2-small"), HW, phase="decode")


def test_sparsity_and_dtype_change_cycles_in_the_expected_direction():
    base = run_model("mesh16", "tiny", phase="prefill", prompt=32)
    sparse = run_model("mesh16", "tiny", phase="prefill", prompt=32, sparsity=0.5)
    fp32 = run_model("mesh16", "tiny", phase="prefill", prompt=32, dtype="fp32")
    assert sparse.cycles < base.cycles < fp32.cycles
    assert sparse.flops == base.flops and sparse.executed_flops < base.executed_flops
    assert fp32.comm_bytes > base.comm_bytes  # fp32 needs a wavelet per value, fp16 half


def test_grid_restricts_the_run():
    hw = load_preset("mesh32")
    small = build_program(hw, "tiny", phase="decode", context=64, grid=16)
    assert small.cores_used <= 256
    with pytest.raises(MappingError, match="grid"):
        build_program(hw, "tiny", grid=40)


@pytest.mark.parametrize("kw, field", [
    ({"phase": "serve"}, "phase"), ({"batch": 0}, "batch"), ({"prompt": -1}, "prompt"),
    ({"dtype": "fp8"}, "dtype"), ({"sparsity": 1.0}, "sparsity"), ({"strategy": "x"}, "strategy"),
])
def test_bad_run_parameters(kw, field):
    with pytest.raises(ConfigError, match=field):
        build_program(HW, "tiny", **kw)


def test_training_not_mapped_yet_says_so():
    with pytest.raises(NotImplementedError, match="training step"):
        build_program(HW, "tiny", phase="train")
