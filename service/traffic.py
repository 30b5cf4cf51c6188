"""BentoML 1.4's request timeout, concurrency limit, request metrics and access log, fixed for us.

BentoML's ``TimeoutMiddleware`` schedules ``loop.call_later(timeout, ...)`` per request and
never cancels it. The timer handle holds a copy of the request's context (its tracing span
and what hangs off it) until the timeout passes, so live objects grow as request rate x
timeout (~1,000 req/s x 60 s here) and every full garbage collection walks them all: event
loop pauses of 50 ms growing to several hundred ms, a p99 of 100+ ms at one connection where
the p50 is 1 ms (docs/benchmarks.md). This one behaves the same toward clients (504 when no
response has started within the timeout) but schedules its timer in an empty context and
cancels it when the response starts or the request ends.

The concurrency limit is not BentoML's: its semaphore is taken before the request body is read,
so slow uploads held every slot; ``service/guard.py`` counts a request once its body is in.

BentoML's request metrics label each request with its raw path: 2,000 random 404 paths made
40,000 series and a 2.4 s scrape. ``RouteLabelledMetrics`` labels with the route table's
template instead, and ``other`` for every path the service does not have.

BentoML's access log writes the request path as sent: ``/%0a...`` forged a line. ``EscapedAccessLog``
(a standard logging filter) escapes control characters in what the access logger prints.

``install()`` puts these in place of BentoML's before the worker builds its ASGI app (BentoML
looks the classes up when it assembles the middleware stack; there is no public setting for any
of it); the dependency pin (``bentoml>=1.4,<1.5``) keeps that lookup where this expects it, and
a test checks it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from typing import Any, Awaitable, Callable

from bentoml._internal.server.http.instruments import RunnerTrafficMetricsMiddleware
from starlette.responses import JSONResponse

from biomed.settings import env
from service import routes

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
                response = JSONResponse(routes.error_body(scope.get("path", ""), "timeout", f"the request did not "
                                        f"finish within {self.timeout:g} s ({env('request_timeout_s')})"),
                                        status_code=504)
                await response(scope, receive, send)
                return
            await task  # the response has started (or the app finished): let it complete, or raise its error
        finally:
            timer.cancel()
            if not waiter.done():
                waiter.cancel()


class _RestorePath:
    """Hands the app below the request's real path again (the metrics saw the route's template)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        real = scope.get("biomed.path")
        await self.app(scope if real is None else {**scope, "path": real}, receive, send)


class RouteLabelledMetrics(RunnerTrafficMetricsMiddleware):
    """BentoML's request metrics with ``endpoint`` = the route template (``other`` for unknown paths)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(_RestorePath(app), **kwargs)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            label = routes.label(scope["path"])
            if label != scope["path"]:
                scope = {**scope, "path": label, "biomed.path": scope["path"]}
        await super().__call__(scope, receive, send)


_CONTROL = {c: f"\\x{c:02x}" for c in range(32)} | {127: "\\x7f"}


_PATH = re.compile(r"(?<=path=)[^,)]*")


class EscapedAccessLog(logging.Filter):
    """Control characters (a newline in a request path, say) printed as ``\\xNN``: one request, one line.

    A path whose route says its parameters identify a study (``Route.log_template``: STOW-RS's
    Study Instance UID) is written as the route's template.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(_clean(a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str) and not record.msg.isprintable():
            record.msg = record.msg.translate(_CONTROL)
        return True


def _clean(text: str) -> str:
    if not text.isprintable():  # the usual line has no control character: skip the translation
        text = text.translate(_CONTROL)
    return _PATH.sub(lambda m: routes.logged_path(m.group(0)), text) if "path=" in text else text


def install() -> None:
    """Make BentoML's service app use these for its timeout, request metrics and access log."""
    from bentoml._internal.server.http import instruments, traffic

    traffic.TimeoutMiddleware = TimeoutMiddleware  # type: ignore[misc]
    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledMetrics  # type: ignore[misc]
    access = logging.getLogger("bentoml.access")
    if not any(isinstance(f, EscapedAccessLog) for f in access.filters):
        access.addFilter(EscapedAccessLog())
