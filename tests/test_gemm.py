"""Distributed GEMM / GEMV programs: real products, closed forms to the cycle, budgets, CLI."""

import dataclasses
import json

import numpy as np
import pytest

from mapper.gemm import (
    GEMM_ALGOS,
    GEMV_ALGOS,
    build_gemm,
    build_gemv,
    gemm_closed_form,
    gemm_colors,
    gemm_inputs,
    gemm_output,
    gemm_sram_bytes,
    ring_order,
    tree_groups,
)
from mapper.placement import MappingError
from wse_sim import kernels as K
from wse_sim.cli.main import main
from wse_sim.engine import simulate
from wse_sim.functional import error_report, run_functional
from wse_sim.hardware import load_preset
from wse_sim.program import Compute, Program, Unicast

HW = load_preset("mesh8")
RNG = np.random.default_rng(3)


def sim(p, hw=HW):
    return simulate(p, hw, engine="reference")


def operands(m, k, n, dtype):
    a = RNG.uniform(-1, 1, (m, k)).astype(np.float32)
    b = RNG.uniform(-1, 1, (k, n)).astype(np.float32)
    ra, rb = (a, b) if dtype == "fp32" else (K.round_to(a, dtype), K.round_to(b, dtype))
    return a, b, ra.astype(np.float64) @ rb.astype(np.float64)


def product(p, a, b, inputs=None):
    bufs = run_functional(p, HW, inputs if inputs is not None else gemm_inputs(p, a, b))
    return gemm_output(p, bufs)


# ---- functional: every algorithm computes A B -------------------------------------------------

CASES = [(algo, skew) for algo in GEMM_ALGOS for skew in (True, False)
         if skew or algo in ("cannon", "meshgemm")]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("algo,skew", CASES)
def test_gemm_gives_numpys_product(algo, skew, dtype):
    m, k, n = 13, 18, 11  # tiles do not divide: padding is exercised
    a, b, ref = operands(m, k, n, dtype)
    p = build_gemm(algo, HW, grid=4, m=m, k=k, n=n, dtype=dtype, skew=skew, functional=True)
    rep = error_report(product(p, a, b), ref, dtype)
    assert rep["ok"], rep
    assert rep["max_rel_error"] < 1e-5  # fp32 accumulate: fp16/bf16 products are exact


def test_gemm_1d_on_a_line():
    a, b, ref = operands(6, 9, 21, "fp32")
    p = build_gemm("1d", HW, grid=8, m=6, k=9, n=21, layout="line", functional=True)
    assert p.cores_used == 8
    assert error_report(product(p, a, b), ref, "fp32")["ok"]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("algo", GEMV_ALGOS)
@pytest.mark.parametrize("grid", [2, 3, 5, 8])  # 8: the tree has a root group and 2 groups
def test_gemv_gives_numpys_product(algo, grid, dtype):
    x, w, ref = operands(1, 70, 19, dtype)
    p = build_gemv(algo, HW, grid=grid, k=70, n=19, dtype=dtype, functional=True)
    rep = error_report(product(p, x, w), ref, dtype)
    assert rep["ok"], rep


@pytest.mark.parametrize("algo", GEMM_ALGOS)
def test_swapped_input_tiles_fail_the_check(algo):
    a, b, ref = operands(16, 16, 16, "fp32")
    p = build_gemm(algo, HW, grid=4, m=16, k=16, n=16, functional=True)
    inputs = gemm_inputs(p, a, b)
    name = "a" if algo in ("1d", "summa") else "a0"
    arr = inputs[name]
    if algo == "1d":
        inputs["b"][0, [0, 1]] = inputs["b"][0, [1, 0]]  # two cores' B slices
    else:
        arr[[0, 1], 0] = arr[[1, 0], 0]
    assert not error_report(product(p, a, b, inputs), ref, "fp32")["ok"]


@pytest.mark.parametrize("algo,op", [("cannon", "cannon.shift_a"),
                                     ("meshgemm", "meshgemm.shift_b"),
                                     ("cannon", "cannon.skew_b")])
