"""A program too big for the host's memory is refused while it is being built, in one line
(exit 2 on the CLI), instead of the process being killed."""

import pytest

from wse_sim import host
from wse_sim import program as IR
from wse_sim.cli.main import main
from wse_sim.program import Compute, ProgramBuilder, ProgramError, Region


@pytest.fixture
def little_ram(monkeypatch):
    """Check every 8 records, and say that 0.5 GiB is free (below the 1 GiB floor)."""
    monkeypatch.setattr(IR, "ROOM_CHECK_EVERY", 8)
    monkeypatch.setattr(host, "free_bytes", lambda: 1 << 29)


def test_the_builder_stops_when_the_ram_runs_out(little_ram):
    b = ProgramBuilder("big")
    for _ in range(7):
        b.add(Compute("c", Region(0, 0, 1, 1), 10))
    with pytest.raises(ProgramError) as e:
        b.add(Compute("c", Region(0, 0, 1, 1), 10))
    msg = str(e.value)
    assert "\n" not in msg
    assert "program big: building it stopped at 8 records" in msg
    assert "0.50 GiB of RAM left" in msg and "fewer micro-batches" in msg


def test_enough_ram_builds(monkeypatch):
    monkeypatch.setattr(IR, "ROOM_CHECK_EVERY", 8)
    monkeypatch.setattr(host, "free_bytes", lambda: 4 << 30)
    b = ProgramBuilder("fits")
    for _ in range(40):
        b.add(Compute("c", Region(0, 0, 1, 1), 10))
    assert len(b.build().tasks) == 40


def test_a_platform_that_does_not_say_builds(monkeypatch):
    monkeypatch.setattr(IR, "ROOM_CHECK_EVERY", 8)
    monkeypatch.setattr(host, "free_bytes", lambda: None)
    b = ProgramBuilder("unknown")
    for _ in range(16):
        b.add(Compute("c", Region(0, 0, 1, 1), 10))
    assert len(b.tasks) == 16


def test_the_cli_says_it_in_one_line(little_ram, capsys):
    code = main(["run", "--preset", "mesh16", "--model", "tiny-llama", "--phase", "train",
                 "--prompt", "16", "--strategy", "weight-streaming", "--layout", "2d",
                 "--grid", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "building it stopped at" in err[0]
    assert "Traceback" not in err[0]
