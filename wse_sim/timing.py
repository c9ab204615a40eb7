"""The cycle formulas of the hardware model, in closed form (docs/hardware-model.md).

Both engines implement these rules; tests pin the engines to these functions.
"""

from __future__ import annotations

import math

from wse_sim.hardware import DTYPE_BYTES, HardwareConfig
from wse_sim.program import SPARSITY_ONE


def split_evenly(total: int, parts: int, rank: int) -> int:
    """Share of `total` for `rank` of `parts`: the first `total % parts` ranks take one more."""
    base, extra = divmod(int(total), parts)
    return base + (1 if rank < extra else 0)


def compute_cycles(hw: HardwareConfig, flops: int, dtype: str, kind: str = "fmac",
                   density_q20: int = SPARSITY_ONE, sram_read: int = 0, sram_write: int = 0) -> int:
    """Cycles of one core's compute task: the longest of its FMAC time and its SRAM time."""
    lanes = hw.lanes(dtype)
    if kind == "fmac":
        denom = SPARSITY_ONE * 2 * lanes
        work = -(-(int(flops) * density_q20) // denom)
    else:
        work = -(-int(flops) // lanes)
    rd = -(-int(sram_read) // hw.sram_read_bytes_per_cycle)
    wr = -(-int(sram_write) // hw.sram_write_bytes_per_cycle)
    return max(work, rd, wr)


def executed_flops(flops: int, density_q20: int) -> int:
    """FLOPs left after skipping zero operands (rounded up to whole FLOPs)."""
    return -(-int(flops) * density_q20 // SPARSITY_ONE)


def stream_beats(hw: HardwareConfig, wavelets: int) -> int:
    """Cycles a stream of `wavelets` holds each link and ramp it crosses: a link carries
    `link_bits_per_cycle / 32` wavelets per cycle per direction (one beat per cycle)."""
    return -(-int(wavelets) // hw.wavelets_per_cycle)


def reduce_pace(hw: HardwareConfig, dtype: str) -> int:
    """Cycles per beat for a core that adds a passing stream of `dtype` values: a beat holds
    `wavelets_per_cycle` wavelets, each of 4 / dtype-bytes values, added over the lanes."""
    values_per_beat = hw.wavelets_per_cycle * (4 // DTYPE_BYTES[dtype])
    return max(1, -(-values_per_beat // hw.lanes(dtype)))


def message_cycles(hw: HardwareConfig) -> int:
    """What the two cores add to a message's latency: the sender's start and the receiver's
    receipt (`message_start_cycles + message_receive_cycles`)."""
    return hw.message_start_cycles + hw.message_receive_cycles


def transfer_cycles(hw: HardwareConfig, wavelets: int, hops: int) -> int:
    """One message, no contention: start, ramp on, head over `hops` links, ramp off, the rest
    of the stream at one beat per cycle, receipt:
    beats - 1 + hops * hop_latency + 2 * T_R + start + receive."""
    return (stream_beats(hw, wavelets) - 1) + hops * hw.hop_latency_cycles \
        + 2 * hw.ramp_latency_cycles + message_cycles(hw)


def head_lead_cycles(hw: HardwareConfig, hops: int) -> int:
    """Cycles from a stream's start to its first wavelet reaching a core `hops` away: how far
    ahead of that core's need a head dependency (flow control) lets the stream start
    (`message_start_cycles + 2 T_R + hops x hop`)."""
    return hw.message_start_cycles + 2 * hw.ramp_latency_cycles + hops * hw.hop_latency_cycles


def flow_controlled_arrival(hw: HardwareConfig, wavelets: int, hops: int, taken_at: int,
                            granted_at: int = 0) -> int:
    """When a stream that waits only for a head dependency has been received `hops` away:
    it starts `head_lead_cycles` before the destination can take its first wavelet
    (`taken_at`), but not before the grant that made it ready (`granted_at`); its arrival is
    then `taken_at + beats - 1 + receive` whatever the distance, unless the grant binds."""
    start = max(granted_at, taken_at - head_lead_cycles(hw, hops))
    return start + transfer_cycles(hw, wavelets, hops)


def line_broadcast_cycles(hw: HardwareConfig, wavelets: int, cores: int) -> int:
    """Flooding broadcast from one end of a line of `cores` cores to the far end."""
    return transfer_cycles(hw, wavelets, cores - 1)


def chain_reduce_cycles(hw: HardwareConfig, wavelets: int, cores: int, dtype: str = "fp32") -> int:
    """Pipelined reduce along a chain: each of the P - 1 stages costs ramp off, one combine,
    ramp on and a hop; then the stream's beats drain at the pace of the slowest stage; the
    first core starts the message once, the root receives it once."""
    stage = 2 * hw.ramp_latency_cycles + hw.hop_latency_cycles + hw.stream_op_latency_cycles
    return (cores - 1) * stage + (stream_beats(hw, wavelets) - 1) * reduce_pace(hw, dtype) \
        + message_cycles(hw)


def multicast_cycles(hw: HardwareConfig, wavelets: int, max_hops: int) -> int:
    """Tree multicast: the farthest destination decides (routers copy at no cost)."""
    return transfer_cycles(hw, wavelets, max_hops)


def io_cycles(hw: HardwareConfig, nbytes: int) -> int:
    """Cycles the off-wafer I/O channel needs for `nbytes` bytes (at least 1)."""
    if hw.io_bits_per_s == 0:
        from wse_sim.errors import ConfigError
        raise ConfigError(f"io_bits_per_s: got 0, but this run moves {int(nbytes):,} bytes "
                          "on or off the wafer; give the I/O a rate")
    return max(1, math.ceil(int(nbytes) * 8 * hw.clock_hz / hw.io_bits_per_s))
