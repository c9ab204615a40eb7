"""Built-in presets: every resolved field pinned to its value before presets could inherit."""

import json
from pathlib import Path

import pytest

from wse_sim.hardware import load_preset, preset_names

PINNED = json.loads((Path(__file__).parent / "data" / "presets_today.json").read_text())


def test_every_builtin_preset_is_pinned():
    assert sorted(PINNED) == preset_names()


@pytest.mark.parametrize("name", sorted(PINNED))
def test_builtin_preset_resolves_to_its_pinned_fields(name):
    hw = load_preset(name)
    got = hw.to_dict()
    for key, value in PINNED[name]["fields"].items():
        assert got[key] == value and type(got[key]) is type(value), (name, key)
    for key, text in PINNED[name]["sources"].items():
        assert hw.sources[key] == text, (name, key)
