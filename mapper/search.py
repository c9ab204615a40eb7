"""Choose a mapping by simulated cost.

The mapper never runs the engine itself (imports point the other way), so the caller passes
`evaluate(candidate) -> cost` (the front door simulates). Candidates that do not fit are skipped
with the reason; the cheapest candidate wins, ties broken by the candidate order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    """The winner and every candidate's outcome (cost, or the reason it was rejected)."""

    best: dict | None
    best_cost: float | None
    tried: list = field(default_factory=list)

    def explain(self) -> str:
        lines = []
        for cand, cost, why in self.tried:
            tag = "best" if cand is self.best else ("" if cost is not None else "rejected")
            shown = f"{cost:,.6g}" if cost is not None else why
            lines.append(f"  {tag:8} {_fmt(cand):60} {shown}")
        return "\n".join(lines)


def _fmt(c: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in c.items())


def search(candidates: Iterable[dict], evaluate: Callable[[dict], float], *, budget: int = 64,
           progress: bool = False) -> SearchResult:
    """Evaluate up to `budget` candidates; errors of kind ValueError/NotImplementedError mark a
    candidate as not fitting (kept with its one-line reason)."""
    cands = list(candidates)[:budget]
    it = cands
    if progress:
        from tqdm import tqdm
        it = tqdm(cands, desc="search", unit="mapping", leave=False, disable=None)  # tty only
    out = SearchResult(None, None)
    for cand in it:
        try:
            cost = float(evaluate(cand))
        except (ValueError, NotImplementedError) as e:
            out.tried.append((cand, None, str(e).splitlines()[0][:160]))
            continue
        out.tried.append((cand, cost, ""))
        if out.best_cost is None or cost < out.best_cost:
            out.best, out.best_cost = cand, cost
    return out
