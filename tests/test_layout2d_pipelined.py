"""Layer-pipelined training in the 2-D layout (`mapper.strategies.layout2d_pipelined`): the
regions, the program against layer-sequential 2-D training on one region of the same size
(the same work, moved), fast == reference, the I/O and SRAM budgets, the pipeline's overlap,
the refusals and the CLI."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_engine_fast import assert_same

from mapper.placement import MappingError
from mapper.strategies.layout2d import Tiles
from mapper.strategies.layout2d_pipelined import (
    map_pipelined_train_2d,
    moved,
    pipeline_regions,
)
from mapper.strategies.layout2d_train import map_train_2d
from mapper.strategies.single_region import layer_weight_bytes
from workloads.models import load_model
from wse_sim.cli.main import main
from wse_sim.engine.fast import simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.hardware import load_preset
from wse_sim.program import Compute, Dep, IoTransfer, Multicast, Region, Unicast

HW = load_preset("mesh16")


def _kw(batch=2, prompt=16, micro_batches=2, dtype="fp16", **kw):
    return dict(phase="train", batch=batch, prompt=prompt, context=prompt, dtype=dtype,
                sparsity=0.0, micro_batches=micro_batches, **kw)


def _lp(model="tiny-llama", grid=None, hw=HW, **kw):
    return map_pipelined_train_2d(load_model(model), hw, grid=grid, **_kw(**kw))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 30))
def test_regions_tile_the_grid_in_a_snake(cols, rows, n):
    s, origins = pipeline_regions(cols, rows, n)
    if s == 0:
        assert cols * rows < n
        return
    assert len(origins) == n == len(set(origins))
    for x, y in origins:  # inside the grid, on the s-grid: disjoint squares
        assert x % s == 0 and y % s == 0 and x + s <= cols and y + s <= rows
    for (x0, y0), (x1, y1) in zip(origins, origins[1:], strict=False):
        assert abs(x0 - x1) + abs(y0 - y1) == s  # consecutive regions share an edge
    assert (cols // (s + 1)) * (rows // (s + 1)) < n  # the largest side


def test_moved_moves_every_coordinate():
    d = (Dep(0, "at", 1, 2), Dep(0, "offset", 1, 0), Dep(0))
    c = moved(Compute("c", Region(0, 0, 2, 2), 4, "fp16", "vector", deps=d), 8, 4)
    assert c.region == Region(8, 4, 2, 2)
    assert c.deps == (Dep(0, "at", 9, 6), Dep(0, "offset", 1, 0), Dep(0))
    u = moved(Unicast("u", Region(1, 0, 1, 1), 3, to=(0, 0)), 8, 4)
    assert u.to == (8, 4) and u.region == Region(9, 4, 1, 1)
    m = moved(Multicast("m", (1, 1), Region(0, 1, 2, 1), 3), 8, 4)
    assert m.src == (9, 5) and m.region == Region(8, 5, 2, 1)


def _work(p) -> Counter:
    """The program's work without where it runs: compute ops and their FLOPs, streams and
    their wavelets, the I/O's transfers."""
    out = Counter()
    for t in p.tasks:
        if isinstance(t, Compute):
            out[("compute", t.op, t.flops, t.region.cols, t.region.rows)] += 1
        elif isinstance(t, IoTransfer):
            out[("io", t.op, t.bytes, t.direction)] += 1
        elif not t.op.endswith(("act_out", "grad_out")):
            out[(type(t).__name__, t.op, t.wavelets)] += 1
    return out


@pytest.mark.parametrize("recompute", [True, False])
def test_same_work_as_layer_sequential_on_one_region(recompute):
    """Each region runs what layer-sequential 2-D training runs on one region of the same
    side: the same records (moved), FLOPs and transfers; only the hand-offs are new: one per
    layer boundary and micro-batch each way."""
    lp = _lp(recompute=recompute)
    P = lp.meta["region_cols"]
    ls = map_train_2d(load_model("tiny-llama"), HW, streaming=False, grid=P,
                      recompute=recompute, **_kw())
    assert _work(lp) == _work(ls)
    for k in ("executed_flops", "graph_flops", "recompute_flops", "offwafer_flops"):
        assert lp.meta[k] == ls.meta[k], k
    L, M = 2, 2
    hands = [t for t in lp.tasks if t.op.endswith(("act_out", "grad_out"))]
    assert len(hands) == 2 * L * M
    t = Tiles.of(load_model("tiny-llama"), P, 16)
    for h in hands:
        assert isinstance(h, Unicast) and abs(h.dx) + abs(h.dy) == P
        assert h.wavelets == t.tm * t.d // (2 if h.op.endswith("act_out") else 1)


