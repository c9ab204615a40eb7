"""Regions of the mesh for layers: cut the mesh into equal slots and order them so that
consecutive layers sit side by side.

The logical graph of layers and the traffic between them is a networkx graph (never the
physical mesh); `place_ring` lays a chain of layers along a ring of the slot grid (its last
slot next to its first), `place_chain` along a serpentine (boustrophedon) walk of the slot
grid, so every heavy edge of the chain is between neighbouring slots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx

from wse_sim.program import Region


class MappingError(ValueError):
    """The model does not fit the chosen mesh (one line with the numbers that do not fit)."""


@dataclass(frozen=True)
class SlotGrid:
    """The mesh (or a grid x grid corner of it) cut into gx x gy slots of cols x rows cores."""

    x0: int
    y0: int
    gx: int
    gy: int
    cols: int
    rows: int

    def region(self, i: int, j: int) -> Region:
        return Region(self.x0 + i * self.cols, self.y0 + j * self.rows, self.cols, self.rows)

    def serpentine(self) -> list[Region]:
        """Slots in boustrophedon order: left to right on even slot-rows, back on odd ones."""
        out = []
        for j in range(self.gy):
            cols = range(self.gx) if j % 2 == 0 else range(self.gx - 1, -1, -1)
            out.extend(self.region(i, j) for i in cols)
        return out

    def ring(self) -> list[Region] | None:
        """Slots in an order whose last is next to its first (a cycle through every slot):
        along the first slot-row, boustrophedon back over the other columns, up the first
        column (with rows and columns swapped when the slot-rows are odd in number); None
        when there is no such cycle (a grid one slot wide, or an odd number of slots)."""
        gx, gy = self.gx, self.gy
        if gx < 2 or gy < 2 or (gx * gy) % 2:
            return None
        a, b = (gx, gy) if gy % 2 == 0 else (gy, gx)  # walk a along, b (even) across
        cells = [(i, 0) for i in range(a)]
        for j in range(1, b):
            cells.extend((i, j) for i in (range(a - 1, 0, -1) if j % 2 else range(1, a)))
        cells.extend((0, j) for j in range(b - 1, 0, -1))
        if gy % 2:
            cells = [(j, i) for i, j in cells]
        return [self.region(i, j) for i, j in cells]


def slot_grids(mesh_cols: int, mesh_rows: int, slots: int, x0: int = 0, y0: int = 0):
    """Every slot grid with at least `slots` slots, best first: most cores per slot, then the
    squarest slot. A strategy takes the first one its buffers fit."""
    grids = []
    for gx in range(1, min(slots, mesh_cols) + 1):
        gy = math.ceil(slots / gx)
        if gy > mesh_rows:
            continue
        c, r = mesh_cols // gx, mesh_rows // gy
        grids.append(((-c * r, abs(c - r), gx), SlotGrid(x0, y0, gx, gy, c, r)))
    return [g for _, g in sorted(grids, key=lambda kg: kg[0])]


def slot_grid(mesh_cols: int, mesh_rows: int, slots: int, x0: int = 0, y0: int = 0) -> SlotGrid:
    """The slot grid with at least `slots` slots whose slots have the most cores (ties: the
    squarest slot)."""
    best = None
    for gx in range(1, min(slots, mesh_cols) + 1):
        gy = math.ceil(slots / gx)
        if gy > mesh_rows:
            continue
        c, r = mesh_cols // gx, mesh_rows // gy
        key = (c * r, -abs(c - r))
        if best is None or key > best[0]:
            best = (key, SlotGrid(x0, y0, gx, gy, c, r))
    if best is None:
        raise MappingError(f"mesh: {mesh_cols} x {mesh_rows} cores cannot hold {slots} regions "
                           "of at least one core each")
    return best[1]


def layer_graph(names: list[str], traffic_bytes: list[int]) -> nx.DiGraph:
    """Chain of stages with the bytes each hands to the next as edge weights."""
    g = nx.DiGraph()
    g.add_nodes_from(names)
    for a, b, w in zip(names, names[1:], traffic_bytes, strict=False):
        g.add_edge(a, b, bytes=int(w))
    return g


def place_chain(g: nx.DiGraph, grid: SlotGrid) -> dict[str, Region]:
    """Assign the chain's nodes, in topological order, to serpentine slots."""
    order = list(nx.topological_sort(g))
    slots = grid.serpentine()
    if len(order) > len(slots):
        raise MappingError(f"placement: {len(order)} stages > {len(slots)} slots")
    return dict(zip(order, slots, strict=False))


def place_ring(chain: list[str], closing: str, grid: SlotGrid) -> dict[str, Region] | None:
    """The chain along the slot grid's ring (`SlotGrid.ring`), and `closing` (the node that
    hands its output to the chain's first, e.g. the embedding table's region) on the ring's
    last slot, next to the first; slots left over lie between the chain's end and `closing`.
    None when the grid has no ring or too few slots."""
    slots = grid.ring()
    if slots is None or len(chain) + 1 > len(slots):
        return None
    return dict(zip(chain, slots, strict=False)) | {closing: slots[-1]}


def placement_cost(g: nx.DiGraph, placed: dict[str, Region]) -> int:
    """Sum over edges of bytes x hops between the regions' corners (what placement minimises)."""
    total = 0
    for a, b, w in g.edges(data="bytes"):
        ra, rb = placed[a], placed[b]
        total += w * (abs(ra.x - rb.x) + abs(ra.y - rb.y))
    return total
