"""The page at ``/``: ours, static, no data, nothing loaded from another host (BentoML's embeds a tag manager).

The page (``service/ui/``: ``index.html``, ``style.css``, ``app.js``) is plain HTML, CSS and JavaScript
shipped in the package: no build step, nothing embedded server-side. It calls this service's own API
from the browser with the token its user types (held in the script's memory only) and draws heat maps
and logos on ``<canvas>`` from the JSON answers, so it runs under the ``default-src 'self'`` policy
every response carries: no inline script or style, no ``blob:``/``data:`` image URLs.
"""

from __future__ import annotations

import functools
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from service.protocol import errors

ASSETS = {"style.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


@functools.lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    return resources.files("service").joinpath(f"ui/{name}").read_bytes()


async def index(request: Request) -> Response:
    return HTMLResponse(_read("index.html"))


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return JSONResponse(errors.native("not_found", f"no asset {name[:80]!r}"), status_code=404)
    return Response(_read(name), media_type=ASSETS[name])
