"""The error a bad user-supplied value raises, shared by the hardware description and its presets."""

from __future__ import annotations


class ConfigError(ValueError):
    """A bad user-supplied value: the message is one line naming field, value and what is allowed.

    `field` names the hardware field at fault when there is one (else None)."""

    field: str | None = None


def must_be(field_name: str, value, allowed: str) -> ConfigError:
    """`field: got VALUE, must be ALLOWED` (`bad` with the usual wording)."""
    return bad(field_name, value, f"must be {allowed}")


def bad(field_name: str, value, allowed: str) -> ConfigError:
    """`field: got VALUE, ALLOWED` as a ConfigError whose `.field` is `field_name`."""
    err = ConfigError(f"{field_name}: got {value!r}, {allowed}")
    err.field = field_name
    return err
