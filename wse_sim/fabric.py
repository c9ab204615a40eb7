"""The 2-D mesh as index arithmetic: core ids, link ids, XY routes and multicast trees.

Core (x, y) has id `y * cols + x`; x grows east, y grows south. Every router has four outgoing
links, one per direction; link id = `core * 4 + direction`. Two more resources per core model
the ramp between core and router (one wavelet per cycle each way). All of it is arithmetic on
integers and numpy arrays: the physical mesh is never a graph object (a full-wafer grid graph
costs ~600 MB).
"""

from __future__ import annotations

EAST, WEST, SOUTH, NORTH = 0, 1, 2, 3
DIRECTIONS = ("east", "west", "south", "north")


class Mesh:
    """A cols x rows mesh and the id spaces of its resources.

    Resource ids: links `[0, 4N)`, ramp onto the fabric `[4N, 5N)`, ramp off the fabric
    `[5N, 6N)`, core compute `[6N, 7N)`, the off-wafer I/O channel `7N`, where N = cols * rows.
    """

    __slots__ = ("cols", "rows", "n")

    def __init__(self, cols: int, rows: int):
        self.cols, self.rows, self.n = int(cols), int(rows), int(cols) * int(rows)

    def core(self, x: int, y: int) -> int:
        return y * self.cols + x

    def xy(self, core: int) -> tuple[int, int]:
        return core % self.cols, core // self.cols

    def contains(self, x: int, y: int) -> bool:
        return 0 <= x < self.cols and 0 <= y < self.rows

    def link(self, x: int, y: int, direction: int) -> int:
        return (y * self.cols + x) * 4 + direction

    def ramp_on(self, core: int) -> int:
        return 4 * self.n + core

    def ramp_off(self, core: int) -> int:
        return 5 * self.n + core

    def compute(self, core: int) -> int:
        return 6 * self.n + core

    @property
    def io(self) -> int:
        return 7 * self.n

    @property
    def n_resources(self) -> int:
        return 7 * self.n + 1


def xy_route(x0: int, y0: int, x1: int, y1: int) -> list[tuple[int, int, int]]:
    """Dimension-order route: first along x, then along y. Returns (x, y, direction) per hop,
    naming the router the hop leaves from."""
    hops = []
    x, y = x0, y0
    d = EAST if x1 > x else WEST
    while x != x1:
        hops.append((x, y, d))
        x += 1 if d == EAST else -1
    d = SOUTH if y1 > y else NORTH
    while y != y1:
        hops.append((x, y, d))
        y += 1 if d == SOUTH else -1
    return hops


def line_hops(x: int, y: int, axis: str, step: int, count: int) -> list[tuple[int, int, int]]:
    """`count` consecutive hops from (x, y) along `axis` ('x' or 'y') in direction `step` (+1/-1)."""
    if axis == "x":
        d = EAST if step > 0 else WEST
        return [(x + i * step, y, d) for i in range(count)]
    d = SOUTH if step > 0 else NORTH
    return [(x, y + i * step, d) for i in range(count)]


def multicast_tree(sx: int, sy: int, x0: int, y0: int, cols: int, rows: int):
    """Row-then-column multicast tree from (sx, sy) to every core of a region.

    The wavelet runs along row `sy` until it spans the region's columns, then each of those
    columns carries it up and down to span the region's rows. Returns `(links, dests)`:
    links as (x, y, direction, depth) with depth = hops from the source before this link, and
    dests as (x, y, hops) for every region core except the source itself.
    """
    x1, y1 = x0 + cols - 1, y0 + rows - 1
    links = []
    # Row part: from sx toward each side as far as the region reaches.
    east_end = max(x1, sx)
    west_end = min(x0, sx)
    for x in range(sx, east_end):
        links.append((x, sy, EAST, x - sx))
    for x in range(sx, west_end, -1):
        links.append((x, sy, WEST, sx - x))
    south_end = max(y1, sy)
    north_end = min(y0, sy)
    for x in range(x0, x1 + 1):
        base = abs(x - sx)
        for y in range(sy, south_end):
            links.append((x, y, SOUTH, base + y - sy))
        for y in range(sy, north_end, -1):
            links.append((x, y, NORTH, base + sy - y))
    dests = [(x, y, abs(x - sx) + abs(y - sy))
             for y in range(y0, y1 + 1) for x in range(x0, x1 + 1) if (x, y) != (sx, sy)]
    return links, dests
