"""The route table: every HTTP route of the service, as data.

The router (``service/app.py``), the auth guard (``service/guard.py``), the ``endpoint`` label
of the metrics and the OpenAPI document (``service/openapi.py``) all read this one table;
docs/api.md documents every entry (a test checks it). Routes with ``endpoint=None`` are
served by BentoML itself (probes, metrics) and are listed so the guard and the docs know them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from service import schemas
from service.doors import native, page

ERRORS_JSON = (400, 401, 404, 413, 415, 422)


@dataclass(frozen=True)
class Route:
    """One route: where, what serves it, whether it needs the token, and how the OpenAPI document describes it."""

    path: str  # Starlette template, e.g. /v2/models/{name}
    method: str
    name: str  # the ``endpoint`` label of biomed_rejected_requests_total
    summary: str
    endpoint: Callable[..., Any] | None = None  # the door's function; None: served by BentoML
    wrap: Callable[[str, Callable[..., Any]], Callable[..., Any]] | None = None  # the door's error handling
    open: bool = False  # served without the bearer token
    body: str | None = None  # "json" | "upload" | None
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    response_media: str = "application/json"
    errors: tuple[int, ...] = ()
    form_fields: dict[str, Any] = field(default_factory=dict)  # extra multipart fields of an upload
    alias_of: str | None = None  # served as this other path (rewritten by the guard, before BentoML's router)

    @property
    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", self.path) + "$")


def _plain(name: str, endpoint: Callable[..., Any]) -> Callable[..., Any]:
    """Pages and assets answer for themselves (no JSON error handling around them)."""
    return endpoint


def _native(path: str, name: str, endpoint: Callable[..., Any], summary: str, **kw: Any) -> Route:
    method = "GET" if kw.get("body") is None else "POST"
    return Route(path, method, name, summary, endpoint, native.wrap, **kw)


ROUTES: tuple[Route, ...] = (
    _native("/predict_image", "predict_image", native.predict_image,
            "Classify a DICOM, PNG or JPEG image; one prediction per frame", body="upload",
            response=schemas.ImageResponse, errors=ERRORS_JSON),
    _native("/predict_dna", "predict_dna", native.predict_dna,
            "Predict tasks for DNA sequences (tiled, reverse-complement averaged)", body="json",
            request=schemas.DnaRequest, response=schemas.DnaResponse, errors=ERRORS_JSON),
    _native("/predict_fasta", "predict_fasta", native.predict_fasta, "Predict tasks for the records of a FASTA file",
            body="upload", response=schemas.DnaResponse, errors=ERRORS_JSON,
            form_fields={"reverse_complement": {"type": "string", "enum": ["true", "false"]}}),
    _native("/score_variants", "score_variants", native.score_variants,
            "Score SNVs: ref/alt probabilities, difference, log-odds difference", body="json",
            request=schemas.VariantsRequest, response=schemas.VariantsResponse, errors=ERRORS_JSON),
    _native("/explain_dna", "explain_dna", native.explain_dna, "In-silico mutagenesis of one sequence", body="json",
            request=schemas.ExplainRequest, response=schemas.ExplainResponse, errors=ERRORS_JSON),
    _native("/models", "models", native.list_models, "Loaded models: metadata, provider, sha256, metrics",
            response=schemas.ModelsResponse, errors=(401,)),
    _native("/openapi.json", "openapi", native.openapi, "This OpenAPI document", errors=(401,)),
    # BentoML serves its own documents here; they describe none of our routes, so they answer with ours.
    Route("/docs.json", "GET", "openapi", "This OpenAPI document (BentoML's usual path)", alias_of="/openapi.json",
          errors=(401,)),
    Route("/schema.json", "GET", "openapi", "This OpenAPI document (BentoML's usual path)", alias_of="/openapi.json",
          errors=(401,)),
    Route("/", "GET", "page", "This service's page: the endpoints, with links (no data; open)", page.index, _plain,
          open=True, response_media="text/html"),
    Route("/ui/{name}", "GET", "page", "The page's assets (open)", page.asset, _plain, open=True,
          response_media="text/css", errors=(404,)),
    Route("/livez", "GET", "livez", "Liveness: 200 while the process serves", open=True, response_media="text/plain"),
    Route("/readyz", "GET", "readyz", "Readiness: 200 once every model is loaded and warmed up", open=True,
          response_media="text/plain"),
    Route("/metrics", "GET", "metrics", "Prometheus metrics (text exposition format)", open=True,
          response_media="text/plain"),
    Route("/healthz", "GET", "healthz", "BentoML's health probe (as /livez)", open=True, response_media="text/plain"),
)


def is_open(path: str) -> bool:
    """Whether ``path`` is served without the bearer token (the probes, /metrics, the page)."""
    return any(r.open for r in match_any(path))



ALIASES = {r.path: r.alias_of for r in ROUTES if r.alias_of}


def match(path: str) -> Route | None:
    """The first route whose template matches ``path``, if any."""
    for route in ROUTES:
        if route.pattern.match(path):
            return route
    return None


def match_any(path: str) -> list[Route]:
    """Every route whose template matches ``path`` (any method)."""
    return [r for r in ROUTES if r.pattern.match(path)]


def label(path: str) -> str:
    """The metrics label of a request path: its route's template, or ``other`` (never the raw path)."""
    route = match(path)
    return route.path if route is not None else "other"
