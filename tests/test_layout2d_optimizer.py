"""Where a 2-D weight-streaming training step runs Adam (`optimizer`: offwafer, onwafer):
FLOPs and I/O bytes conserved between the two, SRAM counted, fast == reference, refusals."""

import json

import pytest

from mapper.placement import MappingError
from mapper.strategies import layout2d_optimizer as opt
from workloads.graph import ADAM_STATE_BYTES
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.engine.fast import simulate_fast
from wse_sim.experiment import build_program
from wse_sim.hardware import ConfigError, load_preset
from wse_sim.program import IoTransfer

MESH16 = load_preset("mesh16")
STEP = {"phase": "train", "strategy": "weight-streaming", "prompt": 16, "batch": 2, "grid": 8,
        "layout": "2d"}


def _step(optimizer: str, micro_batches: int = 1, model: str = "tiny-llama", **kw):
    return build_program(MESH16, model, micro_batches=micro_batches, optimizer=optimizer,
                         **(STEP | kw))


def _io(program, direction: str) -> int:
    return sum(t.bytes for t in program.tasks
               if isinstance(t, IoTransfer) and t.direction == direction)


@pytest.mark.parametrize("model", ["tiny-llama", "tiny"])
@pytest.mark.parametrize("micro_batches", [1, 2])
def test_flops_and_io_bytes_are_conserved(model, micro_batches):
    off, on = (_step(o, micro_batches, model) for o in ("offwafer", "onwafer"))
    ops = {t.op for t in on.tasks}
    layers = sorted({int(t.op[1:].split(".")[0]) for t in on.tasks if t.op.endswith(".adam")})
    assert layers == list(range(load_model(model).n_layers))  # every layer, once
    assert sum(t.op.endswith(".adam_state.in") for t in on.tasks) == len(layers)
    moved = sum(t.flops for t in on.tasks if t.op.endswith(".adam"))
    assert moved > 0 and not any(t.op.endswith(".adam") for t in off.tasks)
    # every optimizer FLOP runs once, on the wafer or off it
    assert on.meta["offwafer_flops"] == off.meta["offwafer_flops"] - moved
    assert on.meta["executed_flops"] == off.meta["executed_flops"] + moved
    assert on.meta["graph_flops"] == off.meta["graph_flops"]
    # the layers' gradients no longer stream out; their Adam state streams in and out
    state = sum(t.bytes for t in on.tasks if isinstance(t, IoTransfer) and "adam_state" in t.op)
    grads = sum(t.bytes for t in off.tasks if isinstance(t, IoTransfer)
                and t.op.startswith("L") and t.op.endswith(".grads.out"))
    per = opt.FLOPS_PER_ELEMENT["optimizer"]
    assert state == 2 * ADAM_STATE_BYTES * moved // per
    assert _io(on, "in") == _io(off, "in") + state // 2
    assert _io(on, "out") == _io(off, "out") - grads + state // 2
    assert not any(t.op.endswith(".grads.out") and t.op.startswith("L") for t in on.tasks)
    assert "embed.grads.out" in ops  # the table's update stays off the wafer
    assert on.meta["optimizer"] == "onwafer" and off.meta["optimizer"] == "offwafer"


@pytest.mark.parametrize("micro_batches,layers", [(1, None), (2, None), (1, 7)])
def test_the_step_path_runs_it_and_equals_reference(micro_batches, layers):
    """Each core updates a layer before the next layer's backward, so every core's records
    keep the program's order in time: the step path (the one that runs full-wafer training
    steps) takes it, with the backward's layer loop (7 layers) fast-forwarded."""
    p = _step("onwafer", micro_batches, model_set={"n_layers": layers} if layers else None)
    assert any(lp.name == "layers_bwd" for lp in p.loops) == bool(layers)
    fast = simulate_fast(p, MESH16, path="step", progress=False)
    ref = simulate(p, MESH16, engine="reference")
    assert fast.cycles == ref.cycles
    assert fast.summary()["comm_cycles"] == ref.summary()["comm_cycles"]
    assert fast.flops == ref.flops == p.meta["executed_flops"]


def test_sram_holds_the_state_and_the_accumulators():
    one, two = _step("onwafer", 1), _step("onwafer", 2)
    off = _step("offwafer", 2).meta["sram_buffers_per_core"]
    b1, b2 = one.meta["sram_buffers_per_core"], two.meta["sram_buffers_per_core"]
    assert "optimizer_state" not in off and "grad_accumulators" not in off
    assert b1["optimizer_state"] == b2["optimizer_state"] > 0
    assert b1["optimizer_state"] % ADAM_STATE_BYTES == 0
    assert "grad_accumulators" not in b1
    layers = 2  # tiny-llama
    assert b2["grad_accumulators"] == (layers - 1) * b2["weight_grads"]


