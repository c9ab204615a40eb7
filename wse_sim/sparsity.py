"""Sparse weights: how a run's zero weights are stored, and how many there are per layer
(docs/sparsity.md).

`Sparsity` pairs a storage format with a fraction of zero weights per transformer layer:

- `dense`: every weight stored, zeros included (the cores still skip the zero multiply-adds);
- `unstructured`: the nonzeros stored as (value, 16-bit index) pairs, the index a position in
  the core's tile, or in its block of 65,536 positions (ASSUMPTION, docs/sparsity.md);
- `bitmap`: the nonzeros' values plus one bit per weight position (1: stored);
- `N:M` (e.g. `2:4`): N values kept in every group of M consecutive weights along the
  reduction dimension, each kept value with ceil(log2 M) bits of position metadata; the
  fraction is 1 - N/M, fixed by the pattern.

The fraction applies to the layers' weight matrices (Q, K, V, O, FFN); the embedding table,
the LM head, norm gains and biases stay dense. Compute follows the nonzeros in every format.
"""

from __future__ import annotations

import csv
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path

from wse_sim.errors import ConfigError

FORMATS = ("dense", "unstructured", "bitmap", "N:M")
INDEX_BITS = 16  # unstructured: bits of the index stored with each nonzero (assumption)
INDEX_POSITIONS = 1 << INDEX_BITS  # tile positions a 16-bit index can address
MAX_M = 256  # N:M: the largest group (8 bits of position metadata per kept value)


def parse_format(text: str) -> tuple[str, int, int]:
    """(kind, N, M) of a format name: ('dense', 0, 0), ('unstructured', 0, 0),
    ('bitmap', 0, 0) or ('nm', N, M) for 'N:M' with 1 <= N < M <= 256."""
    if not isinstance(text, str):
        raise ConfigError(f"sparse_format: got {text!r}, must be one of dense, unstructured, "
                          "bitmap or N:M (e.g. 2:4)")
    if text in ("dense", "unstructured", "bitmap"):
        return text, 0, 0
    n, colon, m = text.partition(":")
    if colon and n.isdigit() and m.isdigit() and 1 <= int(n) < int(m) <= MAX_M:
        return "nm", int(n), int(m)
    raise ConfigError(f"sparse_format: got {text!r}, must be dense, unstructured, bitmap or N:M "
                      f"with whole numbers 1 <= N < M <= {MAX_M} (e.g. 2:4)")


def nm_bits(m: int) -> int:
    """Position metadata per kept value of an N:M pattern: ceil(log2 M) bits (2:4: 2 bits)."""
    return max(1, math.ceil(math.log2(m)))


