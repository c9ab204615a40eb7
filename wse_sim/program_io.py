"""Programs on disk: `save_program(program, path)` and `load_program(path)`, readable JSON.

The file is one JSON object: `{"format": "wse-sim-program", "version": 1, "program": {...}}`.
Every record of `wse_sim.program` (Program, Region, Dep, DataOp, Compute, Unicast, LineStream,
Multicast, IoTransfer, Alloc, and any record added there later) is a JSON object of its
dataclass fields, written generically from `dataclasses.fields`:
- `"type"` names the record's class; it may be left out where the field's type already says
  which record it is (`region`, `data`, the top-level `program`), and must be given elsewhere
  (every task, alloc and dep);
- a field equal to its default may be left out (the writer leaves it out);
- JSON arrays load as tuples (the IR holds tuples); `meta` is a JSON object of plain values.

`load_program` checks the schema and names the first problem in one line: the file, the
record's place (`tasks[3].deps[0]`), its type and the field, e.g.
`prog.json: tasks[3] Compute.flops: got 'x', must be an integer`. docs/programs.md shows the
format with a worked example.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from pathlib import Path

import numpy as np

from wse_sim import program as IR
from wse_sim.program import Program, ProgramError

FORMAT = "wse-sim-program"
VERSION = 1
_TYPE = "type"


def records() -> dict[str, type]:
    """Record classes by name: every dataclass of the IR that `wse_sim.program` holds (its
    own and those of `program_records` and `program_loops`; looked up on each call, so
    records added to the IR later are found without edits here)."""
    return {name: obj for name, obj in vars(IR).items()
            if isinstance(obj, type) and dataclasses.is_dataclass(obj)
            and obj.__module__.startswith(IR.__name__)}


def _hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not evaluate: decode that field generically
        return {f.name: typing.Any for f in dataclasses.fields(cls)}


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def _pinned(hint) -> type | None:
    """The one record class a field's type names (`Region`, `DataOp | None`), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        arms = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(arms) == 1 and dataclasses.is_dataclass(arms[0]):
            return arms[0]
    return None


# ---- writing -----------------------------------------------------------------------------------

def _encode(v, where: str, hint=None):
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return _encode_record(v, where, _pinned(hint))
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | np.integer):
        return int(v)
    if isinstance(v, float | np.floating):
        return float(v)
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, tuple | list):
        return [_encode(x, f"{where}[{i}]") for i, x in enumerate(v)]
    if isinstance(v, dict):
        bad = [k for k in v if not isinstance(k, str)]
        if bad:
            raise ProgramError(f"{where}: key {bad[0]!r} is a {type(bad[0]).__name__}, must be "
                               "a string (JSON object keys)")
        return {k: _encode(x, f"{where}.{k}") for k, x in v.items()}
    raise ProgramError(f"{where}: a {type(v).__name__} cannot be saved (allowed: numbers, "
                       "strings, booleans, None, lists, dicts and records)")


def _encode_record(rec, where: str, pinned: type | None) -> dict:
    cls = type(rec)
    out = {} if cls is pinned else {_TYPE: cls.__name__}
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == _TYPE:
            raise ProgramError(f"{cls.__name__}: a field named {_TYPE!r} clashes with the "
                               "record tag of the file format")
        if not f.init:
            continue
        v = getattr(rec, f.name)
        d = _default(f)
        if d is not dataclasses.MISSING and type(v) is type(d) and _same(v, d):
            continue
        out[f.name] = _encode(v, _child(where, f.name), hints.get(f.name))
    return out


def _child(where: str, name: str) -> str:
    """The place of a field: `tasks[3].deps`, the root's fields without a prefix."""
    return name if where == "program" else f"{where}.{name}"


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except (ValueError, TypeError):
        return False


def program_to_dict(program: Program) -> dict:
    """The JSON-able document of `program` (what `save_program` writes)."""
    if not isinstance(program, Program):
        raise ProgramError(f"save_program program: got {type(program).__name__}, must be a "
                           "Program")
    return {"format": FORMAT, "version": VERSION,
            "program": _encode_record(program, "program", Program)}


def dumps(doc: dict) -> str:
    """JSON text with one task, alloc or field per line (readable, diffable)."""
    prog = doc["program"]
    lines = ["{", f' "format": {json.dumps(doc["format"])},',
             f' "version": {json.dumps(doc["version"])},', ' "program": {']
    items = list(prog.items())
    for i, (k, v) in enumerate(items):
        end = "," if i < len(items) - 1 else ""
        if isinstance(v, list) and v:
            rows = [f"   {json.dumps(x, ensure_ascii=False)}" for x in v]
            lines.append(f"  {json.dumps(k)}: [\n" + ",\n".join(rows) + f"\n  ]{end}")
        else:
            lines.append(f"  {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}{end}")
    lines += [" }", "}"]
    return "\n".join(lines) + "\n"


def _path(path, what: str) -> Path:
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ProgramError(f"{what} path: got {path!r}, must be a file name")
    return Path(path)


def save_program(program: Program, path) -> Path:
    """Write `program` to `path` as versioned JSON; returns the path."""
    path = _path(path, "save_program")
    text = dumps(program_to_dict(program))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as e:
        raise ProgramError(f"{path}: cannot write ({e.strerror or e})") from None
    return path


