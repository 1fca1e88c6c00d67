"""Continuous batching for the server: every running generation shares one decode step.

A request's worker thread does its own prefill (context preparation, the question or prompt,
in chunks of ``--prefill-chunk`` tokens), then hands its row to the :class:`Batcher`, whose
thread runs one batched engine call per step over every running row
(:class:`~steerc.runtime.decode_batch.DecodeBatch`) and sends each row its tokens. A row
joins at the next step boundary and leaves as soon as it is finished, its client left, or
its deadline passed; the others go on.

Engine calls take turns through a :class:`FairLock` set as the engine's ``gate``: a prefill
chunk of a joining request and a decode step of the running rows alternate, so a long
prompt delays the running rows by one chunk at a time instead of its whole prefill.

:meth:`Batcher.generate` has the signature of :func:`steerc.runtime.generate.generate` for
one row, so the text and steering layers (:class:`~steerc.runtime.text.TextStream`,
:class:`~steerc.steering.answer.Steerer`) run unchanged on top of it.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from steerc.runtime.decode_batch import BatchRow, DecodeBatch
from steerc.runtime.engine import Engine
from steerc.runtime.generate import DEFAULT_PREFILL_CHUNK, SamplingParams, generate, prefill_prompt
from steerc.runtime.kv_cache import KVCache
from steerc.runtime.steer_bias import SteerBias

__all__ = ["Batcher", "FairLock"]

log = logging.getLogger(__name__)

_WAKE_S = 0.5  # a row waiting for its next token checks its job this often


class FairLock:
    """A first-come, first-served lock: a thread that releases and asks again goes behind
    every thread already waiting (``threading.Lock`` makes no such promise)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._waiting: collections.deque = collections.deque()
        self._held = False

    def __enter__(self):
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            self._cond.wait_for(lambda: not self._held and self._waiting[0] is ticket)
            self._waiting.popleft()
            self._held = True
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


class _Done:
    """What a row's queue ends with: a finish reason or the step's failure."""

    def __init__(self, reason: str, error: BaseException | None = None) -> None:
        self.reason, self.error = reason, error


class Batcher:
    """Runs the decode steps of up to ``max_batch`` rows (at most the engine's ``max_batch``)
    on one thread. ``on_step(rows)`` is called after every step with the rows it ran."""

    def __init__(self, engine: Engine, max_batch: int, on_step: Callable[[int], None] = lambda rows: None) -> None:
        self.engine = engine
        self.batch = DecodeBatch(engine, max_batch)
        self.max_batch = self.batch.max_rows
        if self.max_batch < max_batch:
            log.warning("--max-batch %d is more than engine %s was compiled for; decoding at most %d rows per step (recompile with a larger --max-batch)",
                        max_batch, engine.folder, self.max_batch)
        self.on_step = on_step
        self._pending: collections.deque[BatchRow] = collections.deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        if not isinstance(engine.gate, FairLock):
            engine.gate = FairLock()  # prefill chunks and decode steps take turns

    @property
    def running(self) -> int:
        """Rows decoding now."""
        return len(self.batch.rows)

    @property
    def waiting(self) -> int:
        """Rows prefilled and waiting for room in the batch."""
        return len(self._pending)

    def start(self) -> None:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="steerc-decode", daemon=True)
                self._thread.start()

    def stop(self) -> None:
        """Stop the loop; every row still running or waiting is finished as cancelled."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._stopped or self._pending or self.batch.rows)
                if self._stopped:
                    break
                while self._pending and self.batch.free:
                    row = self._pending.popleft()
                    try:
                        self.batch.add(row)
                    except Exception as exc:  # noqa: BLE001 - this row fails alone
                        row.fail(exc)
            rows = self.batch.step()
            if rows:
                self.on_step(rows)
        for row in [*self.batch.rows, *self._pending]:
            row.finish("cancelled")
        self.batch.remove(list(self.batch.rows))
        self._pending.clear()

    def submit(self, row: BatchRow) -> None:
        """Queue ``row`` to join at the next step boundary (when the batch has room)."""
        with self._cond:
            if self._stopped:
                raise RuntimeError("the server is stopping")
            self._pending.append(row)
            self._cond.notify_all()
        self.start()

    def _withdraw(self, row: BatchRow) -> None:
        """A row that never joined leaves the queue; one that joined leaves at the next step."""
        row.cancelled = True
        with self._cond:
            try:
                self._pending.remove(row)
            except ValueError:
                pass

    def generate(self, engine: Engine, input_ids: np.ndarray, attention_mask: np.ndarray | None = None, *, max_new_tokens: int = 128,
                 sampling: SamplingParams = SamplingParams(), steering: SteerBias | None = None, stop_token_ids: set[int] | None = None,
                 cache: KVCache | None = None, prefill_chunk: int = DEFAULT_PREFILL_CHUNK, progress: Callable[[int, int], None] | None = None,
                 position_offset: int = 0, prefilled: tuple[np.ndarray, KVCache] | None = None,
                 check: Callable[[], None] = lambda: None) -> Iterator[np.ndarray]:
        """:func:`steerc.runtime.generate.generate` for one row, decoded in the shared batch:
        the prefill runs here (on the caller's thread), the decode steps on the batcher's.
        ``check()`` runs while the row waits for tokens (a cancelled or timed-out job raises
        there). A batch of several rows, or another engine, runs :func:`generate` as is."""
        input_ids = np.asarray(input_ids, np.int64)
        if engine is not self.engine or input_ids.shape[0] != 1:
            yield from generate(engine, input_ids, attention_mask, max_new_tokens=max_new_tokens, sampling=sampling, steering=steering,
                                stop_token_ids=stop_token_ids, cache=cache, prefill_chunk=prefill_chunk, progress=progress,
                                position_offset=position_offset, prefilled=prefilled)
            return
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if attention_mask is not None and not np.all(np.asarray(attention_mask)):
            raise ValueError("a batched row takes an unpadded prompt (attention_mask all ones)")
        logits, cache, _ = prefill_prompt(engine, input_ids, attention_mask, cache, steering, prefill_chunk=prefill_chunk, progress=progress,
                                          position_offset=position_offset, prefilled=prefilled)
        tokens: queue.SimpleQueue = queue.SimpleQueue()
        row = BatchRow(logits[0], cache, emit=tokens.put, finish=lambda reason: tokens.put(_Done(reason)),
                       fail=lambda exc: tokens.put(_Done("error", exc)), max_new_tokens=max_new_tokens, sampling=sampling, steering=steering,
                       stop_token_ids=frozenset(stop_token_ids if stop_token_ids is not None else engine.eos_token_ids),
                       position_offset=position_offset)
        del cache, logits  # the row holds them until it joins
        self.submit(row)
        try:
            while True:
                try:
                    item = tokens.get(timeout=_WAKE_S)
                except queue.Empty:
                    check()
                    continue
                if isinstance(item, _Done):
                    if item.error is not None:
                        raise item.error
                    return
                yield np.array([item], np.int64)
        finally:
            self._withdraw(row)  # a consumer that stopped early (stop string, client gone) frees its row
