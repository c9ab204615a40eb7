"""What a collective is, before it is built: its validated `Spec` (kind, line or region, root,
wavelets, dtype, arity, group), the block sizes and SRAM it needs, and the orders its builders
and closed forms share (tree children, two-level groups, the folded ring)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from wse_sim.hardware import DTYPES, HardwareConfig
from wse_sim.program import Region

# the kinds built (mapper.collectives.KINDS maps each to its builder)
_IMPL = ("broadcast", "reduce-chain", "reduce-star", "reduce-tree", "reduce-two-level",
         "allreduce-ring", "allreduce-reduce-broadcast", "allreduce-two-level", "all-to-all")
ROOTS = ("corner", "centre")
_ROOT_ALIASES = {"corner": "corner", "centre": "centre", "center": "centre"}
LINE_ONLY = ("reduce-star", "reduce-tree", "all-to-all")
CORNER_ONLY = ("reduce-two-level", "allreduce-two-level")
ROOTLESS = ("allreduce-ring", "all-to-all")


# ---- lines and arguments ----------------------------------------------------------------------

@dataclass(frozen=True)
class Line:
    """The lines of `region` along `axis` ('x': every row; 'y': every column), addressed by
    position 0..n-1 along the axis; records built on it cover the whole cross extent."""

    region: Region
    axis: str

    @property
    def n(self) -> int:
        return self.region.cols if self.axis == "x" else self.region.rows

    @property
    def cross(self) -> int:
        return self.region.rows if self.axis == "x" else self.region.cols

    def part(self, start: int, length: int = 1) -> Region:
        """Positions [start, start + length) of every line."""
        r = self.region
        if self.axis == "x":
            return Region(r.x + start, r.y, length, r.rows)
        return Region(r.x, r.y + start, r.cols, length)

    def step(self, d: int) -> dict:
        """Unicast offset of `d` positions along the axis."""
        return {"dx": d, "dy": 0} if self.axis == "x" else {"dx": 0, "dy": d}

    def xy(self, p: int) -> tuple[int, int]:
        """Core of position p on the first line (for single lines: the core)."""
        r = self.region
        return (r.x + p, r.y) if self.axis == "x" else (r.x, r.y + p)


@dataclass(frozen=True)
class Spec:
    """Validated arguments of one collective."""

    kind: str
    region: Region
    wavelets: int
    root: str
    dtype: str
    arity: int
    group: int | None

    @property
    def is_line(self) -> bool:
        return self.region.rows == 1 or self.region.cols == 1

    @property
    def line(self) -> Line:
        return Line(self.region, "x" if self.region.rows == 1 else "y")

    @property
    def P(self) -> int:  # the paper's name for the number of cores
        return self.region.size


def _centre(n: int) -> int:
    return (n - 1) // 2


def _rho(spec: Spec, n: int) -> int:
    return _centre(n) if spec.root == "centre" else 0


def root_core(spec: Spec) -> tuple[int, int] | None:
    """The root's (x, y), or None for the kinds without a root."""
    if spec.kind in ROOTLESS:
        return None
    r = spec.region
    if spec.root == "corner":
        return r.x, r.y
    return r.x + _centre(r.cols), r.y + _centre(r.rows)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check(kind, hw, pes, rows, cols, region, wavelets, root, dtype, arity, group) -> Spec:
    if kind not in _IMPL:
        raise ValueError(f"kind: got {kind!r}, must be one of {', '.join(_IMPL)}")
    if not isinstance(hw, HardwareConfig):
        raise ValueError(f"hw: got {type(hw).__name__}, must be a HardwareConfig "
                         "(wse_sim.hardware.load_preset)")
    given = [name for name, v in (("pes", pes), ("rows/cols", rows if rows is not None else cols),
                                  ("region", region)) if v is not None]
    if len(given) != 1:
        raise ValueError(f"pes/rows/cols/region: got {', '.join(given) or 'none'}, give exactly "
                         "one of pes=P, rows=R with cols=C, or region=Region(...)")
    if pes is not None:
        if not _is_int(pes) or not 2 <= pes <= hw.mesh_cols:
            raise ValueError(f"pes: got {pes!r}, must be an integer in 2..mesh_cols "
                             f"({hw.mesh_cols} on {hw.name})")
        reg = Region(0, 0, pes, 1)
    elif region is None:
        if not _is_int(rows) or not 1 <= rows <= hw.mesh_rows:
            raise ValueError(f"rows: got {rows!r}, must be an integer in 1..mesh_rows "
                             f"({hw.mesh_rows} on {hw.name})")
        if not _is_int(cols) or not 1 <= cols <= hw.mesh_cols:
            raise ValueError(f"cols: got {cols!r}, must be an integer in 1..mesh_cols "
                             f"({hw.mesh_cols} on {hw.name})")
        if rows * cols < 2:
            raise ValueError(f"rows/cols: got {rows} x {cols}, a collective needs at least 2 cores")
        reg = Region(0, 0, cols, rows)
    else:
        if not isinstance(region, Region):
            raise ValueError(f"region: got {region!r}, must be a wse_sim.program.Region")
        if region.x1 >= hw.mesh_cols or region.y1 >= hw.mesh_rows:
            raise ValueError(f"region: got {region}, must fit the {hw.mesh_cols} x "
                             f"{hw.mesh_rows} mesh of {hw.name}")
        if region.size < 2:
            raise ValueError(f"region: got {region}, a collective needs at least 2 cores")
        reg = region
    if not _is_int(wavelets) or wavelets < 1:
        raise ValueError(f"wavelets: got {wavelets!r}, must be an integer >= 1 "
                         "(32-bit wavelets per core)")
    if root not in _ROOT_ALIASES:
        raise ValueError(f"root: got {root!r}, must be one of {', '.join(ROOTS)}")
    root = _ROOT_ALIASES[root]
    if dtype not in DTYPES:
        raise ValueError(f"dtype: got {dtype!r}, must be one of {', '.join(DTYPES)}")
    n_line = max(reg.cols, reg.rows)
    if not _is_int(arity) or not 2 <= arity <= max(2, n_line):
        raise ValueError(f"arity: got {arity!r}, must be an integer in 2..{max(2, n_line)} "
                         "(children per node of reduce-tree)")
    if group is not None and (not _is_int(group) or not 1 <= group <= n_line):
        raise ValueError(f"group: got {group!r}, must be None (about sqrt(P)) or an integer "
                         f"in 1..{n_line} (cores per group of the two-level "
                         "scheme)")
    spec = Spec(kind, reg, wavelets, root, dtype, arity, group)
    if kind in LINE_ONLY and not spec.is_line:
        raise ValueError(f"rows/cols: got {reg.rows} x {reg.cols}, {kind} runs on a line (pes=P "
                         "or a 1-row / 1-column region); 2-D regions support "
                         f"{', '.join(k for k in _IMPL if k not in LINE_ONLY)}")
    if kind in CORNER_ONLY and root != "corner":
        raise ValueError(f"root: got {root!r}, {kind} supports only 'corner'")
    need = sram_bytes_per_core(spec)
    if need > hw.sram_bytes:
        raise ValueError(f"wavelets: got {wavelets}, the buffers of {kind} need {need} bytes per "
                         f"core > sram_bytes {hw.sram_bytes} of {hw.name}")
    return spec


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


