"""The layer-pipelined strategy end to end: FLOPs conserved, fit checks, sensible trends."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapper.placement import MappingError, SlotGrid
from mapper.strategies.layer_pipelined import map_layer_pipelined
from workloads.graph import build_graph, total_flops
from workloads.models import load_model
from wse_sim.engine import simulate
from wse_sim.experiment import build_program, run_model
from wse_sim.hardware import ConfigError, load_preset

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


STRATEGIES = ["layer-pipelined", "layer-sequential", "weight-streaming"]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("phase", ["prefill", "decode", "train"])
def test_every_strategy_every_phase_conserves_flops(strategy, phase):
    p = build_program(HW, "tiny-llama", strategy=strategy, phase=phase, prompt=16, context=32)
    r = simulate(p, HW, engine="reference")
    graph = total_flops(build_graph(load_model("tiny-llama"), phase, prompt=16, context=32))
    assert r.flops + p.meta["offwafer_flops"] == graph
    assert r.cycles > 0
    if strategy == "weight-streaming":
        weights = load_model("tiny-llama").layer_params() * 2 * 2
        assert r.io_bytes >= weights  # every layer's weights streamed in
    else:
        assert r.io_bytes == 0


def test_weight_streaming_training_streams_gradients_out_and_updates_off_wafer():
    p = build_program(HW, "tiny", strategy="weight-streaming", phase="train", prompt=16)
    ops = {t.op for t in p.tasks}
    assert "L0.grads.out" in ops and "L1.weights.bwd.in" in ops
    assert not any(o.endswith(".adam") for o in ops)
    assert p.meta["offwafer_flops"] == 10 * load_model("tiny").param_count()


def test_slower_io_slows_weight_streaming_only():
    fast_io = load_preset("mesh16")
    slow_io = fast_io.with_overrides({"io_bits_per_s": 1.2e11})
    for strategy, slower in (("weight-streaming", True), ("layer-sequential", False)):
        a = simulate(build_program(fast_io, "tiny", strategy=strategy, phase="decode",
                                   context=32), fast_io)
        b = simulate(build_program(slow_io, "tiny", strategy=strategy, phase="decode",
                                   context=32), slow_io)
        assert (b.cycles > a.cycles) == slower


def test_kv_cache_grows_with_context_and_limits_it():
    from mapper.attention import split
    cfg = load_model("tiny-llama")
    a = split(cfg, rows=3, cols=5)
    assert (a.rows_used, a.heads_per_group, a.kv_heads_per_group) == (3, 2, 1)
    assert a.kv_bytes_per_core(100, "fp16") == 2 * 1 * 16 * 20 * 2
    p = build_program(HW, "tiny", phase="decode", context=32)
    q = build_program(HW, "tiny", phase="decode", context=96)
    kv = [x.meta["sram_buffers_per_core"]["kv_cache"] for x in (p, q)]
    assert kv[1] > kv[0]
    assert p.meta["kv_context_limit"] > 96


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12))
def test_the_slot_ring_is_a_cycle_through_every_slot(gx, gy):
    """`SlotGrid.ring`: every slot once, each next to the one before and the last next to the
    first; None exactly when no such cycle exists (one slot wide, or an odd number of slots)."""
    ring = SlotGrid(0, 0, gx, gy, 3, 2).ring()
    if gx < 2 or gy < 2 or gx * gy % 2:
        assert ring is None
        return
    cells = [(r.x // 3, r.y // 2) for r in ring]
    assert sorted(cells) == sorted((i, j) for i in range(gx) for j in range(gy))
    assert all(abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1
               for a, b in zip(cells, cells[1:] + cells[:1], strict=True))
