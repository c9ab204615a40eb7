"""The house shows the architecture (DESIGN.md, "Which way imports point"): no import cycles
between modules or between packages, lazy imports included, and the machine never reaches into
the mapper or the workloads."""

import ast
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("wse_sim", "mapper", "workloads")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Every first-party module `path` imports, at module level or inside a function."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from pkg import sub` names the module sub; `from mod import name`, the module
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    g.add_nodes_from(mods)
    for name, path in mods.items():
        for target in imports(path, name, set(mods)):
            g.add_edge(name, target)
    return g


def part_of(module: str) -> str:
    """The architectural part a module belongs to: its subpackage (`wse_sim.engine`,
    `mapper.strategies`), or the module itself when it sits at a package's top level
    (`wse_sim.hardware`, `wse_sim.experiment`: the front door may import everything)."""
    parts = module.split(".")
    if len(parts) > 1 and (ROOT / parts[0] / parts[1]).is_dir():
        return ".".join(parts[:2])
    return module


def test_no_module_imports_itself_back():
    cycles = [c for c in nx.strongly_connected_components(graph()) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_no_cycle_between_parts():
    g = graph()
    pg = nx.DiGraph()
    for a, b in g.edges:
        pa, pb = part_of(a), part_of(b)
        if pa != pb:
            pg.add_edge(pa, pb)
    cycles = [c for c in nx.strongly_connected_components(pg) if len(c) > 1]
    assert not cycles, f"cycles between parts: {cycles}"


MACHINE = ("wse_sim.hardware", "wse_sim.fabric", "wse_sim.program", "wse_sim.timing",
           "wse_sim.kernels", "wse_sim.engine", "wse_sim.functional", "wse_sim.report")


@pytest.mark.parametrize("rule", ["machine", "workloads", "mapper"])
def test_imports_point_one_way(rule):
    bad = []
    for a, b in graph().edges:
        if rule == "machine" and a.startswith(MACHINE) and b.startswith(("mapper", "workloads")):
            bad.append((a, b))
        if rule == "workloads" and a.startswith("workloads") and b.startswith(("wse_sim", "mapper")):
            bad.append((a, b))
        if rule == "mapper" and a.startswith("mapper") and b.startswith("wse_sim.engine"):
            bad.append((a, b))
    assert not bad, bad


def test_the_readme_layout_table_names_every_part():
    """Every package and top-level module of wse_sim is in README's layout table, and every
    path the table names exists."""
    import re
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| part | job |"):]
    table = table.split("\n\n")[0]
    named = set()
    tops = ("wse_sim/", "mapper/", "workloads/", "examples/", "benchmarks/", "docs/")
    for cell in re.findall(r"^\| ([^|]+) \|", table, re.M):
        paths = re.findall(r"`([^`]+)`", cell)
        folder = paths[0].rpartition("/")[0] + "/" if paths else ""
        for path in paths:  # a later path in a cell is relative to the first one's folder
            named.add(path if path.startswith(tops) else folder + path)
    for path in named:
        assert (ROOT / path.rstrip("/")).exists(), f"README names {path}, which is not there"
    parts = {f"wse_sim/{p.name}" + ("/" if p.is_dir() else "")
             for p in (ROOT / "wse_sim").iterdir()
             if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()}
    missing = parts - named
    assert not missing, f"README's layout table lacks {sorted(missing)}"
