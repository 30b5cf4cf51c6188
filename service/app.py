"""The Starlette app mounted in the BentoML service: one route per entry of the route table that we serve.

A last catch-all answers every other path in the documented error form (404, or 405 when the path
exists with another method) instead of Starlette's text bodies; it also keeps BentoML's own pages
(its index, ``/static_content``) from being reached, and there are no slash redirects built from
the client's ``Host`` header.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route as StarletteRoute

from service.audit import audited
from service.openapi import openapi_document
from service.routes import ROUTES, error_body, match_any

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class _Anything(Convertor[str]):
    """Any path, newlines included (Starlette's ``path`` convertor stops at a newline: BentoML's text 404 then)."""

    regex = "[\\s\\S]*"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anything", _Anything())


async def not_found(request: Request) -> Response:
    path, method = request.url.path, request.method
    allowed = sorted({r.method for r in match_any(path)} | ({"HEAD"} if any(r.method == "GET" for r in match_any(path))
                                                              else set()))
    if allowed and method not in allowed:
        return JSONResponse(error_body(path, "method_not_allowed", f"{method} is not allowed here; allowed: "
                                       f"{', '.join(allowed)}"), status_code=405, headers={"Allow": ", ".join(allowed)})
    return JSONResponse(error_body(path, "not_found", "no such endpoint; see GET /openapi.json"), status_code=404)


def build_app() -> Starlette:
    """Every route of ``service.routes.ROUTES`` with an endpoint, behind its door's error handling, then the catch-all;
    the routes marked ``audited`` record each request in the audit trail (``service/audit``)."""
    routes = [StarletteRoute(r.path, r.wrap(r.name, audited(r.door, r.name, r.endpoint) if r.audited else r.endpoint),
                             methods=[r.method])
              for r in ROUTES if r.endpoint is not None and r.wrap is not None]
    routes.append(StarletteRoute("/{path:anything}", not_found, methods=METHODS))
    app = Starlette(routes=routes)
    app.router.redirect_slashes = False
    app.state.openapi = openapi_document()  # GET /openapi.json (service/doors/native.py) answers with it
    return app