def test_every_record_stays_in_its_region():
    lp = _lp()
    P, origins = lp.meta["region_cols"], [tuple(o) for o in lp.meta["region_origins"]]
    squares = [Region(x, y, P, P) for x, y in origins]
    for t in lp.tasks:
        r = t.region
        assert any(s.contains(r.x, r.y) and s.contains(r.x1, r.y1) for s in squares), t.op
    assert lp.meta["regions"] == 3 and lp.meta["layout"] == "2d"
    assert lp.meta["strategy"] == "layer-pipelined"


@pytest.mark.parametrize("micro_batches,recompute", [(1, True), (2, True), (2, False)])
def test_fast_equals_reference(micro_batches, recompute):
    p = _lp(micro_batches=micro_batches, batch=2, recompute=recompute)
    assert_same(simulate_reference(p, HW), simulate_fast(p, HW, spans=True))


def test_micro_batches_overlap_in_the_pipeline():
    """Two micro-batches take less than twice one (the regions work at once), more than one."""
    one = simulate_fast(_lp(batch=1, micro_batches=1), HW).cycles
    two = simulate_fast(_lp(batch=2, micro_batches=2), HW).cycles
    assert one < two < 2 * one


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_io_bytes_closed_form(micro_batches):
    """As layer-sequential 2-D training (docs/strategies.md): in M E + sum(2 W_i - s_i) + H,
    out sum(W_i) + H' + M E; each region's transfers into and out of its own cores."""
    from mapper.strategies.common import make_run
    cfg, M = load_model("tiny-llama"), micro_batches
    p = _lp(micro_batches=M)
    run = make_run(cfg, HW, grid=None, **_kw(micro_batches=M))
    W = [layer_weight_bytes(run, i) for i in range(cfg.n_layers)]
    s = [cfg.layer_small_params(i) * run.bytes for i in range(cfg.n_layers)]
    H = Hg = cfg.d_model * cfg.vocab_size * 2
    E = run.chunk_tokens * cfg.d_model * run.bytes
    ins, outs = (sum(t.bytes for t in p.tasks if getattr(t, "direction", None) == d)
                 for d in ("in", "out"))
    assert (ins, outs) == (M * E + sum(2 * w - si for w, si in zip(W, s, strict=True)) + H,
                           sum(W) + Hg + M * E)
    origins = [tuple(o) for o in p.meta["region_origins"]]
    for t in p.tasks:
        if isinstance(t, IoTransfer):
            want = 0 if t.op.startswith("embed") else \
                cfg.n_layers if t.op.startswith("lm_head") else int(t.op[1:t.op.index(".")])
            assert (t.region.x, t.region.y) == origins[want], t.op


def test_sram_per_region():
    """A layer's region: its layer's weights in both alignments and the saved activations of
    every micro-batch (GPipe); the head's region: no layer weights, the LM head's."""
    cfg = load_model("tiny-llama")
    one, two = _lp(batch=2, micro_batches=1), _lp(batch=2, micro_batches=2)
    P = one.meta["region_cols"]
    t1, t2 = Tiles.of(cfg, P, 32), Tiles.of(cfg, P, 16)
    gains = 2 * t1.d * 2  # two RMSNorms' gains (fp16), once
    for p, t in ((one, t1), (two, t2)):
        bufs = {**p.meta["sram_buffers_per_core"], **p.meta.get("layer_sram_buffers_per_core",
                                                                 {})}
        assert bufs["weights"] == 2 * t.weight_values() * 2 + gains
    keep1 = one.meta["sram_buffers_per_core"]["saved_activations"]
    keep2 = two.meta["sram_buffers_per_core"]["saved_activations"]
    assert keep1 == t1.tm * t1.d * 2 and keep2 == 2 * t2.tm * t2.d * 2
    head = one.meta.get("head_sram_buffers_per_core") or one.meta["sram_buffers_per_core"]
    assert "weights" not in head and head["lm_head"] > 0
    # the SRAM the program allocates: each region its own
    from wse_sim.program import Program
    assert isinstance(one, Program) and len({a.region for a in one.allocs}) == 3


