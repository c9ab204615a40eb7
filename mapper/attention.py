"""How attention is split over a region, and what its KV cache costs in SRAM.

Head-parallel over rows: row r owns a block of consecutive query heads [r hpr, (r + 1) hpr) with
hpr = heads / Ra rounded up and Ra = min(rows, heads), and
the K/V heads those query heads read (GQA: kv_heads / Ra per row, rounded up; when Ra > kv_heads
a K/V head is kept by every row whose query heads use it). Sequence-parallel over columns: column
j keeps the keys and values of positions j, j + C, ... (slot p div C), so Q·Kᵀ is a distributed GEMM in which K
never moves (the transposed product is computed where K lives) and only the partial outputs
and softmax statistics (head_dim + 2 numbers per head and query) travel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from workloads.models import GPTConfig
from wse_sim.hardware import DTYPE_BYTES


@dataclass(frozen=True)
class AttentionSplit:
    """The split of one layer's attention over `rows` x `cols` cores."""

    rows_used: int          # Ra: rows holding heads
    cols: int
    heads_per_row: int
    kv_heads_per_row: int
    head_dim: int

    def positions_per_core(self, tokens: int) -> int:
        return math.ceil(tokens / self.cols)

    def kv_bytes_per_core(self, tokens: int, dtype: str) -> int:
        """K and V of `tokens` positions (summed over the batch) on the fullest core."""
        return 2 * self.kv_heads_per_row * self.head_dim * self.positions_per_core(tokens) \
            * DTYPE_BYTES[dtype]

    def partial_values(self, queries: int) -> int:
        """Numbers each core sends back per reduce: partial output plus max and sum."""
        return queries * self.heads_per_row * (self.head_dim + 2)

    def max_tokens(self, free_bytes: int, dtype: str, layers: int = 1) -> int:
        """The most cached positions that fit in `free_bytes` per core for `layers` layers."""
        per_token_per_col = 2 * self.kv_heads_per_row * self.head_dim * DTYPE_BYTES[dtype] * layers
        return max(0, free_bytes // per_token_per_col) * self.cols


def split(cfg: GPTConfig, rows: int, cols: int) -> AttentionSplit:
    ra = min(rows, cfg.n_heads)
    return AttentionSplit(ra, cols, math.ceil(cfg.n_heads / ra), math.ceil(cfg.n_kv_heads / ra),
                          cfg.hd)
