"""docs/programs.md: the worked example's closed form equals both engines' cycles, its
arithmetic equals numpy, its committed file equals what its builder makes, and each record's
cost rule in the table holds on both engines."""

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from wse_sim.engine import simulate
from wse_sim.hardware import load_preset
from wse_sim.program import (
    Compute,
    Dep,
    IoTransfer,
    LineStream,
    Multicast,
    Program,
    ProgramError,
    Region,
    Unicast,
)
from wse_sim.program_io import load_program

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("reference", "fast")


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}",
                                                  ROOT / "examples" / "programs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


row_sum = load_example("row_sum")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("preset, P, Q, n, overrides", [
    ("mesh8", 8, 4, 64, {}),
    ("mesh8", 3, 1, 5, {}),
    ("mesh16", 13, 7, 40, {"ramp_latency_cycles": 3, "hop_latency_cycles": 2,
                           "stream_op_latency_cycles": 4}),
])
def test_worked_example_closed_form(engine, preset, P, Q, n, overrides):
    hw = load_preset(preset, overrides)
    r = simulate(row_sum.build(P, Q, n), hw, engine=engine)
    assert r.cycles == row_sum.closed_form_cycles(hw, P, Q, n)


def test_worked_example_numbers_in_the_doc():
    hw = load_preset("mesh8")
    assert row_sum.closed_form_cycles(hw) == 313
    r = simulate(row_sum.build(), hw, engine="reference")
    assert r.cycles == 313 and r.flops == 3072
    assert round(100 * r.peak_fraction, 1) == 12.3
    assert "313" in (ROOT / "docs" / "programs.md").read_text()


def test_worked_example_arithmetic():
    hw = load_preset("mesh8")
    rng = np.random.default_rng(3)
    x, y = (rng.uniform(-1, 1, (1, 8, 64)).astype(np.float32) for _ in range(2))
    r = simulate(row_sum.build(), hw, engine="fast", functional={"x": x, "y": y})
    np.testing.assert_allclose(r.buffers["out"], row_sum.reference(x, y, 2.0, 0.5, 4),
                               rtol=1e-5, atol=1e-5)


def test_committed_file_is_the_built_program():
    assert load_program(ROOT / "examples" / "programs" / "row_sum.json") == row_sum.build()


def test_builder_checks_its_sizes():
    with pytest.raises(ProgramError, match="row_sum P: got 1, must be an integer >= 2"):
        row_sum.build(P=1)


# ---- the cost table, one record at a time --------------------------------------------------------

HW = load_preset("mesh16")
TR, HOP, OP = HW.ramp_latency_cycles, HW.hop_latency_cycles, HW.stream_op_latency_cycles
M = HW.message_start_cycles + HW.message_receive_cycles  # a message's two core costs


def _cycles(*tasks):
    got = {simulate(Program("one", tuple(tasks)), HW, engine=e).cycles for e in ENGINES}
    assert len(got) == 1, got
    return got.pop()


@pytest.mark.parametrize("flops, dtype, kind, sparsity, rd, wr", [
    (4 * 1000, "fp32", "fmac", 0.0, 0, 0), (4 * 1000, "fp16", "fmac", 0.5, 0, 0),
    (4 * 999, "fp16", "vector", 0.0, 0, 0), (8, "fp32", "fmac", 0.0, 4 * 1600, 4 * 8),
    (8, "fp32", "vector", 0.0, 0, 4 * 80),
])
def test_compute_rule(flops, dtype, kind, sparsity, rd, wr):
    reg = Region(0, 0, 2, 2)  # 4 cores: each takes a quarter
    f, lanes = flops // 4, HW.lanes(dtype)
    work = math.ceil(f * (1 - sparsity) / (2 * lanes)) if kind == "fmac" else math.ceil(f / lanes)
    want = max(work, math.ceil(rd / 4 / 16), math.ceil(wr / 4 / 8))
    assert _cycles(Compute("c", reg, flops, dtype, kind, sparsity, rd, wr)) == want


def test_flow_rules():
    B = 37
    assert _cycles(Unicast("u", Region(1, 2, 1, 1), B, dx=5, dy=3)) == B - 1 + 8 * HOP + 2 * TR + M
    P = 11
    assert _cycles(LineStream("b", Region(0, 0, P, 1), "x", 1, B)) == \
        B - 1 + (P - 1) * HOP + 2 * TR + M
    assert _cycles(LineStream("r", Region(0, 0, 1, P), "y", -1, B, reduce=True, dtype="fp16")) == \
        (P - 1) * (2 * TR + HOP + OP) + (B - 1) + M
    assert _cycles(Multicast("m", (9, 9), Region(2, 3, 4, 5), B)) == \
        2 * TR + (7 + 6) * HOP + B - 1 + M


