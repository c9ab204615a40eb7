"""The run specification: what to run (`Workload`) and how to lay it out (`Mapping`), as
frozen, validated dataclasses, loadable from and printable as TOML.

One place declares every run option: its type, its range, its default, which phases and
strategies it applies to and its help text. The CLI's `run` options, the sweep axes and the
Python API are made from these fields (`FIELDS`), so an option exists once. An option that was
given but does not apply to the run (``--chunks 2`` in a decode, ``--generate`` in training) is
an error that says why (`RunSpec.check_applies`), never silently dropped.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from wse_sim.errors import ConfigError
from wse_sim.hardware import DTYPES, FLOAT_DTYPES
from wse_sim.sparsity import Sparsity, parse_format

PHASES = ("prefill", "decode", "train")
MOE_PLACEMENTS = ("blocks", "strips", "bands")  # mapper.strategies.moe_layer.MOE_LAYOUTS
# strategies and the algorithm names live in the mapper; they are checked where the mapper is
# reached (experiment.build_program), and listed here for the CLI's help only
FORMAT = "wse-sim-run/1"


def _applies_always(_spec) -> bool:
    return True


@dataclass(frozen=True)
class Option:
    """How one field is offered and when it applies."""

    kind: type                    # int, float, str or dict
    help: str
    minimum: float | None = None  # numbers: the smallest allowed value
    choices: tuple = ()           # strings: the allowed values (empty: any)
    optional: bool = False        # None allowed (e.g. grid: the whole mesh)
    applies: object = _applies_always   # spec -> bool
    where: str = ""               # when it applies, for the error message


def _opt(default, **kw):
    return field(default=default, metadata={"option": Option(**kw)})


def _prefill_like(s) -> bool:
    return s.workload.phase in ("prefill", "train") or s.workload.generate is not None


def _not_train(s) -> bool:
    return s.workload.phase != "train"


def _decode_only(s) -> bool:
    return s.workload.phase == "decode"


@dataclass(frozen=True)
class Workload:
    """What to run: the model, the phase and its sizes."""

    model: str = _opt("", kind=str, help="zoo name (see `wse-sim models`) or a model TOML file")
    phase: str = _opt("prefill", kind=str, choices=PHASES, help="prefill, decode or train")
    batch: int = _opt(1, kind=int, minimum=1, help="sequences per step")
    prompt: int = _opt(128, kind=int, minimum=1, applies=_prefill_like,
                       where="phase prefill or train, or with generate",
                       help="prompt tokens (prefill; the sequence length of a training step)")
    context: int | None = _opt(None, kind=int, minimum=1, optional=True, applies=_decode_only,
                               where="phase decode",
                               help="tokens already in the KV cache (decode; default: 128, or "
                                    "the model's maximum context - 1 if that is less)")
    generate: int | None = _opt(None, kind=int, minimum=1, optional=True,
                                applies=lambda s: s.workload.phase == "prefill",
                                where="phase prefill (prefill the prompt, then decode N tokens)",
                                help="prefill the prompt, then decode N tokens: end-to-end tokens/s")
    dtype: str = _opt("fp16", kind=str, choices=DTYPES,
                      help="the run's dtype: the activations', and every other tensor's unless "
                           "given (docs/precision.md)")
    weights_dtype: str | None = _opt(None, kind=str, choices=DTYPES, optional=True,
                                     applies=_not_train, where="phase prefill or decode",
                                     help="the weight matrices' dtype, e.g. int8 (default: "
                                          "dtype)")
    kv_dtype: str | None = _opt(None, kind=str, choices=DTYPES, optional=True,
                                applies=_not_train, where="phase prefill or decode",
                                help="the KV cache's dtype (default: dtype)")
    accum_dtype: str | None = _opt(None, kind=str, choices=FLOAT_DTYPES, optional=True,
                                   applies=_not_train, where="phase prefill or decode",
                                   help="the accumulators' dtype: partial sums and attention "
                                        "scores in SRAM (default: fp32)")
    sparsity: float = _opt(0.0, kind=float, minimum=0.0,
                           help="fraction of zero weights the cores skip, in [0, 1) (every "
                                "layer's; stored as --sparse-format says)")
    sparse_format: str = _opt("dense", kind=str, applies=_not_train,
                              where="phase prefill or decode",
                              help="how zero weights are stored: dense (stored, skipped), "
                                   "unstructured (values + 16-bit indices), bitmap (values + "
                                   "1 bit per weight) or N:M, e.g. 2:4 (docs/sparsity.md)")
    sparsity_file: str | None = _opt(None, kind=str, optional=True,
                                     help="one sparsity fraction per layer, from a .toml, "
                                          ".json or .csv file (docs/sparsity.md)")
    routing: str | None = _opt(None, kind=str, optional=True,
                               help="MoE: which experts each token takes: uniform (default), "
                                    "skewed:ALPHA, router or a .csv/.json file of expert ids")
    model_set: dict = field(default_factory=dict, metadata={"option": Option(
        kind=dict, help="override a model field, e.g. n_layers=1 to time one layer "
                        "(FIELD=VALUE, repeatable; see `wse-sim models --json`)")})

    def __post_init__(self):
        _check_fields(self)
        if not self.model:
            raise ConfigError("model: got '', must name a zoo model or a model TOML file")
        if not self.sparsity < 1:
            raise ConfigError(f"sparsity: got {self.sparsity!r}, must be a number in [0, 1)")
        if self.sparsity_file is None:  # the file is read when the run is mapped
            Sparsity.build(self.sparse_format, self.sparsity)
        else:
            parse_format(self.sparse_format)
            if self.sparsity:
                raise ConfigError(f"sparsity_file: got {self.sparsity_file!r} with sparsity "
                                  f"{self.sparsity!r}; give one of them")


@dataclass(frozen=True)
class Mapping:
    """How to lay the workload onto the wafer."""

    strategy: str = _opt("layer-pipelined", kind=str,
                         help="layer-pipelined, layer-sequential, weight-streaming, or auto "
                              "(the fastest by simulation)")
    grid: int | None = _opt(None, kind=int, minimum=1, optional=True,
                            help="use only an N x N corner of the mesh")
    region_shape: int = _opt(0, kind=int, minimum=0,
                             applies=lambda s: s.mapping.strategy == "layer-pipelined"
                             and s.mapping.layout != "2d",
                             where="strategy layer-pipelined in the top-row layout (layout 2d "
                                   "cuts the largest squares that give every layer one)",
                             help="layer-pipelined: the K-th best region shape that fits (0: the "
                                  "most cores per layer)")
    chunks: int = _opt(1, kind=int, minimum=1,
                       applies=lambda s: s.workload.phase == "prefill"
                       and s.workload.generate is None,
                       where="phase prefill without generate",
                       help="prefill: run the prompt through the layers in at least N chunks")
    micro_batches: int = _opt(1, kind=int, minimum=1,
                              applies=lambda s: s.workload.phase == "train"
                              and (s.mapping.strategy in ("layer-pipelined", "auto")
                                   or s.mapping.layout == "2d"
                                   or (s.mapping.layout == "auto"
                                       and s.mapping.strategy in ("layer-sequential",
                                                                  "weight-streaming"))),
                              where="phase train with strategy layer-pipelined or layout 2d "
                                    "(auto: with layer-sequential or weight-streaming)",
                              help="train: split the batch into N equal micro-batches (N "
                                   "divides batch): layer-pipelined pipelines them through the "
                                   "layer regions, layout 2d runs them one after another "
                                   "(gradient accumulation)")
    wafers: int = _opt(1, kind=int, minimum=1,
                       applies=lambda s: s.mapping.strategy in ("layer-pipelined", "auto")
                       and s.workload.generate is None,
                       where="strategy layer-pipelined, without generate",
                       help="split the layers over N wafers joined by the system I/O")
    prefill_grid: int | None = _opt(None, kind=int, minimum=1, optional=True,
                                    applies=lambda s: s.workload.generate is not None,
                                    where="generate", help="with generate: the prefill's grid")
    decode_grid: int | None = _opt(None, kind=int, minimum=1, optional=True,
                                   applies=lambda s: s.workload.generate is not None,
                                   where="generate", help="with generate: the decode's grid")
    moe_layout: str | None = _opt(None, kind=str, optional=True,
                                  help="MoE: where a layer's experts go: blocks (default), strips "
                                       "or bands, optionally :N to spread them over N expert "
                                       "blocks (the expert parallelism), e.g. blocks:4 "
                                       "(docs/moe.md)")
    reduce_algo: str = _opt("chain", kind=str,
                            help="how the GEMMs' partial sums reduce: chain, tree, row-tree or "
                                 "col-tree")
    attention: str = _opt("auto", kind=str,
                          help="attention over a region's rows: heads, rows or auto")
    layout: str = _opt("auto", kind=str, choices=("auto", "top-row", "2d"),
                       applies=lambda s: (s.mapping.strategy in ("layer-sequential",
                                                                 "weight-streaming", "auto")
                                          and (s.workload.phase in ("prefill", "train")
                                               or s.workload.generate is not None))
                       or (s.mapping.strategy == "layer-pipelined"
                           and s.workload.phase == "train" and s.mapping.wafers == 1),
                       where="strategy layer-sequential, weight-streaming or auto (search) in "
                             "a prefill or a training step (with generate: the prefill's "
                             "layout; decode stays top-row), or layer-pipelined in a training "
                             "step on one wafer",
                       help="where a layer's activations lie: top-row (one row of the region; "
                            "the decode layout), 2d (tokens x features tiled over the whole "
                            "region, projections as 2-D GEMMs; docs/strategies.md) or auto "
                            "(top-row where it fits, else 2d)")
    gemm_algo: str = _opt("auto", kind=str, choices=("auto", "summa", "cannon", "meshgemm"),
                          applies=lambda s: s.mapping.layout in ("2d", "auto"),
                          where="layout 2d or auto",
                          help="layout 2d: the GEMM algorithm of every projection: auto (the "
                               "least sum of the layer's estimates), summa, cannon or meshgemm")
    recompute: str = _opt("on", kind=str, choices=("on", "off"),
                          applies=lambda s: s.mapping.layout in ("2d", "auto")
                          and s.workload.phase == "train",
                          where="layout 2d or auto in a training step",
                          help="layout 2d training: activation checkpointing: on (keep each "
                               "layer's input, run its forward again before its backward; the "
                               "FLOPs counted) or off (keep every activation the backward "
                               "reads)")
    optimizer: str = _opt("offwafer", kind=str, choices=("offwafer", "onwafer"),
                          applies=lambda s: s.workload.phase == "train"
                          and s.mapping.strategy == "weight-streaming"
                          and s.mapping.layout in ("2d", "auto"),
                          where="phase train with strategy weight-streaming in layout 2d or auto",
                          help="layout 2d training: where Adam runs: offwafer (on the host, "
                               "where the weights live: the gradients stream out) or onwafer "
                               "(each layer's Adam state streams in, is updated on the wafer "
                               "and streams back out)")

    def __post_init__(self):
        _check_fields(self)
        if self.moe_layout is not None:
            base, sep, n = self.moe_layout.partition(":")
            if base not in MOE_PLACEMENTS or (sep and not (n.isdigit() and int(n) >= 1)):
                raise ConfigError(f"moe_layout: got {self.moe_layout!r}, must be one of "
                                  f"{', '.join(MOE_PLACEMENTS)}, optionally :N (N >= 1 expert "
                                  "blocks), e.g. blocks:4")


def _check_fields(obj) -> None:
    """Type and range of every field, one line naming the field, the value and what is allowed."""
    for f in dataclasses.fields(obj):
        v, o = getattr(obj, f.name), f.metadata["option"]
        if v is None and o.optional:
            continue
        if o.kind is int and (isinstance(v, bool) or not isinstance(v, int)):
            raise ConfigError(f"{f.name}: got {v!r}, must be an integer"
                              + (" or absent" if o.optional else ""))
        if o.kind is float and (isinstance(v, bool) or not isinstance(v, int | float)):
            raise ConfigError(f"{f.name}: got {v!r}, must be a number")
        if o.kind is str and not isinstance(v, str):
            raise ConfigError(f"{f.name}: got {v!r}, must be a string")
        if o.kind is dict:
            if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
                raise ConfigError(f"{f.name}: got {v!r}, must be a table of field = value")
            continue
        if o.minimum is not None and not v >= o.minimum:
            raise ConfigError(f"{f.name}: got {v!r}, must be at least {o.minimum:g}")
        if o.kind is int and v > 10**9:
            raise ConfigError(f"{f.name}: got {v!r}, must be at most 1e9")
        if o.choices and v not in o.choices:
            raise ConfigError(f"{f.name}: got {v!r}, must be one of {', '.join(o.choices)}")


# field name -> (section, dataclasses.Field), in declaration order
FIELDS = {f.name: ("workload", f) for f in dataclasses.fields(Workload)} | \
         {f.name: ("mapping", f) for f in dataclasses.fields(Mapping)}


@dataclass(frozen=True)
class RunSpec:
    """One run: the hardware (a preset and `--set` overrides), the workload, the mapping and
    the engine. `given`: the fields the user set (on the command line, in a file, as keyword
    arguments); only those are checked for applying to the run."""

    workload: Workload
    mapping: Mapping = Mapping()
    preset: str = "wse2"
    overrides: dict = field(default_factory=dict)
    engine: str = "auto"
    given: frozenset = frozenset()

    def __post_init__(self):
        if not isinstance(self.workload, Workload) or not isinstance(self.mapping, Mapping):
            raise ConfigError("RunSpec: workload and mapping must be a Workload and a Mapping")
        if self.engine not in ("auto", "reference", "fast"):
            raise ConfigError(f"engine: got {self.engine!r}, must be one of auto, reference, fast")
        if not isinstance(self.preset, str) or not self.preset:
            raise ConfigError(f"preset: got {self.preset!r}, must be a preset name or TOML file")
        if not isinstance(self.overrides, dict):
            raise ConfigError(f"overrides: got {self.overrides!r}, must be a table of fields")

    @classmethod
    def from_values(cls, values: dict, *, preset: str = "wse2", overrides: dict | None = None,
                    engine: str = "auto", given=None) -> RunSpec:
        """Build from flat field values (unknown names are an error that lists the known)."""
        unknown = sorted(set(values) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{unknown[0]}: not a run option; known: {', '.join(FIELDS)}")
        parts = {"workload": {}, "mapping": {}}
        for k, v in values.items():
            parts[FIELDS[k][0]][k] = v
        return cls(Workload(**parts["workload"]), Mapping(**parts["mapping"]), preset,
                   dict(overrides or {}), engine,
                   frozenset(values if given is None else given))

    def values(self) -> dict:
        """Every field, flat: name -> value."""
        return dataclasses.asdict(self.workload) | dataclasses.asdict(self.mapping)

    def check_applies(self) -> None:
        """Refuse a given field that does not apply to this run, naming where it applies."""
        for name in FIELDS:
            if name not in self.given:
                continue
            o = FIELDS[name][1].metadata["option"]
            f = FIELDS[name][1]
            default = f.default_factory() if f.default is dataclasses.MISSING else f.default
            if getattr(self.workload if FIELDS[name][0] == "workload" else self.mapping,
                       name) == default:
                continue  # the default value changes nothing
            if not o.applies(self):
                run = (f"phase {self.workload.phase}, strategy {self.mapping.strategy}"
                       + (f", generate {self.workload.generate}"
                          if self.workload.generate else ""))
                raise ConfigError(f"{name}: got {self.values()[name]!r}, which does not apply to "
                                  f"this run ({run}); it applies only with {o.where}")

    def to_toml(self) -> str:
        """The spec as a TOML file that `load_spec` reads back to the same spec."""
        lines = [f"# wse-sim run specification ({FORMAT})", f"format = {json.dumps(FORMAT)}",
                 f"preset = {json.dumps(self.preset)}", f"engine = {json.dumps(self.engine)}"]
        if self.overrides:
            lines += ["", "[set]"] + [f"{k} = {json.dumps(v)}" for k, v in self.overrides.items()]
        for section, obj in (("workload", self.workload), ("mapping", self.mapping)):
            lines += ["", f"[{section}]"]
            for f in dataclasses.fields(obj):
                v = getattr(obj, f.name)
                if isinstance(v, dict):  # an inline TOML table
                    inner = ", ".join(f"{k} = {json.dumps(x)}" for k, x in v.items())
                    lines.append(f"{f.name} = {{{inner}}}")
                elif v is not None:
                    lines.append(f"{f.name} = {json.dumps(v)}")
        return "\n".join(lines) + "\n"


def load_spec(path) -> RunSpec:
    """Read a run spec TOML file (every field it sets counts as given)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"{p}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e})") from None
    known = {"format", "preset", "engine", "set", "workload", "mapping"}
    extra = sorted(set(data) - known)
    if extra:
        raise ConfigError(f"{p}: {extra[0]}: not a key of a run spec; known: {', '.join(sorted(known))}")
    if data.get("format", FORMAT) != FORMAT:
        raise ConfigError(f"{p}: format: got {data['format']!r}, must be {FORMAT!r}")
    values = {}
    for section in ("workload", "mapping"):
        table = data.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{p}: [{section}]: must be a table")
        for k, v in table.items():
            if k not in FIELDS or FIELDS[k][0] != section:
                raise ConfigError(f"{p}: {section}.{k}: not a {section} field; known: "
                                  + ", ".join(n for n, (s, _) in FIELDS.items() if s == section))
            values[k] = v
    overrides = data.get("set", {})
    if not isinstance(overrides, dict):
        raise ConfigError(f"{p}: [set]: must be a table of hardware fields")
    try:
        return RunSpec.from_values(values, preset=data.get("preset", "wse2"),
                                   overrides=overrides, engine=data.get("engine", "auto"))
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
