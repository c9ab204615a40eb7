"""A training step computed for real (issue 7): the loss and every weight gradient of the
mapped program equal `workloads.reference.loss_and_grads`; the timing is the same with or
without the data; what is not mapped functionally says so."""

import dataclasses

import pytest

from mapper.strategies import strategies
from mapper.strategies.functional_model import (
    model_grads,
    model_loss,
    random_case,
    random_train_case,
)
from workloads.models import load_model
from wse_sim.engine import simulate
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import load_preset
from wse_sim.program import IoTransfer, ProgramError

HW = load_preset("mesh16")
STRATEGIES = ("layer-sequential", "layer-pipelined", "weight-streaming")


def build(cfg, strategy, *, batch=2, prompt=8, dtype="fp32", functional=True, **kw):
    return strategies()[strategy](cfg, HW, phase="train", batch=batch, prompt=prompt,
                                  dtype=dtype, functional=functional, **kw)


def train_step(program, cfg, seed=1, mutate=None):
    inputs, loss, grads = random_train_case(program, cfg, seed)
    if mutate:
        mutate(inputs)
    buffers = run_functional(program, HW, inputs)
    return model_loss(program, buffers), model_grads(program, buffers, cfg), loss, grads


def worst(got: dict, want: dict, dtype: str) -> dict:
    """The error report of the gradient with the largest relative error."""
    assert set(got) == set(want)
    reps = [error_report(got[k], want[k], dtype) | {"name": k} for k in want]
    return max(reps, key=lambda r: r["max_rel_error"])


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_mapped_training_step_equals_reference(strategy, model):
    cfg = load_model(model)
    p = build(cfg, strategy)
    loss, grads, want_loss, want = train_step(p, cfg)
    assert abs(loss - want_loss) < 1e-5 * abs(want_loss)
    rep = worst(grads, want, "fp32")
    assert rep["ok"] and rep["max_rel_error"] < 1e-5, rep


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_low_precision_training_within_tolerance(dtype):
    cfg = load_model("tiny-llama")
    p = build(cfg, "layer-sequential", batch=1, dtype=dtype)
    loss, grads, want_loss, want = train_step(p, cfg)
    assert abs(loss - want_loss) < 1e-3 * abs(want_loss)
    rep = worst(grads, want, dtype)
    assert rep["ok"], rep


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_training_timing_is_the_same_with_or_without_data(strategy):
    cfg = load_model("tiny-llama")
    plain = build(cfg, strategy, dtype="fp16", functional=False)
    func = build(cfg, strategy, dtype="fp16")
    assert all(t.data is None for t in plain.tasks)
    assert not any(a.shape for a in plain.allocs) and "views" not in plain.meta
    # every record but the Adam updates and the I/O streams (timing-only) carries its DataOp
    assert all(t.data is not None for t in func.tasks
               if not t.op.endswith(".adam") and not isinstance(t, IoTransfer))
    assert [dataclasses.replace(t, data=None) for t in func.tasks] == list(plain.tasks)
    a, b = simulate(plain, HW, engine="fast"), simulate(func, HW, engine="fast")
    assert (a.cycles, a.flops, a.comm_bytes) == (b.cycles, b.flops, b.comm_bytes)
    offwafer = plain.meta["offwafer_flops"]  # weight streaming: Adam runs off the wafer
    assert func.total_flops() == plain.total_flops() == plain.meta["graph_flops"] - offwafer


def test_the_backward_uses_its_streams():
    """Dropping one backward stream (the dO reduce of the last layer) breaks the gradients."""
    cfg = load_model("tiny")
    p = build(cfg, "layer-sequential", batch=1)
    i = next(k for k, t in enumerate(p.tasks) if t.op == "L1.o.bwd.reduce")
    tasks = list(p.tasks)
    tasks[i] = dataclasses.replace(tasks[i], data=None)
    broken = dataclasses.replace(p, tasks=tuple(tasks))
    _, grads, _, want = train_step(broken, cfg)
    assert not worst(grads, want, "fp32")["ok"]


@pytest.mark.parametrize("model", ["tiny", "tiny-llama"])
def test_padded_shards_and_uneven_key_columns(model):
    """A 12 x 12 grid: d_model, d_ffn and the vocabulary split with padding, 14 keys over 12
    columns (tiny-llama: head rows sharing a K/V head sum their partial K/V gradients)."""
    cfg = load_model(model)
    p = build(cfg, "layer-sequential", batch=1, prompt=14, grid=12)
    loss, grads, want_loss, want = train_step(p, cfg, seed=4)
    assert abs(loss - want_loss) < 1e-5 * abs(want_loss)
    assert worst(grads, want, "fp32")["max_rel_error"] < 1e-5


def test_what_is_not_mapped_is_refused():
    cfg = load_model("tiny")
    with pytest.raises(NotImplementedError, match="sparse training"):
        build(cfg, "layer-sequential", sparsity=0.5)
    p = build(cfg, "layer-sequential", batch=1)
    with pytest.raises(ValueError, match="training step"):
        random_case(p, cfg)  # the forward helper gives no targets
    fwd = strategies()["layer-sequential"](cfg, HW, phase="prefill", prompt=8, functional=True)
    with pytest.raises(ValueError, match="not a training step"):
        random_train_case(fwd, cfg)
    with pytest.raises(ProgramError, match="not a functional training step"):
        model_grads(fwd, {}, cfg)


def test_cli_checks_a_training_step(capsys):
    import json

    from wse_sim.cli.main import main
    assert main(["run", "--preset", "mesh16", "--model", "tiny", "--phase", "train", "--prompt",
                 "8", "--functional", "--json", "--dtype", "fp32"]) == 0
    f = json.loads(capsys.readouterr().out)["functional"]
    assert f["ok"] and f["max_rel_error"] < 1e-5 and f["loss_error"] < 1e-6
