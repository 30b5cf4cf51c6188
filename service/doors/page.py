"""The page at ``/``: ours, static, no data, nothing loaded from another host (BentoML's embeds a tag manager)."""

from __future__ import annotations

import functools
import html
from importlib import resources

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

ASSETS = {"style.css": "text/css; charset=utf-8"}


@functools.lru_cache(maxsize=1)
def _index() -> str:
    from service.routes import ROUTES  # the table lists this page

    rows = "\n".join(
        f"<tr><td><code>{r.method}</code></td><td><code>{html.escape(r.path)}</code>"
        f"{' <span class=open>open</span>' if r.open else ''}</td><td>{html.escape(r.summary)}</td></tr>"
        for r in ROUTES)
    return resources.files("service").joinpath("ui/index.html").read_text().replace("{rows}", rows)


async def index(request: Request) -> Response:
    return HTMLResponse(_index())


async def asset(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ASSETS:
        return JSONResponse({"error": "not_found", "detail": f"no asset {name!r}"}, status_code=404)
    return Response(resources.files("service").joinpath(f"ui/{name}").read_bytes(), media_type=ASSETS[name])