def test_a_state_that_does_not_fit_is_refused_with_the_grid_that_fits():
    with pytest.raises(MappingError, match=r"optimizer_state \d+.*fits from grid"):
        _step("onwafer", grid=6)
    assert _step("offwafer", grid=6)  # the same step with the optimizer off the wafer fits


def test_layout_auto_takes_2d_for_the_onwafer_optimizer():
    auto = {k: v for k, v in STEP.items() if k != "layout"}
    assert build_program(MESH16, "tiny-llama", **auto).meta["layout"] == "top-row"  # it fits
    p = build_program(MESH16, "tiny-llama", optimizer="onwafer", **auto)
    assert p.meta["layout"] == "2d" and p.meta["optimizer"] == "onwafer"


@pytest.mark.parametrize("kw,exc,text", [
    ({"phase": "decode", "context": 8}, ConfigError, "optimizer: got 'onwafer'"),
    ({"strategy": "layer-sequential"}, ConfigError, "optimizer: got 'onwafer'"),
    ({"strategy": "layer-pipelined", "layout": "auto"}, ConfigError, "optimizer: got 'onwafer'"),
    ({"layout": "top-row"}, ConfigError, "optimizer: got 'onwafer'"),
    ({"optimizer": "sgd"}, ConfigError, "optimizer: got 'sgd', must be one of offwafer, onwafer"),
])
def test_refusals(kw, exc, text):
    kw = STEP | {"optimizer": "onwafer"} | kw
    with pytest.raises(exc, match=text):
        build_program(MESH16, "tiny-llama", **kw)


def test_cli(capsys):
    argv = ["run", "--preset", "mesh16", "--model", "tiny-llama", "--phase", "train",
            "--strategy", "weight-streaming", "--prompt", "16", "--batch", "2", "--grid", "8"]
    assert main(argv + ["--optimizer", "onwafer", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["optimizer"] == "onwafer" and out["layout"] == "2d"
    rc = main(["run", "--preset", "mesh16", "--model", "tiny-llama", "--optimizer", "onwafer"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "optimizer" in err[0]


def _functional(model: str, dtype: str):
    """(program, buffers, reference gradients, the state the run started from)."""
    from mapper.strategies import layout2d_train_data as td
    from workloads.reference import init_weights
    from wse_sim.functional import run_functional
    hw = MESH16.with_overrides({"sram_bytes": 200_000})  # every weight and state resident
    p = build_program(hw, model, functional=True, dtype=dtype, optimizer="onwafer", **STEP)
    cfg = load_model(model)
    inputs, _, _, grads = td.random_train_case(p, cfg, seed=0)
    tiles, held = opt.adam_inputs(p, cfg, init_weights(cfg, 0), grads, seed=0)
    return p, cfg, run_functional(p, hw, inputs | tiles), grads, held


@pytest.mark.parametrize("model,dtype", [("tiny-llama", "fp32"), ("tiny", "fp32"),
                                         ("tiny-llama", "fp16"), ("tiny", "bf16")])
def test_functional_update_equals_numpy_adam(model, dtype):
    p, cfg, buffers, grads, held = _functional(model, dtype)
    reps = opt.adam_check(p, buffers, cfg, grads, held)
    assert len(reps) == 5 * cfg.n_layers  # four projections and the norms, every layer
    assert all(r["ok"] for r in reps), max(reps, key=lambda r: r["max_rel_error"])


def test_functional_check_catches_a_wrong_state():
    p, cfg, buffers, grads, held = _functional("tiny-llama", "fp32")
    w, m, v = held[(1, "o_proj")]
    held[(1, "o_proj")] = (w, -m, v)  # the moment the update started from, negated
    bad = [r for r in opt.adam_check(p, buffers, cfg, grads, held) if not r["ok"]]
    assert [r["update"] for r in bad] == ["L1.o_proj"]


def test_cli_functional_onwafer(capsys):
    rc = main(["run", "--preset", "mesh16", "--set", "sram_bytes=200000", "--model",
               "tiny-llama", "--phase", "train", "--strategy", "weight-streaming", "--prompt",
               "16", "--batch", "2", "--grid", "8", "--optimizer", "onwafer", "--functional",
               "--json"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["functional"]["ok"] and out["optimizer"] == "onwafer"
