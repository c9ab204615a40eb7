"""Sweep files: parse and validate a TOML what-if grid, expand it into points with stable ids.

A sweep file has ``[base]`` (preset, model, phase, strategy, engine and the fixed run
parameters), ``[base.set]`` (hardware overrides), ``[axes]`` (name -> list of values; the grid
is their product) and optional ``[[points]]`` (explicit extra points). See docs/sweeps.md.

Every error is one line, ``FILE:LINE: table.key: got VALUE, what is allowed`` (tomllib gives
no line numbers for semantic errors, so the lines are found in the text here).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from wse_sim.hardware import DTYPES, FIELDS, ConfigError, HardwareConfig, load_preset
from wse_sim.spec import FIELDS as SPEC_FIELDS

MAX_POINTS = 100_000
FORMAT = "wse-sim-sweep/1"

# Run parameters: name -> default (None: required). `grid = "full"` means the whole mesh.
# The first ones are those of the first sweep format (their point ids must not change); the
# rest are every other field of the run spec (wse_sim.spec), so a sweep can vary any of them.
_LEGACY = {
    "preset": None, "model": None, "phase": "prefill", "strategy": "layer-pipelined",
    "engine": "auto", "batch": 1, "prompt": 128, "context": 128, "dtype": "fp16",
    "grid": "full", "sparsity": 0.0,
}
_SPEC_ONLY = {name: f.default_factory() if f.default is dataclasses.MISSING else f.default
              for name, (_s, f) in SPEC_FIELDS.items() if name not in _LEGACY}
RUN_DEFAULTS = _LEGACY | _SPEC_ONLY
RUN_PARAMS = tuple(RUN_DEFAULTS)
_HW_TYPES = {f.name: f.type for f in dataclasses.fields(HardwareConfig) if f.name in FIELDS}
AXIS_NAMES = RUN_PARAMS + FIELDS
_TOP = ("base", "axes", "points", "description")


class SweepError(ConfigError):
    """A bad sweep file or sweep directory; the message is one line."""


@dataclass(frozen=True)
class Point:
    """One run of the sweep: run parameters, hardware overrides, table values and its id."""

    index: int
    params: dict        # run parameters (RUN_PARAMS), complete
    overrides: dict     # hardware field -> value (base.set merged with the point's own)
    values: dict        # table column -> value (the point's effective value of that column)
    id: str


@dataclass
class SweepSpec:
    """A parsed, validated sweep: `resolved()` is what DIR/sweep.json holds."""

    source: str
    description: str
    base: dict
    base_set: dict
    axes: dict
    extra_points: list
    columns: list
    points: list
    duplicates: int = 0

    def resolved(self) -> dict:
        return {"format": FORMAT, "description": self.description, "base": self.base,
                "set": self.base_set, "axes": self.axes, "points": self.extra_points,
                "columns": self.columns, "n_points": len(self.points)}


# ---- where keys are in the text ----------------------------------------------------------
_BARE = r"""(?:"[^"]*"|'[^']*'|[A-Za-z0-9_\-]+)"""
_KEY = re.compile(rf"\s*({_BARE}(?:\s*\.\s*{_BARE})*)\s*=")
_HEADER = re.compile(r"\s*(\[\[?)\s*([^\]]+?)\s*\]\]?")


def _unquote(part: str) -> str:
    part = part.strip()
    return part[1:-1] if part[:1] in "\"'" else part


