"""The base of every settings dataclass: JSON round-trip and the checks their ``__post_init__`` share.

Settings in steerc are small frozen dataclasses validated on construction (``ValueError`` with
what was wrong), written to and read from JSON: compile settings, each pass's settings, the
server's settings, the steering config.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, TypeVar

__all__ = ["Flag", "JsonDataclass", "check_choice", "check_int", "flag_of", "setting"]

T = TypeVar("T", bound="JsonDataclass")


class JsonDataclass:
    """JSON round-trip for flat frozen dataclasses; unknown keys are rejected."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[T], data: dict[str, Any]) -> T:
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {unknown}; known fields are {sorted(names)}")
        return cls(**data)

    @classmethod
    def from_json(cls: type[T], text: str) -> T:
        return cls.from_dict(json.loads(text))


@dataclasses.dataclass(frozen=True)
class Flag:
    """How a setting appears on the command line, declared beside the setting (:func:`setting`);
    ``steerc.cli.settings_flags`` makes the argparse flags and reads them back.

    ``name``: the flag (default ``--field-name``); ``scale``: the setting is the flag's value times
    this (a MiB flag for a bytes setting), with ``type`` the flag's own type; ``negate``: a setting
    that is on by default is turned off by ``--no-NAME``; ``choices``: the allowed values."""

    help: str
    name: str | None = None
    type: type | None = None
    scale: int | None = None
    negate: bool = False
    choices: tuple | None = None
    metavar: str | None = None


def setting(default: Any, help: str, **flag: Any) -> Any:
    """A settings field with its command-line :class:`Flag` (``flag``: the Flag's other fields)."""
    return dataclasses.field(default=default, metadata={"flag": Flag(help, **flag)})


def flag_of(field: dataclasses.Field) -> Flag | None:
    return field.metadata.get("flag")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_int(name: str, value: Any, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")
