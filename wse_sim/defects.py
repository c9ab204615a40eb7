"""Defective cores and the spare rows and columns that repair them (docs/hardware-model.md,
"Defects and spares").

The physical mesh is the user mesh plus `spare_cols` columns (east) and `spare_rows` rows
(south). A defect map marks physical cores defective: a seeded random fraction of them
(`defect_fraction`, `defect_seed`), a file of physical core ids (`defect_file`), or both.
Repair, as on real wafers, in two steps, all numpy, deterministic:

1. Each physical row with at most `spare_cols` defective cores is repaired: its logical cores
   are its first `mesh_cols` working cores in physical order (the logical cores shift east past
   each defect). A row with more is retired.
2. The logical rows are the first `mesh_rows` rows not retired, in physical order (the logical
   rows shift south past each retired row). When fewer survive, the user mesh loses rows.

A logical link then spans some physical hops: a horizontal one `1 + k` where it skips k
defective cores of its row, a vertical one `1 + j` where it skips j retired rows (the repair
links between two rows join logical column x to logical column x however far the two rows
were shifted: ASSUMPTION, docs/hardware-model.md). Routes pay one hop latency per physical hop
(both engines read `px` and `py` below).

Physical core ids: `y * (mesh_cols + spare_cols) + x` in the physical mesh.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wse_sim.errors import ConfigError, bad


@dataclass(frozen=True)
class Repair:
    """The repaired wafer: the logical mesh's physical places, the detours and the counts."""

    mesh_cols: int
    mesh_rows: int
    spare_cols: int
    spare_rows: int
    defective_cores: int        # physical cores marked defective
    rows_retired: int           # physical rows with more defects than spare columns
    spare_rows_used: int        # retired rows the logical mesh skips (each costs a spare row;
    #                             all of them when rows are lost)
    spare_cores_used: int       # spare-column cores that stand in for defects in logical rows
    spare_cols_needed: int      # the most defects in one physical row: spare columns that
    #                             would repair every row
    usable_rows: int            # logical rows that survive repair (<= mesh_rows)
    cores_retired: int          # defective cores plus the working cores of retired rows
    col_of: np.ndarray          # (usable_rows, mesh_cols): physical column of logical (x, y)
    row_of: np.ndarray          # (usable_rows,): physical row of logical row y
    px: np.ndarray              # (mesh_rows, mesh_cols) int64: physical - logical column
    py: np.ndarray              # (mesh_rows, mesh_cols) int64: extra vertical hops from
    #                             logical row 0 down to row y in column x (prefix sums of
    #                             the retired rows skipped; the same in every column)

    @property
    def phys_cols(self) -> int:
        return self.mesh_cols + self.spare_cols

    @property
    def phys_rows(self) -> int:
        return self.mesh_rows + self.spare_rows

    @property
    def rows_lost(self) -> int:
        return self.mesh_rows - self.usable_rows

    @property
    def usable_cores(self) -> int:
        return self.mesh_cols * self.usable_rows

    @property
    def has_detours(self) -> bool:
        return bool(self.px.any() or self.py.any())

    def xhops(self, y: int, xa: int, xb: int) -> int:
        """Physical hops between logical columns xa and xb of logical row y."""
        return abs(xb - xa) + abs(int(self.px[y, xb]) - int(self.px[y, xa]))

    def yhops(self, x: int, ya: int, yb: int) -> int:
        """Physical hops between logical rows ya and yb of logical column x."""
        return abs(yb - ya) + abs(int(self.py[yb, x]) - int(self.py[ya, x]))

    def route_hops(self, x0: int, y0: int, x1: int, y1: int) -> int:
        """Physical hops of the dimension-order route (x first, then y) between two cores."""
        return self.xhops(y0, x0, x1) + self.yhops(x1, y0, y1)

    def link_hops(self) -> np.ndarray:
        """(mesh_rows, mesh_cols, 4) physical hops of every logical link (east, west, south,
        north; fabric.Mesh.link order); 1 where there is no detour or no neighbour."""
        out = np.ones((self.mesh_rows, self.mesh_cols, 4), np.int64)
        dx, dy = np.diff(self.px, axis=1), np.diff(self.py, axis=0)
        out[:, :-1, 0] += dx   # east from (x, y) to (x + 1, y)
        out[:, 1:, 1] += dx    # west from (x + 1, y) to (x, y)
        out[:-1, :, 2] += dy   # south
        out[1:, :, 3] += dy    # north
        return out

    def summary(self) -> dict:
        """The report's `defects` object (docs/hardware-model.md)."""
        return {"physical_mesh": [self.phys_cols, self.phys_rows],
                "defective_cores": self.defective_cores, "rows_retired": self.rows_retired,
                "cores_retired": self.cores_retired, "spare_cols": self.spare_cols,
                "spare_rows": self.spare_rows, "spare_cores_used": self.spare_cores_used,
                "spare_rows_used": self.spare_rows_used,
                "spare_cols_needed": self.spare_cols_needed,
                "usable_mesh": [self.mesh_cols, self.usable_rows],
                "usable_cores": self.usable_cores, "rows_lost": self.rows_lost,
                "detour_hops_max": self.detour_hops_max}

    @property
    def detour_hops_max(self) -> int:
        """The most extra hops of a route across the whole row or column (x or y segment)."""
        if not self.usable_rows:
            return 0
        return int(max((self.px[:, -1] - self.px[:, 0]).max(), self.py[-1, :].max()))


