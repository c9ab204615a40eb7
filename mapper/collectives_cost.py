"""Contention-free closed forms of the collectives in `mapper.collectives`, derived from the
timing rules of docs/hardware-model.md (docs/collectives.md derives each one). Tests pin the
simulator to these to the cycle."""

from __future__ import annotations

from mapper.collectives_spec import (
    Spec,
    _ceil,
    _rho,
    block_wavelets,
    ring_order,
    root_core,
    tree_children,
    two_level_groups,
)
from mapper.tree_reduce import two_level_end
from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.timing import message_cycles, reduce_pace, stream_beats, transfer_cycles

# ---- closed forms ------------------------------------------------------------------------------

def _stage(hw: HardwareConfig) -> int:
    return 2 * hw.ramp_latency_cycles + hw.hop_latency_cycles + hw.stream_op_latency_cycles


def add_cycles(hw: HardwareConfig, wavelets: int, dtype: str) -> int:
    """One core adding a received vector of `wavelets` into its own (the Compute of tree and
    ring): max(values / lanes, 8B / read bytes per cycle, 4B / write bytes per cycle)."""
    values = wavelets * (4 // DTYPE_BYTES[dtype])
    return max(_ceil(values, hw.lanes(dtype)), _ceil(8 * wavelets, hw.sram_read_bytes_per_cycle),
               _ceil(4 * wavelets, hw.sram_write_bytes_per_cycle))


def cf_chain(hw: HardwareConfig, n: int, rho: int, b: int, dtype: str) -> int:
    """Chain reduce of n cores into position rho (0: one stream; else two, shorter first)."""
    stage, pace = _stage(hw), reduce_pace(hw, dtype)
    b = stream_beats(hw, b)  # from here on, a stream's length in beats (cycles per link)
    a, c = rho, n - 1 - rho
    if a == 0 or c == 0:
        return (n - 1) * stage + (b - 1) * pace + message_cycles(hw)
    start2 = max(0, (a - c) * stage + b * pace)  # the root adds the second stream after the first
    return max(a * stage, start2 + c * stage) + (b - 1) * pace + message_cycles(hw)


def cf_broadcast(hw: HardwareConfig, b: int, farthest_hops: int) -> int:
    return transfer_cycles(hw, b, farthest_hops)


def cf_star(hw: HardwareConfig, n: int, rho: int, b: int) -> int:
    """Star on a line: the root's ramp off takes one message after the other."""
    tr, h = hw.ramp_latency_cycles, hw.hop_latency_cycles
    b = stream_beats(hw, b)
    hi, lo = n - 1 - rho, rho
    end, ramp_free = 0, 0
    if hi:
        ramp_free = (hi - 1) * max(0, b - h) + tr + hi * h + b  # nearest first, links shared
        end = ramp_free + tr - 1
    if lo:  # farthest first (row-major order); after the first, back to back on the ramp
        first = max(tr + lo * h, ramp_free)
        end = max(end, first + lo * b + tr - 1)
    return end + message_cycles(hw)


def cf_tree(hw: HardwareConfig, n: int, rho: int, b: int, dtype: str, arity: int) -> int:
    """fin(r) = children in order: start = max(r's previous add, child's fin); + transfer + add."""
    children = tree_children(n, rho, arity)
    add = add_cycles(hw, b, dtype)

    def fin(r: int) -> int:
        t = 0
        for c, hops in children[r]:
            t = max(t, fin(c)) + transfer_cycles(hw, b, hops) + add
        return t

    return fin(rho)


def cf_two_level(hw: HardwareConfig, n: int, b: int, dtype: str, group: int | None) -> int:
    """Group chains (all start at 0), then the leaders' sends to the root, nearest first, each
    at the earliest start at which the links toward the root and the root's ramp off are free
    (a chain paced slower than a beat per cycle may still hold them): traced exactly, by the
    same trace as the GEMMs' two-level reduce (`mapper.tree_reduce.two_level_end`), with no
    add at the root."""
    groups = two_level_groups(n, group)
    if groups[1] == 0:
        return cf_chain(hw, n, 0, b, dtype)
    return two_level_end(hw, [0] * n, b, dtype, groups, 0)


def _max_window(hops: list[int], length: int) -> int:
    n = len(hops)
    return max(sum(hops[(i + k) % n] for k in range(length)) for i in range(n))


def cf_ring(hw: HardwareConfig, n: int, b: int, dtype: str, parts: str = "both") -> int | None:
    """Every block crosses n - 1 (or 2n - 2) consecutive ring edges, store-and-forward: per edge
    beats - 1 + 2 T_R + hops * hop, plus one add per reduce-scatter edge; the slowest block decides."""
    if hw.ramp_latency_cycles < 1:
        return None  # the steps of one core could overlap on its ramp: no closed form
    order = ring_order(n)
    hops = [abs(order[(i + 1) % n] - order[i]) for i in range(n)]
    x0 = stream_beats(hw, b) - 1 + 2 * hw.ramp_latency_cycles + message_cycles(hw)
    add = add_cycles(hw, b, dtype)
    edges = {"rs": n - 1, "ag": n - 1, "both": 2 * n - 2}[parts]
    adds = 0 if parts == "ag" else n - 1
    return edges * x0 + adds * add + hw.hop_latency_cycles * _max_window(hops, edges)


def cf_all_to_all(hw: HardwareConfig, n: int, b: int) -> int:
    """Sum over shift steps k of the slower of the two trains of step k (see docs)."""
    tr, h = hw.ramp_latency_cycles, hw.hop_latency_cycles
    b = stream_beats(hw, b)
    total = 0
    for k in range(1, n):
        back = (n - 1 - k) * (max(0, b - h) if k >= 2 else 0) + 2 * tr + k * h + b - 1
        wrap = (k - 1) * ((b + h) if n - k >= 2 else 0) + 2 * tr + (n - k) * h + b - 1
        total += max(back, wrap) + message_cycles(hw)
    return total


def _farthest(spec: Spec) -> int:
    r = spec.region
    rx, ry = root_core(spec)
    return max(rx - r.x, r.x1 - rx) + max(ry - r.y, r.y1 - ry)


def _cf(spec: Spec, hw: HardwareConfig) -> int | None:
    kind, b, dt = spec.kind, spec.wavelets, spec.dtype
    r = spec.region
    if kind == "broadcast":
        return cf_broadcast(hw, b, _farthest(spec))
    if kind == "allreduce-ring":
        if spec.is_line:
            return cf_ring(hw, spec.line.n, block_wavelets(spec)[0], dt)
        b1, b2 = block_wavelets(spec)
        parts = [cf_ring(hw, r.cols, b1, dt, "rs"), cf_ring(hw, r.rows, b2, dt, "both"),
                 cf_ring(hw, r.cols, b1, dt, "ag")]
        return None if None in parts else sum(parts)
    if kind == "all-to-all":
        return cf_all_to_all(hw, spec.line.n, block_wavelets(spec)[0])
    if kind == "reduce-star":
        return cf_star(hw, spec.line.n, _rho(spec, spec.line.n), b)
    if kind == "reduce-tree":
        return cf_tree(hw, spec.line.n, _rho(spec, spec.line.n), b, dt, spec.arity)
    if kind in ("reduce-chain", "allreduce-reduce-broadcast"):
        if spec.is_line:
            red = cf_chain(hw, spec.line.n, _rho(spec, spec.line.n), b, dt)
        else:
            red = (cf_chain(hw, r.cols, _rho(spec, r.cols), b, dt)
                   + cf_chain(hw, r.rows, _rho(spec, r.rows), b, dt))
    else:  # two-level
        if spec.is_line:
            red = cf_two_level(hw, spec.line.n, b, dt, spec.group)
        else:
            red = (cf_two_level(hw, r.cols, b, dt, spec.group)
                   + cf_two_level(hw, r.rows, b, dt, spec.group))
    if kind.startswith("allreduce"):
        return red + cf_broadcast(hw, b, _farthest(spec))
    return red


