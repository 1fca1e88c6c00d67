"""OpenAI response shapes (completion, chat completion, their stream chunks) and SSE framing."""

from __future__ import annotations

import json
import time

from starlette.responses import StreamingResponse

__all__ = ["Reply", "EventStream", "sse", "steer_summary"]


def sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"


class EventStream(StreamingResponse):
    """Server-sent events; ``on_close`` runs however the response ends (client gone included),
    after the event generator is closed (a send that fails leaves it suspended otherwise)."""

    def __init__(self, content, on_close) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                self.on_close()


def steer_summary(generations: list) -> dict | None:
    """The request's steering statistics: the first prompt's (the one that may prepare the
    context), with prefill tokens and preparation time summed over its prompts."""
    steered = [g.steer for g in generations if g.steer is not None]
    if not steered:
        return None
    out = dict(steered[0])
    out["context_prefill_tokens"] = sum(s["context_prefill_tokens"] for s in steered)
    out["prepare_s"] = round(sum(s["prepare_s"] for s in steered), 4)
    return out


def _usage(generations: list) -> dict:
    prompt = sum(g.prompt_tokens for g in generations)
    completion = sum(g.completion_tokens for g in generations)
    cached = sum(g.cached_tokens for g in generations)  # OpenAI's field: prompt tokens served from the prefix cache
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class Reply:
    """Builds one request's response objects (``chat`` picks the chat shapes)."""

    def __init__(self, id: str, model: str, chat: bool) -> None:
        self.id, self.model, self.chat, self.created = id, model, chat, int(time.time())

    def _head(self, chunk: bool) -> dict:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}

    def _choice(self, index: int, text: str | None, finish: str | None, chunk: bool, role: bool = False) -> dict:
        if not self.chat:
            return {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            delta = {"role": "assistant", "content": ""} if role else ({"content": text} if text else {})
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": index, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}

    def full(self, generations: list) -> dict:
        out = {**self._head(False), "choices": [self._choice(i, g.text, g.finish_reason, False) for i, g in enumerate(generations)],
               "usage": _usage(generations)}
        steer = steer_summary(generations)
        if steer is not None:
            out["steer"] = steer
        return out

    def chunk(self, index: int, text: str = "", role: bool = False) -> dict:
        return {**self._head(True), "choices": [self._choice(index, text, None, True, role)]}

    def finish(self, index: int, generation, so_far: list | None) -> dict:
        """The chunk that ends choice ``index``; the last one carries the request's ``steer`` statistics."""
        out = {**self._head(True), "choices": [self._choice(index, "", generation.finish_reason, True)]}
        steer = steer_summary(so_far) if so_far else None
        if steer is not None:
            out["steer"] = steer
        return out

    def usage_chunk(self, generations: list) -> dict:
        return {**self._head(True), "choices": [], "usage": _usage(generations)}
