"""Preset TOML files: built-in names or user paths, chains of bases, and where each field came from.

A preset file sets hardware fields, at its top level or under `[hardware]`, may cite them in a
`[sources]` table, and may name a base: `base = "wse2"` (a built-in preset) or
`base = "other.toml"` (a file, relative to this one). Its fields replace its base's and its
citations add to or replace its base's; a base may have a base of its own. A three-line preset:

    base = "wse2"
    name = "wse2-96k"
    sram_bytes = 98304
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from wse_sim.errors import ConfigError, bad


def builtin_names() -> list[str]:
    """The built-in presets: `wse_sim/presets/*.toml` without the suffix."""
    files = resources.files("wse_sim") / "presets"
    return sorted(p.name[:-5] for p in files.iterdir() if p.name.endswith(".toml"))


@dataclass(frozen=True)
class PresetFile:
    """One file of a chain: its label (a built-in name or a path), identity and text."""

    label: str
    key: str             # "builtin:NAME" or the absolute path: a chain visits each file once
    path: Path | None    # None for a built-in
    text: str


@dataclass(frozen=True)
class PresetLayers:
    """A chain of preset files merged: field values (not yet validated), citations, origins."""

    fields: dict
    sources: dict
    origins: dict        # field -> label of the file that set it (the nearest to the top)
    chain: tuple         # labels: the preset named, then its base, its base's base, ...


def read_preset(name_or_path: str, known_fields: tuple) -> PresetLayers:
    """Read a preset and its chain of bases; ConfigError (one line naming the file) if bad."""
    if not isinstance(name_or_path, str) or not name_or_path:
        raise bad("preset", name_or_path, "must be a preset name or a TOML file path")
    layers, seen = [], []
    f = _top_file(name_or_path)
    while f is not None:
        seen.append(f)
        data = _parse(f)
        base = data.pop("base", None)
        layers.append((f.label, *_split(data, f.label, known_fields)))
        f = None if base is None else _base_file(base, f, seen)
    fields, sources, origins = {}, {}, {}
    for label, hw, cited in reversed(layers):
        fields.update(hw)
        sources.update(cited)
        origins.update(dict.fromkeys(hw, label))
    return PresetLayers(fields, sources, origins, tuple(label for label, _, _ in layers))


def _error(label: str, key: str, value, allowed: str) -> ConfigError:
    return ConfigError(f"{label}: {key}: got {value!r}, {allowed}")


def _top_file(name: str) -> PresetFile:
    path = Path(name)
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as e:  # e.g. a name longer than the file system allows
        raise bad("preset", name, f"cannot be read ({e.strerror or e})") from None
    if name.endswith(".toml") or exists:
        if not is_file:
            raise bad("preset", name, "is a folder, not a preset file" if exists
                      else "file does not exist")
        return _user_file(path, name)
    names = builtin_names()
    if name not in names:
        raise bad("preset", name, f"must be one of {', '.join(names)} or a .toml file")
    return _builtin(name)


def _builtin(name: str) -> PresetFile:
    text = (resources.files("wse_sim") / "presets" / f"{name}.toml").read_text()
    return PresetFile(name, f"builtin:{name}", None, text)


def _user_file(path: Path, label: str) -> PresetFile:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{label}: cannot be read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{label}: cannot be read (not UTF-8 text)") from None
    return PresetFile(label, str(path.resolve()), path, text)


def _base_file(base, parent: PresetFile, seen: list[PresetFile]) -> PresetFile:
    """The file `base = ...` of `parent` names; a chain that comes back to a file is an error."""
    names = builtin_names()
    allowed = (f"must be a built-in preset ({', '.join(names)}) or a .toml file path "
               f"relative to {parent.label}")
    if not isinstance(base, str) or not base:
        raise _error(parent.label, "base", base, allowed)
    if base.endswith(".toml") or "/" in base or os.sep in base:
        if parent.path is None:
            raise _error(parent.label, "base", base, "a built-in preset's base must be "
                         f"a built-in preset ({', '.join(names)})")
        path = Path(os.path.normpath(parent.path.parent / base))
        if not path.is_file():
            raise _error(parent.label, "base", base, f"file {path} does not exist; {allowed}")
        f = _user_file(path, str(path))
    elif base in names:
        f = _builtin(base)
    else:
        raise _error(parent.label, "base", base, allowed)
    keys = [s.key for s in seen]
    if f.key in keys:
        loop = " -> ".join([s.label for s in seen[keys.index(f.key):]] + [f.label])
        raise _error(parent.label, "base", base, f"makes a cycle ({loop}); a chain of bases "
                     "must end at a preset without a base")
    return f


def _parse(f: PresetFile) -> dict:
    try:
        return tomllib.loads(f.text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{f.label}: not valid TOML ({e})") from None


def _split(data: dict, label: str, known: tuple) -> tuple[dict, dict]:
    """One file's hardware fields (top level and `[hardware]`) and its `[sources]`, checked."""
    table = data.pop("hardware", {})
    if not isinstance(table, dict):
        raise _error(label, "hardware", table, "must be a table: [hardware]")
    cited = data.pop("sources", {})
    if not isinstance(cited, dict):
        raise _error(label, "sources", cited, "must be a table: [sources]")
    for k, v in cited.items():
        if not isinstance(v, str):
            raise _error(label, f"sources.{k}", v, "must be a string (where the value comes from)")
    for k, v in data.items():
        if k not in known:
            what = "a table" if isinstance(v, dict) else repr(v)
            raise ConfigError(f"{label}: {k}: got {what}, is not a hardware field; allowed: base, "
                              f"[hardware], [sources] and the fields {', '.join(known)}")
        if k in table:
            raise _error(label, k, v, "is set both at the top and in [hardware]; set it once")
    for k, v in table.items():
        if k not in known:
            hint = "; base belongs at the top of the file, before [hardware]" if k == "base" else ""
            raise _error(label, f"hardware.{k}", v,
                         f"is not a known field; known: {', '.join(known)}{hint}")
    return {**data, **table}, cited
