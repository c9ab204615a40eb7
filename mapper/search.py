"""Choose a mapping by simulated cost.

The mapper never runs the engine itself (imports point the other way), so the caller passes
`evaluate(candidate) -> cost` in seconds per token (the front door simulates). Candidates that
do not fit are skipped with the reason; the cheapest candidate wins, ties broken by the
candidate order. `grid_options` is the set of grid sizes the front door's search tries.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass
class SearchResult:
    """The winner and every candidate's outcome (cost, or the reason it was rejected)."""

    best: dict | None
    best_cost: float | None
    tried: list = field(default_factory=list)
    left_out: int = 0  # candidates beyond the budget, not tried

    def explain(self) -> str:
        lines = []
        if self.left_out:
            lines.append(f"  {self.left_out} more candidates not tried: beyond --budget")
        for cand, cost, why in self.tried:
            tag = "best" if cand is self.best else ("" if cost is not None else
                                                    "pruned" if pruned(why) else "rejected")
            shown = f"{cost * 1e6:,.4f} µs/token" if cost is not None else why
            lines.append(f"  {tag:8} {_fmt(cand):60} {shown}")
        return "\n".join(lines)

    def absorb(self, other: SearchResult) -> None:
        """Add the outcomes of a further search; its winner wins if it is cheaper."""
        self.tried += other.tried
        self.left_out += other.left_out
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
                parts.append(f"{cand[key]} {'' if pruned(why) else 'rejected '}({why})")
            else:
                extra = 100 * (cost - self.best_cost) / self.best_cost if self.best_cost else 0.0
                more = "tie" if cost <= self.best_cost else f"+{extra:.1f} %"
                parts.append(f"{cand[key]} {cost * 1e6:.4g} µs/token ({more})")
        if not parts:
            return f"{mine}: the only {key} tried on this mapping"
        return (f"{mine}: the least time per token on this mapping, "
                f"{self.best_cost * 1e6:.4g} µs/token vs " + ", ".join(parts))


def pruned(why: str) -> bool:
    """Whether a tried candidate's reason says it was pruned by its lower bound (`search`)."""
    return why.startswith("pruned:")


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
           progress: bool = False, bound: Callable[[dict], float] | None = None,
           prune_above: float | None = None) -> SearchResult:
    """Evaluate up to `budget` candidates (the count of the rest is `left_out`, and `explain`
    says it); errors of kind ValueError/NotImplementedError mark a candidate as not fitting
    (kept with its one-line reason).

    `bound(candidate)`: a lower bound of the cost `evaluate` would give (e.g. from
    `cycles_lower_bound`), computed for every candidate first (its errors reject it as
    `evaluate`'s would). Candidates are then evaluated by increasing bound, and one whose bound
    is above the best cost so far (or above `prune_above`, the best of an enclosing search)
    is not evaluated (`tried` says "pruned" with both figures): it cannot win, so the winner
    is the one an exhaustive search picks (the least cost, ties to the earlier candidate).
    `tried` keeps the candidates' order either way."""
    cands = list(candidates)
    left_out = max(0, len(cands) - budget)
    cands = cands[:budget]
    outcomes: list = [None] * len(cands)
    bounds: dict = {}
    if bound is not None:
        for i, cand in enumerate(cands):
            try:
                bounds[i] = float(bound(cand))
            except (ValueError, NotImplementedError) as e:
                outcomes[i] = (cand, None, str(e).splitlines()[0][:160])
        order = sorted(bounds, key=lambda i: (bounds[i], i))
    else:
        order = list(range(len(cands)))
    it = order
    if progress:
        from tqdm import tqdm
        it = tqdm(order, desc="search", unit="mapping", leave=False, disable=None)  # tty only
    out = SearchResult(None, None, left_out=left_out)
    best_i = None
    for i in it:
        cand = cands[i]
        cut = min(c for c in (out.best_cost, prune_above, math.inf) if c is not None)
        if i in bounds and bounds[i] > cut:
            outcomes[i] = (cand, None, f"pruned: lower bound {bounds[i] * 1e6:,.4f} µs/token > "
                                       f"best {cut * 1e6:,.4f} µs/token")
            continue
        try:
            cost = float(evaluate(cand))
        except (ValueError, NotImplementedError) as e:
            outcomes[i] = (cand, None, str(e).splitlines()[0][:160])
            continue
        outcomes[i] = (cand, cost, "")
        if out.best_cost is None or cost < out.best_cost or (cost == out.best_cost
                                                             and i < best_i):
            out.best, out.best_cost, best_i = cand, cost, i
    out.tried = [o for o in outcomes if o is not None]
    return out
