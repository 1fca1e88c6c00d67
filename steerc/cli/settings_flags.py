"""Command-line flags made from a settings dataclass's declared fields (:func:`steerc.settings_base.setting`).

A setting is declared once, with its default, limits (``__post_init__``) and flag, beside the
code that uses it; :func:`add_settings_flags` makes the argparse flags (their help shows the
declared default, scaled to the flag's unit) and :func:`settings_from_args` builds the settings
from what was given, leaving out what was not, so the dataclass's default applies.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from steerc.settings_base import Flag, flag_of

__all__ = ["add_settings_flags", "settings_from_args", "flag_name"]


def flag_name(field: dataclasses.Field, flag: Flag) -> str:
    if flag.name:
        return flag.name
    return ("--no-" if flag.negate else "--") + field.name.replace("_", "-")


def _shown(default: Any, flag: Flag) -> str:
    if default is None or isinstance(default, bool):
        return ""
    value = default / flag.scale if flag.scale else default
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f" (default: {value})"


def add_settings_flags(parser: argparse.ArgumentParser, cls, omit: tuple[str, ...] = ()) -> None:
    """One flag per declared field of the dataclass ``cls`` (but ``omit``), in declaration order."""
    for f in dataclasses.fields(cls):
        flag = flag_of(f)
        if flag is None or f.name in omit:
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if isinstance(f.default, bool):
            kwargs["action"] = "store_false" if flag.negate else "store_true"
        else:
            kwargs["type"] = flag.type or (type(f.default) if f.default is not None else str)
            if flag.choices:
                kwargs["choices"] = list(flag.choices)
            else:
                kwargs["metavar"] = flag.metavar or flag_name(f, flag).lstrip("-").replace("-", "_").upper()  # the flag's unit, not the field's
        kwargs["help"] = (flag.help + ("" if "default" in flag.help else _shown(f.default, flag))).replace("%", "%%")
        parser.add_argument(flag_name(f, flag), **kwargs)


def settings_from_args(cls, args: argparse.Namespace, **given: Any):
    """``cls`` from the flags given in ``args`` (scaled back to the setting's unit) and ``given``;
    everything else takes its declared default. Raises ValueError from the settings' checks."""
    values = dict(given)
    for f in dataclasses.fields(cls):
        flag = flag_of(f)
        if flag is None or not hasattr(args, f.name) or f.name in values:
            continue
        value = getattr(args, f.name)
        if flag.scale and value is not None:
            value = int(round(value * flag.scale))
        values[f.name] = value
    return cls(**values)