def test_a_wrong_shift_offset_fails_the_check(algo, op):
    a, b, ref = operands(16, 16, 16, "fp32")
    p = build_gemm(algo, HW, grid=4, m=16, k=16, n=16, functional=True)
    i = next(i for i, t in enumerate(p.tasks) if t.op == op and t.dx + t.dy in (-1, -2))
    t = p.tasks[i]
    # wrapping shifts: one core too far; meshgemm's ring shift: one place too far
    if t.ring:
        bad = dataclasses.replace(t, dy=t.dy - 1) if t.ring == "y" else \
            dataclasses.replace(t, dx=t.dx - 1)
    elif t.wrap:
        bad = dataclasses.replace(t, dy=t.dy - 1) if t.dy else dataclasses.replace(t, dx=t.dx - 1)
    else:
        bad = dataclasses.replace(t, dy=-1)
    tasks = list(p.tasks)
    tasks[i] = bad
    wrong = Program(p.name, tuple(tasks), p.allocs, p.dtype, p.tokens, p.cores_used, p.meta)
    assert error_report(product(p, a, b), ref, "fp32")["ok"]
    assert not error_report(product(wrong, a, b), ref, "fp32")["ok"]


# ---- timing: closed forms ----------------------------------------------------------------------

HWS = [HW, HW.with_overrides({"ramp_latency_cycles": 3, "hop_latency_cycles": 2,
                              "stream_op_latency_cycles": 2}),
       HW.with_overrides({"link_bits_per_cycle": 128, "ramp_latency_cycles": 2,
                          "message_start_cycles": 2, "message_receive_cycles": 3})]


@pytest.mark.parametrize("hw", HWS)
@pytest.mark.parametrize("layout", ["square", "line"])
@pytest.mark.parametrize("dtype", ["fp32", "fp16"])
def test_1d_closed_form_exact(hw, layout, dtype):
    p = build_gemm("1d", hw, grid=4, m=8, k=12, n=40, dtype=dtype, layout=layout)
    cf = gemm_closed_form("1d", hw, grid=4, m=8, k=12, n=40, dtype=dtype, layout=layout)
    assert sim(p, hw).cycles == cf["cycles"] == p.meta["closed_form_cycles"]


@pytest.mark.parametrize("hw", HWS)
@pytest.mark.parametrize("algo", ["cannon", "meshgemm"])
@pytest.mark.parametrize("grid,size,dtype", [(4, 64, "fp32"), (5, 80, "fp16"), (8, 128, "bf16")])
@pytest.mark.parametrize("flow", [False, True])
def test_cannon_and_meshgemm_steady_state_exact(hw, algo, grid, size, dtype, flow):
    """Pre-aligned and compute-bound (L <= c): every step takes exactly one tile multiply,
    with the shifts behind a grid-wide barrier or under flow control alike."""
    p = build_gemm(algo, hw, grid=grid, m=size, k=size, n=size, dtype=dtype, skew=False,
                   flow_control=flow)
    cf = p.meta["closed_form"]
    assert cf["compute_bound"] and cf["cycles"] == grid * cf["step_cycles"]
    r = sim(p, hw)
    assert r.cycles == cf["cycles"]
    assert r.compute_cycles == r.cycles  # the critical path never waits on the fabric


@pytest.mark.parametrize("algo,op", [("cannon", "skew"), ("meshgemm", "align")])
def test_after_the_alignment_each_step_takes_one_multiply(algo, op):
    p = build_gemm(algo, HW, grid=6, m=96, k=96, n=96, dtype="fp16")
    cf = p.meta["closed_form"]
    assert cf["cycles"] is None and cf["compute_bound"]
    r = sim(p)
    aligned = max(v["end"] for k, v in r.ops.items() if op in k)
    assert r.cycles == aligned + cf["steady_state_cycles"]


def test_summa_lower_bound_and_overlap():
    p = build_gemm("summa", HW, grid=8, m=128, k=128, n=128, dtype="fp16")
    cf = p.meta["closed_form"]
    r = sim(p)
    assert cf["lower_bound"] <= r.cycles <= 1.1 * cf["lower_bound"]


@pytest.mark.parametrize("hw", HWS)
@pytest.mark.parametrize("algo", GEMV_ALGOS)
@pytest.mark.parametrize("grid,k,n,dtype", [(2, 10, 7, "fp32"), (4, 300, 64, "fp16"),
                                            (5, 123, 33, "bf16"), (8, 1000, 96, "fp32")])
def test_gemv_closed_forms_exact(hw, algo, grid, k, n, dtype):
    p = build_gemv(algo, hw, grid=grid, k=k, n=n, dtype=dtype)
    assert sim(p, hw).cycles == p.meta["closed_form_cycles"]


