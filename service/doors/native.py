"""The native door: the JSON and multipart API of docs/api.md.

Each endpoint parses its request, picks the model's handler and returns the handler's
answer; ``wrap`` turns input errors into the ``{"error", "detail"}`` 4xx body.
"""

from __future__ import annotations

import io
import logging
import time
import traceback
from typing import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from biomed.errors import InputError, MalformedInput
from biomed.flags import parse_flag
from biomed.genome import parse_fasta
from service.doors.http_io import read_json, read_upload
from service.engine import Engine, current
from service.handlers import DnaHandler, ImageHandler
from service.schemas import DnaRequest, ExplainRequest, VariantsRequest

log = logging.getLogger("biomed.service")

Endpoint = Callable[[Request, Engine], Awaitable[dict]]


def error_response(err: InputError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status)


def wrap(name: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """An ASGI endpoint: contract errors become 4xx with the error body; anything else a logged 500 without input data."""

    async def route(request: Request) -> Response:
        engine = current()
        try:
            return JSONResponse(await endpoint(request, engine))
        except InputError as err:
            engine.metrics.rejected.labels(endpoint=name, reason=err.code).inc()
            return error_response(err)
        except Exception as err:  # noqa: BLE001 - a bug of ours: log where, never the input
            frames = "".join(traceback.format_tb(err.__traceback__))
            log.error("%s failed with %s\n%s", name, type(err).__name__, frames)
            return JSONResponse({"error": "internal", "detail": "the server failed; see its log"}, status_code=500)

    route.__name__ = name
    return route


def _flag(fields: dict[str, str], name: str, default: bool) -> bool:
    """A true/false form field: ``default`` when absent; blank or anything else is a 400."""
    value = fields.get(name)
    try:
        if value is not None and not value.strip():
            raise ValueError(f"{name} is blank; send true or false")
        return parse_flag(value, default, name)
    except ValueError as err:
        raise MalformedInput(str(err)) from None


async def predict_image(request: Request, engine: Engine) -> dict:
    data, fields = await read_upload(request, engine.config.max_upload_bytes)
    return await engine.pick(fields.get("model"), ImageHandler).predict_file(data)


async def predict_dna(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    req = await read_json(request, engine.config.max_upload_bytes, DnaRequest)
    items = [(str(i), s) if isinstance(s, str) else (s.id, s.sequence) for i, s in enumerate(req.sequences)]
    return await engine.pick(req.model, DnaHandler).predict_sequences(items, req.reverse_complement, started)


async def predict_fasta(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    data, fields = await read_upload(request, engine.config.max_upload_bytes)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput("the FASTA file is not UTF-8 text") from None
    items = [(r.id, r.sequence) for r in parse_fasta(io.StringIO(text))]
    reverse_complement = _flag(fields, "reverse_complement", True)
    return await engine.pick(fields.get("model"), DnaHandler).predict_sequences(items, reverse_complement, started)


async def score_variants(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    req = await read_json(request, engine.config.max_upload_bytes, VariantsRequest)
    handler = engine.pick(req.model, DnaHandler)
    return await handler.score_variants([v.model_dump() for v in req.variants], req.reverse_complement, started)


async def explain_dna(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    req = await read_json(request, engine.config.max_upload_bytes, ExplainRequest)
    return await engine.pick(req.model, DnaHandler).explain(req.sequence, req.task, req.reverse_complement, started)


async def list_models(request: Request, engine: Engine) -> dict:
    return {"models": [m.describe() for m in engine.models.values()]}


async def openapi(request: Request, engine: Engine) -> dict:
    from service.openapi import openapi_document  # built from the route table, which lists this endpoint

    return openapi_document()
