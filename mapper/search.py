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

    def absorb(self, other: SearchResult) -> None:
        """Add the outcomes of a further search; its winner wins if it is cheaper."""
        self.tried += other.tried
        if other.best is not None and (self.best_cost is None or
                                       other.best_cost < self.best_cost):
            self.best, self.best_cost = other.best, other.best_cost

    def rivals(self, key: str) -> list[tuple]:
        """The tried (candidate, cost, reason) that differ from the winner only in `key` (e.g.
        the other reduce algorithms on the same mapping)."""
        if self.best is None:
            return []
        return [(c, cost, why) for c, cost, why in self.tried
                if c is not self.best and c.get(key) != self.best.get(key)
                and all(v == self.best.get(k) for k, v in c.items() if k != key)]

    def why(self, key: str) -> str:
        """One line: the winner's `key` against the other values tried on the same mapping."""
        if self.best is None:
            return "nothing fits"
        mine, parts = self.best.get(key), []
        for cand, cost, why in self.rivals(key):
            if cost is None:
                parts.append(f"{cand[key]} rejected ({why})")
            else:
                extra = 100 * (cost - self.best_cost) / self.best_cost if self.best_cost else 0.0
                more = "tie" if cost <= self.best_cost else f"+{extra:.1f} %"
                parts.append(f"{cand[key]} {cost * 1e6:.4g} ({more})")
        if not parts:
            return f"{mine}: the only {key} tried on this mapping"
        return (f"{mine}: the least time per token on this mapping, "
                f"{self.best_cost * 1e6:.4g} µs/token vs " + ", ".join(parts))


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