class _Lines:
    """Line numbers of tables and keys in a TOML text (tables `points[i]` for [[points]])."""

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.keys: dict[tuple[str, str], list[int]] = {}
        self.tables: dict[str, int] = {}
        table, n_points, depth = "", 0, 0
        for i, raw in enumerate(self.lines, 1):
            code = raw.split("#", 1)[0] if '"' not in raw and "'" not in raw else raw
            if depth == 0 and (h := _HEADER.match(code)):
                name = ".".join(_unquote(p) for p in h.group(2).split("."))
                if h.group(1) == "[[" and name == "points":
                    name = f"points[{n_points}]"
                    n_points += 1
                table = name
                self.tables.setdefault(name, i)
                continue
            if depth == 0 and (m := _KEY.match(code)):
                parts = [_unquote(p) for p in m.group(1).split(".")]
                tab = ".".join([table, *parts[:-1]]) if table else ".".join(parts[:-1])
                self.keys.setdefault((tab, parts[-1]), []).append(i)
                code = code[m.end():]
            depth = max(0, depth + code.count("[") - code.count("]"))

    def key(self, table: str, key: str) -> int:
        """The line of `table.key`; else of its table (header or inline-table key); else 0."""
        line = self.keys.get((table, key), [0])[0] or self.tables.get(table, 0)
        if not line and "." in table:
            parent, _, last = table.rpartition(".")
            line = self.key(parent, last)
        return line

    def element(self, table: str, key: str, value) -> int:
        """The line of `value` inside the array `table.key` (the key's line if not found)."""
        start = self.key(table, key)
        if not start:
            return 0
        texts = {json.dumps(value), repr(value), str(value)}
        for i in range(start, min(len(self.lines), start + 1000) + 1):
            line = self.lines[i - 1] if i > start else self.lines[i - 1].split("=", 1)[-1]
            if any(re.search(rf"(?<![\w.\-]){re.escape(t)}(?![\w.\-])", line) for t in texts):
                return i
            if i > start and "]" in line:
                break
        return start


# ---- values ------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return (isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v))


def check_value(name: str, v, *, base_hw: HardwareConfig | None = None, where: Path | None = None):
    """The canonical value of parameter or hardware field `name`, or ValueError(what is allowed)."""
    if name in _HW_TYPES:
        typ = _HW_TYPES[name]
        if typ in ("int", int):
            if not _is_int(v):
                raise ValueError("must be an integer")
        elif typ in ("float", float):
            if not _is_num(v):
                raise ValueError("must be a number")
            v = float(v)
        elif not isinstance(v, str):
            raise ValueError("must be a string")
        if base_hw is not None and name != "chip_cores":
            try:
                dataclasses.replace(base_hw, **{name: v})
            except ConfigError as e:
                msg = str(e)
                if msg.startswith(f"{name}:"):
                    raise ValueError(msg.split(", ", 1)[-1]) from None
        return v
    if name in ("batch", "prompt", "context"):
        if not _is_int(v) or v < 1:
            raise ValueError("must be a positive integer")
        return v
    if name == "grid":
        if v == "full" or (_is_int(v) and v >= 1):
            return v
        raise ValueError('must be a positive integer or "full" (the whole mesh)')
    if name == "sparsity":
        if not _is_num(v) or not 0 <= v < 1:
            raise ValueError("must be a number in [0, 1)")
        return float(v)
    if name in _SPEC_ONLY:
        return _spec_value(name, v)
    if _is_model_field(name):
        if isinstance(v, bool) or not isinstance(v, int | float | str):
            raise ValueError("must be a number or a string (a model field's value)")
        return v
    if not isinstance(v, str):
        raise ValueError("must be a string")
    if name == "phase":
        from wse_sim.experiment import PHASES
        allowed = PHASES
    elif name == "strategy":
        from wse_sim.experiment import STRATEGIES
        allowed = tuple(STRATEGIES)
    elif name == "engine":
        from wse_sim.engine import ENGINES
        allowed = ENGINES
    elif name == "dtype":
        allowed = DTYPES
    elif name == "preset":
        v = _resolve_path(v, where)
        try:
            load_preset(v)
        except ConfigError as e:
            raise ValueError(str(e).split(", ", 1)[-1]) from None
        return v
    elif name == "model":
        v = _resolve_path(v, where)
        from workloads.models import load_model
        try:
            load_model(v)
        except (ValueError, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(f"not a loadable model ({msg})") from None
        return v
    else:
        raise ValueError(f"is not a run parameter or hardware field; known: "
                         f"{', '.join(AXIS_NAMES)}")
    if v not in allowed:
        raise ValueError(f"must be one of {', '.join(allowed)}")
    return v


def _is_model_field(name: str) -> bool:
    """`model.FIELD`: an axis over a model dimension (run spec `model_set`)."""
    from workloads.models import OVERRIDABLE
    return name.startswith("model.") and name[6:] in OVERRIDABLE


def _model_fields(table: dict) -> dict:
    """TOML reads `model.n_layers = [...]` as a table `model`; make it the key model.n_layers."""
    if isinstance(table, dict) and isinstance(table.get("model"), dict):
        inner = table.pop("model")
        table.update({f"model.{k}": v for k, v in inner.items()})
    return table


def _spec_value(name: str, v):
    """A run spec field's value, checked by the spec's own rule for it."""
    from wse_sim.spec import Mapping, Workload
    section = SPEC_FIELDS[name][0]
    try:
        (Workload(model="x", **{name: v}) if section == "workload" else Mapping(**{name: v}))
    except ConfigError as e:
        raise ValueError(str(e).split(", ", 1)[-1]) from None
    choices = {"reduce_algo": "mapper.reduce_algos:LAYER_REDUCE_ALGOS",
               "attention": "mapper.attention:ATTENTION_SPLITS"}.get(name)
    if choices:
        import importlib
        mod, attr = choices.split(":")
        allowed = tuple(getattr(importlib.import_module(mod), attr))
        if v not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}")
    return v


