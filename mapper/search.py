"""Choose a mapping by simulated cost.

The mapper never runs the engine itself (imports point the other way), so the caller passes
`evaluate(candidate) -> cost` in seconds per token (the front door simulates). Candidates that
do not fit are skipped with the reason; the cheapest candidate wins, ties broken by the
candidate order. `grid_options` is the set of grid sizes the front door's search tries.
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
            shown = f"{cost * 1e6:,.4f} µs/token" if cost is not None else why
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
                parts.append(f"{cand[key]} {cost * 1e6:.4g} µs/token ({more})")
        if not parts:
            return f"{mine}: the only {key} tried on this mapping"
        return (f"{mine}: the least time per token on this mapping, "
                f"{self.best_cost * 1e6:.4g} µs/token vs " + ", ".join(parts))


GRID_MIN_SIDE = 4  # the smallest grid side (cores) a search tries


def grid_options(mesh_cols: int, mesh_rows: int) -> tuple:
    """The grid sizes a search tries: the whole mesh (None) first, then square grids whose side
    is a power of two from GRID_MIN_SIDE up to below the mesh's shorter side, largest first
    (wse2, 750 x 994: None, 512, 256, ..., 4). A grid too small for the model is rejected by
    the strategy's own budget check, with its reason."""
    sides, side = [], GRID_MIN_SIDE
    while side < min(mesh_cols, mesh_rows):
        sides.append(side)
        side *= 2
    return (None, *reversed(sides))


def _fmt(c: dict) -> str:
    return " ".join(f"{k}={'mesh' if k == 'grid' and v is None else v}" for k, v in c.items())


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
