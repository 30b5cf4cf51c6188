"""The Starlette app mounted in the BentoML service: one route per entry of the route table that we serve."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import Route as StarletteRoute

from service.routes import ROUTES


def build_app() -> Starlette:
    """Every route of ``service.routes.ROUTES`` with an endpoint, behind its door's error handling."""
    return Starlette(routes=[StarletteRoute(r.path, r.wrap(r.name, r.endpoint), methods=[r.method])
                             for r in ROUTES if r.endpoint is not None and r.wrap is not None])
