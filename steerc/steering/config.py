"""``SteerConfig``: how a context is steered: the settings every method shares, plus the chosen method's options.

The shared settings are declared here, each method's own in its module (a
:class:`~steerc.steering.options.MethodOptions` dataclass, found through
:mod:`steerc.steering.registry`); both with :func:`~steerc.steering.options.option`, from which
the checks, the command-line flags and the server schema are made.

The JSON form is flat: ``{"method": "query", "alpha": 0.1, "evidence": 2, ...}``, the shared
settings and the method's options side by side, as configs were written when one flat config
held every method's options. Such a dict still loads, with the fields of other methods it
carries, as long as they hold their defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from steerc.settings_base import JsonDataclass
from steerc.steering.options import AUTO_LAYERS, LAYER_BANDS, MethodOptions, check_options, option, option_of
from steerc.steering.registry import method_names, options_class

__all__ = ["SteerConfig", "STEER_AT", "LAYER_BANDS", "AUTO_LAYERS", "DEFAULT_PREFIXES", "UNITS", "band_layers", "option_owners"]

UNITS = ("auto", "sentence", "paragraph")
STEER_AT = ("prefill", "decode", "both")
# LLMSteer's two query-free instruction prefixes (as reported; see shared/papers.md).
DEFAULT_PREFIXES = (
    "Answer the question based on the given passages. Only give me the answer and do not output any other words. The following are given passages.",
    "Respond to the query using only the provided texts. Only return the answer. DO NOT return any extra words. Below are the provided texts.",
)


def band_layers(band: str, num_layers: int) -> tuple[int, ...]:
    """The layer indices of a named band (``LAYER_BANDS``) in a ``num_layers``-deep model."""
    if band not in LAYER_BANDS:
        raise ValueError(f"layer band must be one of {LAYER_BANDS}, got {band!r}")
    if band == "all":
        return tuple(range(num_layers))
    part = LAYER_BANDS.index(band) - 1
    start, end = round(part * num_layers / 3), round((part + 1) * num_layers / 3)
    return tuple(range(start, max(end, start + 1)))  # never empty, even for 1-2 layers


def _keep(value):
    """``--keep``: a whole count above 1 is an integer; a ratio stays a float."""
    return int(value) if value > 1 and value == int(value) else value


def _ints(text: str):
    if text == "all":
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of integers or 'all', got {text!r}") from None


def _layers(text: str):
    return text if text in (AUTO_LAYERS, *LAYER_BANDS) else _ints(text)


def _prefixes(values: list[str]) -> tuple[str, ...]:
    if len(values) != 2:
        raise ValueError(f"--prefix must be given twice (LLMSteer's two instruction prefixes), got {len(values)}")
    return tuple(values)


@dataclass(frozen=True, init=False)
class SteerConfig(JsonDataclass):
    """``method``: a registered steering method (:mod:`steerc.steering.registry`: ``none``,
    ``query``, ``qllm``, ``llmsteer``, ``pasta``, ``autopasta``); ``options``: its own settings
    (e.g. ``QueryOptions(evidence=2)``; see each method's module). The rest applies to every method.

    ``alpha`` in (0, 1]: unselected context keys get ``log(alpha)``. ``steer_at``: ``prefill``
    (the stored KV comes from a steered prefill), ``decode`` (plain KV; the bias applies whenever
    later tokens attend to the context) or ``both``. ``layers`` / ``heads``: steered layers and
    query heads (null = all; ``layers`` may also name a band of ``LAYER_BANDS``, or ``auto``, the
    default: the method's own band, chosen on dev); ``profile``, a list of ``[layer, head]``
    pairs, replaces both. ``prefixes``: the two instruction prefixes (a method prefills the context
    behind the first, LLMSteer and compaction behind both). ``window`` > 0 counts only the last
    ``window`` context tokens' attention (an observation window) instead of every row.

    ``keep``: store only the KV of the kept context tokens, a ratio in (0, 1] of the context or
    a count; 1 keeps everything. The kept tokens are the first ``keep_sinks`` context tokens, the
    last ``keep_recent`` and the rest by LLMSteer's dual-prefix importance (``keep_unit``: single
    tokens, or whole sentences / documents ranked by their mean importance); the instruction head
    is always kept and every key keeps its original position.

    Built as ``SteerConfig(method="query", alpha=0.2, options=QueryOptions(evidence=2))`` or, flat,
    ``SteerConfig(method="query", alpha=0.2, evidence=2)``: a name the method's options lack is
    refused (naming the method that has it) unless it holds that option's default."""

    method: str = option("query", "name", "steering method")
    alpha: float = option(0.1, "number", "down-weighting of the other context keys, in (0, 1]", gt=0, le=1,
                          must="a number in (0, 1] (1 = no steering)")
    steer_at: str = option("decode", "choice", "where the bias applies: a steered prefill makes the stored KV, or the plain KV is steered at decode", choices=STEER_AT)
    layers: tuple[int, ...] | str | None = option(AUTO_LAYERS, "layers", "steered layers: e.g. 8,9,10, all, a band first-third|middle-third|last-third, "
                                                                            "or auto (the method's default band)", cli_parse=_layers)
    heads: tuple[int, ...] | None = option(None, "ints", "steered query heads within those layers (default all)", cli_parse=_ints)
    profile: tuple[tuple[int, int], ...] = option((), "pairs", "steered [layer, head] pairs (replace layers/heads)", flag="", http=False)
    prefixes: tuple[str, str] = option(DEFAULT_PREFIXES, "strings", "an instruction prefix (give it twice; default: LLMSteer's two)", count=2, flag="--prefix",
                                       must="two non-empty strings (LLMSteer prefills the context behind each)", cli_parse=_prefixes)
    window: int = option(0, "int", "count only the last N context tokens' attention (0 = all)", ge=0,
                         must="a non-negative integer (0 = every query row)")
    keep: float = option(1.0, "number", "store only this share (0-1] or count of the context's tokens' KV, the most important by dual-prefix attention "
                                        "(default 1: all)", gt=0, must="a ratio in (0, 1] of the context or a token count >= 2", per_query=True,
                         cli_parse=_keep, json_ints=True)
    keep_sinks: int = option(4, "int", "--keep: first context tokens always kept", ge=0, per_query=True)
    keep_recent: int = option(0, "int", "--keep: last context tokens always kept", ge=0, per_query=True)
    keep_unit: str = option("token", "choice", "--keep: keep single tokens, or whole sentences / documents (auto: documents of a multi-document input, "
                                               "else sentences)", choices=("token", *UNITS), per_query=True)
    options: MethodOptions | None = None  # the method's own settings (None: its defaults)

    def __init__(self, **values: Any) -> None:
        common = {f.name: f for f in dataclasses.fields(self) if f.name != "options"}
        for name, f in common.items():
            object.__setattr__(self, name, values.pop(name, f.default))
        object.__setattr__(self, "options", _method_options(self.method, values.pop("options", None), values))
        self.__post_init__()

    def __post_init__(self) -> None:
        if self.method not in method_names():
            raise ValueError(f"method must be one of {method_names()}, got {self.method!r}")
        check_options(self)
        if self.keep > 1 and self.keep != int(self.keep):
            raise ValueError(f"keep above 1 is a token count and must be a whole number, got {self.keep!r}")
        self.options.check(self, self.method)

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The flat form: the shared settings, then the method's options."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "options"}
        return {**data, **self.options.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SteerConfig:
        """The flat form (or ``options`` nested as a dict); fields of other methods only at their defaults."""
        if not isinstance(data, Mapping):
            raise ValueError(f"SteerConfig: expected an object, got {type(data).__name__}")
        return cls(**data)

    def merged(self, overrides: Mapping[str, Any], presets: Mapping[str, Any] | None = None) -> SteerConfig:
        """This config with ``overrides`` (flat fields; a ``method`` switches methods). Fields of
        this config, then of ``presets`` (flat defaults for any method, e.g. ``steerc serve``'s
        flags), that the resulting method lacks are dropped; an override it lacks is refused
        unless it holds that option's default."""
        method = overrides.get("method", self.method)
        accepted = accepted_fields(method)
        base = {**(presets or {}), **self.to_dict()}
        return SteerConfig(**{**{k: v for k, v in base.items() if k in accepted}, **overrides})

    def with_method(self, method: str, presets: Mapping[str, Any] | None = None, **overrides: Any) -> SteerConfig:
        """The same shared settings (and the options both methods have) for ``method``."""
        return self.merged({**overrides, "method": method}, presets)

    # -- derived ---------------------------------------------------------------------------------
    @property
    def band(self) -> str | None:
        """The named layer band steered (``auto`` resolved to the method's default), or None."""
        if self.layers == AUTO_LAYERS:
            return self.options.default_layers
        return self.layers if isinstance(self.layers, str) else None

    def steered_pairs(self, num_layers: int, num_heads: int) -> list[tuple[int, int]]:
        """The (layer, head) pairs the bias applies to; raises on indices beyond the engine."""
        if self.profile:
            pairs = list(self.profile)
        else:
            layers = range(num_layers) if self.layers is None else band_layers(self.band, num_layers) if isinstance(self.layers, str) else self.layers
            heads = self.heads if self.heads is not None else range(num_heads)
            pairs = [(layer, head) for layer in layers for head in heads]
        bad = [p for p in pairs if p[0] >= num_layers or p[1] >= num_heads]
        if bad:
            raise ValueError(f"steered layer/head {bad[0]} is outside the engine ({num_layers} layers x {num_heads} heads)")
        return pairs

    def query_fields(self) -> tuple[str, ...]:
        """Fields only query-time work reads (never part of a stored entry's key)."""
        shared = tuple(f.name for f in dataclasses.fields(self) if option_of(f) is not None and option_of(f).per_query)
        return shared + self.options.per_query()

    @property
    def compacts(self) -> bool:
        """Whether the stored context keeps only some context tokens' KV."""
        return self.keep != 1


def common_fields() -> tuple[str, ...]:
    """The settings every method shares (``options`` aside)."""
    return tuple(f.name for f in dataclasses.fields(SteerConfig) if f.name != "options")


def accepted_fields(method: str) -> frozenset[str]:
    """The flat names a config of ``method`` holds."""
    return frozenset(common_fields()) | frozenset(options_class(method).names()) if method in method_names() else frozenset(common_fields())


def option_owners(name: str) -> list[str]:
    """The registered methods whose options have a field called ``name``."""
    return [m for m in method_names() if name in options_class(m).names()]


def _method_options(method: str, given: Any, flat: dict[str, Any]) -> MethodOptions:
    """``method``'s options from ``given`` (an instance, a dict or None) and flat fields; a field
    its options lack is refused unless it holds its owner's default (see :func:`_refuse_foreign`)."""
    if method not in method_names():
        raise ValueError(f"method must be one of {method_names()}, got {method!r}")
    cls = options_class(method)
    clash = set(cls.names()) & set(common_fields())
    if clash:
        raise ValueError(f"method {method!r} declares options named like shared settings ({', '.join(sorted(clash))}); rename them")
    if given is None:
        values: dict[str, Any] = {}
    elif isinstance(given, Mapping):
        values = dict(given)
    elif isinstance(given, MethodOptions):  # another method's (dataclasses.replace(config, method=...)): the fields both have carry over
        values = given.to_dict()
    else:
        raise ValueError(f"options must be {cls.__name__}, a dict or null, got {type(given).__name__}")
    values.update(flat)
    own = cls.names()
    for name, value in values.items():
        if name not in own:
            _refuse_foreign(name, value, method)
    return cls(**{k: v for k, v in values.items() if k in own})


# Options whose default changed since configs were written flat: (name, the earlier default). Such
# a config of another method carries the earlier default, which is accepted like today's.
_EARLIER_DEFAULTS = {("rank_by", "attention")}  # query's ranking before fused became its default


def _refuse_foreign(name: str, value: Any, method: str) -> None:
    """Accept another method's option in a ``method`` config only at its default, today's or an
    earlier one (configs written when one flat config held every option carry them all); checked
    against the owner's limits first, so a bad value gets the owner's message."""
    owners = option_owners(name)
    if not owners:
        known = sorted(set(common_fields()) | set(options_class(method).names()))
        raise ValueError(f"SteerConfig: unknown field {name!r} for method {method!r}; its fields are {known}")
    owner = options_class(owners[0])
    if getattr(owner(**{name: value}), name) != getattr(owner(), name) and not any(name == n and value == v for n, v in _EARLIER_DEFAULTS):
        raise ValueError(f"{name} is an option of method {' and '.join(repr(m) for m in owners)}, not of {method!r} "
                         f"(got {value!r}; leave it out or choose that method)")
