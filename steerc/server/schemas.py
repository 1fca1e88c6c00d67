"""Request bodies: the OpenAI wire format plus steerc's ``steer`` extension (pydantic, strict).

Types are strict (``"5"`` is not a number) and unknown fields are refused, so a typo is an
error rather than a silently ignored option. OpenAI fields steerc cannot honour (``n > 1``,
``logprobs``, penalties, ``echo``...) are accepted only at their neutral value.

The ``steer`` fields are made from the declared steering fields (SteerConfig's and every
registered method's options: :mod:`steerc.steering.options`), so their names and limits are the
CLI's. :func:`request_models` makes them anew for each app (``create_app``), so a method
registered before the app is built is in its schema; the module-level classes are those of the
methods registered at import.
"""

from __future__ import annotations

import functools
import typing
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

__all__ = ["SteerOptions", "SteerRequest", "ContextRequest", "DocumentRequest", "MAX_DOCUMENTS", "CompletionRequest", "ChatMessage", "ChatCompletionRequest", "RequestModels",
           "request_models", "steer_options_model"]


class _Strict(BaseModel):
    """Strict types (no strings for numbers, no numbers for strings), unknown fields refused, and
    one allowance JSON Schema makes: an integer field takes a float with no fraction (``3.0``), as
    the published schema's ``integer`` does."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _integral_floats(cls, data):
        if not isinstance(data, dict):
            return data
        ints, bools = _int_fields(cls), _bool_fields(cls)
        for k, v in data.items():  # Python's True == 1 and 0 == False: a Literal would take either for the other
            if isinstance(v, bool) and k not in bools and k in _fields(cls):
                raise ValueError(f"{k}: expected a number or string, got {v!r}")
            if k in bools and not isinstance(v, bool) and v is not None and _leaves(cls.model_fields[k].annotation) <= {bool, type(None)}:
                raise ValueError(f"{k}: expected true or false, got {v!r}")
        return {k: _intify(v) if k in ints else v for k, v in data.items()}


def _leaves(annotation) -> set:
    """The plain types an annotation is made of (through Annotated, unions, lists and tuples)."""
    args = typing.get_args(annotation)
    if not args:
        return {annotation}
    if typing.get_origin(annotation) is Literal:
        return {type(a) for a in args}
    return set().union(*(_leaves(a) for a in args if a is not Ellipsis))


@functools.cache
def _int_fields(model: type) -> frozenset[str]:
    """The fields of ``model`` that hold integers (or lists of them) and no floats."""
    out = set()
    for name, field in model.model_fields.items():
        leaves = _leaves(field.annotation)
        if int in leaves and float not in leaves:
            out.add(field.alias or name)
    return frozenset(out)


@functools.cache
def _fields(model: type) -> frozenset[str]:
    return frozenset(field.alias or name for name, field in model.model_fields.items())


@functools.cache
def _bool_fields(model: type) -> frozenset[str]:
    """The fields of ``model`` that may hold a boolean."""
    return frozenset(field.alias or name for name, field in model.model_fields.items() if bool in _leaves(field.annotation))


def _intify(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_intify(v) for v in value]
    return value


def _annotation(spec) -> Any:
    """The JSON type of an option (:class:`steerc.steering.options.Option`), with its limits."""
    from steerc.steering.options import AUTO_LAYERS, LAYER_BANDS

    limits = {k: getattr(spec, k) for k in ("ge", "gt", "le", "lt") if getattr(spec, k) is not None}
    index = Annotated[int, Field(ge=0)]
    pair = Annotated[list[index], Field(min_length=2, max_length=2)]
    if spec.kind == "int":
        return Annotated[int, Field(**limits)]
    if spec.kind == "number":
        number = Annotated[float, Field(**limits)]
        return number | Annotated[int, Field(**limits)] if spec.json_ints else number  # json_ints: a count stays an integer
    if spec.kind == "choice":
        return Literal[spec.choices]
    if spec.kind == "ints":
        return list[index]
    if spec.kind == "layers":
        return list[index] | Literal[(AUTO_LAYERS, *LAYER_BANDS)]
    if spec.kind in ("pairs", "spans"):
        return list[pair]
    if spec.kind == "strings":
        return Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=spec.count, max_length=spec.count)]
    raise ValueError(f"option kind {spec.kind!r} has no JSON type")


class _SteerFields(_Strict):
    def overrides(self) -> dict:
        return self.model_dump(exclude_none=True)


def steer_options_model() -> type[_SteerFields]:
    """``SteerOptions``, made from the declared fields of SteerConfig and of every registered
    method's options (the same names and limits as the CLI flags), as registered now."""
    import dataclasses

    from steerc.steering.config import SteerConfig
    from steerc.steering.options import option_of, options_fields
    from steerc.steering.registry import method_names, options_class

    fields: dict[str, Any] = {"method": (Literal[method_names()] | None, Field(None, description="steering method"))}
    declared = [(f, option_of(f), None) for f in dataclasses.fields(SteerConfig) if option_of(f) is not None and f.name != "method"]
    declared += [(f, spec, method) for method in method_names() for f, spec in options_fields(options_class(method))]
    owners: dict[str, list[str]] = {}  # a method's own option -> the methods that have it (x-methods in the schema; shared settings have none)
    for f, spec, method in declared:
        if spec.http and method is not None:
            owners.setdefault(f.name, []).append(method)
    for f, spec, method in declared:
        if spec.http and f.name not in fields:
            extra = {"x-methods": owners[f.name]} if f.name in owners else None
            fields[f.name] = (_annotation(spec) | None, Field(None, description=spec.help, json_schema_extra=extra))
    model = create_model("SteerOptions", __base__=_SteerFields, __module__=__name__, **fields)
    model.__doc__ = "How a context is steered; anything left out takes the registered (or default) value."
    return model


