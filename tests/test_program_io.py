"""Programs on disk (wse_sim.program_io): exact round trips, the schema check's one-line
errors, records added to the IR later, and a loaded program simulates to the same cycles."""

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wse_sim.program as IR
from mapper.gemm import build_gemm, gemm_inputs, gemm_output
from wse_sim.engine import simulate
from wse_sim.experiment import build_program
from wse_sim.functional import run_functional
from wse_sim.hardware import load_preset
from wse_sim.program import (
    Alloc,
    Compute,
    DataOp,
    Dep,
    IoTransfer,
    LineStream,
    Multicast,
    Program,
    ProgramError,
    Region,
    Unicast,
)
from wse_sim.program_io import load_program, program_from_dict, program_to_dict, save_program

# ---- generated programs ------------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=8)
small = st.integers(0, 9)
scalars = st.one_of(st.integers(-10**12, 10**12), st.floats(allow_nan=False), names,
                    st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.tuples(inner, inner) | st.lists(inner, max_size=3)
                      .map(tuple), max_leaves=6)


@st.composite
def regions(draw, min_cols=1, min_rows=1):
    return Region(draw(small), draw(small), draw(st.integers(min_cols, 5)),
                  draw(st.integers(min_rows, 5)))


@st.composite
def data_ops(draw):
    if draw(st.booleans()):
        return None
    params = tuple(draw(st.lists(st.tuples(names, values), max_size=3)))
    return DataOp(draw(names), tuple(draw(st.lists(names, max_size=3))), draw(names), params)


@st.composite
def tasks(draw, i):
    deps = tuple(Dep(draw(st.integers(0, i - 1)), draw(st.sampled_from(IR.DEP_RULES)),
                     draw(st.integers(-3, 3)), draw(st.integers(-3, 3)))
                 for _ in range(draw(st.integers(0, 2)) if i else 0))
    kind = draw(st.sampled_from(("compute", "unicast", "line", "multicast", "io")))
    common = {"deps": deps, "data": draw(data_ops())}
    op = draw(names)
    if kind == "compute":
        return Compute(op, draw(regions()), draw(st.integers(0, 10**15)),
                       draw(st.sampled_from(("fp32", "fp16", "bf16"))),
                       draw(st.sampled_from(("fmac", "vector"))),
                       draw(st.floats(0, 0.99)), draw(st.integers(0, 10**6)),
                       draw(st.integers(0, 10**6)), **common)
    if kind == "unicast":
        r = draw(regions())
        if draw(st.booleans()):
            return Unicast(op, r, draw(st.integers(1, 99)), to=(r.x1 + 1, draw(small)),
                           color=draw(small), **common)
        return Unicast(op, r, draw(st.integers(1, 99)), dx=draw(st.integers(1, 3)),
                       dy=draw(st.integers(-3, 3)), color=draw(small), **common)
    if kind == "line":
        axis = draw(st.sampled_from("xy"))
        r = draw(regions(2, 1) if axis == "x" else regions(1, 2))
        return LineStream(op, r, axis, draw(st.sampled_from((1, -1))), draw(st.integers(1, 99)),
                          draw(st.booleans()), draw(st.sampled_from(("fp32", "fp16"))),
                          draw(small), **common)
    if kind == "multicast":
        r = draw(regions())
        return Multicast(op, (r.x1 + 1, r.y), r, draw(st.integers(1, 99)), draw(small), **common)
    return IoTransfer(op, draw(regions()), draw(st.integers(1, 10**9)),
                      draw(st.sampled_from(("in", "out"))), color=draw(small), **common)


@st.composite
def programs(draw):
    n = draw(st.integers(0, 6))
    ts = tuple(draw(tasks(i)) for i in range(n))
    allocs = tuple(Alloc(draw(names), draw(regions()), draw(st.integers(0, 4096)),
                         tuple(draw(st.lists(st.integers(1, 8), max_size=3))),
                         draw(st.sampled_from(("fp32", "fp16", "bf16"))))
                   for _ in range(draw(st.integers(0, 3))))
    meta = draw(st.dictionaries(names, values, max_size=3))
    return Program(draw(names), ts, allocs, draw(st.sampled_from(("fp32", "fp16"))),
                   draw(st.integers(0, 99)), draw(st.integers(0, 99)), meta)


def _no_lists(v, where="program"):
    """Every array of a loaded program is a tuple, as the IR builds them."""
    assert not isinstance(v, list), where
    if dataclasses.is_dataclass(v):
        for f in dataclasses.fields(v):
            _no_lists(getattr(v, f.name), f"{where}.{f.name}")
    elif isinstance(v, tuple):
        for i, x in enumerate(v):
            _no_lists(x, f"{where}[{i}]")
    elif isinstance(v, dict):
        for k, x in v.items():
            _no_lists(x, f"{where}.{k}")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_round_trip_is_exact(p):
    doc = json.loads(json.dumps(program_to_dict(p)))
    q = program_from_dict(doc)
    assert q == p
    assert q.meta == p.meta
    for a, b in zip(q.tasks, p.tasks, strict=True):
        assert type(a) is type(b) and a.data == b.data and a.deps == b.deps
    _no_lists(q)


def test_save_and_load_a_file(tmp_path):
    p = Program("two", (Compute("c", Region(0, 0, 2, 2), 8),
                        Unicast("u", Region(0, 0, 1, 2), 3, dx=1, deps=(Dep(0, "offset", 1),))))
    path = save_program(p, tmp_path / "sub" / "two.json")
    text = path.read_text()
    assert text.startswith('{\n "format": "wse-sim-program",\n "version": 1,')
    assert len(text.splitlines()) == 11  # one line per task
    assert '"deps"' not in text.splitlines()[6]  # defaults are left out
    assert load_program(path) == p


