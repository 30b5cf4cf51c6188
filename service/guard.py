"""ASGI middleware in front of every route: admission, in the order that costs the service least.

The gates themselves (token, concurrency slots, body bytes) are the worker's ``Admission``
(``service/admission.py``), which the DICOM receiver passes too; this is the HTTP door's keeper.

1. Framing: a request with both ``Content-Length`` and ``Transfer-Encoding`` is refused (400):
   two framings of one body are how requests are smuggled past a proxy.
2. Auth: every route not marked open in the route table needs ``Authorization: Bearer <token>``
   when a token is set (``Admission.authorised``: constant time), before any body is read; the
   token's name is left in the scope for the audit trail (``service/audit``).
3. The body, read whole into memory before the request counts as in flight: capped
   (``BIOMED_MAX_UPLOAD_MB``, 413), on time (within ``BIOMED_BODY_TIMEOUT_S`` and at
   ``BIOMED_BODY_MIN_KBPS`` or faster after its first 2 s, else 408), and within what all bodies
   held by this worker may take together (``BIOMED_MAX_BODIES_MB``, else 429), counted as the
   bytes arrive (a declared ``Content-Length`` reserves nothing) and per peer address (one
   address holds at most its share: ``service/admission.py``). A slow upload therefore holds a
   connection for a few seconds and the bytes it sent, never a concurrency slot.
   A route that reads its own body as a stream (``Route.streams_body``: STOW-RS, whose study
   may be larger than one upload) is not buffered: its ``receive`` enforces the route's own cap,
   the same clock (on the time spent waiting for the client: a total of ``BIOMED_BODY_TIMEOUT_S``
   for each ``BIOMED_MAX_UPLOAD_MB`` it carries, as a buffered body of that size gets) and counts
   what it received, up to one part's worth, in the body budget (``Guard._stream_body``); its
   concurrency slot is taken before its body arrives.
4. The concurrency slot: past ``BIOMED_MAX_CONCURRENCY`` requests in flight (shared out among
   the workers) the answer is 429 at once. The probes, ``/metrics`` and the page are not counted.

Every response says ``Content-Security-Policy: default-src 'self'; frame-ancestors 'none';
base-uri 'none'; object-src 'none'; form-action 'self'`` (the page may not be framed, nor its
base or form targets moved), ``X-Frame-Options: DENY``, ``X-Content-Type-Options: nosniff`` and
``Referrer-Policy: no-referrer``; BentoML's own document paths (``/docs.json``,
``/schema.json``) are answered with ours. Settings come from the engine (read once at start-up);
what is open comes from the route table.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, Awaitable, Callable

from biomed.errors import InputError, MalformedInput, Overloaded, TooLarge
from biomed.settings import env
from service import audit, routes
from service.admission import Admission
from service.config import ServiceConfig
from service.engine import current

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

CSP = b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'; form-action 'self'"
SECURITY_HEADERS = [(b"content-security-policy", CSP), (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]
BODY_GRACE_S = 2.0  # the minimum body rate applies after this much of a body's time
NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class BodyTimeout(InputError):
    status = 408
    code = "request_timeout"


class ClientGone(Exception):
    """The client closed the connection while sending its body."""


class Held:
    """Body bytes a request holds in the admission's budget, from its peer address (released when it ends)."""

    def __init__(self, admission: Admission, peer: str | None) -> None:
        self.admission, self.peer, self.nbytes = admission, peer, 0

    def grow(self, nbytes: int) -> None:
        """Hold ``nbytes`` more (``Overloaded``, 429, past the budget or the peer's share)."""
        if nbytes > 0:
            self.admission.hold(nbytes, self.peer)
            self.nbytes += nbytes

    def release(self) -> None:
        if self.nbytes:
            self.admission.release(self.nbytes, self.peer)
            self.nbytes = 0


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    """The declared ``Content-Length`` (None when absent); 400 for anything but a byte count, however long."""
    declared = headers.get(b"content-length", b"").decode("latin-1").strip()
    if not declared:
        return None
    if not declared.isascii() or not declared.isdigit() or len(declared) > 19:
        raise MalformedInput("Content-Length is not a number (a byte count of at most 19 digits)")
    return int(declared)


def peer_of(scope: Scope) -> str | None:
    """The client's address as the server sees it (a proxy in front makes every client that proxy)."""
    client = scope.get("client")
    return str(client[0]) if client else None