def _key(hw) -> tuple:
    return (hw.mesh_cols, hw.mesh_rows, hw.spare_cols, hw.spare_rows, hw.defect_fraction,
            hw.defect_seed, hw.defect_file)


def has_defects(hw) -> bool:
    return bool(hw.defect_fraction > 0 or hw.defect_file)


def repair(hw) -> Repair:
    """The repaired wafer of `hw` (cached by the defect and mesh fields)."""
    return _repair(*_key(hw))


def defect_map(cols: int, rows: int, fraction: float, seed: int, file: str) -> np.ndarray:
    """Boolean (rows, cols) physical defect map: `round(fraction x cores)` cores drawn without
    replacement by a seeded permutation (so a larger fraction with the same seed marks a
    superset), plus the cores of `file`."""
    n = cols * rows
    bad_map = np.zeros(n, bool)
    k = int(round(fraction * n))
    if k:
        bad_map[np.random.default_rng(seed).permutation(n)[:k]] = True
    if file:
        bad_map[read_defect_file(file, n, cols, rows)] = True
    return bad_map.reshape(rows, cols)


@functools.lru_cache(maxsize=8)
def read_defect_file(path: str, n: int, cols: int = 0, rows: int = 0) -> np.ndarray:
    """Physical core ids from a text file (integers separated by spaces, commas or new lines;
    `#` starts a comment), each in [0, n), none twice; ConfigError naming the id otherwise."""
    where = f"{cols} x {rows} physical mesh" if cols else "physical mesh"
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise bad("defect_file", path, f"must be a readable file of physical core ids "
                                       f"({e.strerror or e})") from None
    ids = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for tok in line.split("#", 1)[0].replace(",", " ").split():
            try:
                v = int(tok)
            except ValueError:
                raise bad("defect_file", path, f"line {lineno}: {tok!r} is not a core id "
                                               "(an integer)") from None
            if not 0 <= v < n:
                raise bad("defect_file", path, f"line {lineno}: core id {v} is outside the "
                                               f"{where} (ids 0..{n - 1})")
            ids.append(v)
    arr = np.array(ids, np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        raise bad("defect_file", path, f"core id {int(uniq[counts > 1][0])} is listed twice")
    return arr


def validate(hw) -> None:
    """The defect fields' own checks (called from HardwareConfig.__post_init__)."""
    if not hw.defect_fraction < 1:
        raise bad("defect_fraction", hw.defect_fraction, "must be a number in [0, 1)")
    if hw.defect_file:
        cols, rows = hw.mesh_cols + hw.spare_cols, hw.mesh_rows + hw.spare_rows
        read_defect_file(hw.defect_file, cols * rows, cols, rows)


@functools.lru_cache(maxsize=8)
def _repair(cols, rows, spare_cols, spare_rows, fraction, seed, file) -> Repair:
    pc, pr = cols + spare_cols, rows + spare_rows
    dmap = defect_map(pc, pr, fraction, seed, file)
    per_row = dmap.sum(axis=1)
    kept = per_row <= spare_cols                     # rows repaired by their spare columns
    good_rows = np.flatnonzero(kept)
    row_of = good_rows[:rows].astype(np.int64)
    usable = len(row_of)
    # physical column of each logical core: the first `cols` working cores of its row
    work = ~dmap[row_of]
    order = np.argsort(~work, axis=1, kind="stable")[:, :cols]  # working columns, in order
    col_of = order.astype(np.int64)
    px = np.zeros((rows, cols), np.int64)
    py = np.zeros((rows, cols), np.int64)
    px[:usable] = col_of - np.arange(cols)
    if usable > 1:
        py[1:usable] = np.cumsum(np.diff(row_of) - 1)[:, None]  # retired rows skipped
    retired_rows = np.flatnonzero(~kept)
    last = int(row_of[-1]) if usable else -1
    return Repair(cols, rows, spare_cols, spare_rows, int(dmap.sum()), int(len(retired_rows)),
                  spare_rows_used=int(last + 1 - usable) if usable == rows else spare_rows,
                  spare_cores_used=int(per_row[row_of].sum()),
                  spare_cols_needed=int(per_row.max(initial=0)), usable_rows=usable,
                  cores_retired=int(dmap.sum() + (pc - per_row[retired_rows]).sum()),
                  col_of=col_of, row_of=row_of, px=px, py=py)


def bytes_hops(hw, link_bytes: np.ndarray) -> int:
    """Bytes x physical hops over the logical links' byte counts (`link_bytes`, indexed by
    fabric link id): a detoured link carries its bytes over all its physical hops."""
    rep = hw.repair()
    if rep is None or not rep.has_detours:
        return int(link_bytes.sum())
    return int((link_bytes.reshape(-1) * rep.link_hops().reshape(-1)).sum())


def program_rows(program) -> int:
    """Rows of the logical mesh a program touches: 1 + the largest row of any task's cores,
    destinations, sources or buffers."""
    top = 0
    for t in program.tasks:
        r = t.region
        top = max(top, r.y + r.rows)
        to = getattr(t, "to", None)
        if to is not None:
            top = max(top, int(to[1]) + 1)
        elif getattr(t, "dy", 0) and not getattr(t, "wrap", False) and not getattr(t, "ring", ""):
            top = max(top, r.y + r.rows + max(0, t.dy))
        src = getattr(t, "src", None)
        if src is not None:
            top = max(top, int(src[1]) + 1)
    for a in program.allocs:
        top = max(top, a.region.y + a.region.rows)
    return top


def check_repairable(program, hw) -> Repair | None:
    """The repair of `hw` when it has defects (None without); ConfigError with the numbers when
    the program needs rows that did not survive repair."""
    if not has_defects(hw):
        return None
    rep = repair(hw)
    need = program_rows(program)
    if need > rep.usable_rows:
        raise ConfigError(
            f"defects: the mapping needs {hw.mesh_cols} x {need} cores of the user mesh, but "
            f"only {rep.mesh_cols} x {rep.usable_rows} survive repair: "
            f"{rep.defective_cores} defective cores (defect_fraction={hw.defect_fraction:g}, "
            f"defect_seed={hw.defect_seed}{', defect_file=' + hw.defect_file if hw.defect_file else ''}) "
            f"in a {rep.phys_cols} x {rep.phys_rows} physical mesh retire {rep.rows_retired} "
            f"rows (more than spare_cols={rep.spare_cols} defects each; spare_cols_needed="
            f"{rep.spare_cols_needed}), spare_rows={rep.spare_rows} replace "
            f"{rep.spare_rows_used}, {rep.rows_lost} rows lost; give more spares "
            f"(--set spare_rows=N or spare_cols=N) or map onto fewer rows")
    return rep