# ---- loaded programs simulate the same ---------------------------------------------------------

@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_loaded_mapping_simulates_to_the_same_cycles(engine, tmp_path):
    hw = load_preset("mesh16")
    p = build_program(hw, "tiny", phase="decode", context=16)
    q = load_program(save_program(p, tmp_path / "p.json"))
    a, b = simulate(p, hw, engine=engine), simulate(q, hw, engine=engine)
    assert a.cycles == b.cycles and a.flops == b.flops and a.comm_bytes == b.comm_bytes
    assert a.cycles > 0


def test_loaded_gemm_computes_the_same_product(tmp_path):
    hw = load_preset("mesh8")
    p = build_gemm("cannon", hw, grid=4, m=16, k=16, n=16, functional=True)
    q = load_program(save_program(p, tmp_path / "g.json"))
    rng = np.random.default_rng(1)
    a, b = rng.uniform(-1, 1, (16, 16)), rng.uniform(-1, 1, (16, 16))
    got = gemm_output(q, run_functional(q, hw, gemm_inputs(q, a, b)))
    np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-5)


# ---- records added to the IR later -------------------------------------------------------------

# ---- the schema check --------------------------------------------------------------------------

def _doc():
    p = Program("p", (Compute("c", Region(0, 0, 2, 2), 8),
                      Unicast("u", Region(0, 0, 1, 1), 1, dx=1, deps=(Dep(0),))))
    return json.loads(json.dumps(program_to_dict(p)))


def _bad(doc, match, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ProgramError, match=match) as e:
        load_program(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


def test_schema_errors_name_the_record_and_field(tmp_path):
    d = _doc()
    d["program"]["tasks"][1]["type"] = "Broadcast"
    _bad(d, r"tasks\[1\]: unknown record type 'Broadcast', must be one of .*Compute", tmp_path)
    d = _doc()
    del d["program"]["tasks"][0]["flops"]
    _bad(d, r"tasks\[0\] Compute: missing field 'flops'", tmp_path)
    d = _doc()
    d["program"]["tasks"][0]["flops"] = "8"
    _bad(d, r"tasks\[0\] Compute.flops: got '8', must be an integer", tmp_path)
    d = _doc()
    d["program"]["tasks"][0]["flops"] = True
    _bad(d, r"tasks\[0\] Compute.flops: got True, must be an integer", tmp_path)
    d = _doc()
    d["program"]["tasks"][1]["deps"][0]["task"] = 1.5
    _bad(d, r"tasks\[1\].deps\[0\] Dep.task: got 1.5, must be an integer", tmp_path)
    d = _doc()
    d["program"]["tasks"][0]["region"]["cols"] = 0
    _bad(d, r"tasks\[0\].region Region: .*cols, rows >= 1", tmp_path)
    d = _doc()
    d["program"]["tasks"][0]["flopz"] = 3
    _bad(d, r"tasks\[0\] Compute: unknown field 'flopz', must be one of op, region", tmp_path)
    d = _doc()
    del d["program"]["tasks"][0]["type"]
    _bad(d, r"tasks\[0\]: the record has no 'type'", tmp_path)
    d = _doc()
    d["program"]["tasks"][0]["kind"] = "tensor"
    _bad(d, r"tasks\[0\] Compute: c: kind got 'tensor', must be fmac or vector", tmp_path)
    d = _doc()
    d["program"]["tasks"][1]["deps"][0]["task"] = 5
    _bad(d, r"depends on task 5", tmp_path)
    d = _doc()
    d["program"]["tasks"] = {"a": 1}
    _bad(d, r"program Program.tasks: got an object .*must be an array", tmp_path)


def test_envelope_errors(tmp_path):
    d = _doc()
    d["version"] = 2
    _bad(d, "version: got 2, this wse-sim reads version 1", tmp_path)
    d = _doc()
    d["format"] = "other"
    _bad(d, "format: got 'other', must be 'wse-sim-program'", tmp_path)
    _bad([1], "got an array, must be an object", tmp_path)
    d = _doc()
    del d["program"]
    _bad(d, "missing key 'program'", tmp_path)


def test_unreadable_files_are_named(tmp_path):
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"format": "caf\xe9"}')
    with pytest.raises(ProgramError, match=r"latin1.json: not UTF-8 text \(byte 15\)"):
        load_program(bad)
    with pytest.raises(ProgramError, match=r"missing.json: cannot read"):
        load_program(tmp_path / "missing.json")
    with pytest.raises(ProgramError, match=r": cannot read"):
        load_program(tmp_path)
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": ')
    with pytest.raises(ProgramError, match=r"broken.json: not JSON: .* line 1 column 12"):
        load_program(broken)


def test_unsaveable_values_are_named(tmp_path):
    p = Program("p", (), meta={"fn": print})
    with pytest.raises(ProgramError, match=r"meta.fn: a builtin_function_or_method cannot be"):
        save_program(p, tmp_path / "p.json")
    with pytest.raises(ProgramError, match=r"meta: key 3 is a int, must be a string"):
        save_program(Program("p", (), meta={3: 1}), tmp_path / "p.json")


def test_paths_are_checked():
    with pytest.raises(ProgramError, match="load_program path: got None, must be a file name"):
        load_program(None)
    with pytest.raises(ProgramError, match="save_program path: got 3"):
        save_program(Program("p", ()), 3)
    with pytest.raises(ProgramError, match="save_program program: got str, must be a Program"):
        save_program("p", "x.json")
