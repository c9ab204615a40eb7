"""The two reduce algorithms of a GEMV / GEMM's partial sums along the lines of a region, as
records and as closed forms: shared by `mapper.gemm_gemv` (the GEMV) and by the whole-model
layer layout `mapper.strategies.tp2d` (the reductions of its up and down GEMMs).

- `chain`: one pipelined `LineStream` reduce along every line into position 0.
- `tree` (two-level; docs/gemm.md "GEMV", docs/collectives.md "reduce-two-level"): a line
  of n cores is cut into a root group of r0 cores at position 0 and m groups of
  g = ceil(sqrt(n)) cores beyond it (`tree_groups`); every group chain-reduces to its leader
  (the end nearest position 0), then every leader sends its partial sum straight to position 0
  (one `Unicast` per leader, nearest first), which adds it (one vector `Compute` per leader,
  in order). The IR has no strided stream, so the second level is store-and-forward: the root
  keeps one receive buffer per leader (`TreeBufs.recv`).

Every record covers all lines of the region at once (SPMD). The root's adds are Compute
records: their FLOPs are the caller's `combine_flops` (beyond the graph's), where a chain's
adds are stream FLOPs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.program import Compute, DataOp, Dep, LineStream, Region, Unicast
from wse_sim.timing import compute_cycles, message_cycles, reduce_pace, stream_beats


def tree_groups(n: int) -> tuple[int, int, int]:
    """Two-level grouping of a line of n cores: (g, m, r0) = m groups of g cores beyond a
    root group of r0 = n - m g cores (1..g) at the root's end; g = ceil(sqrt(n)). m = 0 (n <= 2):
    the tree is the chain."""
    g = min(n, math.isqrt(n - 1) + 1) if n > 1 else 1
    m = (n - 1) // g
    return g, m, n - m * g


def line_part(axis: str, lines: Region, lo: int, length: int) -> Region:
    """Positions [lo, lo + length) along `axis` ('x': along every row) of the lines of `lines`."""
    if axis == "x":
        return Region(lines.x + lo, lines.y, length, lines.rows)
    return Region(lines.x, lines.y + lo, lines.cols, length)


def line_length(axis: str, lines: Region) -> int:
    return lines.cols if axis == "x" else lines.rows


@dataclass(frozen=True)
class TreeBufs:
    """Functional buffers of one tree reduce: the partial sums `src` (reduced in place at the
    leaders and the root), the root's receive buffers (`recv_prefix` + k, k = 1..m, tiles like
    `src`), and where the sum goes (`out`, at columns `out_offset`.. when given)."""

    src: str
    out: str
    out_offset: int | None = None
    recv_prefix: str = ""

    @classmethod
    def of(cls, chain: DataOp) -> TreeBufs:
        """The tree's buffers for the DataOp of the chain reduce it replaces."""
        src = chain.inputs[0]
        return cls(src, chain.output, chain.param("out_offset"), recv_name(src, ""))

    def recv(self, k: int) -> str:
        return f"{self.recv_prefix}{k}"


def recv_name(src: str, k) -> str:
    """The root's k-th receive tile of a tree reduce of `src` (whole-model layouts)."""
    return f"{src}.recv{k}"


def _op(kernel: str, inputs: tuple, output: str, **params) -> DataOp:
    return DataOp(kernel, inputs, output, tuple(sorted((k, v) for k, v in params.items()
                                                       if v is not None)))


def build_tree(add: Callable, op: str, lines: Region, axis: str, *, wavelets: int, values: int,
               dtype: str, colors: tuple[int, int], deps: tuple,
               bufs: TreeBufs | None = None) -> tuple[int, int]:
    """Records of the two-level reduce of `values` values (`wavelets` wavelets) of `dtype` per
    core along every line of `lines` into position 0 (`add`: ProgramBuilder.add). Group chains
    on colors[0], the leaders' sends on colors[1]; all wait for `deps`. Names: `op`_group,
    `op`_to_root, `op`_add. Returns (the last add, whose event at position 0 marks the sum;
    the FLOPs of the root's adds). Needs m >= 1 (a line of 3 cores or more)."""
    n = line_length(axis, lines)
    g, m, r0 = tree_groups(n)
    if m < 1:
        raise ValueError(f"{op}: a tree needs lines of at least 3 cores, got {n}")
    b = DTYPE_BYTES[dtype]
    root = line_part(axis, lines, 0, 1)
    group_data = None if bufs is None else _op("reduce", (bufs.src,), bufs.src)

    def chain(lo: int, length: int) -> int:
        return add(LineStream(f"{op}_group", line_part(axis, lines, lo, length), axis, -1,
                              wavelets, reduce=True, dtype=dtype, color=colors[0], deps=deps,
                              data=group_data))

    last = [chain(0, r0)] if r0 >= 2 else list(deps)
    leaders = []
    for k in range(1, m + 1):
        lead = r0 + (k - 1) * g
        leaders.append((k, lead, (Dep(chain(lead, g)),) if g >= 2 else deps))
    flops = 0
    for k, lead, src_deps in leaders:
        step = {"dx": -lead} if axis == "x" else {"dy": -lead}
        send = add(Unicast(f"{op}_to_root", line_part(axis, lines, lead, 1), wavelets,
                           color=colors[1], deps=src_deps,
                           data=None if bufs is None else
                           _op("copy", (bufs.src,), bufs.recv(k)), **step))
        final = bufs is not None and k == m
        data = None if bufs is None else _op(
            "add", (bufs.src, bufs.recv(k)), bufs.out if final else bufs.src,
            out_offset=bufs.out_offset if final else None)
        cores = root.size
        a = add(Compute(f"{op}_add", root, values * cores, dtype, "vector",
                        sram_read_bytes=2 * values * b * cores,
                        sram_write_bytes=values * b * cores,
                        deps=(Dep(send),) + tuple(d if isinstance(d, Dep) else Dep(d)
                                                  for d in last), data=data))
        flops += values * cores
        last = [a]
    return last[0], flops