def load_fractions(path: str) -> tuple[float, ...]:
    """One sparsity fraction per layer, in layer order, from a file: `.toml` (fractions =
    [...]), `.json` (a list, or {"fractions": [...]}) or `.csv` (a header `layer,fraction`,
    then one row per layer, layers 0, 1, ... in order). Each fraction in [0, 1)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"sparsity_file: {path}: cannot read ({e.strerror or e})") from None
    try:
        if p.suffix == ".toml":
            values = tomllib.loads(text).get("fractions")
        elif p.suffix == ".json":
            data = json.loads(text)
            values = data.get("fractions") if isinstance(data, dict) else data
        elif p.suffix == ".csv":
            values = _csv_fractions(path, text)
        else:
            raise ConfigError(f"sparsity_file: {path}: must end in .toml, .json or .csv")
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"sparsity_file: {path}: not valid {p.suffix[1:]} ({e})") from None
    if not isinstance(values, list) or not values:
        raise ConfigError(f"sparsity_file: {path}: must hold a non-empty list of fractions, "
                          "one per layer (TOML/JSON: fractions = [...])")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
            raise ConfigError(f"sparsity_file: {path}: layer {i}: got {v!r}, must be a number "
                              "in [0, 1)")
    return tuple(float(v) for v in values)


def _csv_fractions(path: str, text: str) -> list:
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows or [c.strip() for c in rows[0]] != ["layer", "fraction"]:
        raise ConfigError(f"sparsity_file: {path}: a CSV starts with the header layer,fraction")
    out = []
    for i, row in enumerate(rows[1:]):
        if len(row) != 2 or row[0].strip() != str(i):
            raise ConfigError(f"sparsity_file: {path}: row {i + 2}: got {','.join(row)!r}, must "
                              f"be {i},FRACTION (layers 0, 1, ... in order)")
        try:
            out.append(float(row[1]))
        except ValueError:
            out.append(row[1].strip())  # refused with its layer by the caller
    return out


@dataclass(frozen=True)
class Sparsity:
    """A run's sparse weights: `fmt` (see the module's docstring), `fraction` (uniform, every
    layer) or `per_layer` (one fraction per layer; empty: uniform)."""

    fmt: str = "dense"
    fraction: float = 0.0
    per_layer: tuple = ()

    def __post_init__(self):
        kind, n, m = parse_format(self.fmt)
        fracs = self.per_layer or (self.fraction,)
        for i, v in enumerate(fracs):
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1:
                raise ConfigError(f"sparsity: layer {i}: got {v!r}, must be a number in [0, 1)")
        if self.per_layer and self.fraction:
            raise ConfigError(f"sparsity: got {self.fraction!r} and a fraction per layer; give "
                              "one of them")
        if kind == "nm":
            want = 1 - n / m
            if self.per_layer or abs(self.fraction - want) > 1e-9:
                got = "a fraction per layer" if self.per_layer else f"{self.fraction!r}"
                raise ConfigError(f"sparsity: got {got} with sparse_format {self.fmt}, which "
                                  f"fixes it at 1 - {n}/{m} = {want:g} (leave --sparsity out)")
        elif kind != "dense" and max(fracs) == 0:
            raise ConfigError(f"sparse_format: got {self.fmt!r} with sparsity 0; give --sparsity "
                              "S or --sparsity-file FILE (a format without zeros stores nothing "
                              "less)")

    @classmethod
    def build(cls, fmt: str = "dense", sparsity: float = 0.0,
              sparsity_file: str | None = None) -> Sparsity:
        """From the run's options: an N:M format sets the fraction when `sparsity` is 0; a
        file gives one fraction per layer (then `sparsity` must be 0)."""
        kind, n, m = parse_format(fmt)
        if sparsity_file is not None:
            if sparsity:
                raise ConfigError(f"sparsity_file: got {sparsity_file!r} with sparsity "
                                  f"{sparsity!r}; give one of them")
            if kind == "nm":
                raise ConfigError(f"sparsity_file: got {sparsity_file!r} with sparse_format "
                                  f"{fmt}, which fixes every layer at 1 - {n}/{m}")
            return cls(fmt, 0.0, load_fractions(sparsity_file))
        if kind == "nm" and not sparsity:
            sparsity = 1 - n / m
        return cls(fmt, float(sparsity))

    @property
    def kind(self) -> str:
        return parse_format(self.fmt)[0]

    @property
    def compressed(self) -> bool:
        """The zeros are not stored (every format but dense)."""
        return self.kind != "dense"

    @property
    def nm(self) -> tuple[int, int]:
        """(N, M) of an N:M format, (0, 0) otherwise."""
        return parse_format(self.fmt)[1:]

    @property
    def any(self) -> bool:
        """Some layer has zero weights."""
        return max(self.per_layer or (self.fraction,)) > 0

    def check_layers(self, n_layers: int, model: str) -> None:
        """A fraction per layer must name each of the model's layers once."""
        if self.per_layer and len(self.per_layer) != n_layers:
            raise ConfigError(f"sparsity_file: got {len(self.per_layer)} fractions, model "
                              f"{model} has {n_layers} layers (one fraction per layer)")

    def of_layer(self, layer: int | None) -> float:
        """The fraction of zero weights of transformer layer `layer` (None: not a layer's
        weight, dense)."""
        if layer is None:
            return 0.0
        if not self.per_layer:
            return float(self.fraction)
        if not 0 <= layer < len(self.per_layer):
            raise ConfigError(f"sparsity: layer {layer} has no fraction ({len(self.per_layer)} "
                              "given)")
        return float(self.per_layer[layer])

    def layers(self, first: int, count: int) -> Sparsity:
        """The fractions of layers first .. first + count - 1 (a pipeline stage's)."""
        if not self.per_layer:
            return self
        return Sparsity(self.fmt, 0.0, self.per_layer[first:first + count])

    def stored_bytes(self, positions: int, value_bytes: int, layer: int | None) -> int:
        """Bytes that hold a tile of `positions` weights of `layer` at `value_bytes` each.

        dense: positions x value bytes. unstructured: nnz x (value bytes + 2), nnz =
        ceil(positions x (1 - fraction)), + 2 bytes per 65,536-position block after the first. bitmap: nnz x value bytes + ceil(positions / 8).
        N:M: ceil(positions / M) groups of N kept values, each value bytes + ceil(log2 M) bits
        (the bits rounded up to whole bytes over the tile)."""
        kind, n, m = parse_format(self.fmt)
        if kind == "dense" or positions <= 0 or layer is None:
            return positions * value_bytes
        if kind == "nm":
            kept = math.ceil(positions / m) * n
            return kept * value_bytes + math.ceil(kept * nm_bits(m) / 8)
        nnz = math.ceil(positions * (1 - self.of_layer(layer)))
        if kind == "bitmap":
            return nnz * value_bytes + math.ceil(positions / 8)
        # a tile beyond 65,536 positions is cut into blocks of that many, each index relative
        # to its block; every block after the first keeps a 16-bit count of its nonzeros
        blocks = math.ceil(positions / INDEX_POSITIONS)
        return nnz * (value_bytes + INDEX_BITS // 8) + (blocks - 1) * INDEX_BITS // 8

    def to_meta(self) -> dict:
        """What a program's meta records (the functional run prunes by it)."""
        return {"sparse_format": self.fmt,
                "sparsity_layers": list(self.per_layer) if self.per_layer else None}
