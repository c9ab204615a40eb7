"""Request streams: arrival times and prompt / output lengths (docs/serving.md, "Requests").

Specs (every bad one raises ValueError with one line naming the option, the value and what is
allowed):

- arrivals: ``poisson:RATE`` (requests/s; exponential gaps, the first request after one gap)
  or a CSV file with a column ``arrival_s`` (columns ``prompt_tokens`` and ``output_tokens``,
  when present, give the lengths);
- lengths: ``fixed:N``, ``uniform:A-B`` (integers A..B, both included) or
  ``lognormal:MEAN,SIGMA`` (``round(X)``, at least 1, where ``ln X`` is normal with standard
  deviation SIGMA and the mean chosen so that ``E[X] = MEAN``).

One seed draws everything: gaps, prompt lengths and output lengths come from three streams
spawned from ``numpy.random.SeedSequence(seed)``, so the same seed gives the same requests.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wse_sim.errors import must_be as _bad

DIST_FORMS = "fixed:N, uniform:A-B or lognormal:MEAN,SIGMA"
TRACE_COLUMNS = ("arrival_s", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class Request:
    """One request: when it arrives and how many tokens it brings and asks for."""

    id: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int

    def __post_init__(self):
        if not isinstance(self.id, int) or self.id < 0:
            raise _bad("Request.id", self.id, "an integer >= 0")
        if not (isinstance(self.arrival_s, int | float) and math.isfinite(self.arrival_s)
                and self.arrival_s >= 0):
            raise _bad("Request.arrival_s", self.arrival_s, "a finite number >= 0")
        for name in ("prompt_tokens", "output_tokens"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise _bad(f"Request.{name}", v, "a positive integer")


@dataclass(frozen=True)
class LengthDist:
    """A token-count distribution: kind `fixed` (a), `uniform` (a..b) or `lognormal`
    (mean a, sigma b)."""

    kind: str
    a: float
    b: float = 0.0

    def __post_init__(self):
        if self.kind not in ("fixed", "uniform", "lognormal"):
            raise _bad("LengthDist.kind", self.kind, "fixed, uniform or lognormal")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """`n` token counts (int64, each >= 1)."""
        if self.kind == "fixed":
            return np.full(n, int(self.a), dtype=np.int64)
        if self.kind == "uniform":
            return rng.integers(int(self.a), int(self.b) + 1, size=n, dtype=np.int64)
        mu = math.log(self.a) - self.b ** 2 / 2
        return np.maximum(1, np.rint(rng.lognormal(mu, self.b, size=n))).astype(np.int64)


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _float(text: str) -> float | None:
    try:
        v = float(text)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_dist(option: str, text: str) -> LengthDist:
    """`fixed:N`, `uniform:A-B` or `lognormal:MEAN,SIGMA` -> LengthDist."""
    kind, _, rest = text.partition(":")
    if kind == "fixed":
        n = _int(rest)
        if n is not None and n >= 1:
            return LengthDist("fixed", n)
        raise _bad(option, text, "fixed:N with N a positive integer")
    if kind == "uniform":
        lo, _, hi = rest.partition("-")
        a, b = _int(lo), _int(hi)
        if a is not None and b is not None and 1 <= a <= b:
            return LengthDist("uniform", a, b)
        raise _bad(option, text, "uniform:A-B with integers 1 <= A <= B")
    if kind == "lognormal":
        m, _, s = rest.partition(",")
        mean, sigma = _float(m), _float(s)
        if mean is not None and sigma is not None and mean >= 1 and sigma >= 0:
            return LengthDist("lognormal", mean, sigma)
        raise _bad(option, text, "lognormal:MEAN,SIGMA with MEAN >= 1 and SIGMA >= 0")
    raise _bad(option, text, DIST_FORMS)


def parse_rate(text: str) -> float:
    """The RATE of `poisson:RATE` (requests/s, > 0)."""
    rate = _float(text.partition(":")[2])
    if rate is None or rate <= 0:
        raise _bad("--arrivals", text, "poisson:RATE with RATE > 0 requests/s, or a CSV file")
    return rate


def _cell(path: str, row: int, column: str, text: str, integer: bool):
    v = _int(text) if integer else _float(text)
    if v is None or v < (1 if integer else 0):
        what = "a positive integer" if integer else "a finite number >= 0"
        raise ValueError(f"{path}: row {row} column {column}: got {text!r}, must be {what}")
    return v


def read_csv_requests(path: str, need_lengths: bool, option: str = "--arrivals") -> list[tuple]:
    """Rows of a CSV as (arrival_s, prompt_tokens or None, output_tokens or None); arrivals
    must not decrease. `need_lengths`: the length columns are required."""
    p = Path(path)
    if not p.is_file():
        raise _bad(option, path, "an existing CSV file" if option == "--trace" else
                   "poisson:RATE or an existing CSV file")
    with p.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        needed = TRACE_COLUMNS if need_lengths else TRACE_COLUMNS[:1]
        missing = [c for c in needed if c not in cols]
        if missing:
            raise ValueError(f"{path}: columns {cols}: missing {', '.join(missing)}; must have "
                             f"{', '.join(needed)}")
        has_lengths = all(c in cols for c in TRACE_COLUMNS[1:])
        rows, last = [], 0.0
        for i, r in enumerate(reader, start=2):
            t = _cell(path, i, "arrival_s", r["arrival_s"], False)
            if t < last:
                raise ValueError(f"{path}: row {i} column arrival_s: got {t}, must be >= the "
                                 f"previous row's {last} (rows in arrival order)")
            last = t
            lengths = (_cell(path, i, c, r[c], True) for c in TRACE_COLUMNS[1:]) \
                if has_lengths else (None, None)
            rows.append((t, *lengths))
    if not rows:
        raise ValueError(f"{path}: no rows; must hold at least one request")
    return rows


@dataclass(frozen=True)
class StreamSpec:
    """How to draw the requests: `arrivals` (`poisson:RATE` or a CSV path), `trace` (a CSV
    with every column; replaces `arrivals` and the distributions), the count, the length
    distributions (None: from the CSV) and the seed."""

    arrivals: str | None
    trace: str | None
    requests: int | None
    prompt: LengthDist | None
    output: LengthDist | None
    seed: int = 0

    def __post_init__(self):
        if (self.arrivals is None) == (self.trace is None):
            raise _bad("--arrivals/--trace", (self.arrivals, self.trace),
                       "exactly one of --arrivals poisson:RATE|FILE and --trace CSV")
        if self.trace is not None and (self.prompt or self.output):
            raise _bad("--prompt-dist/--output-dist", "given with --trace",
                       "left out: the trace gives every request's lengths")
        if self.requests is not None and (isinstance(self.requests, bool) or
                                          not isinstance(self.requests, int) or self.requests < 1):
            raise _bad("--requests", self.requests, "a positive integer")
        if self.poisson and self.requests is None:
            raise _bad("--requests", None, "given with --arrivals poisson:RATE")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise _bad("--seed", self.seed, "an integer >= 0")

    @property
    def poisson(self) -> bool:
        return self.arrivals is not None and self.arrivals.startswith("poisson:")


def make_requests(spec: StreamSpec) -> list[Request]:
    """The requests of `spec`, in arrival order, ids 0..n-1."""
    gaps_ss, prompt_ss, output_ss = np.random.SeedSequence(spec.seed).spawn(3)
    if spec.poisson:
        rate = parse_rate(spec.arrivals)
        gaps = np.random.default_rng(gaps_ss).exponential(1 / rate, size=spec.requests)
        rows = [(float(t), None, None) for t in np.cumsum(gaps)]
    else:
        path = spec.trace or spec.arrivals
        rows = read_csv_requests(path, spec.trace is not None,
                                 "--trace" if spec.trace else "--arrivals")
        if spec.requests is not None:
            if spec.requests > len(rows):
                raise _bad("--requests", spec.requests, f"at most the {len(rows)} rows of {path}")
            rows = rows[:spec.requests]
    n = len(rows)
    prompts = _lengths(rows, 1, spec.prompt, prompt_ss, "--prompt-dist")
    outputs = _lengths(rows, 2, spec.output, output_ss, "--output-dist")
    return [Request(i, rows[i][0], int(prompts[i]), int(outputs[i])) for i in range(n)]


def _lengths(rows: list, col: int, dist: LengthDist | None, ss, option: str) -> list:
    if dist is not None:
        return list(dist.sample(np.random.default_rng(ss), len(rows)))
    if rows[0][col] is None:
        raise _bad(option, None, f"given ({DIST_FORMS}) when the arrivals give no "
                   f"{TRACE_COLUMNS[col]} column")
    return [r[col] for r in rows]
