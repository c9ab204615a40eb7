"""Check wse-sim against published results: the cases in `validation_cases.toml`.

Three kinds of case: `collective` (a Program from `mapper.collectives`, simulated on a preset,
compared in cycles with a published cost model of the CS-2), `rollup` (a chip aggregate of
a preset, `HardwareConfig.aggregates()`, compared with the vendor's datasheet) and
`gemm-ratio` (two GEMM algorithms of `mapper.gemm` on one grid and size: the ratio of their
cycles, compared with a published measurement of the two on a WSE-2). Nothing here
is tuned to the targets: a case outside its tolerance is reported with `passed = False` and,
where we know why, the reason (`note`).

This is a front-door module: it imports the mapper and the engine.
"""

from __future__ import annotations

import time
import tomllib
from importlib import resources

CASES_FILE = "validation_cases.toml"
CASE_KINDS = ("collective", "rollup", "gemm-ratio")
_REQUIRED = ("id", "source", "description", "kind", "parameters", "target", "unit", "tolerance")
_COLLECTIVE_ARGS = ("pes", "rows", "cols", "wavelets", "root", "dtype", "arity", "group")


def load_cases() -> list[dict]:
    """The cases of the package's validation_cases.toml, checked for their required keys."""
    text = (resources.files("wse_sim") / CASES_FILE).read_text()
    cases = tomllib.loads(text).get("case", [])
    seen = set()
    for i, c in enumerate(cases):
        missing = [k for k in _REQUIRED if k not in c]
        if missing:
            raise ValueError(f"{CASES_FILE}: case {i} ({c.get('id', '?')}) lacks {', '.join(missing)}")
        if c["kind"] not in CASE_KINDS:
            raise ValueError(f"{CASES_FILE}: case {c['id']}: kind got {c['kind']!r}, must be one of "
                             f"{', '.join(CASE_KINDS)}")
        if c["id"] in seen:
            raise ValueError(f"{CASES_FILE}: case id {c['id']!r} appears twice")
        seen.add(c["id"])
    return cases


def _rollup(params: dict) -> float:
    from wse_sim.hardware import load_preset

    value = load_preset(params["preset"]).aggregates()
    for part in params["quantity"].split("."):
        value = value[part]
    return float(value)


def _collective(params: dict, engine: str) -> tuple[float, dict]:
    from mapper.collectives import build_collective
    from wse_sim.engine import simulate
    from wse_sim.hardware import load_preset

    hw = load_preset(params["preset"])
    kw = {k: params[k] for k in _COLLECTIVE_ARGS if k in params}
    program = build_collective(params["collective"], hw, **kw)
    result = simulate(program, hw, engine=engine)
    return float(result.cycles), {"engine": result.engine,
                                  "closed_form": program.meta.get("closed_form_cycles"),
                                  "tasks": len(program.tasks)}


def _gemm_ratio(params: dict, engine: str) -> tuple[float, dict]:
    """Cycles of `algo` over cycles of `baseline`, C = A B with m = k = n = `size`."""
    from mapper.gemm import build_gemm
    from wse_sim.engine import simulate
    from wse_sim.hardware import load_preset

    hw = load_preset(params["preset"])
    cycles, engines = {}, set()
    for algo in (params["algo"], params["baseline"]):
        program = build_gemm(algo, hw, grid=params["grid"], m=params["size"], k=params["size"],
                             n=params["size"], dtype=params.get("dtype", "fp16"))
        result = simulate(program, hw, engine=engine)
        cycles[algo] = result.cycles
        engines.add(result.engine)
    return (cycles[params["algo"]] / cycles[params["baseline"]],
            {"cycles": cycles, "engine": "+".join(sorted(engines))})


def run_validation(fast_only: bool = False, engine: str = "auto",
                   cases: list[str] | None = None) -> list[dict]:
    """Run the validation cases (all, or those whose id is in `cases`; `fast_only` skips the
    ones marked slow). One row per case: case, source, description, kind, unit, target,
    simulated, error (relative, signed: (simulated - target) / target), tolerance, passed,
    slow, engine, wall_seconds, closed_form (collectives), published_form, note. A case that
    raises gives a row with simulated = None, passed = False and the error in `note`."""
    from wse_sim.engine import ENGINES

    if engine not in ENGINES:
        raise ValueError(f"engine: got {engine!r}, must be one of {', '.join(ENGINES)}")
    all_cases = load_cases()
    if cases is not None:
        known = {c["id"] for c in all_cases}
        unknown = [c for c in cases if c not in known]
        if unknown:
            raise ValueError(f"cases: got unknown id(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        all_cases = [c for c in all_cases if c["id"] in cases]
    rows = []
    for case in all_cases:
        slow = bool(case.get("slow", False))
        if fast_only and slow:
            continue
        row = {
            "case": case["id"], "source": case["source"], "description": case["description"],
            "kind": case["kind"], "unit": case["unit"], "target": float(case["target"]),
            "simulated": None, "error": None, "tolerance": float(case["tolerance"]),
            "passed": False, "slow": slow, "engine": None, "wall_seconds": 0.0,
            "closed_form": None, "published_form": case.get("published_form"),
            "note": case.get("known_miss", ""),
        }
        t0 = time.perf_counter()
        try:
            if case["kind"] == "rollup":
                row["simulated"] = _rollup(case["parameters"])
            elif case["kind"] == "gemm-ratio":
                row["simulated"], info = _gemm_ratio(case["parameters"], engine)
                row["engine"] = info["engine"]
            else:
                row["simulated"], info = _collective(case["parameters"], engine)
                row["engine"], row["closed_form"] = info["engine"], info["closed_form"]
        except Exception as e:  # noqa: BLE001 - a failing case is a row, not a crash
            row["note"] = f"error: {type(e).__name__}: {e}"
        row["wall_seconds"] = time.perf_counter() - t0
        if row["simulated"] is not None:
            row["error"] = (row["simulated"] - row["target"]) / row["target"]
            row["passed"] = abs(row["error"]) <= row["tolerance"]
            if row["passed"]:
                row["note"] = ""
        rows.append(row)
    return rows


_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def _fmt(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "cycles":
        return f"{int(round(value)):,}"
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def format_table(rows: list[dict]) -> str:
    """An aligned text table of run_validation rows, then the notes of the failed cases."""
    head = ("case", "target", "simulated", "error", "tol", "result")
    body = []
    for r in rows:
        err = "-" if r["error"] is None else f"{100 * r['error']:+.1f}%"
        result = "pass" if r["passed"] else ("ERROR" if r["simulated"] is None else "FAIL")
        body.append((r["case"], _fmt(r["target"], r["unit"]), _fmt(r["simulated"], r["unit"]),
                     err, f"{100 * r['tolerance']:.0f}%", result))
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    right = {1, 2, 3, 4}

    def line(cells):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    passed = sum(r["passed"] for r in rows)
    out.append(f"{passed}/{len(rows)} within tolerance")
    notes = [f"  {r['case']}: {r['note']}" for r in rows if not r["passed"] and r["note"]]
    if notes:
        out.append("notes:")
        out.extend(notes)
    return "\n".join(out)
