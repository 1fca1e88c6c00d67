"""Steering options declared once: each field's default, limits, choices, help and command-line form.

A field made with :func:`option` carries an :class:`Option` in its metadata. That one
declaration gives the check made when the dataclass is built (:func:`check_options`, a
``ValueError`` naming the field and the value), the ``steerc run`` / ``eval`` / ``serve`` flag
(:mod:`steerc.cli.steer_options`) and the server's ``steer`` schema
(:mod:`steerc.server.schemas`), so a limit exists in one place.

A steering method's own settings are a frozen :class:`MethodOptions` dataclass (its
``options`` class attribute); :class:`~steerc.steering.config.SteerConfig` holds the settings
every method shares, declared the same way, plus the chosen method's options.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from steerc.steering.config import SteerConfig

__all__ = ["Option", "MethodOptions", "option", "option_of", "options_fields", "check_options", "parse_pairs", "KINDS", "LAYER_BANDS", "AUTO_LAYERS"]

# Named layer sets that fit any depth: thirds of the stack (for 30 layers: 0-9, 10-19, 20-29).
LAYER_BANDS = ("all", "first-third", "middle-third", "last-third")
# ``layers = "auto"``: the method's own default band (chosen for it on dev; see docs/RESULTS.md).
AUTO_LAYERS = "auto"

# What a value is. Each kind has one check here, one command-line form and one JSON type:
#   int     a whole number (not a bool), within the limits
#   number  an int or float (not a bool), finite, within the limits
#   choice  one of ``choices``
#   ints    a non-empty list of non-negative integers, sorted and deduplicated, or None (all)
#   layers  ``ints``, or ``auto`` / a band of LAYER_BANDS
#   pairs   a list of [layer, head] pairs of non-negative integers, sorted and deduplicated
#   spans   [start, end) character ranges with 0 <= start < end
#   strings ``count`` non-empty strings
#   name    a method name (SteerConfig checks it against the registry)
KINDS = ("int", "number", "choice", "ints", "layers", "pairs", "spans", "strings", "name")


@dataclass(frozen=True)
class Option:
    """What the checks, the CLI and the HTTP schema need to know of one field."""

    kind: str
    help: str
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    count: int | None = None  # strings: how many
    must: str | None = None  # the error's "must be ..." text (default: from the kind and limits)
    label: str | None = None  # the error's name for the field (default: its name)
    per_query: bool = False  # read only per query: never part of a stored entry's key
    flag: str | None = None  # the command-line flag (default ``--`` + the name with dashes); "" = none
    cli_parse: Callable[[Any], Any] | None = None  # turns the flag's parsed value into the field's (may raise ValueError)
    http: bool = True  # in the server's ``steer`` schema
    json_ints: bool = False  # number: JSON integers stay integers (a count), not floats

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"option kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "choice" and not self.choices:
            raise ValueError("a choice option needs its choices")

    # -- checks ----------------------------------------------------------------------------------
    def describe(self) -> str:
        """What a value must be, for error messages and help."""
        if self.must:
            return self.must
        if self.kind == "choice":
            return f"one of {self.choices}"
        low = f">= {_num(self.ge)}" if self.ge is not None else f"> {_num(self.gt)}" if self.gt is not None else None
        high = f"<= {_num(self.le)}" if self.le is not None else f"< {_num(self.lt)}" if self.lt is not None else None
        bounds = " and ".join(b for b in (low, high) if b)
        noun = "a whole number" if self.kind == "int" else "a number"
        return f"{noun} {bounds}".strip()

    def within(self, value) -> bool:
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt) and (self.le is None or value <= self.le)
                and (self.lt is None or value < self.lt))

    def check(self, name: str, value):
        """``value`` normalised (tuples, sorted pairs); a ValueError naming ``name`` otherwise."""
        label = self.label or name
        bad = ValueError(f"{label} must be {self.describe()}, got {value!r}")
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not self.within(value):
                raise bad
        elif self.kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not self.within(value):
                raise bad
        elif self.kind == "choice":
            if value not in self.choices:
                raise bad
        elif self.kind in ("ints", "layers"):
            return _int_tuple(name, value, self.kind == "layers")
        elif self.kind == "pairs":
            return _pairs(name, value)
        elif self.kind == "spans":
            spans = tuple(tuple(s) for s in value)
            if any(len(s) != 2 or not (0 <= s[0] < s[1]) for s in spans):
                raise ValueError(f"{label} must be {self.must or '[start, end) character ranges with 0 <= start < end'}, got {value!r}")
            return spans
        elif self.kind == "strings":
            if isinstance(value, str):
                raise bad
            items = tuple(value)
            if len(items) != self.count or not all(isinstance(p, str) and p.strip() for p in items):
                raise bad
            return items
        return value


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else str(value)


def _int_tuple(name: str, value, bands: bool):
    if value is None:
        return None
    if bands and isinstance(value, str):
        if value not in (AUTO_LAYERS, *LAYER_BANDS):
            raise ValueError(f"{name} must be a list of integers, null, or one of {(AUTO_LAYERS, *LAYER_BANDS)}, got {value!r}")
        return value
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name} must be a list of integers or null, got {value!r}")
    out = tuple(value)
    if not out or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in out):
        raise ValueError(f"{name} must be a non-empty list of non-negative integers, got {list(out)}")
    return tuple(sorted(set(out)))


def _pairs(name: str, value) -> tuple[tuple[int, int], ...]:
    pairs = tuple(tuple(p) for p in value)
    if any(len(p) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in p) for p in pairs):
        raise ValueError(f"{name} must be a list of [layer, head] pairs of non-negative integers, got {value!r}")
    return tuple(sorted(set(pairs)))


def parse_pairs(text: str) -> tuple[tuple[int, int], ...]:
    """The command-line form of a ``pairs`` option: ``LAYER:HEAD,LAYER:HEAD,..`` (e.g. ``18:7,23:2``)."""
    try:
        pairs = [tuple(int(x) for x in item.split(":")) for item in str(text).split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"expected LAYER:HEAD pairs separated by commas (e.g. 18:7,23:2), got {text!r}") from None
    if not pairs or any(len(p) != 2 for p in pairs):
        raise ValueError(f"expected LAYER:HEAD pairs separated by commas (e.g. 18:7,23:2), got {text!r}")
    return _pairs("selector", pairs)


def option(default, kind: str, help: str, **spec) -> Any:
    """A dataclass field with its :class:`Option` (``spec``: the Option's other settings)."""
    return dataclasses.field(default=default, metadata={"option": Option(kind, help, **spec)})


def option_of(field: dataclasses.Field) -> Option | None:
    return field.metadata.get("option")


def options_fields(cls) -> list[tuple[dataclasses.Field, Option]]:
    """The declared option fields of a dataclass (or instance), in order."""
    return [(f, option_of(f)) for f in dataclasses.fields(cls) if option_of(f) is not None]


def check_options(obj) -> None:
    """Check and normalise every option field of the frozen dataclass ``obj`` in place."""
    for f, spec in options_fields(obj):
        object.__setattr__(obj, f.name, spec.check(f.name, getattr(obj, f.name)))


@dataclass(frozen=True)
class MethodOptions:
    """A steering method's own settings. Subclasses are frozen dataclasses whose fields are made
    with :func:`option`; they may add :meth:`validate` (rules between their own fields) and
    :meth:`check` (rules that involve the common settings). A method without settings uses this
    class as it is."""

    # The steered band when ``layers`` is "auto" (LLMSteer's dev sweep chose the last third).
    default_layers: ClassVar[str] = "last-third"

    def __post_init__(self) -> None:
        check_options(self)
        self.validate()

    def validate(self) -> None:
        """Rules between this method's own fields (raise ValueError)."""

    def check(self, config: SteerConfig, method: str) -> None:
        """Rules that involve the common settings of ``config`` (raise ValueError)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def per_query(cls) -> tuple[str, ...]:
        """Fields only query-time work reads (never part of a stored entry's key)."""
        return tuple(f.name for f, spec in options_fields(cls) if spec.per_query)