def _resolve_path(v: str, where: Path | None) -> str:
    """A .toml path relative to the sweep file's folder, made absolute (if it exists there)."""
    if v.endswith(".toml") and where is not None and not Path(v).is_absolute():
        cand = where / v
        if cand.exists():
            return str(cand.resolve())
    return v


def _did_you_mean(key: str, names=AXIS_NAMES) -> str:
    import difflib
    close = difflib.get_close_matches(key, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _canon(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


# ---- parse -------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str, origin: str, where: Path | None):
        self.origin, self.where = origin, where
        self.lines = _Lines(text)
        self._hw_cache: dict[str, HardwareConfig | None] = {}
        self._check_duplicates()
        try:
            self.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            msg = str(e)
            m = re.search(r"\(at line (\d+), column \d+\)", msg)
            line = int(m.group(1)) if m else 0
            raise self.error(line, None, None, f"not valid TOML ({msg})") from None

    def error(self, line: int, label: str | None, value, allowed: str) -> SweepError:
        loc = f"{self.origin}:{line}" if line else self.origin
        if label is None:
            return SweepError(f"{loc}: {allowed}")
        got = "" if value is _NO_VALUE else f"got {value!r}, "
        return SweepError(f"{loc}: {label}: {got}{allowed}")

    def _check_duplicates(self):
        for (table, key), lines in self.lines.keys.items():
            if len(lines) > 1 and not table.startswith("points["):
                what = "axis" if table == "axes" else "key"
                label = f"{table}.{key}" if table else key
                raise self.error(lines[1], label, _NO_VALUE,
                                 f"duplicate {what} (first on line {lines[0]})")

    def base_hw(self, preset: str) -> HardwareConfig | None:
        if preset not in self._hw_cache:
            try:
                self._hw_cache[preset] = load_preset(preset)
            except ConfigError:
                self._hw_cache[preset] = None
        return self._hw_cache[preset]

    def value(self, table: str, key: str, v, hw: HardwareConfig | None, in_array: bool = False):
        line = (self.lines.element(table, key, v) if in_array else self.lines.key(table, key))
        if key not in AXIS_NAMES and not _is_model_field(key):
            raise self.error(line, f"{table}.{key}", _NO_VALUE,
                             f"unknown run parameter or hardware field{_did_you_mean(key)}; "
                             f"known: {', '.join(AXIS_NAMES)}, and model.FIELD for a model "
                             "field (model.n_layers, ...)")
        if isinstance(v, dict | list) and not (key == "model_set" and isinstance(v, dict)):
            raise self.error(line, f"{table}.{key}", v, "must be a single value")
        try:
            return check_value(key, v, base_hw=hw, where=self.where)
        except ValueError as e:
            raise self.error(line, f"{table}.{key}", v, str(e)) from None

    def parse(self) -> SweepSpec:
        data = self.data
        for k in data:
            if k not in _TOP:
                raise self.error(self.lines.tables.get(k) or self.lines.key("", k), k, _NO_VALUE,
                                 "unknown table; allowed: [base], [base.set], [axes], "
                                 "[[points]], description")
        desc = data.get("description", "")
        if not isinstance(desc, str):
            raise self.error(self.lines.key("", "description"), "description", desc,
                             "must be a string")
        base_t = data.get("base", {})
        axes_t = data.get("axes", {})
        points_t = data.get("points", [])
        if not isinstance(base_t, dict) or not isinstance(axes_t, dict) or not isinstance(
                points_t, list):
            raise self.error(0, None, None, "[base] and [axes] must be tables, "
                                            "[[points]] an array of tables")
        _model_fields(axes_t)
        for pt in points_t:
            _model_fields(pt)
        # [base]: run parameters
        base = {}
        for k, v in base_t.items():
            if k == "set":
                continue
            if k not in RUN_PARAMS:
                line = self.lines.key("base", k)
                hint = " (hardware fields go in [base.set])" if k in FIELDS else ""
                raise self.error(line, f"base.{k}", _NO_VALUE,
                                 f"unknown run parameter{hint or _did_you_mean(k, RUN_PARAMS)}; "
                                 f"known: {', '.join(RUN_PARAMS)}")
            base[k] = self.value("base", k, v, None)
        for k in ("preset", "model"):
            if k not in base and k not in axes_t:
                raise self.error(self.lines.tables.get("base", 0), "base", _NO_VALUE,
                                 f"needs `{k} = ...` (or an axis `{k}`)")
        full_base = {k: base.get(k, d) for k, d in RUN_DEFAULTS.items()}
        first_preset = base.get("preset")
        if first_preset is None and isinstance(axes_t.get("preset"), list) and axes_t["preset"]:
            first = axes_t["preset"][0]
            first_preset = _resolve_path(first, self.where) if isinstance(first, str) else None
        hw0 = self.base_hw(first_preset) if first_preset else None
        # [base.set]: hardware overrides
        set_t = base_t.get("set", {})
        if not isinstance(set_t, dict):
            raise self.error(self.lines.key("base", "set"), "base.set", set_t,
                             "must be a table of hardware fields")
        base_set = {}
        for k, v in set_t.items():
            if k not in FIELDS:
                raise self.error(self.lines.key("base.set", k), f"base.set.{k}", _NO_VALUE,
                                 f"unknown hardware field{_did_you_mean(k, FIELDS)}; "
                                 f"known: {', '.join(FIELDS)}")
            base_set[k] = self.value("base.set", k, v, hw0)
        if hw0 is not None and base_set:
            try:
                hw0 = hw0.with_overrides(base_set)
            except ConfigError as e:
                raise self.error(self.lines.tables.get("base.set", 0), "base.set", _NO_VALUE,
                                 str(e)) from None
        # [axes]
        axes = {}
        for k, vals in axes_t.items():
            line = self.lines.key("axes", k)
            if k not in AXIS_NAMES and not _is_model_field(k):
                self.value("axes", k, None, None)
            if not isinstance(vals, list):
                raise self.error(line, f"axes.{k}", vals, "must be a list of values, e.g. "
                                 f"{k} = [a, b]")
            if not vals:
                raise self.error(line, f"axes.{k}", vals, "empty axis: give at least one value")
            canon = []
            for v in vals:
                c = self.value("axes", k, v, hw0, in_array=True)
                if c in canon:
                    raise self.error(self.lines.element("axes", k, v), f"axes.{k}", v,
                                     "duplicate value on this axis")
                canon.append(c)
            axes[k] = canon
        # [[points]]
        extra = []
        for i, pt in enumerate(points_t):
            table = f"points[{i}]"
            if not isinstance(pt, dict):
                raise self.error(self.lines.tables.get(table, 0), table, pt, "must be a table")
            if not pt:
                raise self.error(self.lines.tables.get(table, 0), table, _NO_VALUE,
                                 "empty point: set at least one parameter")
            extra.append({k: self.value(table, k, v, hw0) for k, v in pt.items()})
        n = math.prod(len(v) for v in axes.values()) + len(extra)
        if n > MAX_POINTS:
            sizes = " x ".join(str(len(v)) for v in axes.values()) or "0"
            raise self.error(self.lines.tables.get("axes", 0), "axes", _NO_VALUE,
                             f"{sizes} (+ {len(extra)} points) = {n} points; at most "
                             f"{MAX_POINTS} allowed")
        columns = list(axes)
        for pt in extra:
            columns += [k for k in pt if k not in columns]
        spec = SweepSpec(source=self.origin, description=desc, base=full_base,
                         base_set=base_set, axes=axes, extra_points=extra, columns=columns,
                         points=[])
        self.expand(spec)
        return spec

    def expand(self, spec: SweepSpec):
        combos = (dict(zip(spec.axes, c, strict=True))
                  for c in itertools.product(*spec.axes.values()))
        seen = set()
        for i, assign in enumerate(itertools.chain(combos, spec.extra_points)):
            p = self.make_point(i, spec, assign)
            if p.id in seen:
                spec.duplicates += 1
                continue
            seen.add(p.id)
            spec.points.append(p)

    def make_point(self, index: int, spec: SweepSpec, assign: dict) -> Point:
        params = dict(spec.base)
        overrides = dict(spec.base_set)
        for k, v in assign.items():
            if k.startswith("model."):  # a model dimension: into the run's model_set
                params["model_set"] = dict(params.get("model_set") or {}) | {k[6:]: v}
            else:
                (params if k in RUN_DEFAULTS else overrides)[k] = v
        hw = self.base_hw(params["preset"])
        hw_dict = None
        if hw is not None:
            try:
                hw_dict = hw.with_overrides(overrides).to_dict() if overrides else hw.to_dict()
            except ConfigError:
                hw_dict = None
        # the id: the first format's parameters, and any newer one that is not at its default
        run_key = {k: v for k, v in params.items() if k in _LEGACY or v != RUN_DEFAULTS[k]}
        key = {"run": run_key, "hardware": hw_dict}
        if hw_dict is None:
            key["set"] = overrides
        pid = hashlib.sha256(_canon(key).encode()).hexdigest()[:16]
        values = {}
        for c in spec.columns:
            if c.startswith("model."):
                values[c] = params["model_set"][c[6:]]
            elif c in params:
                values[c] = params[c]
            elif hw_dict is not None:
                values[c] = hw_dict[c]
            else:
                values[c] = overrides.get(c, "")
        # run options set by an axis or a point must apply to the point's run; [base] values
        # are shared by every point and apply where they apply (wse_sim.spec)
        params["given"] = sorted({"model_set" if k.startswith("model.") else k
                                  for k in assign} & set(SPEC_FIELDS))
        return Point(index=index, params=params, overrides=overrides, values=values, id=pid)


_NO_VALUE = object()


def parse_sweep_text(text: str, origin: str = "<sweep>", where: Path | None = None) -> SweepSpec:
    """Parse and validate a sweep given as TOML text; `where` resolves relative .toml paths."""
    return _Parser(text, origin, where).parse()


def load_sweep(path: str | Path) -> SweepSpec:
    """Parse and validate a sweep file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SweepError(f"{path}: cannot read the sweep file ({e.strerror or e})") from None
    return parse_sweep_text(text, str(path), p.resolve().parent)
