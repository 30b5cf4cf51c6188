"""BentoML 1.4's request timeout and concurrency limit, fixed: no retention, the contract's error body.

BentoML's ``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` per request and
never cancels it. The timer handle holds a copy of the request's context (its tracing span
and what hangs off it) until the timeout passes, so live objects grow as request rate x
timeout (~1,000 req/s x 60 s here) and every full garbage collection walks them all: event
loop pauses of 50 ms growing to several hundred ms, a p99 of 100+ ms at one connection where
the p50 is 1 ms (docs/benchmarks.md). This one behaves the same toward clients (504 when no
response has started within the timeout) but schedules its timer in an empty context and
cancels it when the response starts or the request ends.

BentoML's concurrency limit answers 429 with ``{"error": "Too many requests"}``, outside the
contract's ``{"error", "detail"}`` form; ``ConcurrencyLimit`` keeps its semaphore and answers in
that form.

``install()`` puts both in place of BentoML's before the worker builds its ASGI app (BentoML
looks the classes up when it assembles the middleware stack); the dependency pin
(``bentoml>=1.4,<1.5``) keeps that lookup where this expects it, and a test checks it.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Awaitable, Callable

from bentoml._internal.server.http.traffic import MaxConcurrencyMiddleware
from starlette.responses import JSONResponse

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(asyncio.TimeoutError())


class TimeoutMiddleware:
    """504 when a request has not started its response within ``timeout`` seconds."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], timeout: float) -> None:
        self.app = app
        self.timeout = timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        # An empty context: the timer needs none, and a copy of the request's would live as long as the timer.
        timer = loop.call_later(self.timeout, _expire, waiter, context=contextvars.Context())

        async def started(message: dict[str, Any]) -> None:
            if not waiter.done():
                waiter.set_result(None)
                timer.cancel()
            await send(message)

        task = asyncio.ensure_future(self.app(scope, receive, started))
        try:
            try:
                await asyncio.wait((waiter, task), return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:  # the server is cancelling this request: take the app's work with it
                task.cancel()
                raise
            if waiter.done() and waiter.exception() is not None and task.cancel():
                response = JSONResponse({"error": "timeout", "detail": f"the request did not finish within "
                                         f"{self.timeout:g} s (BIOMED_REQUEST_TIMEOUT_S)"}, status_code=504)
                await response(scope, receive, send)
                return
            await task  # the response has started (or the app finished): let it complete, or raise its error
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()


class ConcurrencyLimit(MaxConcurrencyMiddleware):
    """BentoML's ``traffic.max_concurrency`` semaphore, refusing with the contract's 429 body."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_concurrency: int,
                 skip_paths: list[str] | None = None) -> None:
        super().__init__(app, max_concurrency, skip_paths)
        self.max_concurrency = max_concurrency

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope["path"] not in self.skip_paths and self._semaphore.locked():
            response = JSONResponse({"error": "too_many_requests", "detail": f"{self.max_concurrency} requests are in "
                                     "flight in this worker (BIOMED_MAX_CONCURRENCY); retry shortly"}, status_code=429)
            await response(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def install() -> None:
    """Make BentoML's service app use these for ``traffic.timeout`` and ``traffic.max_concurrency``."""
    from bentoml._internal.server.http import traffic

    traffic.TimeoutMiddleware = TimeoutMiddleware  # type: ignore[misc]
    traffic.MaxConcurrencyMiddleware = ConcurrencyLimit  # type: ignore[misc]
