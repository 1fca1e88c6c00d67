"""Admission control and the request body limit (API keys: :mod:`steerc.server.tenants`)."""

from __future__ import annotations

import asyncio
import json
import time

from steerc.server.errors import ApiError
from steerc.user_files import utf8_problem

__all__ = ["Admission", "BodyLimit"]


class Admission:
    """At most ``max_active`` jobs run; up to ``max_queue`` more wait (FIFO); the next is refused
    with 429. A slot is released when its job's thread finishes, not when the client leaves,
    so the count is the engine's real load."""

    def __init__(self, max_active: int, max_queue: int) -> None:
        self.max_active, self.max_queue = max_active, max_queue
        self.active = self.waiting = 0
        self._slots = asyncio.Semaphore(max_active)

    async def acquire(self, deadline: float) -> None:
        if self.active + self.waiting >= self.max_active + self.max_queue:
            raise ApiError(429, f"the server is at capacity ({self.active} running, {self.waiting} queued; limits --max-concurrency "
                                f"{self.max_active}, --max-queue {self.max_queue}); retry later", "rate_limit_error", code="queue_full",
                           headers={"Retry-After": "1"})
        self.waiting += 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a slot acquired just as it is cancelled
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.001)):
                await self._slots.acquire()
        except TimeoutError:
            raise ApiError(504, "the request timed out waiting in the queue (steerc serve --request-timeout)", "timeout_error", code="timeout") from None
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        self.active -= 1
        self._slots.release()


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` gets 413 before any handler sees it. The body
    is read here (it is at most ``max_bytes``), refused with 400 unless it is UTF-8 text, and
    replayed to the app; later ``receive`` calls (disconnect detection) go to the server as usual."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._refuse(send, self._too_large())
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client left before sending its body
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await self._refuse(send, self._too_large())
            more = message.get("more_body", False)
        body, replayed = b"".join(chunks), False
        if (problem := utf8_problem(body)) is not None:  # read as the CLI reads a file (steerc/user_files.py), not guessed as UTF-16/32
            return await self._refuse(send, ApiError(400, f"the request body is not UTF-8 ({problem}); send JSON encoded as UTF-8"))

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> ApiError:
        return ApiError(413, f"the request body is larger than the server's limit of {self.max_bytes} bytes (steerc serve --max-body-bytes)",
                        code="request_too_large")

    @staticmethod
    async def _refuse(send, error: ApiError) -> None:
        payload = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status, "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                                                              (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