def test_io_rule():
    nbytes = 10**6
    channel = math.ceil(nbytes * 8 * HW.clock_hz / HW.io_bits_per_s)
    assert _cycles(IoTransfer("in", Region(3, 0, 4, 2), nbytes)) == channel + 2 * TR + 6 * HOP
    assert _cycles(IoTransfer("out", Region(3, 0, 4, 2), nbytes, "out")) == channel


def test_dependency_rules():
    reg = Region(0, 0, 4, 1)
    c = Compute("c", Region(0, 0, 1, 1), 2 * 100)  # core (0, 0) busy 100 cycles
    # offset: the unicast from core 1 waits for the compute at core 1 + (-1, 0) = (0, 0)
    u = Unicast("u", Region(1, 0, 1, 1), 10, dx=1, deps=(Dep(0, "offset", -1),))
    assert _cycles(c, u) == 100 + 9 + HOP + 2 * TR + M
    at = Compute("a", reg, 4 * 2 * 10, deps=(Dep(0, "at", 0, 0),))
    assert _cycles(c, at) == 100 + 10
    every = Compute("e", reg, 4 * 2 * 10, deps=(Dep(1, "all"),))
    assert _cycles(c, u, every) == 100 + 9 + HOP + 2 * TR + M + 10
    with pytest.raises(ProgramError, match="deadlock"):
        _cycles(c, Compute("s", reg, 8, deps=(Dep(0),)))


def test_the_docs_python_builds_the_worked_example(capsys):
    import re
    text = (ROOT / "docs" / "programs.md").read_text()
    block = re.findall(r"```python\n(.*?)```", text, flags=re.S)[0]
    scope: dict = {}
    exec(compile(block, "docs/programs.md", "exec"), scope)  # noqa: S102 - the page's own code
    assert scope["program"] == row_sum.build()
    assert capsys.readouterr().out.strip() == "313"


# ---- the Loops section's example ------------------------------------------------------------------

def loop_program(P: int, n: int, N: int) -> Program:
    """The page's loop: scale on a row, then a row reduce; N times, peeled first iteration."""
    from wse_sim.program import ProgramBuilder
    row = Region(0, 0, P, 1)
    pb = ProgramBuilder("reduce_loop")
    last: dict = {}

    def step(i):
        wait = (Dep(last["sum"], "all"),) if last else ()
        c = pb.add(Compute("scale", row, flops=n * P, kind="vector", deps=wait))
        last["sum"] = pb.add(LineStream("sum", row, axis="x", direction=1, wavelets=n,
                                        reduce=True, deps=(Dep(c),)))

    step(0)
    pb.repeat("steps", N - 1, lambda i: step(i + 1))
    return pb.build(cores_used=P)


@pytest.mark.parametrize("P, n, N, overrides", [
    (8, 32, 10, {}), (3, 5, 20, {}), (16, 40, 30, {"ramp_latency_cycles": 3,
                                                   "hop_latency_cycles": 2,
                                                   "stream_op_latency_cycles": 4})])
def test_loop_example_closed_form(P, n, N, overrides):
    hw = load_preset("mesh16", overrides)
    tr, hop, op = hw.ramp_latency_cycles, hw.hop_latency_cycles, hw.stream_op_latency_cycles
    m = hw.message_start_cycles + hw.message_receive_cycles
    want = N * (n + (P - 1) * (2 * tr + hop + op) + n - 1 + m)
    p = loop_program(P, n, N)
    ref, fast = (simulate(p, hw, engine=e) for e in ENGINES)
    assert ref.cycles == fast.cycles == want
    assert ref.flops == fast.flops == N * n * P
    assert ref.loop_iterations_skipped == 0 and fast.loop_iterations == N - 1
    if N >= 10:
        assert fast.loop_iterations_skipped > 0


def test_the_docs_loop_block_runs(capsys):
    import re
    text = (ROOT / "docs" / "programs.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S)
                 if "reduce_loop" in b)
    scope: dict = {}
    exec(compile(block, "docs/programs.md", "exec"), scope)  # noqa: S102 - the page's own code
    assert scope["program"] == loop_program(8, 32, 10)
    assert capsys.readouterr().out.split() == ["reference", "1060", "0", "fast", "1060", "4"]
    assert "1,060 cycles" in text
