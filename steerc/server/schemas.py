"""Request bodies: the OpenAI wire format plus steerc's ``steer`` extension (pydantic, strict).

Types are strict (``"5"`` is not a number) and unknown fields are refused, so a typo is an
error rather than a silently ignored option. OpenAI fields steerc cannot honour (``n > 1``,
``logprobs``, penalties, ``echo``...) are accepted only at their neutral value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from steerc.steering.config import BLOCK_MASKS, METHODS, RANK_BY, RETRIEVE_FOR, UNITS

__all__ = ["SteerOptions", "SteerRequest", "ContextRequest", "CompletionRequest", "ChatMessage", "ChatCompletionRequest"]

Layers = list[Annotated[int, Field(ge=0)]] | Literal["auto", "all", "first-third", "middle-third", "last-third"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class SteerOptions(_Strict):
    """How a context is steered; anything left out takes the registered (or default) value."""

    method: Literal[METHODS] | None = None
    alpha: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[float, Field(gt=0)] | None = None
    steer_at: Literal["prefill", "decode", "both"] | None = None
    layers: Layers | None = None
    heads: list[Annotated[int, Field(ge=0)]] | None = None
    highlights: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]] | None = None
    window: Annotated[int, Field(ge=0)] | None = None
    prefixes: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=2, max_length=2)] | None = None
    evidence: Annotated[int, Field(ge=1)] | None = None
    unit: Literal[UNITS] | None = None
    selector: list[Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=2, max_length=2)]] | None = None
    rank_by: Literal[RANK_BY] | None = None
    target_share: Annotated[float, Field(ge=0, lt=1)] | None = None
    min_share: Annotated[float, Field(ge=0, lt=1)] | None = None
    blocks: Annotated[int, Field(ge=1)] | None = None
    block_size: Annotated[int, Field(ge=4)] | None = None
    initial: Annotated[int, Field(ge=0)] | None = None
    local: Annotated[int, Field(ge=0)] | None = None
    block_mask: Literal[BLOCK_MASKS] | None = None
    retrieve_for: Literal[RETRIEVE_FOR] | None = None
    keep: Annotated[float, Field(gt=0)] | Annotated[int, Field(ge=1)] | None = None  # a ratio in (0, 1] or a token count
    keep_sinks: Annotated[int, Field(ge=0)] | None = None
    keep_recent: Annotated[int, Field(ge=0)] | None = None
    keep_unit: Literal["token", *UNITS] | None = None

    def overrides(self) -> dict:
        return self.model_dump(exclude_none=True)


class SteerRequest(SteerOptions):
    """``steer`` on a completion: a context inline (``context``) or registered (``context_id``)."""

    context: Annotated[str, Field(min_length=1)] | None = None
    context_id: Annotated[str, Field(min_length=1, max_length=100)] | None = None

    @model_validator(mode="after")
    def _one_source(self):
        if (self.context is None) == (self.context_id is None):
            raise ValueError("give exactly one of steer.context (the text) or steer.context_id (from POST /v1/contexts)")
        return self

    def overrides(self) -> dict:
        return {k: v for k, v in super().overrides().items() if k not in ("context", "context_id")}


class ContextRequest(SteerOptions):
    """``POST /v1/contexts``: prepare (and store) a steered context once."""

    model: str | None = None
    context: Annotated[str, Field(min_length=1)]

    def overrides(self) -> dict:
        return {k: v for k, v in super().overrides().items() if k not in ("context", "model")}


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
