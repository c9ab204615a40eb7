"""The hardware description: one frozen, validated `HardwareConfig`, loaded from TOML presets.

Every field carries its unit in its name. Presets live in `wse_sim/presets/*.toml`; their
sources are cited in `docs/hardware-model.md`. A user's own TOML file works like a preset name,
a preset may inherit from another (`base = "wse2"`, see `wse_sim.preset_files`), and
`--set field=value` overrides any field.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from wse_sim import defects
from wse_sim.errors import ConfigError
from wse_sim.errors import bad as _bad
from wse_sim.preset_files import builtin_names, read_preset

DTYPES = ("fp32", "fp16", "bf16", "int8", "fp8_e4m3", "fp8_e5m2")
DTYPE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1}
FLOAT_DTYPES = ("fp32", "fp16", "bf16")  # dtypes element-wise ops and partial sums can take
# dtypes a preset may lack (fmac_lanes_<dtype> = 0, the default: the chip has no such lanes)
OPTIONAL_DTYPES = ("int8", "fp8_e4m3", "fp8_e5m2")

# What each field of HardwareConfig acts on, in one place (tests/test_every_field_acts.py
# changes each field and proves the declared figure changes; `presets --show` prints it):
# cycles: simulated cycles; mesh: the mesh's size (what fits, where); seconds: cycles to
# seconds (and static energy); sram / colors: the static resource checks; energy: the energy
# report; rollup: chip-level aggregates and static power; report: names and citations only.
FIELD_EFFECTS = {
    "name": "report", "mesh_cols": "mesh", "mesh_rows": "mesh", "clock_ghz": "seconds",
    "sram_bytes": "sram", "sram_read_bytes_per_cycle": "cycles",
    "sram_write_bytes_per_cycle": "cycles", "fmac_lanes_fp32": "cycles",
    "fmac_lanes_fp16": "cycles", "fmac_lanes_bf16": "cycles", "fmac_lanes_int8": "cycles",
    "fmac_lanes_fp8_e4m3": "cycles", "fmac_lanes_fp8_e5m2": "cycles",
    "energy_pj_per_flop_int8": "energy", "energy_pj_per_flop_fp8_e4m3": "energy",
    "energy_pj_per_flop_fp8_e5m2": "energy", "link_bits_per_cycle": "cycles",
    "hop_latency_cycles": "cycles", "ramp_latency_cycles": "cycles",
    "stream_op_latency_cycles": "cycles", "message_start_cycles": "cycles",
    "message_receive_cycles": "cycles", "colors_per_core": "colors", "io_bits_per_s": "cycles",
    "energy_pj_per_flop_fp32": "energy", "energy_pj_per_flop_fp16": "energy",
    "energy_pj_per_flop_bf16": "energy", "energy_pj_per_sram_byte": "energy",
    "energy_pj_per_bit_hop": "energy", "energy_pj_per_io_byte": "energy",
    "chip_cores": "rollup", "static_power_w_per_core": "energy",
    "static_power_w_per_router": "energy", "description": "report", "sources": "report",
    # defects and spares (wse_sim.defects): which cores survive repair and the detours of the
    # routes through repaired rows (they act only where some core is defective)
    "defect_fraction": "cycles", "defect_seed": "cycles", "defect_file": "cycles",
    "spare_cols": "cycles", "spare_rows": "cycles",
}


@dataclass(frozen=True)
class HardwareConfig:
    """A wafer-scale engine: a cols x rows mesh of cores, each with SRAM, FMAC lanes and a router."""

    name: str
    mesh_cols: int
    mesh_rows: int
    clock_ghz: float
    sram_bytes: int
    sram_read_bytes_per_cycle: int
    sram_write_bytes_per_cycle: int
    fmac_lanes_fp32: int
    fmac_lanes_fp16: int
    fmac_lanes_bf16: int
    link_bits_per_cycle: int
    hop_latency_cycles: int
    ramp_latency_cycles: int
    stream_op_latency_cycles: int
    colors_per_core: int
    io_bits_per_s: float
    energy_pj_per_flop_fp32: float
    energy_pj_per_flop_fp16: float
    energy_pj_per_flop_bf16: float
    energy_pj_per_sram_byte: float
    energy_pj_per_bit_hop: float
    energy_pj_per_io_byte: float
    chip_cores: int = 0
    message_start_cycles: int = 0     # a core starting a message: before its first wavelet
    message_receive_cycles: int = 0   # a core receiving a message: after its last wavelet
    static_power_w_per_core: float = 0.0     # leakage + clock of a core and its SRAM, busy or not
    static_power_w_per_router: float = 0.0   # leakage + clock of its router, busy or not
    # 8-bit lanes and their energy: 0 (absent) unless a preset has them (docs/precision.md)
    fmac_lanes_int8: int = 0
    fmac_lanes_fp8_e4m3: int = 0
    fmac_lanes_fp8_e5m2: int = 0
    energy_pj_per_flop_int8: float = 0.0
    energy_pj_per_flop_fp8_e4m3: float = 0.0
    energy_pj_per_flop_fp8_e5m2: float = 0.0
    # defects and spares (docs/hardware-model.md "Defects and spares"): the physical mesh is
    # (mesh_cols + spare_cols) x (mesh_rows + spare_rows); defects are a seeded random fraction
    # of its cores and/or a file of physical core ids (y * physical cols + x)
    defect_fraction: float = 0.0
    defect_seed: int = 0
    defect_file: str = ""
    spare_cols: int = 0
    spare_rows: int = 0
    description: str = ""
    sources: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(v, bool) or not isinstance(v, int):
                    raise _bad(f.name, v, "must be an integer")
                lo = 0 if f.name in _ZERO_OK_INT else 1
                if v < lo or v > 10**12:
                    raise _bad(f.name, v, f"must be an integer in [{lo}, 1e12]")
            elif f.type in ("float", float):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    raise _bad(f.name, v, "must be a number")
                zero_ok = f.name in _ZERO_OK_FLOAT
                if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
                    raise _bad(f.name, v, "must be a finite number >= 0" if zero_ok
                               else "must be a finite positive number")
            elif f.type in ("str", str) and not isinstance(v, str):
                raise _bad(f.name, v, "must be a string")
        if not isinstance(self.sources, dict) or not all(
                isinstance(k, str) and isinstance(t, str) for k, t in self.sources.items()):
            raise _bad("sources", self.sources, "must be a table of strings (citations)")
        if self.clock_ghz > 1e3:
            raise _bad("clock_ghz", self.clock_ghz, "must be at most 1000 (GHz)")
        if self.link_bits_per_cycle % 32:
            raise _bad("link_bits_per_cycle", self.link_bits_per_cycle,
                       "must be a multiple of 32 (one wavelet is 32 bits)")
        defects.validate(self)
        if self.chip_cores and self.chip_cores < self.cores:
            raise _bad("chip_cores", self.chip_cores,
                       f"must be 0 or at least mesh_cols*mesh_rows = {self.cores}")

    # ---- derived quantities -------------------------------------------------------------
    @property
    def cores(self) -> int:
        return self.mesh_cols * self.mesh_rows

    def repair(self):
        """The repaired wafer (`wse_sim.defects.Repair`), or None when no core is defective."""
        return defects.repair(self) if defects.has_defects(self) else None

    @property
    def clock_hz(self) -> float:
        return self.clock_ghz * 1e9

    @property
    def wavelets_per_cycle(self) -> int:
        """32-bit wavelets a link carries per cycle per direction."""
        return self.link_bits_per_cycle // 32

    def lanes(self, dtype: str) -> int:
        """FMAC lanes per cycle for `dtype` (one FMAC = 2 FLOPs)."""
        if dtype not in DTYPES:
            raise _bad("dtype", dtype, f"must be one of {', '.join(DTYPES)}")
        lanes = getattr(self, f"fmac_lanes_{dtype}")
        if lanes == 0:
            raise ConfigError(f"dtype: got {dtype!r}, but {self.name} has no {dtype} lanes "
                              f"(fmac_lanes_{dtype} = 0); choose a dtype it computes in "
                              f"({', '.join(self.dtypes)}), or a what-if --set "
                              f"fmac_lanes_{dtype}=N")
        return lanes

    @property
    def dtypes(self) -> tuple:
        """The dtypes this chip computes in: those with FMAC lanes."""
        return tuple(d for d in DTYPES if getattr(self, f"fmac_lanes_{d}"))

    def peak_flops_per_core_cycle(self, dtype: str) -> int:
        return 2 * self.lanes(dtype)

    def seconds(self, cycles: int) -> float:
        return cycles / self.clock_hz

    @property
    def static_cores(self) -> int:
        """Cores that draw static power: the whole chip (chip_cores), used or not, else the mesh."""
        return self.chip_cores or self.cores

    @property
    def static_power_w(self) -> float:
        """The chip's static power: (core + router) static power x static_cores, in watts."""
        return (self.static_power_w_per_core + self.static_power_w_per_router) * self.static_cores

    def aggregates(self, cores: int | None = None) -> dict:
        """Chip-level roll-ups over `cores` (default: chip_cores if set, else the mesh)."""
        n = cores or self.chip_cores or self.cores
        sram_bw = self.sram_read_bytes_per_cycle + self.sram_write_bytes_per_cycle
        return {
            "cores": n,
            "mesh_cores": self.cores,
            "total_sram_bytes": n * self.sram_bytes,
            "sram_bandwidth_bytes_per_s": n * sram_bw * self.clock_hz,
            "fabric_bandwidth_bits_per_s": n * 4 * 2 * self.link_bits_per_cycle * self.clock_hz,
            "peak_flops_per_s": {d: n * self.peak_flops_per_core_cycle(d) * self.clock_hz
                                 for d in self.dtypes},
            "io_bits_per_s": self.io_bits_per_s,
            "static_power_w": n * (self.static_power_w_per_core + self.static_power_w_per_router),
        }

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("sources")
        return d

    def with_overrides(self, overrides: dict) -> HardwareConfig:
        """A copy with fields replaced; values given as strings are parsed to the field's type."""
        types = {f.name: f.type for f in dataclasses.fields(self)}
        kw = {}
        for key, value in overrides.items():
            if key not in types or key == "sources":
                raise _bad("--set", key, f"is not a hardware field; known: {', '.join(FIELDS)}")
            kw[key] = _parse(key, types[key], value)
        return dataclasses.replace(self, **kw)