def test_refusals():
    with pytest.raises(NotImplementedError, match="functional training step runs one"):
        _lp(functional=True)
    with pytest.raises(NotImplementedError, match="onwafer"):
        _lp(optimizer="onwafer")
    with pytest.raises(MappingError, match="3 regions"):
        _lp(grid=3)
    big = load_model("cerebras-gpt-1.3b")
    with pytest.raises(MappingError, match=r"each layer's region is 150 x 150 cores \(25 "
                                           r"regions.*> sram_bytes 49152"):
        map_pipelined_train_2d(big, load_preset("wse2"), grid=None, check_only=True,
                               **_kw(batch=1, prompt=2048, micro_batches=1))


def test_cli(capsys):
    base = ["run", "--preset", "mesh16", "--model", "tiny-llama", "--phase", "train",
            "--strategy", "layer-pipelined", "--batch", "2", "--micro-batches", "2",
            "--engine", "fast"]
    assert main(base + ["--prompt", "16", "--layout", "2d"]) == 0
    out = capsys.readouterr().out
    assert "layer-pipelined, 3 regions of 8 x 8 cores, 2-D layout" in out
    # layout auto: the top-row layout does not fit 64 tokens, the 2-D one does
    assert main(base + ["--prompt", "64", "--json"]) == 0
    assert '"layout": "2d"' in capsys.readouterr().out
    assert main(["run", "--preset", "mesh16", "--model", "tiny-llama", "--strategy",
                 "layer-pipelined", "--layout", "2d", "--prompt", "16"]) == 2
    err = capsys.readouterr().err
    assert "layout" in err and "\n" not in err.strip()
    # options the 2-D pipeline does not take are refused, never dropped
    for extra, text in ((["--region-shape", "1"], "region_shape: got 1"),
                        (["--wafers", "2", "--micro-batches", "1"], "on one wafer"),
                        (["--reduce-algo", "tree"], "only chain applies")):
        assert main(base + ["--prompt", "16", "--layout", "2d"] + extra) == 2, extra
        err = capsys.readouterr().err
        assert text in err and "\n" not in err.strip(), err
    # under layout auto too: the 2-D fallback names region_shape as its reason
    assert main(base + ["--prompt", "64", "--region-shape", "1"]) == 2
    assert "2d: region_shape: got 1" in capsys.readouterr().err


BIG = load_preset("mesh16", {"sram_bytes": 262144})  # a functional run: its tiles beside the budget


@pytest.mark.parametrize("model,grid,dtype,recompute,batch,prompt,algo", [
    ("tiny-llama", 16, "fp32", True, 1, 16, "meshgemm"),   # 3 squares of 8 x 8
    ("tiny", 16, "fp32", False, 1, 16, "auto"),            # LayerNorm, GELU, tied embeddings
    ("tiny-llama", 14, "fp16", True, 2, 12, "summa"),      # 7 x 7: odd squares
    ("tiny", 10, "bf16", False, 3, 7, "cannon"),           # 5 x 5: padded tokens, features
])
def test_functional_loss_and_gradients_equal_numpy(model, grid, dtype, recompute, batch,
                                                   prompt, algo):
    from mapper.strategies import layout2d_train_data as td
    from wse_sim.functional import error_report, run_functional
    cfg = load_model(model)
    p = _lp(model, grid=grid, hw=BIG, batch=batch, prompt=prompt, micro_batches=1,
            recompute=recompute, functional=True, dtype=dtype, gemm_algo=algo)
    inputs, tokens, want_loss, want = td.random_train_case(p, cfg, seed=3)
    loss, got = td.train_grads(p, run_functional(p, BIG, inputs), cfg, tokens)
    assert abs(loss - want_loss) <= 1e-3 * abs(want_loss)
    assert set(got) == set(want)
    for k in want:
        assert got[k].shape == want[k].shape, k
        assert error_report(got[k], want[k], dtype)["ok"], k


def test_functional_reads_each_layers_weights_in_its_own_square():
    """A wrong weight of layer 1 in layer 0's square changes nothing; in layer 1's it is
    caught."""
    from mapper.strategies import layout2d_train_data as td
    from wse_sim.functional import error_report, run_functional
    cfg = load_model("tiny-llama")
    p = _lp(grid=16, hw=BIG, batch=1, micro_batches=1, functional=True, dtype="fp32")
    (x0, y0), (x1, y1) = p.meta["region_origins"][:2]

    def worst(x: int, y: int) -> bool:
        inputs, tokens, _, want = td.random_train_case(p, cfg, seed=3)
        inputs["L1.o_proj.wb"][y + 2, x + 3] += 0.5
        _, got = td.train_grads(p, run_functional(p, BIG, inputs), cfg, tokens)
        return all(error_report(got[k], want[k], "fp32")["ok"] for k in want)

    assert worst(x0, y0) and not worst(x1, y1)