# ---- reading -----------------------------------------------------------------------------------

def _kind(v) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            type(None): "null", int: "an integer", float: "a number"}.get(type(v), type(v).__name__)


def _decode_record(obj, cls: type | None, where: str):
    """A JSON object -> the record it describes (`cls` None: its "type" says which)."""
    known = records()
    if not isinstance(obj, dict):
        want = cls.__name__ if cls else "record"
        raise ProgramError(f"{where}: got {_kind(obj)}, must be an object (a {want})")
    tag = obj.get(_TYPE)
    if tag is None and cls is None:
        raise ProgramError(f"{where}: the record has no {_TYPE!r}, must name one of "
                           f"{', '.join(known)}")
    if tag is not None:
        if not isinstance(tag, str) or tag not in known:
            raise ProgramError(f"{where}: unknown record type {tag!r}, must be one of "
                               f"{', '.join(known)}")
        if cls is not None and not issubclass(known[tag], cls):
            raise ProgramError(f"{where}: got a {tag}, must be a {cls.__name__}")
        cls = known[tag]
    name = cls.__name__
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    extra = [k for k in obj if k not in fields and k != _TYPE]
    if extra:
        raise ProgramError(f"{where} {name}: unknown field {extra[0]!r}, must be one of "
                           f"{', '.join(fields)}")
    hints = _hints(cls)
    kwargs = {}
    for fname, f in fields.items():
        if fname not in obj:
            if _default(f) is dataclasses.MISSING:
                raise ProgramError(f"{where} {name}: missing field {fname!r}")
            continue
        kwargs[fname] = _decode(obj[fname], hints.get(fname, typing.Any),
                                f"{where} {name}.{fname}", _child(where, fname))
    try:
        return cls(**kwargs)
    except ProgramError as e:
        raise ProgramError(f"{where} {name}: {e}") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ProgramError(f"{where} {name}: {str(e).splitlines()[0] if str(e) else e!r}") \
            from None


_SCALARS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _decode(v, hint, field: str, where: str):
    """`v` as the field's declared type; `field` names it in errors, `where` places records."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        arms = typing.get_args(hint)
        if v is None and type(None) in arms:
            return None
        arms = [a for a in arms if a is not type(None)]
        return _decode(v, arms[0] if len(arms) == 1 else typing.Any, field, where)
    if dataclasses.is_dataclass(hint):
        return _decode_record(v, hint, where)
    if hint in _SCALARS:
        ok = isinstance(v, hint) and not (hint is not bool and isinstance(v, bool))
        if hint is float and isinstance(v, int) and not isinstance(v, bool):
            v, ok = float(v), True
        if not ok:
            raise ProgramError(f"{field}: got {v!r}, must be {_SCALARS[hint]}")
        return v
    if hint is tuple or origin is tuple:
        if not isinstance(v, list):
            raise ProgramError(f"{field}: got {_kind(v)} {v!r}, must be an array")
        return tuple(_generic(x, f"{where}[{i}]", True) for i, x in enumerate(v))
    if hint is dict or origin is dict:
        if not isinstance(v, dict):
            raise ProgramError(f"{field}: got {_kind(v)} {v!r}, must be an object")
        return {k: _generic(x, f"{where}.{k}", False) for k, x in v.items()}
    return _generic(v, where, False)


def _generic(v, where: str, in_records: bool):
    """A value of a field without a precise type: arrays as tuples; objects are records when
    they carry a "type" (the items of a record's array field must), plain dicts otherwise."""
    if isinstance(v, list):
        return tuple(_generic(x, f"{where}[{i}]", False) for i, x in enumerate(v))
    if isinstance(v, dict):
        if in_records or (isinstance(v.get(_TYPE), str) and v[_TYPE] in records()):
            return _decode_record(v, None, where)
        return {k: _generic(x, f"{where}.{k}", False) for k, x in v.items()}
    return v


def program_from_dict(doc, source: str = "program") -> Program:
    """The Program of a document (what `load_program` reads); errors start with `source`."""
    try:
        if not isinstance(doc, dict):
            raise ProgramError(f"got {_kind(doc)}, must be an object with 'format', 'version' "
                               "and 'program'")
        if doc.get("format") != FORMAT:
            raise ProgramError(f"format: got {doc.get('format')!r}, must be {FORMAT!r}")
        ver = doc.get("version")
        if ver != VERSION or isinstance(ver, bool):
            raise ProgramError(f"version: got {ver!r}, this wse-sim reads version {VERSION}")
        extra = [k for k in doc if k not in ("format", "version", "program")]
        if extra:
            raise ProgramError(f"unknown key {extra[0]!r}, must be one of format, version, "
                               "program")
        if "program" not in doc:
            raise ProgramError("missing key 'program'")
        prog = _decode_record(doc["program"], Program, "program")
    except ProgramError as e:
        raise ProgramError(f"{source}: {e}") from None
    return prog


def load_program(path) -> Program:
    """Read and check a program file; every problem is a one-line ProgramError naming it."""
    path = _path(path, "load_program")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ProgramError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProgramError(f"{path}: not UTF-8 text (byte {e.start}); a program file is "
                           "JSON") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProgramError(f"{path}: not JSON: {e.msg} at line {e.lineno} column {e.colno}") \
            from None
    return program_from_dict(doc, str(path))
