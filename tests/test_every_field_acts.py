"""Every HardwareConfig field acts on what `hardware.FIELD_EFFECTS` declares: change the field
and that figure changes (issue 22: no hardware knob is silently ignored)."""

import dataclasses
from pathlib import Path

import pytest

from wse_sim.engine import simulate
from wse_sim.hardware import FIELD_EFFECTS, HardwareConfig, load_preset
from wse_sim.program import (
    Alloc,
    Compute,
    Dep,
    IoTransfer,
    LineStream,
    Program,
    ProgramError,
    Region,
    Unicast,
    check_fits,
)

# the 8-bit lanes as a what-if (mesh8 has wse2's cores: none), so that the probe can use them;
# defective cores (a file and a seeded fraction) that the spares repair with detours on the
# probe's routes, so that each defect field moves the cycles (the values: the first seed for
# which doubling each defect field, and dropping the file, changes them and stays repairable)
DEFECTS = str(Path(__file__).parent / "data" / "defects_mesh8.txt")
HW = load_preset("mesh8", {"fmac_lanes_int8": 16, "fmac_lanes_fp8_e4m3": 8,
                           "fmac_lanes_fp8_e5m2": 8, "spare_cols": 1, "spare_rows": 2,
                           "defect_file": DEFECTS, "defect_fraction": 0.03, "defect_seed": 4})
FIELDS = [f.name for f in dataclasses.fields(HardwareConfig)]


def probe() -> Program:
    """One task of each cost after the other (each waits for the one before), so that every
    cycle-bearing field lies on the critical path."""
    one, row = Region(0, 0, 1, 1), Region(0, 0, 8, 1)
    tasks = [Compute("mm32", one, 4000, "fp32"), Compute("mm16", one, 4000, "fp16"),
             Compute("mmbf", one, 4000, "bf16"), Compute("mm8", one, 4000, "int8"),
             Compute("mm8e4", one, 4000, "fp8_e4m3"), Compute("mm8e5", one, 4000, "fp8_e5m2"),
             Compute("read", one, 1, "fp32", "vector", sram_read_bytes=4096),
             Compute("write", one, 1, "fp32", "vector", sram_write_bytes=4096),
             Unicast("send", one, 64, to=(5, 3)),
             LineStream("sum", row, "x", 1, 64, reduce=True, dtype="fp32"),
             IoTransfer("load", row, 1 << 20)]
    tasks = [dataclasses.replace(t, deps=(Dep(i - 1, "all"),) if i else ())
             for i, t in enumerate(tasks)]
    return Program("probe", tuple(tasks), (Alloc("buf", Region(0, 0, 8, 8), 30_000),))


def changed(name: str):
    """The field moved to another valid value (twice the number, or another text)."""
    v = getattr(HW, name)
    if name == "sources":
        return {"x": "changed"}
    if name == "defect_file":
        return ""  # no file (another name would be a missing file)
    if isinstance(v, str):
        return v + "-changed"
    if name == "link_bits_per_cycle":
        return 2 * v
    if name == "chip_cores":
        return 2 * HW.cores
    return 2 * v if v else 1


def fits(program: Program, hw: HardwareConfig) -> bool:
    try:
        check_fits(program, hw)
        return True
    except ProgramError:
        return False


def figures(hw: HardwareConfig) -> dict:
    p = probe()
    r = simulate(p, hw, engine="reference")
    colors = Program("colors", tuple(Unicast(f"u{c}", Region(0, 0, 1, 1), 1, to=(1, 0), color=c)
                                     for c in range(HW.colors_per_core + 1)))
    big = Program("big", (Compute("c", Region(0, 0, 1, 1), 1),),
                  (Alloc("big", Region(0, 0, 1, 1), HW.sram_bytes + 1),))
    return {"cycles": r.cycles, "seconds": r.seconds, "energy": r.energy_joules()["total"],
            "mesh": hw.aggregates()["mesh_cores"], "sram": fits(big, hw),
            "colors": fits(colors, hw), "rollup": hw.aggregates()}


BASE = None  # the base figures, computed once


def test_every_field_is_declared():
    assert set(FIELD_EFFECTS) == set(FIELDS)
    assert set(FIELD_EFFECTS.values()) <= {"cycles", "mesh", "seconds", "sram", "colors",
                                           "energy", "rollup", "report"}


@pytest.mark.parametrize("name", FIELDS)
def test_the_field_acts_on_what_it_declares(name):
    global BASE
    BASE = BASE or figures(HW)
    hw = HW.with_overrides({name: changed(name)}) if name != "sources" else \
        dataclasses.replace(HW, sources={"x": "changed"})
    got = figures(hw)
    effect = FIELD_EFFECTS[name]
    if effect == "report":  # names and citations move no figure at all
        assert got == BASE, name
    else:
        assert got[effect] != BASE[effect], f"{name} changed, {effect} did not"
    if effect in ("energy", "rollup", "sram", "colors"):
        assert got["cycles"] == BASE["cycles"]  # a non-timing field leaves the cycles alone
    # (the clock moves the cycles of off-wafer I/O too: its rate is in bits per second)


def test_wider_links_speed_up_a_whole_model_run():
    """The issue's first finding: --set link_bits_per_cycle=128 used to give the cycles of 32."""
    from wse_sim.experiment import build_program
    hw = load_preset("mesh16")
    p = build_program(hw, "tiny", phase="prefill", prompt=32)
    narrow = simulate(p, hw, engine="fast")
    wide_hw = hw.with_overrides({"link_bits_per_cycle": 128})
    wide = simulate(build_program(wide_hw, "tiny", phase="prefill", prompt=32), wide_hw,
                    engine="fast")
    assert wide.cycles < narrow.cycles
    assert wide.bytes_hops == narrow.bytes_hops  # the same bytes, over wider links


def test_the_link_and_sram_sweep_in_the_docs_is_what_the_simulator_gives():
    """docs/sweeps.md's table comes from examples/sweeps/links_sram.toml, point for point."""
    from pathlib import Path

    from wse_sim.sweep.run import run_point
    from wse_sim.sweep.spec import load_sweep
    root = Path(__file__).resolve().parents[1]
    table = {}
    for line in (root / "docs/sweeps.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] in ("prefill", "decode") and cells[1] != "any":
            kb = int(cells[1].split()[0])
            for bits, text in zip((32, 64, 128), cells[2:], strict=True):
                table[(cells[0], kb * 1024, bits)] = int(text.replace(",", ""))
    assert len(table) == 9
    spec = load_sweep(root / "examples/sweeps/links_sram.toml")
    for p in spec.points:
        key = (p.values["phase"], p.values["sram_bytes"], p.values["link_bits_per_cycle"])
        if key in table and key[2] != 64:  # two widths are enough to pin the table
            assert run_point(p.params, p.overrides)["cycles"] == table[key], key
