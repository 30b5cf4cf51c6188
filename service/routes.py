"""The route table: every HTTP route of the service, as data.

The router (``service/app.py``), the auth guard (``service/guard.py``), the ``endpoint`` label
of the metrics and the OpenAPI document (``service/openapi.py``) all read this one table;
docs/api.md documents every entry (a test checks it). Routes with ``endpoint=None`` are
served by BentoML itself (probes, metrics) and are listed so the guard and the docs know them.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from biomed.settings import env
from service import schemas
from service.doors import admin, dicomweb, native, page, series, v2
from service.protocol import errors

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
    body: str | None = None  # "json" | "upload" | "dicom" (multipart/related DICOM instances) | "series" | None
    request: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    response_media: str = "application/json"
    errors: tuple[int, ...] = ()
    form_fields: dict[str, Any] = field(default_factory=dict)  # extra multipart fields of an upload
    alias_of: str | None = None  # served as this other path (rewritten by the guard, before BentoML's router)
    door: str = "native"  # the protocol: its error form (``error_body``) and its OpenAPI error schema
    response_alt_media: tuple[str, ...] = ()  # other media types of a 200 (binary), e.g. chosen by a format field
    statuses: tuple[int, ...] = ()  # other answers in ``response_media`` (STOW-RS: 202 some failed, 409 none stored)
    streams_body: bool = False  # the guard does not buffer the body: the door reads it as a stream
    body_cap: str | None = None  # the setting (a ServiceConfig field) capping a streamed body
    log_template: bool = False  # the access log writes the template: the path's parameters identify a study
    audited: bool = False  # a prediction or explanation: each request recorded in the audit trail (service/audit)

    @functools.cached_property
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
            "Classify a DICOM, PNG or JPEG image; one prediction per frame (output=sr: a DICOM SR)", body="upload",
            response=schemas.ImageResponse, errors=ERRORS_JSON, response_alt_media=("application/dicom",), audited=True,
            form_fields={"output": {"type": "string", "enum": ["json", "sr"]}}),
    _native("/predict_series", "predict_series", series.predict_series,
            "Classify the DICOM instances of one series (repeated 'file' fields, streamed): one result for the series "
            "and each instance's", body="series", response=schemas.SeriesResponse, errors=ERRORS_JSON,
            streams_body=True, body_cap="max_series_bytes"),
    _native("/predict_dna", "predict_dna", native.predict_dna,
            "Predict tasks for DNA sequences (tiled, reverse-complement averaged)", body="json",
            request=schemas.DnaRequest, response=schemas.DnaResponse, errors=ERRORS_JSON, audited=True),
    _native("/predict_fasta", "predict_fasta", native.predict_fasta, "Predict tasks for the records of a FASTA file",
            body="upload", response=schemas.DnaResponse, errors=ERRORS_JSON, audited=True,
            form_fields={"reverse_complement": {"type": "string", "enum": ["true", "false"]}}),
    _native("/score_variants", "score_variants", native.score_variants,
            "Score SNVs: ref/alt probabilities, difference, log-odds difference", body="json",
            request=schemas.VariantsRequest, response=schemas.VariantsResponse, errors=ERRORS_JSON, audited=True),
    _native("/explain_dna", "explain_dna", native.explain_dna, "In-silico mutagenesis of one sequence", body="json",
            request=schemas.ExplainRequest, response=schemas.ExplainResponse, errors=ERRORS_JSON, audited=True),
    _native("/explain_image", "explain_image", native.explain_image,
            "Occlusion sensitivity of an image's label: a map as JSON, a PNG overlay or a DICOM object", body="upload",
            response=schemas.ImageExplainResponse, errors=ERRORS_JSON, response_alt_media=("image/png", "application/dicom"),
            audited=True,
            form_fields={"format": {"type": "string", "enum": ["json", "png", "dicom"]}, "label": {"type": "string"},
                         "patch": {"type": "string", "pattern": "^[0-9]{1,4}$"},
                         "stride": {"type": "string", "pattern": "^[0-9]{1,4}$"},
                         "frame": {"type": "string", "pattern": "^[0-9]{1,4}$"},
                         "opacity": {"type": "string", "pattern": "^(0(\\.[0-9]{1,3})?|1(\\.0{1,3})?)$"},
                         "image": {"type": "string", "enum": ["true", "false"]}}),
    _native("/explain_series", "explain_series", native.explain_series,
            "Occlusion sensitivity of a volume model's label over one CT or MR series (repeated 'file' fields): a 3D "
            "map as JSON or a multi-frame DICOM Parametric Map in the series' frame of reference", body="upload",
            response=schemas.VolumeExplainResponse, errors=ERRORS_JSON, response_alt_media=("application/dicom",),
            streams_body=True, body_cap="max_series_bytes",
            form_fields={"file": {"type": "array", "items": {"type": "string", "format": "binary"},
                                  "description": "the series' DICOM files, one field each"},
                         "format": {"type": "string", "enum": ["json", "dicom"]}, "label": {"type": "string"},
                         "patch": {"type": "string", "pattern": "^[0-9]{1,4}$"},
                         "stride": {"type": "string", "pattern": "^[0-9]{1,4}$"}}),
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
          response_media="text/css", errors=(404,), response_alt_media=("text/javascript",)),
    *(Route(path, method, name, summary, endpoint, v2.wrap, door="v2", **kw) for path, method, name, summary, endpoint, kw in (
        ("/v2", "GET", "v2_server_metadata", "Open Inference Protocol v2: server metadata and extensions",
         v2.server_metadata, {"response": schemas.V2ServerMetadata, "errors": (401,)}),
        ("/v2/health/live", "GET", "v2_live", "v2: liveness (open)", v2.live, {"open": True, "response": schemas.V2Live}),
        ("/v2/health/ready", "GET", "v2_ready", "v2: readiness, 200 once every model is warmed up (open)", v2.ready,
         {"open": True, "response": schemas.V2Ready}),
        ("/v2/models/{name}", "GET", "v2_model_metadata", "v2: a model's inputs, outputs, platform and labels",
         v2.model_metadata, {"response": schemas.V2ModelMetadata, "errors": (401, 404)}),
        ("/v2/models/{name}/versions/{version}", "GET", "v2_model_version_metadata", "v2: model metadata of a version",
         v2.model_metadata, {"response": schemas.V2ModelMetadata, "errors": (401, 404)}),
        ("/v2/models/{name}/ready", "GET", "v2_model_ready", "v2: whether a model is ready", v2.model_ready,
         {"response": schemas.V2ModelReady, "errors": (401, 404)}),
        ("/v2/models/{name}/versions/{version}/ready", "GET", "v2_model_version_ready",
         "v2: whether a version of a model is ready", v2.model_ready,
         {"response": schemas.V2ModelReady, "errors": (401, 404)}),
        ("/v2/models/{name}/infer", "POST", "v2_infer", "v2 inference: the model's tensor, or whole files / sequences "
         "as BYTES; JSON or binary tensors", v2.infer,
         {"body": "json", "request": schemas.V2InferRequest, "response": schemas.V2InferResponse, "errors": ERRORS_JSON,
          "audited": True}),
        ("/v2/models/{name}/versions/{version}/infer", "POST", "v2_version_infer", "v2 inference on a version",
         v2.infer,
         {"body": "json", "request": schemas.V2InferRequest, "response": schemas.V2InferResponse, "errors": ERRORS_JSON,
          "audited": True}),
    )),
    *(Route(path, "POST", name, summary, dicomweb.store, native.wrap, body="dicom", response_media=dicomweb.MEDIA,
            statuses=(202, 409), errors=(400, 401, 404, 413, 415), streams_body=True, body_cap="max_stow_bytes",
            log_template="{" in path) for path, name, summary in (
        ("/dicomweb/studies", "stow", "STOW-RS: store DICOM instances (multipart/related); each is classified and "
         "its result goes to the PACS as a DICOM SR"),
        ("/dicomweb/studies/{StudyInstanceUID}", "stow_study", "STOW-RS into one study: instances of another study fail"),
    )),
    _native("/admin/models/promote", "admin_promote", admin.promote, "Make a model version the default on every "
            f"worker watching the store (only with {env('api_token')} or {env('api_tokens_file')} set; else 404)",
            body="json",
            request=schemas.PromoteRequest, response=schemas.PromoteResponse, errors=(400, 401, 404, 409, 413, 415, 422)),
    Route("/livez", "GET", "livez", "Liveness: 200 while the process serves", open=True, response_media="text/plain"),
    Route("/readyz", "GET", "readyz", "Readiness: 200 once every model is loaded and warmed up", open=True,
          response_media="text/plain"),
    Route("/metrics", "GET", "metrics", "Prometheus metrics (text exposition format)", open=True,
          response_media="text/plain"),
    Route("/healthz", "GET", "healthz", "BentoML's health probe (as /livez)", open=True, response_media="text/plain"),
)


def error_body(path: str, code: str, detail: str) -> dict:
    """An error body in the form of the door that owns ``path`` (every ``/v2`` path answers in the v2 form)."""
    route = match(path)
    door = route.door if route is not None else ("v2" if path == "/v2" or path.startswith("/v2/") else "native")
    return errors.error_body(door, code, detail)


def logged_path(path: str) -> str:
    """``path`` as the access log writes it: its route's template where the route asks (``Route.log_template``)."""
    route = match(path)
    return route.path if route is not None and route.log_template else path


def is_open(path: str) -> bool:
    """Whether ``path`` is served without the bearer token (the probes, /metrics, the page)."""
    return any(r.open for r in match_any(path))



ALIASES = {r.path: r.alias_of for r in ROUTES if r.alias_of}


@functools.lru_cache(maxsize=4096)  # every request asks (guard, metrics, access log); unknown paths are bounded too
def match_any(path: str) -> tuple[Route, ...]:
    """Every route whose template matches ``path`` (any method), in table order."""
    return tuple(r for r in ROUTES if r.pattern.match(path))


def match(path: str) -> Route | None:
    """The first route whose template matches ``path``, if any."""
    found = match_any(path)
    return found[0] if found else None


def label(path: str) -> str:
    """The metrics label of a request path: its route's template, or ``other`` (never the raw path)."""
    route = match(path)
    return route.path if route is not None else "other"
