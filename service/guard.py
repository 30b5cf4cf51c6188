"""ASGI middleware for the whole service: bearer-token auth (constant-time) and optional CORS.

The settings come from the engine (read once at start-up); which paths are open comes from the route table.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

from service import routes
from service.engine import current

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]


class Guard:
    """Every route not marked open needs ``Authorization: Bearer <BIOMED_API_TOKEN>`` when a token is set."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._inner: ASGIApp | None = None  # the app, behind CORS when origins are configured
        self._token = b""

    def _start(self) -> ASGIApp:
        """Read the engine's settings on the first request (the engine starts after the middleware is built)."""
        config = current().config
        self._token = config.api_token.encode()
        app = self.app
        if config.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            app = CORSMiddleware(app, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                                 allow_headers=["Authorization", "Content-Type"])
        self._inner = app
        return app

    def _authorised(self, scope: Scope) -> bool:
        if not self._token or scope.get("path", "") in routes.OPEN_PATHS or scope.get("method") == "OPTIONS":
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        app = self._inner or self._start()
        if self._authorised(scope):
            await app(scope, receive, send)
            return
        route = routes.match(scope.get("path", ""))
        current().metrics.rejected.labels(endpoint=route.name if route else "other", reason="unauthorized").inc()
        body = json.dumps({"error": "unauthorized", "detail": "send Authorization: Bearer <token> (BIOMED_API_TOKEN)"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="biomed-serve"')]})
        await send({"type": "http.response.body", "body": body})