async def _answer(send: Callable, status: int, error: str, detail: str, extra: list | None = None) -> None:
    # The error form of the door that owns the request's path (``send.path``: set in ``Guard.__call__``).
    body = json.dumps(routes.error_body(getattr(send, "path", ""), error, detail)).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(extra or [])]})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
    """A ``receive`` that gives the buffered body first, then whatever the connection says (a disconnect).

    It keeps no reference to the body once given: the door's copy is the only one left.
    """
    pending = [body]

    async def replay() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replay


class Guard:
    """The service's front door keeper (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inner: ASGIApp | None = None  # the app, behind CORS when origins are configured
        self._config = ServiceConfig()
        self._admission: Admission | None = None

    def _start(self) -> ASGIApp:
        """Read the engine's settings on the first request (the engine starts after the middleware is built)."""
        engine = current()
        config = self._config = engine.config
        self._admission = engine.admission
        app = self.app
        if config.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            app = CORSMiddleware(app, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                                 allow_headers=["Authorization", "Content-Type", "X-Request-ID"])
        self._inner = app
        return app

    def _authorised(self, scope: Scope, headers: dict[bytes, bytes]) -> bool:
        admission = self._admission
        if admission is None or not admission.token_required or scope.get("method") == "OPTIONS" \
                or routes.is_open(scope.get("path", "")):
            return True
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        # Whose the token is, for the audit trail (service/audit: a refusal is recorded by the admission).
        who = admission.authorised(given if scheme.lower() == b"bearer" else None, peer_of(scope) or "", "http")
        scope[audit.CLIENT] = who
        return who is not None

    def _refuse(self, scope: Scope, reason: str) -> None:
        route = routes.match(scope.get("path", ""))
        current().metrics.rejected.labels(endpoint=route.name if route else "other", reason=reason).inc()

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app = self._inner or self._start()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        send_with_headers.path = scope.get("path", "")  # type: ignore[attr-defined]  # the error form (_answer)
        headers = dict(scope.get("headers") or [])
        if b"content-length" in headers and b"transfer-encoding" in headers:
            self._refuse(scope, "malformed")
            await _answer(send_with_headers, 400, "malformed", "a request may not carry both Content-Length and "
                          "Transfer-Encoding; send one")
            return
        if not self._authorised(scope, headers):
            self._refuse(scope, "unauthorized")
            await _answer(send_with_headers, 401, "unauthorized", f"send Authorization: Bearer <token> "
                          f"({env('api_token')})", [(b"www-authenticate", b'Bearer realm="biomed-serve"')])
            return
        if _CONTROL.search(scope.get("path", "")):  # no route has one; Starlette's mounts would not even match it
            self._refuse(scope, "not_found")
            await _answer(send_with_headers, 404, "not_found", "no such endpoint; see GET /openapi.json")
            return
        alias = routes.ALIASES.get(scope.get("path", ""))
        if alias is not None:
            scope = {**scope, "path": alias, "raw_path": alias.encode()}
        counted = not routes.is_open(scope["path"])
        held = Held(self._admission, peer_of(scope))  # type: ignore[arg-type]
        scope.setdefault("state", {})["held"] = held  # a door may count its answer too (the v2 door)
        route = routes.match(scope["path"])
        try:
            if route is not None and route.streams_body and scope.get("method") == route.method:
                try:  # read by the door as it arrives (STOW-RS), under the same framing, caps and clock
                    receive = self._stream_body(receive, headers, route, held)
                except InputError as err:
                    self._refuse(scope, err.code)
                    await _answer(send_with_headers, err.status, err.code, err.detail)
                    return
            elif scope.get("method") not in NO_BODY or b"content-length" in headers or b"transfer-encoding" in headers:
                try:
                    body = await self._read_body(receive, headers, held)
                except InputError as err:
                    self._refuse(scope, err.code)
                    await _answer(send_with_headers, err.status, err.code, err.detail)
                    return
                except ClientGone:  # nobody will read the answer: it is for the access log and the metrics (499)
                    self._refuse(scope, "client_closed_request")
                    await _answer(send_with_headers, 499, "client_closed_request", "the client closed the connection")
                    return
                receive = _replay(body, receive)
                del body  # the replay hands it on and forgets it
            if counted:
                try:
                    self._admission.enter()  # type: ignore[union-attr]
                except Overloaded as err:
                    self._refuse(scope, err.code)
                    await _answer(send_with_headers, 429, err.code, err.detail, [(b"retry-after", b"1")])
                    return
            try:
                await app(scope, receive, send_with_headers)
            finally:
                if counted:
                    self._admission.leave()  # type: ignore[union-attr]
        finally:
            held.release()

    def _stream_body(self, receive: Callable[[], Awaitable[Message]], headers: dict[bytes, bytes],
                     route: routes.Route, held: Held) -> Callable[[], Awaitable[Message]]:
        """A ``receive`` for a route that reads its own body as a stream (``Route.streams_body``: STOW-RS).

        Nothing is buffered here. The body is capped by the route's own setting (``Route.body_cap``;
        ``Content-Length`` checked at once, the bytes as they arrive: 413 raised from ``receive``).
        The time spent waiting for the client, not the door's processing between reads, must keep
        to ``BIOMED_BODY_MIN_KBPS`` after its first 2 s, no single wait may pass
        ``BIOMED_BODY_TIMEOUT_S``, and all of it may not pass ``BIOMED_BODY_TIMEOUT_S`` for each
        ``BIOMED_MAX_UPLOAD_MB`` received so far (the time a buffered body of that size gets), so a
        trickle ends (408). The door holds one part at a time, at most ``BIOMED_MAX_UPLOAD_MB``:
        what was received, up to that much, counts in the worker's ``BIOMED_MAX_BODIES_MB`` (and
        the peer's share of it) for the life of the request.
        """
        c = self._config
        cap = int(getattr(c, route.body_cap or "max_upload_bytes"))
        setting = env(route.body_cap or "max_upload_bytes")
        declared = _content_length(headers)
        if declared is not None and declared > cap:
            raise TooLarge(f"request body of {declared} bytes is over the {cap / 2**20:g} MB limit ({setting})")
        loop = asyncio.get_running_loop()
        size, waited, done = 0, 0.0, False

        async def stream() -> Message:
            nonlocal size, waited, done
            if done:  # the body is in: what follows is the connection's news (a disconnect), on no clock
                return await receive()
            total = c.body_timeout_s * (1 + size // max(c.max_upload_bytes, 1))  # per upload's worth received
            allowed = min(c.body_timeout_s, total - waited)
            if c.body_min_rate:
                allowed = min(allowed, BODY_GRACE_S + size / c.body_min_rate - waited)
            started = loop.time()
            try:
                async with asyncio.timeout(max(allowed, 0.001)):  # a timer, not a task per read
                    message = await receive()
            except TimeoutError:
                raise BodyTimeout(
                    f"the request body did not arrive in time ({size} bytes after waiting {waited:.1f} s for them); "
                    f"it must keep to {c.body_min_rate // 1024} KB/s after its first 2 s ({env('body_min_rate')}), "
                    f"with no pause over {c.body_timeout_s:g} s, and arrive within {c.body_timeout_s:g} s "
                    f"({env('body_timeout_s')}) for each {c.max_upload_bytes / 2**20:g} MB "
                    f"({env('max_upload_bytes')})") from None
            finally:
                waited += loop.time() - started
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > cap:
                    raise TooLarge(f"request body is over the {cap / 2**20:g} MB limit ({setting})")
                held.grow(min(size, c.max_upload_bytes) - held.nbytes)  # what arrived, up to one part's worth
                done = not message.get("more_body", False)
            return message

        return stream

    async def _read_body(self, receive: Callable[[], Awaitable[Message]], headers: dict[bytes, bytes],
                         held: Held) -> bytes:
        """The whole body, its bytes held in this worker's body budget as they arrive (module docstring)."""
        c = self._config
        cap = c.max_upload_bytes
        declared = _content_length(headers)
        if declared is not None and declared > cap:
            raise TooLarge(f"request body of {declared} bytes is over the {cap / 2**20:g} MB limit "
                           f"({env('max_upload_bytes')})")
        loop = asyncio.get_running_loop()
        start = loop.time()
        chunks, size = [], 0
        try:
            # One timer for the whole body, moved as bytes arrive (``asyncio.wait_for`` would make a task per chunk).
            async with asyncio.timeout_at(start + c.body_timeout_s) as clock:
                while True:
                    latest = start + c.body_timeout_s
                    if c.body_min_rate:
                        latest = min(latest, start + BODY_GRACE_S + size / c.body_min_rate)
                    clock.reschedule(max(latest, loop.time() + 0.001))
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise ClientGone()
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > cap:
                        raise TooLarge(f"request body is over the {cap / 2**20:g} MB limit ({env('max_upload_bytes')})")
                    held.grow(len(chunk))
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            held.release()
            raise BodyTimeout(
                f"the request body did not arrive in time ({size} bytes after {loop.time() - start:.1f} s); a "
                f"body must arrive within {c.body_timeout_s:g} s ({env('body_timeout_s')}) and at "
                f"{c.body_min_rate // 1024} KB/s or faster after its first 2 s ({env('body_min_rate')})") from None
        except BaseException:
            held.release()
            raise
