"""Defects and spares (issue 20, item 3): the repair model, the detours both engines charge to
the cycle, the refusal of a mapping the repaired mesh cannot hold, and bad input."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_engine_fast import assert_same, cannon, mixed, programs

from wse_sim.cli.main import main
from wse_sim.defects import defect_map, program_rows, repair
from wse_sim.engine import simulate
from wse_sim.engine.fast import simulate_fast
from wse_sim.engine.reference import simulate_reference
from wse_sim.errors import ConfigError
from wse_sim.hardware import load_preset
from wse_sim.program import (
    Compute,
    Dep,
    IoTransfer,
    LineStream,
    Multicast,
    Program,
    Region,
    Unicast,
)
from wse_sim.timing import chain_reduce_cycles, transfer_cycles

# mesh8 with one spare column and one spare row (9 x 9 physical): physical core (2, 0) is
# defective (row 0 repaired: logical columns 2..7 shift east by one), and (1, 1), (5, 1)
# retire physical row 1 (logical rows 1..7 shift south by one, the spare row takes row 7)
DEFECTS = str(Path(__file__).parent / "data" / "defects_mesh8.txt")
SPARES = {"spare_cols": 1, "spare_rows": 1}
CLEAN = load_preset("mesh8")
HW = load_preset("mesh8", {**SPARES, "defect_file": DEFECTS})


def run_both(program, hw):
    """(reference, fast) results, or their one-line error messages."""
    out = []
    for fn in (simulate_reference, simulate_fast):
        try:
            out.append(fn(program, hw))
        except ValueError as e:
            out.append(str(e))
    return out


def cycles(program, hw) -> int:
    ref, fast = run_both(program, hw)
    assert_same(ref, fast)
    return ref.cycles


# ---- the repair model ----------------------------------------------------------------------

def test_the_file_repairs_as_documented():
    rep = repair(HW)
    assert (rep.phys_cols, rep.phys_rows) == (9, 9)
    assert rep.defective_cores == 3 and rep.rows_retired == 1 and rep.spare_rows_used == 1
    assert rep.usable_rows == 8 and rep.rows_lost == 0 and rep.spare_cores_used == 1
    assert rep.cores_retired == 3 + 7  # the defects and the 7 working cores of row 1
    assert rep.spare_cols_needed == 2
    assert list(rep.row_of) == [0, 2, 3, 4, 5, 6, 7, 8]
    assert list(rep.col_of[0]) == [0, 1, 3, 4, 5, 6, 7, 8]
    assert rep.xhops(0, 0, 7) == 8 and rep.xhops(0, 3, 7) == 4 and rep.xhops(1, 0, 7) == 7
    assert rep.yhops(4, 0, 7) == 8 and rep.yhops(4, 1, 7) == 6
    s = rep.summary()
    assert s["usable_mesh"] == [8, 8] and s["usable_cores"] == 64 and s["detour_hops_max"] == 1


@settings(max_examples=200, deadline=None)
@given(cols=st.integers(1, 12), rows=st.integers(1, 12), sc=st.integers(0, 3),
       sr=st.integers(0, 3), fraction=st.sampled_from([0.0, 0.01, 0.05, 0.1, 0.3, 0.6]),
       seed=st.integers(0, 2**31))
def test_repair_is_a_bijection_onto_working_cores(cols, rows, sc, sr, fraction, seed):
    """Logical core (x, y) of the surviving mesh -> (col_of[y, x], row_of[y]): distinct,
    working physical cores, in order along every row and column; the mesh keeps every row
    that a spare could save."""
    hw = load_preset("mesh8", {"mesh_cols": cols, "mesh_rows": rows, "spare_cols": sc,
                               "spare_rows": sr, "defect_fraction": fraction,
                               "defect_seed": seed})
    rep = repair(hw)
    dmap = defect_map(cols + sc, rows + sr, fraction, seed, "")
    assert rep.defective_cores == int(dmap.sum())
    kept = np.flatnonzero(dmap.sum(axis=1) <= sc)
    assert rep.usable_rows == min(rows, len(kept))
    u = rep.usable_rows
    phys = {(int(rep.col_of[y, x]), int(rep.row_of[y])) for y in range(u) for x in range(cols)}
    assert len(phys) == cols * u
    assert all(not dmap[r, c] for c, r in phys)
    assert all(0 <= c < cols + sc and 0 <= r < rows + sr for c, r in phys)
    assert np.all(np.diff(rep.row_of) > 0) and np.all(np.diff(rep.col_of, axis=1) > 0)
    # a horizontal link's hops are its physical distance; a vertical one skips retired rows
    for y in range(u):
        for x in range(cols - 1):
            assert rep.xhops(y, x, x + 1) == rep.col_of[y, x + 1] - rep.col_of[y, x]
    for y in range(u - 1):
        assert rep.yhops(0, y, y + 1) == rep.row_of[y + 1] - rep.row_of[y]


def test_a_larger_fraction_with_the_same_seed_marks_a_superset():
    small = defect_map(40, 30, 0.01, 7, "")
    big = defect_map(40, 30, 0.05, 7, "")
    assert small.sum() == 12 and big.sum() == 60 and np.all(big[small])


def test_the_random_map_is_deterministic_from_the_seed():
    a, b = defect_map(50, 50, 0.02, 3, ""), defect_map(50, 50, 0.02, 3, "")
    assert np.array_equal(a, b) and not np.array_equal(a, defect_map(50, 50, 0.02, 4, ""))


# ---- detours in closed form, both engines --------------------------------------------------

@pytest.mark.parametrize("hop", [1, 3])
def test_a_unicast_pays_its_detour_hops(hop):
    """(0, 0) -> (5, 3): x along row 0 skips the defect at (2, 0), y down column 5 skips the
    retired row: 8 + 2 physical hops, 2 x hop cycles more than the clean mesh."""
    p = Program("u", (Unicast("send", Region(0, 0, 1, 1), 64, to=(5, 3)),))
    clean, hw = CLEAN.with_overrides({"hop_latency_cycles": hop}), HW.with_overrides(
        {"hop_latency_cycles": hop})
    assert cycles(p, clean) == transfer_cycles(clean, 64, 8)
    assert cycles(p, hw) == transfer_cycles(hw, 64, 10) == cycles(p, clean) + 2 * hop


def test_a_unicast_that_crosses_no_repair_pays_nothing():
    p = Program("u", (Unicast("send", Region(0, 2, 1, 1), 64, to=(6, 2)),))
    assert cycles(p, HW) == cycles(p, CLEAN)


def test_a_row_reduce_pays_one_hop_per_skipped_core():
    p = Program("r", (LineStream("sum", Region(0, 0, 8, 1), "x", 1, 100, reduce=True,
                                 dtype="fp32"),))
    assert cycles(p, CLEAN) == chain_reduce_cycles(CLEAN, 100, 8)
    assert cycles(p, HW) == chain_reduce_cycles(HW, 100, 8) + HW.hop_latency_cycles


def test_broadcasts_multicasts_and_io_pay_their_detours():
    hop = HW.hop_latency_cycles
    bcast = Program("b", (LineStream("col", Region(4, 0, 1, 8), "y", 1, 50),))
    assert cycles(bcast, HW) == transfer_cycles(HW, 50, 8) == cycles(bcast, CLEAN) + hop
    mcast = Program("m", (Multicast("all", (0, 0), Region(0, 0, 8, 8), 50),))
    assert cycles(mcast, HW) == transfer_cycles(HW, 50, 14 + 2) == cycles(mcast, CLEAN) + 2 * hop
    io = Program("io", (IoTransfer("load", Region(0, 0, 8, 1), 4096),))
    assert cycles(io, HW) == cycles(io, CLEAN) + hop  # the far core's physical column is 8


def test_bytes_hops_and_fabric_energy_count_the_physical_hops():
    p = Program("u", (Unicast("send", Region(0, 0, 1, 1), 64, to=(5, 3)),))
    r, c = simulate(p, HW, engine="reference"), simulate(p, CLEAN, engine="reference")
    assert c.bytes_hops == 256 * 8 and r.bytes_hops == 256 * 10
    assert r.energy_joules()["fabric"] > c.energy_joules()["fabric"]
    assert np.array_equal(r.link_bytes, c.link_bytes)  # the maps stay on logical links


def test_no_defects_is_todays_numbers_with_or_without_spares():
    hw = load_preset("mesh32")
    spared = hw.with_overrides({"spare_cols": 3, "spare_rows": 5, "defect_seed": 9})
    assert spared.repair() is None
    for p in (cannon(hw, 2, 32), mixed(hw)):
        ref, fast = run_both(p, spared)
        assert_same(simulate_reference(p, hw), fast)
        assert "defects" not in ref.summary()


def test_fast_equals_reference_with_random_defects():
    hw = load_preset("mesh32", {"spare_cols": 2, "spare_rows": 4, "defect_fraction": 0.01,
                                "defect_seed": 5})
    rep = repair(hw)
    assert rep.has_detours and rep.rows_lost == 0
    clean = load_preset("mesh32")
    for p in (cannon(hw, 2, 32), mixed(hw)):
        ref, fast = run_both(p, hw)
        assert_same(ref, fast)
        assert ref.cycles > simulate_reference(p, clean).cycles
        assert ref.summary()["defects"]["defective_cores"] == rep.defective_cores


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(in_order=True), st.integers(0, 2), st.integers(0, 3),
       st.sampled_from([0.02, 0.05, 0.1]), st.integers(0, 1000))
def test_generated_programs_with_defects_match_reference(case, sc, sr, fraction, seed):
    program, hw = case
    hw = hw.with_overrides({"spare_cols": sc, "spare_rows": sr, "defect_fraction": fraction,
                            "defect_seed": seed})
    ref, fast = run_both(program, hw)
    if isinstance(ref, str):
        assert fast == ref
    else:
        assert not isinstance(fast, str), fast
        assert_same(ref, fast)


# ---- refusal -------------------------------------------------------------------------------

def test_a_mapping_on_lost_rows_is_refused_with_the_numbers():
    hw = load_preset("mesh8", {"spare_cols": 1, "spare_rows": 0, "defect_file": DEFECTS})
    rep = repair(hw)
    assert rep.usable_rows == 7 and rep.rows_lost == 1
    whole = Program("p", (Compute("c", Region(0, 0, 8, 8), 64),))
    for fn in (simulate_reference, simulate_fast):
        with pytest.raises(ConfigError) as e:
            fn(whole, hw)
        msg = str(e.value)
        assert "\n" not in msg
        for needle in ("needs 8 x 8", "only 8 x 7 survive", "3 defective cores",
                       "9 x 8 physical mesh", "retire 1 rows", "spare_rows=0", "1 rows lost"):
            assert needle in msg, (needle, msg)
    top = Program("p", (Compute("c", Region(0, 0, 8, 7), 64),))
    assert program_rows(top) == 7
    assert simulate(top, hw, engine="reference").cycles == simulate(top, CLEAN).cycles


def test_program_rows_sees_destinations_and_sources():
    assert program_rows(Program("p", (Unicast("u", Region(0, 0, 1, 1), 1, to=(0, 6)),))) == 7
    assert program_rows(Program("p", (Unicast("u", Region(0, 0, 1, 2), 1, dy=3),))) == 5
    assert program_rows(Program("p", (Multicast("m", (0, 5), Region(0, 0, 2, 2), 1),))) == 6
    dep = Program("p", (Compute("a", Region(0, 0, 1, 1), 1),
                        Compute("b", Region(0, 2, 1, 1), 1, deps=(Dep(0, "all"),))))
    assert program_rows(dep) == 3


def test_cli_refuses_a_model_on_lost_rows_in_one_line(capsys):
    argv = ["run", "--preset", "mesh16", "--model", "tiny", "--set", "defect_fraction=0.05"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: defects:") and "\n" not in err and "rows lost" in err, err


def test_cli_json_reports_the_repair(capsys):
    argv = ["run", "--preset", "mesh16", "--model", "tiny", "--grid", "8", "--json",
            "--set", "spare_cols=2", "--set", "spare_rows=2", "--set", "defect_fraction=0.02"]
    assert main(argv) == 0
    import json
    out = json.loads(capsys.readouterr().out)
    d = out["defects"]
    assert d["physical_mesh"] == [18, 18] and d["defective_cores"] == 6
    assert d["usable_mesh"] == [16, 16] and d["rows_lost"] == 0


# ---- bad input -----------------------------------------------------------------------------

def _file(tmp_path, text: str) -> str:
    f = tmp_path / "defects.txt"
    f.write_text(text)
    return str(f)


@pytest.mark.parametrize("setting, needle", [
    ("defect_fraction=1", "defect_fraction: got 1.0, must be a number in [0, 1)"),
    ("defect_fraction=-0.1", "defect_fraction"),
    ("defect_fraction=nan", "defect_fraction"),
    ("defect_fraction=lots", "defect_fraction"),
    ("defect_seed=-1", "defect_seed"),
    ("spare_cols=-1", "spare_cols"),
    ("spare_rows=1.5", "spare_rows"),
    ("defect_file=/no/such/defects.txt", "defect_file: got '/no/such/defects.txt', must be a "
                                         "readable file"),
])
def test_cli_bad_defect_fields(setting, needle, capsys):
    assert main(["run", "--preset", "mesh8", "--model", "tiny", "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and needle in err, err


@pytest.mark.parametrize("text, needle", [
    ("3\n81\n", "line 2: core id 81 is outside the 9 x 9 physical mesh (ids 0..80)"),
    ("3\n-1\n", "core id -1 is outside"),
    ("3, 4\n3 # again\n", "core id 3 is listed twice"),
    ("3\nseven\n", "line 2: 'seven' is not a core id"),
])
def test_cli_bad_defect_files(tmp_path, text, needle, capsys):
    f = _file(tmp_path, text)
    argv = ["run", "--preset", "mesh8", "--model", "tiny", "--set", "spare_cols=1",
            "--set", "spare_rows=1", "--set", f"defect_file={f}"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "defect_file" in err, err
    assert needle in err, err


def test_a_comment_only_file_marks_nothing(tmp_path):
    hw = load_preset("mesh8", {"defect_file": _file(tmp_path, "# none\n\n")})
    rep = hw.repair()
    assert rep.defective_cores == 0 and not rep.has_detours and rep.usable_rows == 8


# ---- sweep axis ----------------------------------------------------------------------------

def test_defect_fraction_is_a_sweep_axis(tmp_path):
    from wse_sim.sweep.spec import load_sweep
    f = tmp_path / "s.toml"
    f.write_text('[base]\npreset = "mesh16"\nmodel = "tiny"\nphase = "decode"\n'
                 'context = 16\ngrid = 8\n[base.set]\nspare_cols = 2\nspare_rows = 2\n'
                 '[axes]\ndefect_fraction = [0.0, 0.02]\n')
    spec = load_sweep(f)
    assert [p.overrides["defect_fraction"] for p in spec.points] == [0.0, 0.02]


# ---- the fast engine's other paths ---------------------------------------------------------

@pytest.mark.parametrize("algo", ["cannon", "meshgemm"])
def test_gemm_loops_fast_forward_exactly_with_defects(algo):
    """The step path and its loop fast-forward (detours are static: the loop still settles
    into a pure shift) give the reference's numbers on a repaired mesh."""
    from mapper.gemm import build_gemm
    hw = load_preset("mesh16", {"spare_cols": 2, "spare_rows": 2, "defect_fraction": 0.03,
                                "defect_seed": 1})
    assert repair(hw).has_detours and repair(hw).rows_lost == 0
    p = build_gemm(algo, hw, grid=16, m=128, k=128, n=128, dtype="fp16")
    ref = simulate_reference(p, hw)
    for path in ("step", "event"):
        fast = simulate_fast(p, hw, path=path, spans=True)
        assert_same(ref, fast)
    assert fast.bytes_hops > simulate_reference(p, load_preset("mesh16")).bytes_hops
    step = simulate_fast(p, hw, path="step")
    assert step.fast_path == "step" and step.loop_iterations_skipped > 0
