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

    def rival(self, key: str) -> tuple | None:
        """The tried (candidate, cost, reason) that differs from the winner only in `key`
        (e.g. the other reduce algorithm on the same mapping); None when there is none."""
        if self.best is None:
            return None
        for cand, cost, why in self.tried:
            if cand is not self.best and cand.get(key) != self.best.get(key) and \
                    all(v == self.best.get(k) for k, v in cand.items() if k != key):
                return cand, cost, why
        return None

    def why(self, key: str) -> str:
        """One line: why the winner's `key` beats the other value on the same mapping."""
        if self.best is None:
            return "nothing fits"
        mine, other = self.best.get(key), self.rival(key)
        if other is None:
            return f"{mine}: the only {key} tried on this mapping"
        cand, cost, why = other
        if cost is None:
            return f"{mine}: {cand[key]} on the same mapping was rejected ({why})"
        if cost <= self.best_cost:
            return f"{mine}: ties with {cand[key]} on the same mapping (tried first)"
        gain = 100 * (cost - self.best_cost) / cost
        return (f"{mine}: {gain:.1f} % less time per token than {cand[key]} on the same mapping "
                f"({self.best_cost * 1e6:.4g} vs {cost * 1e6:.4g} µs/token)")


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