MAX_DOCUMENTS = 64  # documents one request may assemble


def _document_option(name: str):
    """The JSON type and help of a :class:`~steerc.steering.documents.DocumentOptions` field (declared once there)."""
    import dataclasses

    from steerc.steering.documents.options import DocumentOptions
    from steerc.steering.options import option_of

    spec = option_of(next(f for f in dataclasses.fields(DocumentOptions) if f.name == name))
    return _annotation(spec) | None, Field(None, description=spec.help)


_RECOMPUTE = _document_option("recompute")
_RECOMPUTE_RULE = _document_option("recompute_rule")


class _SteerSource(_Strict):
    """``steer`` on a completion: a context inline (``context``), registered (``context_id``), or
    assembled from documents (``documents``: ids from POST /v1/documents or inline texts)."""

    context: Annotated[str, Field(min_length=1)] | None = None
    context_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    documents: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_DOCUMENTS,
                                                                          description="the context as documents, in order: ids from POST /v1/documents "
                                                                                      "('doc-' plus 64 hex characters) or inline texts; each one's KV is reused "
                                                                                      "from the store and the context assembled from them")] | None = None
    recompute: _RECOMPUTE[0] = _RECOMPUTE[1]
    recompute_rule: _RECOMPUTE_RULE[0] = _RECOMPUTE_RULE[1]

    @model_validator(mode="after")
    def _one_source(self):
        if sum(x is not None for x in (self.context, self.context_id, self.documents)) != 1:
            raise ValueError("give exactly one of steer.context (the text), steer.context_id (from POST /v1/contexts) or steer.documents (a list)")
        if (self.recompute is not None or self.recompute_rule is not None) and self.documents is None:
            raise ValueError("steer.recompute and steer.recompute_rule apply to steer.documents only")
        return self

    def overrides(self) -> dict:
        return {k: v for k, v in super().overrides().items() if k not in ("context", "context_id", "documents", "recompute", "recompute_rule")}


class DocumentRequest(_Strict):
    """``POST /v1/documents``: store a document's KV once, to assemble contexts from."""

    model: str | None = None
    document: Annotated[str, Field(min_length=1)]


MAX_TTL_S = 10 * 366 * 86400  # ten years: a longer TTL is a mistake, not a wish


class _ContextFields(_Strict):
    """``POST /v1/contexts``: prepare (and store) a steered context once."""

    model: str | None = None
    context: Annotated[str, Field(min_length=1)]
    pin: bool = False  # never evicted from a store with a budget (until DELETE, or ttl_s)
    ttl_s: Annotated[int, Field(ge=1, le=MAX_TTL_S)] | None = None  # the registration expires this many seconds after it is (re)registered

    def overrides(self) -> dict:
        return {k: v for k, v in super().overrides().items() if k not in ("context", "model", "pin", "ttl_s")}


def _steer_models(options: type[_SteerFields]) -> tuple[type, type]:
    steer = type("SteerRequest", (_SteerSource, options), {"__module__": __name__, "__doc__": _SteerSource.__doc__})
    context = type("ContextRequest", (_ContextFields, options), {"__module__": __name__, "__doc__": _ContextFields.__doc__})
    return steer, context


SteerOptions = steer_options_model()  # as registered at import; create_app makes its own (request_models)
SteerRequest, ContextRequest = _steer_models(SteerOptions)


Stop = Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(max_length=4)] | None


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: Stop = None
    seed: int | None = None
    presence_penalty: Literal[0, 0.0] = 0
    frequency_penalty: Literal[0, 0.0] = 0
    logit_bias: Annotated[dict, Field(max_length=0)] | None = None
    user: str | None = None
    steer: SteerRequest | None = None

    @property
    def stops(self) -> tuple[str, ...]:
        return () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class CompletionRequest(_Sampling):
    """``prompt`` is raw text; with ``steer`` it is the question asked over the context."""

    prompt: Annotated[str, Field(min_length=1)] | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=16)]
    max_tokens: Annotated[int, Field(ge=1)] | None = 16
    echo: Literal[False] = False
    logprobs: None = None
    best_of: Literal[1] | None = None
    suffix: None = None

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatCompletionRequest(_Sampling):
    """With ``steer``, ``messages`` is one user message: the question asked over the context."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: Literal[False] = False
    top_logprobs: None = None

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class RequestModels(NamedTuple):
    """The request bodies of one app, made when it is built (so registered methods are in them)."""

    steer_options: type
    steer: type
    context: type
    completion: type
    chat: type


def request_models() -> RequestModels:
    """Request bodies with the ``steer`` schema of the methods registered now."""
    options = steer_options_model()
    steer, context = _steer_models(options)
    completion = create_model("CompletionRequest", __base__=CompletionRequest, __module__=__name__, steer=(steer | None, None))
    chat = create_model("ChatCompletionRequest", __base__=ChatCompletionRequest, __module__=__name__, steer=(steer | None, None))
    return RequestModels(options, steer, context, completion, chat)
