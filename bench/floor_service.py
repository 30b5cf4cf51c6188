"""The framework's floor: a BentoML service that takes the same requests as ours and returns a constant.

``bentoml serve bench.floor_service:Floor`` (``biomed bench`` starts it). Two styles:

- ``/mounted/predict_image``, ``/mounted/predict_dna``: Starlette routes mounted in the service,
  the way the native door (``service/doors/``) is (the body read and the multipart or JSON parsed, nothing else);
- ``/api_image``, ``/api_dna``: ``@bentoml.api`` methods, BentoML's own request parsing
  (an upload becomes a temp file; JSON is validated into the signature).

The service options mirror ``service/service.py`` (one worker, same traffic settings,
metrics on), so the difference to ours is our own work per request.
"""

from __future__ import annotations

import json
from pathlib import Path

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

CONSTANT = {"model": "floor", "version": "0", "predictions": []}


async def mounted_image(request: Request) -> Response:
    form = await request.form(max_files=1, max_fields=16)
    upload = form.get("file")
    size = len(await upload.read()) if upload is not None and not isinstance(upload, str) else 0
    return JSONResponse({**CONSTANT, "bytes": size})


async def mounted_dna(request: Request) -> Response:
    body = json.loads(await request.body())
    return JSONResponse({**CONSTANT, "sequences": len(body.get("sequences", []))})


def build_app() -> Starlette:
    return Starlette(routes=[
        Route("/mounted/predict_image", mounted_image, methods=["POST"]),
        Route("/mounted/predict_dna", mounted_dna, methods=["POST"]),
    ])


@bentoml.service(
    name="biomed-bench-floor",
    workers=1,
    traffic={"timeout": 300, "max_concurrency": 256},
    tracing={"sample_rate": 0.0, "excluded_urls": [".*"]},  # as the service's default (BIOMED_TRACE_SAMPLE_RATE=0)
    http={"cors": {"enabled": False}},
    metrics={"enabled": True, "namespace": "bentoml_service"},
)
@bentoml.asgi_app(build_app(), path="/")
class Floor:
    """No model, no preprocessing: what serving one request costs the framework alone."""

    @bentoml.api
    async def api_image(self, file: Path) -> dict:
        return {**CONSTANT, "bytes": file.stat().st_size}

    @bentoml.api
    async def api_dna(self, sequences: list[str]) -> dict:
        return {**CONSTANT, "sequences": len(sequences)}
