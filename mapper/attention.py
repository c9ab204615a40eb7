"""How attention is split over a region, and what its KV cache costs in SRAM.

Heads are laid in *head groups*, each owning `G` consecutive rows (`rows_per_group`):

- rows <= heads (or the sequence split turned off, as training does): Ra = rows groups of
  hpr = ceil(heads / Ra) consecutive query heads, G = 1: one row per group (head parallel).
  Under GQA a row keeps the K/V heads its query heads read (kv_heads / Ra rounded up; when
  Ra > kv_heads a K/V head is kept by every row whose query heads use it).
- rows > heads: one group per K/V head (a GQA group: its kv_heads-th share of the query
  heads and the one K/V head they read; for plain multi-head attention one head per group),
  each owning G = rows // kv_heads rows; the Ra x G rows hold attention, the rest (fewer
  than Ra) only the FFN.

Sequence parallel inside a group: core (column j, row g of the group) keeps the keys and
values of positions p with p mod C = j and (p div C) mod G = g, in slot p div (G C): the
cached and processed positions of a head group are split over its G x C cores, so Q·Kᵀ is a
distributed GEMM in which K never moves and only the partial outputs and softmax statistics
(head_dim + 2 numbers per head and query) travel: along each row to its leader (column 0),
then, when G > 1, up the group's G leaders to the group's top row, merged with the exact
online-softmax rule at every step.

KV cache: a region that keeps several caches (the layers of a layer-sequential region, the
sequences of a batch) starts each at a different core (`kv_offsets`), so the fullest core holds
about layers x batch x keys / (G C) positions (`kv_slots`), not layers x batch x
ceil(keys / (G C)): short contexts of many layers and sequences fit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workloads.models import GPTConfig
from wse_sim.hardware import DTYPE_BYTES


@dataclass(frozen=True)
class AttentionSplit:
    """The split of one layer's attention over `rows` x `cols` cores."""

    groups: int               # Ra: head groups
    rows_per_group: int       # G: rows of one head group
    cols: int
    heads_per_group: int      # query heads of a group (its rows all hold the same heads)
    kv_heads_per_group: int
    head_dim: int

    @property
    def rows_used(self) -> int:
        """Rows that hold attention (Ra x G)."""
        return self.groups * self.rows_per_group

    @property
    def cores_per_group(self) -> int:
        """Cores a head group's keys are split over (G x C)."""
        return self.rows_per_group * self.cols

    def positions_per_core(self, keys: int) -> int:
        """Cached positions of one sequence on the fullest core."""
        return math.ceil(keys / self.cores_per_group)

    def kv_offsets(self, streams: int) -> tuple:
        """Where each of `streams` KV caches sharing these cores starts: cache m (layer
        m div B, sequence m mod B, in a region holding several layers' caches for a batch of
        B) puts its position p at index p + m N div streams of the group's N = G C cores
        (index v: column v mod C, row (v div C) mod G, slot v div N), so short caches of
        many layers and sequences fill different cores instead of each core's first slots."""
        n = self.cores_per_group
        return tuple(m * n // streams for m in range(streams))

    def kv_slots(self, keys: int, streams: int = 1) -> int:
        """Cached positions on the fullest core when `streams` caches of `keys` positions
        each start at `kv_offsets`: streams x (keys div N), plus the most caches whose
        remaining keys mod N positions reach one core (about keys x streams / N in all)."""
        n = self.cores_per_group
        q, s = divmod(int(keys), n)
        if s == 0:
            return streams * q
        o = np.array(self.kv_offsets(streams), np.int64)  # ascending
        ring = np.concatenate([o, o + n])
        reach = np.searchsorted(ring, o + s, "left") - np.searchsorted(ring, o, "left")
        return streams * q + int(reach.max())

    def kv_bytes_per_core(self, keys: int, dtype: str, streams: int = 1) -> int:
        """K and V of `streams` caches of `keys` positions on the fullest core:
        2 x kv_heads_per_group x head_dim x kv_slots(keys, streams) x dtype bytes."""
        return 2 * self.kv_heads_per_group * self.head_dim * self.kv_slots(keys, streams) \
            * DTYPE_BYTES[dtype]

    def partial_values(self, queries: int) -> int:
        """Numbers each core sends back per reduce: partial output plus max and sum."""
        return queries * self.heads_per_group * (self.head_dim + 2)

    def max_tokens(self, free_bytes: int, dtype: str, streams: int = 1) -> int:
        """The most cached positions per cache whose `streams` caches fit in `free_bytes`
        per core."""
        slots = max(0, free_bytes) // (2 * self.kv_heads_per_group * self.head_dim
                                        * DTYPE_BYTES[dtype])
        lo, hi = 0, (slots + 1) * self.cores_per_group  # kv_slots(hi) > slots
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if self.kv_slots(mid, streams) <= slots else (lo, mid)
        return lo


ATTENTION_SPLITS = ("auto", "heads", "rows")  # see tp2d.Layout.fitted


def split(cfg: GPTConfig, rows: int, cols: int, seq_rows: bool = True) -> AttentionSplit:
    """The split of `cfg`'s attention over `rows` x `cols` cores; `seq_rows=False` keeps the
    head-parallel split (one row per group) even when rows > heads."""
    if rows <= cfg.n_heads or not seq_rows:
        groups, g = min(rows, cfg.n_heads), 1
    else:
        groups = cfg.n_kv_heads
        g = rows // groups
    return AttentionSplit(groups, g, cols, math.ceil(cfg.n_heads / groups),
                          math.ceil(cfg.n_kv_heads / groups), cfg.hd)
