"""The steering options ``steerc run``, ``eval`` and ``serve`` share, and the SteerConfig they describe.

The flags are made from the fields' declarations (:mod:`steerc.steering.options`): SteerConfig's
shared settings, then every registered method's options (:mod:`steerc.steering.registry`), one
flag per field name, read when the parser is built (so a registered method's options appear).
``--profile`` (a head profile file) sets two fields: the steered heads and the selector heads.
"""

from __future__ import annotations

import argparse

from steerc.errors import SteercError

__all__ = ["add_steer_options", "add_method_option", "steer_config", "steer_values", "check_profile", "method_help"]


def _profile(args):
    from steerc.steering.profiles import load_profile

    if not getattr(args, "profile", None):
        return None
    try:
        return load_profile(args.profile)
    except ValueError as exc:
        raise SteercError(str(exc)) from None


def _flags(omit=()) -> list[tuple[str, object, list[str], object]]:
    """``(name, Option, methods, default)`` for every field with a flag: shared settings first
    (``methods`` empty), then each method's options in registry order (``methods``: those that have it)."""
    import dataclasses

    from steerc.steering.config import SteerConfig
    from steerc.steering.options import option_of, options_fields
    from steerc.steering.registry import method_names, options_class

    out: dict[str, tuple[str, object, list[str], object]] = {}
    for f in dataclasses.fields(SteerConfig):
        spec = option_of(f)
        if spec is not None and spec.kind != "name":
            out[f.name] = (f.name, spec, [], f.default)
    for method in method_names():
        for f, spec in options_fields(options_class(method)):
            if f.name in out:
                out[f.name][2].append(method)
            else:
                out[f.name] = (f.name, spec, [method], f.default)
    return [entry for name, entry in out.items() if entry[1].flag != "" and name not in omit]


def _flag(name: str, spec) -> str:
    return spec.flag or "--" + name.replace("_", "-")


def add_steer_options(p, omit: tuple[str, ...] = ()) -> None:
    """Steering options shared by ``steerc run``, ``eval`` and ``serve`` (defaults: SteerConfig's
    and the methods' options'); ``omit``: fields without a flag here."""
    p.add_argument("--profile", default=None, help="head profile JSON from steerc profile: selector heads (query) and steered heads (replace --layers/--heads)")
    for name, spec, methods, default in _flags(omit):
        kwargs: dict = {"dest": name, "default": argparse.SUPPRESS}  # left out: the declared default
        if spec.kind == "int":
            kwargs["type"] = int
        elif spec.kind == "number":
            kwargs["type"] = float
        elif spec.kind == "choice":
            kwargs["choices"] = list(spec.choices)
        elif spec.kind == "strings":
            kwargs["action"] = "append"
        where = f"{', '.join(methods)}: " if methods else ""
        shown = f" (default: {default})" if isinstance(default, (int, float, str)) and "default" not in spec.help else ""
        kwargs["help"] = f"{where}{spec.help}{shown}".replace("%", "%%")
        p.add_argument(_flag(name, spec), **kwargs)


def add_method_option(p, help: str) -> None:
    """``--method``, its choices from the registry."""
    from steerc.steering.registry import method_names

    p.add_argument("--method", default=None, choices=list(method_names()), help=help)


def method_help() -> str:
    """One line per registered method: its name and summary."""
    from steerc.steering.registry import get_method, method_names

    return "; ".join(f"{name}: {get_method(name).summary}" for name in method_names()).replace("%", "%%")  # argparse formats help with %


def steer_values(args) -> dict:
    """The steering fields the flags set (flat names, parsed; flags left out are absent), each
    checked against its limits and the rules between the options of the method that has it."""
    from steerc.steering.registry import method_names, options_class

    values = {}
    for name, spec, _, _ in _flags():
        value = getattr(args, name, None)
        if value is None or (isinstance(value, list) and not value):
            continue
        try:
            values[name] = spec.cli_parse(value) if spec.cli_parse else value
        except ValueError as exc:
            raise SteercError(f"invalid option: {exc}") from None
    profile = _profile(args)
    if profile is not None:
        values["selector"] = profile.selector_heads
        values["profile"] = profile.steered_heads
    try:
        for method in method_names():  # every method's options given, whichever method runs (eval runs several; serve's are request defaults)
            cls = options_class(method)
            own = {k: v for k, v in values.items() if k in cls.names()}
            if own:
                cls(**own)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None
    return values


def steer_config(args, method: str | None = None):
    """The SteerConfig the shared steering options (``add_steer_options``) describe, for ``method``
    (default ``--method``, else SteerConfig's); options of other methods are left out."""
    from steerc.steering.config import SteerConfig, accepted_fields

    values = steer_values(args)
    method = method or getattr(args, "method", None) or SteerConfig().method
    try:
        return SteerConfig(**{k: v for k, v in values.items() if k in accepted_fields(method)}, method=method)
    except ValueError as exc:
        raise SteercError(f"invalid option: {exc}") from None


def check_profile(args, engine) -> dict | None:
    """Refuse a ``--profile`` made for another engine; returns what the run records of it."""
    profile = _profile(args)
    if profile is None:
        return None
    try:
        profile.check(engine)
    except ValueError as exc:
        raise SteercError(str(exc)) from None
    return {"path": str(args.profile), "selector_heads": [list(p) for p in profile.selector_heads], "steered_heads": [list(p) for p in profile.steered_heads]}