@pytest.mark.parametrize("algo", GEMV_ALGOS)
@pytest.mark.parametrize("grid,k,n", [(12, 1000, 3000), (40, 2048, 4000)])
def test_gemv_closed_forms_exact_on_the_fast_engine(algo, grid, k, n):
    hw = load_preset("wse2")
    p = build_gemv(algo, hw, grid=grid, k=k, n=n, dtype="fp16")
    assert simulate(p, hw, engine="fast").cycles == p.meta["closed_form_cycles"]


@pytest.mark.parametrize("algo", GEMV_ALGOS)
@pytest.mark.parametrize("size", [16384, 32768])
def test_gemv_at_decode_sizes_keeps_only_each_cores_share(algo, size):
    """K = N = 32,768 fp16 on 720 x 720 wse2 cores: x slice, W tile, partial, y block (and
    the tree's receive buffers) are all sized to the core's share, K/P and N/P values."""
    hw = load_preset("wse2")
    kt = nt = -(-size // 720)
    recv = tree_groups(720)[1] if algo == "tree" else 0  # the root's receive buffers
    need = gemm_sram_bytes(algo, 720, 1, size, size, "fp16")
    assert need == 2 * (kt + kt * nt + 2 * nt + recv * nt) <= hw.sram_bytes
    if size == 16384:  # the whole program is checked against the budget too (check_fits)
        p = build_gemv(algo, hw, grid=720, k=size, n=size, dtype="fp16")
        assert p.meta["sram_bytes_per_core"] == need


def test_tree_beats_chain_on_short_vectors_and_loses_on_long_ones():
    hw = load_preset("mesh16")
    short = {a: sim(build_gemv(a, hw, grid=16, k=256, n=8, dtype="fp16"), hw).cycles
             for a in GEMV_ALGOS}
    long = {a: sim(build_gemv(a, hw, grid=16, k=256, n=16 * 512, dtype="fp16"), hw).cycles
            for a in GEMV_ALGOS}  # 512 values per core
    assert short["tree"] < short["chain"] and long["tree"] > long["chain"]


def test_meshgemm_beats_cannon_when_communication_bound():
    hw = load_preset("mesh16")
    cyc = {a: sim(build_gemm(a, hw, grid=12, m=24, k=24, n=24, dtype="fp16", skew=False),
                  hw).cycles for a in ("cannon", "meshgemm")}
    assert cyc["meshgemm"] < 0.7 * cyc["cannon"]


# ---- structure, FLOPs, budgets -------------------------------------------------------------------

def test_ring_order_neighbours_are_at_most_two_apart():
    for n in range(2, 12):
        o = ring_order(n)
        assert sorted(o) == list(range(n))
        assert all(abs(o[i] - o[(i + 1) % n]) <= 2 for i in range(n))


def test_meshgemm_shifts_are_at_most_two_hops_and_two_records_per_step():
    for P in (4, 7, 8):
        p = build_gemm("meshgemm", HW, grid=P, m=P, k=P, n=P, skew=False)
        shifts = [t for t in p.tasks if isinstance(t, Unicast)]
        assert all(t.ring and not t.wrap for t in shifts)
        hops = {abs(t.dest(x, y)[0] - x) + abs(t.dest(x, y)[1] - y)
                for t in shifts for x, y in t.region.cells()}
        assert hops <= {1, 2}  # every logical neighbour at most two cores away
        assert len(shifts) == 2 * (P - 1)  # one ring shift of A and one of B per step
        aligned = build_gemm("meshgemm", HW, grid=P, m=P, k=P, n=P)
        assert len(aligned.tasks) - len(p.tasks) == 2 * (P - 1) + 2 + 1  # rows, copies, sync
        c = build_gemm("cannon", HW, grid=P, m=P, k=P, n=P, skew=False)
        wraps = [t for t in c.tasks if isinstance(t, Unicast)]
        assert all(t.wrap for t in wraps) and len(wraps) == 2 * (P - 1)


@pytest.mark.parametrize("algo", GEMM_ALGOS)
def test_flops_conserved(algo):
    p = build_gemm(algo, HW, grid=4, m=32, k=48, n=64, dtype="fp16")
    r = sim(p)
    assert p.total_flops() == r.flops == 2 * 32 * 48 * 64 == p.meta["useful_flops"]
    assert p.meta["padding_waste"] == 0
    q = build_gemm(algo, HW, grid=4, m=30, k=45, n=63, dtype="fp16")
    assert q.meta["useful_flops"] == 2 * 30 * 45 * 63
    assert q.total_flops() == q.meta["padded_flops"] == sim(q).flops
    assert 0 < q.meta["padding_waste"] < 0.2


def test_gemv_flops():
    p = build_gemv("chain", HW, grid=4, k=64, n=12)
    assert p.total_flops() == 2 * 64 * 12 == p.meta["useful_flops"]
    q = build_gemv("chain", HW, grid=4, k=64, n=10)  # N blocks of 3: padded to 12
    assert q.total_flops() == q.meta["padded_flops"] == 2 * 64 * 12
    t = build_gemv("tree", HW, grid=4, k=64, n=12)
    assert t.total_flops() == 2 * 64 * 12 + t.meta["combine_flops"]
    assert sum(x.flops for x in t.tasks if isinstance(x, Compute) and "add" in x.op) \
        == t.meta["combine_flops"]


@pytest.mark.parametrize("algo", GEMM_ALGOS)
def test_sram_budget_matches_the_allocations(algo):
    p = build_gemm(algo, HW, grid=4, m=40, k=24, n=56, dtype="bf16")
    assert sim(p).summary()["sram_bytes_per_core"] == gemm_sram_bytes(algo, 4, 40, 24, 56, "bf16")


def test_sram_over_budget_is_rejected_with_the_numbers():
    need = gemm_sram_bytes("cannon", 4, 512, 512, 512, "fp32")
    with pytest.raises(MappingError) as e:
        build_gemm("cannon", HW, grid=4, m=512, k=512, n=512)
    msg = str(e.value)
    assert f"{need} bytes per core" in msg and "49152" in msg and "\n" not in msg


def test_colors_over_budget_are_rejected_with_the_numbers():
    hw = HW.with_overrides({"colors_per_core": 1})
    with pytest.raises(MappingError, match=f"needs {gemm_colors('summa')} colors per core > "
                                           "colors_per_core 1"):
        build_gemm("summa", hw, grid=4, m=8, k=8, n=8)
    build_gemm("1d", hw, grid=4, m=8, k=8, n=8)  # one color: fits


def test_flow_control_computes_the_same_product_and_is_refused_where_it_means_nothing():
    a, b, ref = operands(13, 18, 11, "fp16")
    for algo in ("cannon", "meshgemm"):
        p = build_gemm(algo, HW, grid=4, m=13, k=18, n=11, dtype="fp16", functional=True,
                       flow_control=True)
        assert any(d.head for t in p.tasks for d in t.deps)
        assert error_report(product(p, a, b), ref, "fp16")["ok"]
        plain = build_gemm(algo, HW, grid=4, m=13, k=18, n=11, dtype="fp16")
        assert not any(d.head for t in plain.tasks for d in t.deps)
    with pytest.raises(ValueError, match="flow_control: applies to cannon and meshgemm"):
        build_gemm("summa", HW, grid=4, m=8, k=8, n=8, flow_control=True)
    with pytest.raises(ValueError, match="flow_control: got 1"):
        build_gemm("cannon", HW, grid=4, m=8, k=8, n=8, flow_control=1)


@pytest.mark.parametrize("kw,match", [({"grid": 9}, "must fit the 8 x 8 mesh"),
                                      ({"grid": 1}, "grid"), ({"m": 0}, "m: got 0"),
                                      ({"dtype": "fp8"}, "dtype")])
def test_bad_arguments(kw, match):
    args = {"grid": 4, "m": 8, "k": 8, "n": 8, "dtype": "fp32"} | kw
    with pytest.raises(ValueError, match=match):
        build_gemm("summa", HW, **args)
    with pytest.raises(ValueError, match="algo"):
        build_gemm("strassen", HW, grid=4, m=8, k=8, n=8)


# ---- CLI ----------------------------------------------------------------------------------------

KEYS = ("cycles", "seconds", "engine", "preset", "hardware", "wall_seconds", "compute_cycles",
        "comm_cycles", "efficiency", "peak_fraction", "flops", "comm_bytes", "bytes_hops",
        "sram_bytes_per_core", "colors_per_core")


def run_cli(capsys, *argv):
    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_gemm_json_functional(capsys):
    rc, out, _ = run_cli(capsys, "gemm", "--preset", "mesh8", "--algo", "meshgemm", "--grid", "4",
                         "--m", "20", "--k", "24", "--n", "28", "--dtype", "fp16",
                         "--functional", "--json")
    d = json.loads(out)
    assert rc == 0 and all(k in d for k in KEYS)
    f = d["functional"]
    assert f["checked_against"] == "numpy" and f["ok"] is True
    assert {"max_abs_error", "max_rel_error"} <= set(f)
    assert d["useful_flops"] == 2 * 20 * 24 * 28 and d["flops"] == d["padded_flops"]


def test_cli_gemm_text_says_the_closed_form(capsys):
    rc, out, _ = run_cli(capsys, "gemm", "--preset", "mesh8", "--algo", "cannon", "--grid", "4",
                         "--m", "64", "--k", "64", "--n", "64", "--no-skew")
    assert rc == 0 and "closed form" in out and "(equal)" in out


def test_cli_gemv_json(capsys):
    rc, out, _ = run_cli(capsys, "gemv", "--preset", "mesh8", "--algo", "chain", "--grid", "4",
                         "--k", "64", "--n", "32", "--functional", "--json")
    d = json.loads(out)
    assert rc == 0 and all(k in d for k in KEYS) and d["functional"]["ok"]
    assert d["cycles"] == d["closed_form_cycles"]


def test_cli_compare_gemm(capsys):
    args = ("compare", "gemm", "--preset", "mesh8", "--grid", "4", "--m", "32", "--k", "32",
            "--n", "32")
    rc, out, _ = run_cli(capsys, *args)
    assert rc == 0 and all(a in out for a in GEMM_ALGOS)
    rc, out, _ = run_cli(capsys, *args, "--json")
    d = json.loads(out)
    assert [r["algo"] for r in d["algorithms"]] == list(GEMM_ALGOS)
    assert all(k in r for r in d["algorithms"] for k in ("cycles", "efficiency", "flops"))


def test_cli_collective_json(capsys):
    rc, out, _ = run_cli(capsys, "collective", "--preset", "mesh16", "--kind", "reduce-chain",
                         "--pes", "16", "--wavelets", "64", "--json")
    d = json.loads(out)
    assert rc == 0 and all(k in d for k in KEYS if k != "sram_bytes_per_core")
    assert d["cycles"] == d["closed_form_cycles"]


@pytest.mark.parametrize("argv,match", [
    (["gemm", "--preset", "mesh8", "--algo", "cannon", "--grid", "4", "--m", "4096",
      "--k", "4096", "--n", "4096"], "does not fit"),
    (["gemm", "--preset", "mesh8", "--algo", "bogus", "--grid", "4", "--m", "8", "--k", "8",
      "--n", "8"], "invalid choice"),
    (["gemm", "--preset", "mesh8", "--algo", "summa", "--grid", "0", "--m", "8", "--k", "8",
      "--n", "8"], "--grid"),
    (["gemm", "--preset", "mesh8", "--algo", "summa", "--grid", "9", "--m", "8", "--k", "8",
      "--n", "8"], "grid"),
    (["gemv", "--preset", "mesh8", "--algo", "chain", "--grid", "4", "--k", "8"], "--n"),
    (["compare", "gemm", "--preset", "mesh8", "--m", "8", "--k", "8", "--n", "8"], "--grid"),
    (["collective", "--preset", "mesh8", "--kind", "nope", "--pes", "4", "--wavelets", "8"],
     "--kind"),
    (["collective", "--preset", "mesh8", "--kind", "broadcast", "--wavelets", "8"], "--pes"),
])
def test_cli_bad_arguments_exit_2(capsys, argv, match):
    with pytest.raises(SystemExit) as e:
        rc = main(argv)
        raise SystemExit(rc)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and match in err and err.count("\n") == 1


@pytest.mark.parametrize("algo", GEMM_ALGOS + GEMV_ALGOS)
def test_fast_engine_gives_the_same_cycles(algo):
    pytest.importorskip("wse_sim.engine.fast")
    if algo in GEMV_ALGOS:
        p = build_gemv(algo, HW, grid=5, k=200, n=48, dtype="fp16")
    else:
        p = build_gemm(algo, HW, grid=5, m=40, k=35, n=45, dtype="bf16")
    ref, fast = sim(p), simulate(p, HW, engine="fast")
    assert (fast.cycles, fast.flops, fast.comm_bytes, fast.bytes_hops) == \
        (ref.cycles, ref.flops, ref.comm_bytes, ref.bytes_hops)
