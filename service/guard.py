"""ASGI middleware for the whole service: bearer-token auth (constant-time) and optional CORS."""

from __future__ import annotations

import hmac
import json
from typing import Any, Awaitable, Callable

from service.config import ServiceConfig

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable, Callable], Awaitable[None]]

OPEN_PATHS = frozenset({"/livez", "/readyz", "/metrics", "/healthz"})
ENDPOINTS = frozenset({"predict_image", "predict_dna", "predict_fasta", "score_variants", "explain_dna", "models"})


class Guard:
    """Every path except the probes and ``/metrics`` needs ``Authorization: Bearer <BIOMED_API_TOKEN>`` when set."""

    def __init__(self, app: ASGIApp) -> None:
        config = ServiceConfig.from_env()
        self.token = config.api_token.encode()
        if config.cors_origins:
            from starlette.middleware.cors import CORSMiddleware

            app = CORSMiddleware(app, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                                 allow_headers=["Authorization", "Content-Type"])
        self.app = app

    def _authorised(self, scope: Scope) -> bool:
        if not self.token or scope.get("path", "") in OPEN_PATHS or scope.get("method") == "OPTIONS":
            return True
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self.token)

    async def __call__(self, scope: Scope, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or self._authorised(scope):
            await self.app(scope, receive, send)
            return
        from service.metrics import metrics

        name = scope.get("path", "").strip("/")
        metrics().rejected.labels(endpoint=name if name in ENDPOINTS else "other", reason="unauthorized").inc()
        body = json.dumps({"error": "unauthorized", "detail": "send Authorization: Bearer <token> (BIOMED_API_TOKEN)"}).encode()
        await send({"type": "http.response.start", "status": 401, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="biomed-serve"')]})
        await send({"type": "http.response.body", "body": body})
