"""Text in, text out: chat template, left-padded batches, stop strings, streaming, timings."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from steerc.errors import SteercError
from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, SamplingParams, generate
from steerc.runtime.steer_bias import SteerBias

__all__ = ["Completion", "Detokenizer", "StreamRun", "TextStream", "chat_ids", "encode_prompts", "complete", "stream_steps"]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    prompt_tokens: int
    finish_reason: str  # "stop" (EOS or stop string) | "length"
    prefill_s: float = 0.0
    decode_s: float = 0.0
    batch_prompt_tokens: int = 0  # all rows' prompt tokens, for throughput

    @property
    def prefill_tokens_per_s(self) -> float:
        return (self.batch_prompt_tokens or self.prompt_tokens) / self.prefill_s if self.prefill_s else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        steps = max(len(self.token_ids) - 1, 0)
        return steps / self.decode_s if self.decode_s else 0.0


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The token ids of ``messages`` ([{"role", "content"}]) in the chat template, ready for the reply."""
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def _tokenize(engine: Engine, prompt: str, chat: bool) -> list[int]:
    tok = engine.tokenizer
    if tok is None:
        raise SteercError(f"engine {engine.folder} has no tokenizer; pass token ids to steerc.runtime.generate instead")
    if chat and getattr(tok, "chat_template", None):
        return chat_ids(tok, [{"role": "user", "content": prompt}])
    return list(tok(prompt)["input_ids"])