# ---- closed forms (contention-free, our timing rules; docs/gemm.md) ----------------------------

def stage_cycles(hw: HardwareConfig) -> int:
    """One chain stage: ramp off, add, ramp on, hop."""
    return 2 * hw.ramp_latency_cycles + hw.hop_latency_cycles + hw.stream_op_latency_cycles


def add_cycles(hw: HardwareConfig, values: int, dtype: str) -> int:
    """The root adding one received vector of `values` values into its own."""
    b = DTYPE_BYTES[dtype]
    return compute_cycles(hw, values, dtype, "vector", sram_read=2 * values * b,
                          sram_write=values * b)


def chain_end(hw: HardwareConfig, ready: list[int], wavelets: int, dtype: str) -> int:
    """Event at position 0 of a chain reduce whose position p is ready at ready[p]: the stream
    starts when every core is ready, (n - 1) stages, then the rest at the pace."""
    if len(ready) < 2:
        return max(ready)
    beats = stream_beats(hw, wavelets)
    return max(ready) + (len(ready) - 1) * stage_cycles(hw) + (beats - 1) * reduce_pace(hw, dtype) \
        + message_cycles(hw)


def tree_end(hw: HardwareConfig, ready: list[int], wavelets: int, values: int,
             dtype: str) -> int:
    """Event at position 0 of the two-level reduce (`build_tree`) whose position p is ready at
    ready[p]: the group chains reserve their links first (they are ready first), then the
    leaders' sends are granted in order, first come first served, on the links toward the root
    and the root's ramp off; the root adds each arrival after its previous add."""
    return two_level_end(hw, ready, wavelets, dtype, tree_groups(len(ready)),
                         add_cycles(hw, values, dtype))


def two_level_end(hw: HardwareConfig, ready: list[int], wavelets: int, dtype: str,
                  groups: tuple[int, int, int], a: int) -> int:
    """`tree_end` for any grouping (g, m, r0) and root add `a` (0: the root takes the sums as
    they arrive, as `mapper.collectives`' two-level reduce does): traced exactly."""
    tr, hop, wn = hw.ramp_latency_cycles, hw.hop_latency_cycles, stream_beats(hw, wavelets)
    s, r = hw.message_start_cycles, hw.message_receive_cycles  # every window starts s late
    stage, pace = stage_cycles(hw), reduce_pace(hw, dtype)
    g, m, r0 = groups
    link_free: dict[int, int] = {}  # link from position q to q - 1 -> free after
    root_off = 0

    def stream(lo: int, cores: int) -> int:
        nonlocal root_off
        start = max(ready[lo:lo + cores])
        for i in range(1, cores):  # hop i - 1 leaves position lo + cores - i
            link_free[lo + cores - i] = start + s + (i - 1) * stage + tr + wn * pace
        if lo == 0 and cores >= 2:
            root_off = start + s + (cores - 2) * stage + tr + hop + wn * pace
        return start + ((cores - 1) * stage + (wn - 1) * pace + s + r if cores >= 2 else 0)

    done = stream(0, r0)
    leads = [(r0 + (k - 1) * g, stream(r0 + (k - 1) * g, g)) for k in range(1, m + 1)]
    for lead, start in leads:
        for q in range(lead, 0, -1):
            start = max(start, link_free.get(q, 0) - s - tr - (lead - q) * hop)
        start = max(start, root_off - s - tr - lead * hop)
        for q in range(lead, 0, -1):
            link_free[q] = start + s + tr + (lead - q) * hop + wn
        root_off = start + s + tr + lead * hop + wn
        done = max(done, start + s + 2 * tr + lead * hop + wn - 1 + r) + a
    return done


def reduce_end(algo: str, hw: HardwareConfig, ready: list[int], wavelets: int, values: int,
               dtype: str) -> int:
    """`chain_end` or `tree_end` (a line too short for a tree is a chain)."""
    if algo == "tree" and tree_groups(len(ready))[1] >= 1:
        return tree_end(hw, ready, wavelets, values, dtype)
    return chain_end(hw, ready, wavelets, dtype)
