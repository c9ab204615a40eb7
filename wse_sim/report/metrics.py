"""SimResult: the counters a run produces and the figures derived from them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from wse_sim.hardware import HardwareConfig

# The parts of a run's energy, in `SimResult.energy_joules()` and `energy_breakdown_joules`.
ENERGY_PARTS = ("compute", "sram", "fabric", "io", "static")


@dataclass
class SimResult:
    """Everything one simulation measured. Arrays are shaped (rows, cols[, 4 directions])."""

    program: str
    engine: str
    hardware: HardwareConfig
    cycles: int
    flops: int                 # FLOPs of the program's compute tasks (`useful_flops`: the model's)
    executed_flops: int        # FLOPs actually executed (skipped zeros removed)
    stream_flops: int          # adds done inside reduce streams (not part of the op graph)
    flops_by_dtype: dict
    comm_bytes: int            # bytes injected onto the fabric (ramp on)
    delivered_bytes: int       # bytes delivered off the fabric (ramp off), multicast copies counted
    bytes_hops: int            # sum over links of bytes carried
    sram_traffic_bytes: int    # SRAM bytes read + written by compute tasks
    io_bytes: int
    compute_cycles: int        # critical path: cycles computing
    comm_cycles: int           # critical path: cycles waiting on the fabric
    core_busy_cycles: np.ndarray
    link_bytes: np.ndarray
    link_busy_cycles: np.ndarray
    sram_bytes: np.ndarray
    colors: np.ndarray
    ops: dict                  # op name -> {flops, busy_cycles, bytes, start, end}
    instances: int             # task instances simulated (one per core per compute task, ...)
    tokens: int = 0
    dtype: str = "fp32"
    cores_used: int = 0
    wall_seconds: float = 0.0
    meta: dict = field(default_factory=dict)
    spans: dict | None = None  # per instance: task, index, core (source for flows), start, end
    buffers: dict | None = None  # functional runs: the final buffers by name
    loop_iterations: int = 0   # iterations of the program's loops (Program.loops)
    loop_iterations_skipped: int = 0  # of those, fast-forwarded by the fast engine (exact)

    # ---- derived -------------------------------------------------------------------------
    @property
    def seconds(self) -> float:
        return self.hardware.seconds(self.cycles)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.cycles and self.tokens else 0.0

    @property
    def flops_per_s(self) -> float:
        return self.flops / self.seconds if self.cycles else 0.0

    @property
    def peak_flops_per_s(self) -> float:
        cores = self.cores_used or self.hardware.cores
        return cores * self.hardware.peak_flops_per_core_cycle(self.dtype) * self.hardware.clock_hz

    @property
    def peak_fraction(self) -> float:
        return self.flops_per_s / self.peak_flops_per_s if self.cycles else 0.0

    @property
    def useful_flops(self) -> int:
        """The model's FLOPs the run did on the wafer: a whole-model program's op-graph FLOPs
        less those run off the wafer (`graph_flops` - `offwafer_flops` in the meta), a GEMM's
        2 M K N (`useful_flops`); else the compute tasks' FLOPs. The tasks may do more: the
        2-D layout's and the GEMMs' padded tiles, recomputation (activation checkpointing), a
        tree reduce's combines; `flops` counts those, this does not."""
        m = self.meta or {}
        if "useful_flops" in m:
            return int(m["useful_flops"])
        if "graph_flops" in m:
            return int(m["graph_flops"]) - int(m.get("offwafer_flops", 0))
        return int(self.flops)

    @property
    def useful_peak_fraction(self) -> float:
        """`useful_flops` per second over the peak of the cores used (model FLOPs
        utilization); `peak_fraction` counts every FLOP the tasks execute."""
        return self.useful_flops / self.seconds / self.peak_flops_per_s if self.cycles else 0.0

    def energy_joules(self) -> dict:
        """Energy by component, in joules. Dynamic: the counters times the preset's per-unit
        costs (`compute`, `sram`, `fabric`, `io`, summed in `dynamic`). Static: the chip's
        static power (every core and router, used or not) times the simulated seconds.
        `total` = static + dynamic."""
        hw = self.hardware
        pj = {
            "compute": sum(f * getattr(hw, f"energy_pj_per_flop_{d}")
                           for d, f in self.flops_by_dtype.items()),
            "sram": self.sram_traffic_bytes * hw.energy_pj_per_sram_byte,
            "fabric": self.bytes_hops * 8 * hw.energy_pj_per_bit_hop,
            "io": self.io_bytes * hw.energy_pj_per_io_byte,
        }
        out = {k: v * 1e-12 for k, v in pj.items()}
        out["dynamic"] = sum(out.values())
        out["static"] = hw.static_power_w * self.seconds
        out["total"] = out["static"] + out["dynamic"]
        return out

    def summary(self) -> dict:
        """The flat JSON-able figures (see shared INTERFACES.md for the key names)."""
        e = self.energy_joules()

        def watts(joules: float) -> float:
            return joules / self.seconds if self.cycles else 0.0

        return {
            "program": self.program,
            "engine": self.engine,
            "cycles": int(self.cycles),
            "seconds": self.seconds,
            "wall_seconds": self.wall_seconds,
            "compute_cycles": int(self.compute_cycles),
            "comm_cycles": int(self.comm_cycles),
            "flops": int(self.flops),
            "executed_flops": int(self.executed_flops),
            "stream_flops": int(self.stream_flops),
            "flops_per_s": self.flops_per_s,
            "peak_fraction": self.peak_fraction,
            "efficiency": self.peak_fraction,
            "useful_flops": self.useful_flops,
            "useful_peak_fraction": self.useful_peak_fraction,
            "tokens": int(self.tokens),
            "tokens_per_s": self.tokens_per_s,
            "comm_bytes": int(self.comm_bytes),
            "delivered_bytes": int(self.delivered_bytes),
            "bytes_hops": int(self.bytes_hops),
            "io_bytes": int(self.io_bytes),
            "sram_bytes_per_core": int(self.sram_bytes.max()) if self.sram_bytes.size else 0,
            "colors_per_core": int(self.colors.max()) if self.colors.size else 0,
            "cores_used": int(self.cores_used),
            "busy_core_fraction": self.busy_fraction(),
            "instances": int(self.instances),
            "loop_iterations": int(self.loop_iterations),
            "loop_iterations_skipped": int(self.loop_iterations_skipped),
            "energy_joules": e["total"],
            "energy_breakdown_joules": {k: e[k] for k in ENERGY_PARTS},
            "energy_static_j": e["static"],
            "energy_dynamic_j": e["dynamic"],
            "average_power_w": watts(e["total"]),
            "power_w": watts(e["total"]),
            "power_static_w": watts(e["static"]),
            "power_dynamic_w": watts(e["dynamic"]),
            "energy_per_token_j": e["total"] / self.tokens if self.tokens else 0.0,
            "dtype": self.dtype,
            **self._defects(),
        }

    def _defects(self) -> dict:
        """`defects`: the repaired wafer's counts (`defects.Repair.summary`), with defects only."""
        rep = self.hardware.repair()
        return {"defects": rep.summary()} if rep is not None else {}

    def busy_fraction(self) -> float:
        """Mean core busy cycles / total cycles over the cores used."""
        if not self.cycles:
            return 0.0
        cores = self.cores_used or self.hardware.cores
        return float(self.core_busy_cycles.sum()) / (cores * self.cycles)

    def to_dict(self) -> dict:
        """Full result: summary, per-op breakdown, hardware and the per-core maps as lists."""
        d = self.summary()
        d["hardware"] = self.hardware.to_dict()
        d["ops"] = self.ops
        d["meta"] = self.meta
        d["maps"] = {
            "core_busy_cycles": self.core_busy_cycles.tolist(),
            "sram_bytes": self.sram_bytes.tolist(),
            "link_bytes": self.link_bytes.tolist(),
        }
        return d


def empty_maps(cols: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Zeroed core-busy, link-bytes and link-busy arrays for a mesh."""
    return (np.zeros((rows, cols), np.int64), np.zeros((rows, cols, 4), np.int64),
            np.zeros((rows, cols, 4), np.int64))
