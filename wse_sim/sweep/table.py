"""The sweep's result table, DIR/sweep.csv: one row per finished point, durable before it counts.

Rows are appended with one write() each, then flushed and fsync'ed, so a sweep killed at any
moment (even SIGKILL) leaves every reported point on disk and at most one torn final line,
which `open_table` cuts off. Only the sweep's main process writes the table.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from wse_sim.sweep.spec import SweepError

TABLE = "sweep.csv"
SPEC = "sweep.json"
METRICS = ("cycles", "seconds", "tokens_per_s", "peak_fraction", "flops", "comm_bytes",
           "bytes_hops", "compute_cycles", "comm_cycles", "sram_bytes_per_core",
           "energy_joules", "wall_seconds")
STATUS_COLUMNS = ("point_id", "status", "error")


def header(columns: list[str]) -> list[str]:
    """The table's header: the sweep's columns (axes, then keys of [[points]]), then
    point_id, status, error and the metrics."""
    return [*columns, *STATUS_COLUMNS, *METRICS]


def _line(values: list) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(
        ["" if v is None else v for v in values])
    return buf.getvalue().encode()


def fsync_dir(path: Path) -> None:
    """Make a file's creation or rename in `path` durable."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: write a temporary file, fsync, rename, fsync the folder."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def read_rows(path: Path) -> tuple[list[str] | None, list[dict], bool]:
    """(header, complete rows as dicts, whether anything was dropped: a torn or short line)."""
    data = path.read_bytes() if path.exists() else b""
    if not data:
        return None, [], False
    torn = not data.endswith(b"\n")
    if torn:
        data = data[:data.rfind(b"\n") + 1]
    lines = list(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"))))
    if not lines:
        return None, [], torn
    head, rows, dropped = lines[0], [], torn
    for values in lines[1:]:
        if len(values) != len(head):
            dropped = True
            continue
        rows.append(dict(zip(head, values, strict=True)))
    return head, rows, dropped


def load_table(directory: str | Path) -> list[dict]:
    """The rows of DIR/sweep.csv as dicts of strings (torn or short lines left out)."""
    path = Path(directory) / TABLE
    if not path.exists():
        raise SweepError(f"{path}: no sweep table here (run `wse-sim sweep FILE --out DIR`)")
    return read_rows(path)[1]


class Table:
    """DIR/sweep.csv opened for appending; `rows` holds the rows already there by point id."""

    def __init__(self, path: Path, columns: list[str], convert=None):
        """Open (creating or repairing) the table. `convert(row) -> row | None` rewrites or
        drops old rows; with it, an old table with another header is converted, not refused."""
        self.path = path
        self.header = header(columns)
        head, rows, dropped = read_rows(path)
        if head is not None and head != self.header:
            if convert is None:
                raise SweepError(f"{path}: its header differs from this sweep's columns; "
                                 "use --force or another --out")
            dropped = True
        kept = rows if convert is None else [r for r in map(convert, rows) if r is not None]
        dropped |= len(kept) != len(rows)
        self.rows: dict[str, dict] = {}
        for r in kept:
            pid = r.get("point_id", "")
            if pid and (pid not in self.rows or self.rows[pid].get("status") != "ok"):
                self.rows[pid] = r
        dropped |= len(self.rows) != len(kept)
        if head is None or dropped:
            data = _line(self.header) + b"".join(
                _line([r.get(c, "") for c in self.header]) for r in self.rows.values())
            write_atomic(path, data)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def append(self, row: dict) -> None:
        """Append one row and make it durable (flush + fsync) before returning."""
        data = _line([row.get(c) for c in self.header])
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]
        os.fsync(self._fd)
        self.rows[row["point_id"]] = {c: "" if row.get(c) is None else str(row[c])
                                      for c in self.header}

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
