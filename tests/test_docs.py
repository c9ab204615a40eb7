"""Every `wse-sim` command shown in the README and docs/ runs and succeeds, so the docs
cannot rot. Commands are run in-process (faster than a subprocess each)."""

import re
import shlex
from pathlib import Path

import pytest

from wse_sim.cli.main import main

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def doc_commands():
    out = []
    for path in DOCS:
        text = path.read_text()
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
            for line in block.splitlines():
                line = line.split("  #")[0].strip()
                for part in line.split("&&"):
                    part = part.strip()
                    if part.startswith("wse-sim "):
                        out.append((path.name, part))
    return out


COMMANDS = doc_commands()


def test_docs_show_commands():
    assert len(COMMANDS) >= 10


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch folder that sees the repository's example files: commands write their `out/`
    folders here, and later commands of a page read what earlier ones wrote."""
    d = tmp_path_factory.mktemp("docs")
    for name in ("examples", "workloads", "wse_sim"):
        (d / name).symlink_to(ROOT / name)
    return d


@pytest.mark.parametrize("doc, command", COMMANDS, ids=[f"{d}: {c[8:60]}" for d, c in COMMANDS])
def test_doc_command_runs(doc, command, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    argv = shlex.split(command)[1:]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 0, f"{doc}: `{command}` exited {code}: {err[-500:]}"
