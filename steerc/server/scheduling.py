"""Admission and worker dispatch: a request becomes a :class:`Job` run on a generation thread.

:class:`Scheduler` admits a request (or refuses it with 429, or 504 once its deadline passes
in the queue: :class:`~steerc.server.limits.Admission`), runs its work on one of
``max_concurrency`` worker threads and frees the slot when that thread finishes. The worker
talks back through the job's asyncio queue (the items are listed in
:mod:`steerc.server.service`); a handler reads them with :meth:`Scheduler.next_item`, which
notices a client that went away within half a second and cancels its job.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from steerc.server.errors import ApiError, Cancelled, TimedOut, api_error
from steerc.server.limits import Admission
from steerc.server.metrics import Metrics

__all__ = ["Job", "Scheduler"]


class Job:
    """One request: its deadline, its cancel flag and the queue its worker feeds."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float, arrival: float) -> None:
        self.loop, self.deadline, self.arrival = loop, deadline, arrival
        self.queue: asyncio.Queue = asyncio.Queue()
        self.cancel = threading.Event()
        self.checked = arrival  # when the handler last asked whether the client is still there

    def emit(self, *item) -> None:
        self.loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled()
        if time.monotonic() > self.deadline:
            raise TimedOut()

    def run(self, work) -> None:
        """Worker thread body: ``work(job)`` then ``("end",)``; a failure is sent as ``("error", exc)``."""
        try:
            work(self)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the handler
            self.emit("error", exc)
        finally:
            self.emit("end")


class Scheduler:
    """Admits jobs and runs them on one worker thread per generation slot
    (``admission.max_active`` threads); ``timeout_s`` bounds a job from arrival to its end."""

    def __init__(self, admission: Admission, metrics: Metrics, timeout_s: float) -> None:
        self.admission, self.metrics, self.timeout_s = admission, metrics, timeout_s
        self.executor = ThreadPoolExecutor(admission.max_active, thread_name_prefix="steerc-gen")
        self.jobs: set[Job] = set()

    async def start(self, work) -> Job:
        """Wait for a slot (429 when the queue is full, 504 past the deadline), then run
        ``work(job)`` on a worker thread; the slot is freed when that thread finishes."""
        arrival = time.monotonic()
        deadline = arrival + self.timeout_s
        await self.admission.acquire(deadline)
        job = Job(asyncio.get_running_loop(), deadline, arrival)
        self.jobs.add(job)

        def finished(_):
            self.jobs.discard(job)
            self.admission.release()

        asyncio.get_running_loop().run_in_executor(self.executor, job.run, work).add_done_callback(finished)
        return job

    async def next_item(self, job: Job, request):
        """The worker's next item; a client that left (``request.is_disconnected()``, checked
        every half second, busy or not) cancels the job."""
        while True:
            if time.monotonic() - job.checked > 0.5:
                job.checked = time.monotonic()
                if await request.is_disconnected():
                    self.cancel(job, "disconnect")
                    raise Cancelled()
            try:
                return await asyncio.wait_for(job.queue.get(), 0.5)
            except TimeoutError:
                continue

    def cancel(self, job: Job, reason: str) -> None:
        """Stop ``job`` at its next token, counted under ``reason`` (``disconnect``)."""
        job.cancel.set()
        self.metrics.cancelled.labels(reason).inc()

    def failure(self, exc: BaseException) -> ApiError:
        """The ApiError a job's failure is answered with (a timeout is counted as a cancellation)."""
        if isinstance(exc, TimedOut):
            self.metrics.cancelled.labels("timeout").inc()
        return api_error(exc, self.timeout_s)

    def shutdown(self) -> None:
        """The server is stopping: every generation stops at its next token, queued work is dropped."""
        for job in list(self.jobs):
            job.cancel.set()
        self.executor.shutdown(wait=False, cancel_futures=True)