def encode_prompts(engine: Engine, prompts: list[str], chat: bool = True) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Left-padded ``input_ids [B, S]``, ``attention_mask [B, S]`` and each prompt's length.
    Refuses a prompt longer than the engine allows before any engine work."""
    rows = [_tokenize(engine, p, chat) for p in prompts]
    for i, ids in enumerate(rows):
        engine.check_length(len(ids) + 1, f"prompt {i + 1} ({len(ids)} tokens, plus one to generate)")
    width = max(len(r) for r in rows)
    pad = engine.tokenizer.pad_token_id
    pad = pad if pad is not None else next(iter(engine.eos_token_ids), 0)
    ids = np.full((len(rows), width), pad, np.int64)
    mask = np.zeros((len(rows), width), np.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = r
        mask[i, width - len(r) :] = 1
    return ids, mask, [len(r) for r in rows]


def _cut_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    hits = [text.index(s) for s in stops if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


class TextStream:
    """Iterate to receive text deltas for one prompt; ``completion`` holds the result after.

    Text that could still become a stop string is held back until it cannot."""

    def __init__(self, engine: Engine, prompt: str | None = None, *, prompt_ids: list[int] | np.ndarray | None = None, max_new_tokens: int = 128,
                 sampling: SamplingParams = SamplingParams(), steering: SteerBias | None = None, stop: tuple[str, ...] = (), chat: bool = True,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK, progress=None, generate_fn=generate):
        """``prompt`` is text (the chat template applied unless ``chat=False``); ``prompt_ids``,
        instead, is a prompt the caller tokenized (a templated conversation, say).
        ``generate_fn``: what generates the tokens, :func:`~steerc.runtime.generate.generate` or
        one of its signature (the server's shared decode batch)."""
        if (prompt is None) == (prompt_ids is None):
            raise ValueError("give exactly one of prompt (text) or prompt_ids (token ids)")
        self.engine, self.prompt, self.max_new_tokens, self.sampling, self.steering = engine, prompt, max_new_tokens, sampling, steering
        self.stop, self.chat = tuple(s for s in stop if s), chat
        self.prefill_chunk, self.progress = prefill_chunk, progress  # progress(done, total) after each prefill chunk
        self.generate_fn = generate_fn
        if prompt_ids is None:
            self.ids, self.mask, self.lengths = encode_prompts(engine, [prompt], chat)  # refuses before any work
        else:
            ids = np.asarray(prompt_ids, np.int64)[None]  # [1, S]
            engine.check_length(ids.shape[1] + 1, f"the prompt ({ids.shape[1]} tokens, plus one to generate)")
            self.ids, self.mask, self.lengths = ids, np.ones_like(ids), [ids.shape[1]]
        self.completion: Completion | None = None

    def __iter__(self) -> Iterator[str]:
        text, run = Detokenizer(self.engine.tokenizer, self.stop), StreamRun()
        start = time.perf_counter()
        steps = self.generate_fn(self.engine, self.ids, self.mask, max_new_tokens=self.max_new_tokens, sampling=self.sampling, steering=self.steering,
                         prefill_chunk=self.prefill_chunk, progress=self.progress)
        yield from stream_steps(self.engine, steps, text, run)
        self.completion = Completion(text.text, text.tokens, self.lengths[0], run.finish, prefill_s=run.first - start, decode_s=run.end - run.first)


@dataclass
class StreamRun:
    """How a streamed generation ended: finish reason, first-token and end times."""

    finish: str = "length"
    first: float = 0.0
    end: float = 0.0


def stream_steps(engine: Engine, steps, text: "Detokenizer", run: StreamRun) -> Iterator[str]:
    """Yield the text deltas of row 0 of ``steps`` (an iterator of ``[B]`` tokens) until EOS or
    a stop string; ``run`` records the finish reason and the times."""
    for step in steps:
        run.first = run.first or time.perf_counter()
        token = int(step[0])
        if token in engine.eos_token_ids:
            run.finish = "stop"
            break
        if delta := text.push(token):
            yield delta
        if text.stopped:
            run.finish = "stop"
            break
    run.end = time.perf_counter()
    if delta := text.flush():
        yield delta
    run.first = run.first or run.end

class Detokenizer:
    """Incremental detokenization: ``push`` a token, get the text that is safe to show. Text
    that could still become a stop string, or an incomplete UTF-8 character, is held back."""

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer, self.stop = tokenizer, tuple(s for s in stop if s)
        self.hold = max((len(s) for s in self.stop), default=1) - 1
        self.tokens: list[int] = []
        self.emitted = ""
        self.stopped = False

    @property
    def text(self) -> str:
        return _cut_at_stop(self.tokenizer.decode(self.tokens, skip_special_tokens=True), self.stop)[0]

    def push(self, token: int) -> str:
        self.tokens.append(token)
        text, self.stopped = _cut_at_stop(self.tokenizer.decode(self.tokens, skip_special_tokens=True), self.stop)
        safe = text if self.stopped else text[: max(len(self.emitted), len(text) - self.hold)]
        if len(safe) <= len(self.emitted) or safe.endswith("\ufffd"):
            return ""
        delta, self.emitted = safe[len(self.emitted) :], safe
        return delta

    def flush(self) -> str:
        text = self.text
        delta = text[len(self.emitted) :] if len(text) > len(self.emitted) else ""
        self.emitted = max(text, self.emitted, key=len)
        return delta


def complete(engine: Engine, prompts: list[str], *, max_new_tokens: int = 128, sampling: SamplingParams = SamplingParams(),
             steering: SteerBias | None = None, stop: tuple[str, ...] = (), chat: bool = True) -> list[Completion]:
    """Generate for a batch of prompts at once (left-padded); one Completion per prompt."""
    ids, mask, lengths = encode_prompts(engine, prompts, chat)
    B = len(prompts)
    tokens: list[list[int]] = [[] for _ in range(B)]
    finish = ["length"] * B
    done = np.zeros(B, bool)
    stops = tuple(s for s in stop if s)
    start = time.perf_counter()
    first = None
    for step in generate(engine, ids, mask, max_new_tokens=max_new_tokens, sampling=sampling, steering=steering):
        first = first or time.perf_counter()
        for i, token in enumerate(step.tolist()):
            if done[i]:
                continue
            if token in engine.eos_token_ids:
                done[i], finish[i] = True, "stop"
                continue
            tokens[i].append(token)
            if stops and _cut_at_stop(engine.tokenizer.decode(tokens[i], skip_special_tokens=True), stops)[1]:
                done[i], finish[i] = True, "stop"
        if done.all():
            break
    end = time.perf_counter()
    first = first or end
    out = []
    for i in range(B):
        text, _ = _cut_at_stop(engine.tokenizer.decode(tokens[i], skip_special_tokens=True), stops)
        out.append(Completion(text, tokens[i], lengths[i], finish[i], prefill_s=first - start, decode_s=end - first, batch_prompt_tokens=int(mask.sum())))
    return out