def block_wavelets(spec: Spec) -> tuple[int, ...]:
    """Block sizes of the ring / all-to-all: B / P rounded up (the vector is zero-padded)."""
    r = spec.region
    if spec.kind == "allreduce-ring" and not spec.is_line:
        b1 = _ceil(spec.wavelets, r.cols)
        return b1, _ceil(b1, r.rows)
    return (_ceil(spec.wavelets, spec.line.n),)


def sram_bytes_per_core(spec: Spec) -> int:
    """Bytes each core holds: the vector (B * 4) plus the kind's receive buffer."""
    vec = 4 * spec.wavelets
    if spec.kind in ("reduce-tree",):
        return 2 * vec
    if spec.kind == "allreduce-ring":
        return vec + 4 * block_wavelets(spec)[0]
    if spec.kind == "all-to-all":
        return vec + 4 * block_wavelets(spec)[0] * spec.line.n
    return vec


# ---- building ----------------------------------------------------------------------------------


def tree_children(n: int, rho: int, arity: int) -> dict[int, list[tuple[int, int]]]:
    """K-ary tree on positions 0..n-1 rooted at rho, each side of rho on its own: at level l
    (stride s = K^l) a receiver at distance q (q a multiple of K s) takes children at q + j s,
    j = 1..K-1. Returns {receiver: [(child, hops), ...]} in the order they are received."""
    side_len = {+1: n - 1 - rho, -1: rho}
    children: dict[int, list[tuple[int, int]]] = {p: [] for p in range(n)}
    s = 1
    while s <= max(side_len.values()):
        for side in (+1, -1):
            m = side_len[side]
            for q in range(0, m + 1, arity * s):
                for j in range(1, arity):
                    cq = q + j * s
                    if cq > m:
                        break
                    children[rho + side * q].append((rho + side * cq, j * s))
        s *= arity
    return children


def two_level_groups(n: int, group: int | None) -> tuple[int, int, int]:
    """(g, m, r0): m groups of g cores beyond a root group of r0 = n - m g cores (1..g) at the
    root's end; g defaults to ceil(sqrt(n))."""
    g = group if group is not None else max(1, math.isqrt(n - 1) + 1)
    g = min(g, n)
    m = (n - 1) // g
    return g, m, n - m * g


def ring_order(n: int) -> list[int]:
    """The folded ring on a line: even positions going out, odd ones coming back."""
    return list(range(0, n, 2)) + [p for p in range(n - 1, 0, -1) if p % 2]