FIELDS = tuple(f.name for f in dataclasses.fields(HardwareConfig) if f.name != "sources")
_ZERO_OK_INT = {"hop_latency_cycles", "ramp_latency_cycles", "stream_op_latency_cycles",
                "chip_cores", "fmac_lanes_bf16", "fmac_lanes_fp16", "message_start_cycles",
                "message_receive_cycles", "fmac_lanes_int8", "fmac_lanes_fp8_e4m3",
                "fmac_lanes_fp8_e5m2", "defect_seed", "spare_cols", "spare_rows"}
_ZERO_OK_FLOAT = {"energy_pj_per_flop_fp32", "energy_pj_per_flop_fp16", "energy_pj_per_flop_bf16",
                  "energy_pj_per_flop_int8", "energy_pj_per_flop_fp8_e4m3",
                  "energy_pj_per_flop_fp8_e5m2",
                  "energy_pj_per_sram_byte", "energy_pj_per_bit_hop", "energy_pj_per_io_byte",
                  "io_bits_per_s", "static_power_w_per_core", "static_power_w_per_router",
                  "defect_fraction"}


def _parse(key: str, typ, value):
    if not isinstance(value, str):
        return value
    try:
        if typ in ("int", int):
            return int(value.replace("_", ""))
        if typ in ("float", float):
            return float(value)
    except ValueError:
        kind = "an integer" if typ in ("int", int) else "a number"
        raise _bad(key, value, f"must be {kind}") from None
    return value


def parse_set(items: list[str] | None) -> dict:
    """Parse `--set field=value` strings into a dict (values stay strings until applied)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise _bad("--set", item, "must look like field=value, e.g. clock_ghz=1.1")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def preset_names() -> list[str]:
    return builtin_names()


def _build(hw: dict, sources: dict, origin: str, origins: dict | None = None) -> HardwareConfig:
    """HardwareConfig(**hw); an error names `origin` and, if another file set the bad field,
    that file too."""
    missing = [f.name for f in dataclasses.fields(HardwareConfig)
               if f.name not in hw and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{origin}: missing hardware field(s): {', '.join(missing)} (set them, "
                          'or start from a preset with base = "wse2")')
    try:
        return HardwareConfig(**hw, sources=sources)
    except ConfigError as e:
        where = (origins or {}).get(e.field, origin)
        if where != origin:
            origin = f"{origin} ({e.field} from {where})"
        raise ConfigError(f"{origin}: hardware.{e}") from None


def from_dict(data: dict, origin: str = "<dict>") -> HardwareConfig:
    """Build a config from a TOML-shaped dict: `[hardware]` fields and an optional `[sources]`
    (no `base`: a saved result's effective fields, for instance)."""
    hw = dict(data.get("hardware", {}))
    sources = dict(data.get("sources", {}))
    extra = set(data) - {"hardware", "sources"}
    if extra:
        raise ConfigError(f"{origin}: unknown table(s) {sorted(extra)}; allowed: [hardware], [sources]")
    for k in hw:
        if k not in FIELDS:
            raise _bad(f"{origin}: hardware.{k}", hw[k], f"is not a known field; known: {', '.join(FIELDS)}")
    return _build(hw, sources, origin)


@dataclass(frozen=True)
class ResolvedPreset:
    """A loaded preset and where each field came from: a built-in name or file of its chain of
    bases, `default` (the field's default, set nowhere) or `--set`."""

    hardware: HardwareConfig
    origins: dict        # field -> origin
    chain: tuple         # the preset named, then its base, its base's base, ...


def resolve_preset(name_or_path: str, overrides: dict | None = None) -> ResolvedPreset:
    """Load a built-in preset by name, or a user TOML file by path, with its chain of bases;
    then apply overrides."""
    layers = read_preset(name_or_path, FIELDS)
    hw = _build(layers.fields, layers.sources, layers.chain[0], layers.origins)
    origins = {f: layers.origins.get(f, "default") for f in FIELDS}
    if overrides:
        hw = hw.with_overrides(overrides)
        origins.update(dict.fromkeys(overrides, "--set"))
    return ResolvedPreset(hw, origins, layers.chain)


def load_preset(name_or_path: str, overrides: dict | None = None) -> HardwareConfig:
    """Load a built-in preset by name, or a user TOML file by path; then apply overrides."""
    return resolve_preset(name_or_path, overrides).hardware
