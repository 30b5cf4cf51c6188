"""The HTTP API of CONTRACT.md as a Starlette app mounted in the BentoML service.

Parsing is ours, not the framework's, for three reasons: errors keep the
contract's ``{"error", "detail"}`` body, an upload is never written to a temp
file, and a file field can never be a URL for the server to fetch (SSRF).
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any, Awaitable, Callable

import numpy as np
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from biomed.errors import InputError, MalformedInput, TooLarge, UnsupportedMedia
from biomed.preprocess.image import load_image
from service import dna as dna_ops
from service.engine import Engine, current
from service.openapi import openapi_document
from service.schemas import DnaRequest, ExplainRequest, VariantsRequest

log = logging.getLogger("biomed.service")

RAW_IMAGE_TYPES = {"application/dicom", "image/png", "image/jpeg", "application/octet-stream"}


def error_response(err: InputError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status)


def endpoint(name: str) -> Callable[[Callable[[Request, Engine], Awaitable[dict]]], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: contract errors become 4xx with the error body; anything else a logged 500 without input data."""

    def wrap(handler: Callable[[Request, Engine], Awaitable[dict]]) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            engine = current()
            try:
                return JSONResponse(await handler(request, engine))
            except InputError as err:
                engine.metrics.rejected.labels(endpoint=name, reason=err.code).inc()
                return error_response(err)
            except Exception as err:  # noqa: BLE001 - a bug of ours: log where, never the input
                frames = "".join(traceback.format_tb(err.__traceback__))
                log.error("%s failed with %s\n%s", name, type(err).__name__, frames)
                return JSONResponse({"error": "internal", "detail": "the server failed; see its log"}, status_code=500)

        route.__name__ = name
        return route

    return wrap


async def read_body(request: Request, cap: int) -> bytes:
    """The request body, refusing (413) past ``cap`` bytes without reading the rest."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > cap:
        raise TooLarge(f"request body of {int(declared)} bytes is over the {cap // 2**20} MB limit (BIOMED_MAX_UPLOAD_MB)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"request body is over the {cap // 2**20} MB limit (BIOMED_MAX_UPLOAD_MB)")
        chunks.append(chunk)
    return b"".join(chunks)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, engine: Engine, schema: type[BaseModel]) -> Any:
    if media_type(request) not in ("application/json", ""):
        raise UnsupportedMedia(f"content type {media_type(request)!r} is not accepted here; send application/json")
    body = await read_body(request, engine.config.max_upload_bytes)
    try:
        return schema.model_validate_json(body or b"{}")
    except ValidationError as err:
        raise _validation_error(err) from None


def _validation_error(err: ValidationError) -> InputError:
    first = err.errors(include_input=False, include_context=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] in ("json_invalid", "json_type") or first["type"].startswith("json"):
        return MalformedInput(f"the body is not valid JSON ({first['msg']})")
    return MalformedInput(f"{where}: {first['msg']} ({err.error_count()} problem(s) in the body)", code="invalid_body")


async def read_upload(request: Request, engine: Engine) -> tuple[bytes, dict[str, str]]:
    """The uploaded file and the other form fields; a raw DICOM/PNG/JPEG body is accepted too."""
    body = await read_body(request, engine.config.max_upload_bytes)
    kind = media_type(request)
    if kind in RAW_IMAGE_TYPES:
        return body, dict(request.query_params)
    if kind != "multipart/form-data":
        raise UnsupportedMedia(f"content type {kind or 'none'!r} is not accepted; send multipart/form-data with a "
                               "'file' field (or a raw application/dicom, image/png or image/jpeg body)")

    async def stream():  # type: ignore[no-untyped-def]
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16, max_part_size=64 * 1024)
    parser.spool_max_size = engine.config.max_upload_bytes  # Starlette spills parts over 1 MB to disk; never here
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise MalformedInput(f"the multipart body cannot be parsed ({err.message})") from None
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise MalformedInput("a 'file' field holding an uploaded file is required (URLs are not fetched)",
                                 code="missing_file")
        data = await upload.read()
    finally:
        await form.close()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    fields.update({k: v for k, v in request.query_params.items() if k not in fields})
    return data, fields


def _flag(value: str | None, default: bool) -> bool:
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise MalformedInput(f"reverse_complement={value!r} must be true or false")


@endpoint("predict_image")
async def predict_image(request: Request, engine: Engine) -> dict:
    data, fields = await read_upload(request, engine)
    model = engine.pick(fields.get("model"), "image")
    started = time.perf_counter()
    with engine.admitting(model):
        x, info = await engine.in_thread(load_image, data, model.image_spec, engine.limits)
    engine.metrics.preprocess_seconds.labels(kind=info.get("format", "image")).observe(time.perf_counter() - started)
    probs = await model.batcher.submit(np.ascontiguousarray(x, dtype=np.float32))
    labels = [model.labels[i] for i in probs.argmax(axis=1)]
    engine.count_predictions(model, labels)
    predictions = [{"frame": f, "label": label, "probabilities": dict(zip(model.labels, map(float, row)))}
                   for f, (label, row) in enumerate(zip(labels, probs))]
    return {"model": model.name, "version": model.version, "predictions": predictions, "input": info}


def _check_dna_caps(engine: Engine, items: list[tuple[str, str]]) -> None:
    cfg = engine.config
    if len(items) > cfg.max_sequences:
        raise TooLarge(f"{len(items)} sequences in one request; the limit is {cfg.max_sequences} (BIOMED_MAX_SEQUENCES)")
    bases = sum(len(s) for _, s in items)
    if bases > cfg.max_bases:
        raise TooLarge(f"{bases} bases in one request; the limit is {cfg.max_bases} (BIOMED_MAX_BASES)")


async def _predict_dna(engine: Engine, items: list[tuple[str, str]], model_ref: str | None, rc: bool, started: float) -> dict:
    model = engine.pick(model_ref, "dna")
    _check_dna_caps(engine, items)
    predictions = await dna_ops.predict_sequences(engine.dna_predictor(model, started), model.labels,
                                                  dna_ops.DnaParams.of(model.doc), items, rc)
    engine.count_predictions(model, [t for p in predictions for t in _positive(p["probabilities"])])
    return {"model": model.name, "version": model.version, "predictions": predictions}


def _positive(probabilities: dict[str, float]) -> list[str]:
    return [t for t, p in probabilities.items() if p >= 0.5] or ["none"]


@endpoint("predict_dna")
async def predict_dna(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    req = await read_json(request, engine, DnaRequest)
    items = [(str(i), s) if isinstance(s, str) else (s.id, s.sequence) for i, s in enumerate(req.sequences)]
    return await _predict_dna(engine, items, req.model, req.reverse_complement, started)


def parse_fasta(text: str) -> list[tuple[str, str]]:
    """Records of a FASTA file: (first word of the header, sequence without whitespace)."""
    records: list[tuple[str, list[str]]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            records.append(((line[1:].split() or [f"record{len(records) + 1}"])[0], []))
        elif not records:
            raise MalformedInput(f"FASTA line {number} has sequence before any '>' header")
        else:
            records[-1][1].append(line)
    if not records:
        raise MalformedInput("the FASTA file has no records ('>' header lines)")
    return [(name, "".join(parts)) for name, parts in records]


@endpoint("predict_fasta")
async def predict_fasta(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    data, fields = await read_upload(request, engine)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput("the FASTA file is not UTF-8 text") from None
    items = parse_fasta(text)
    return await _predict_dna(engine, items, fields.get("model"), _flag(fields.get("reverse_complement"), True), started)


@endpoint("score_variants")
async def score_variants(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    req = await read_json(request, engine, VariantsRequest)
    model = engine.pick(req.model, "dna")
    if len(req.variants) > engine.config.max_variants:
        raise TooLarge(f"{len(req.variants)} variants in one request; the limit is {engine.config.max_variants}")
    _check_dna_caps(engine, [(str(i), v.sequence) for i, v in enumerate(req.variants)])
    scores = await dna_ops.score_variants(engine.dna_predictor(model, started), model.labels, dna_ops.DnaParams.of(model.doc),
                                          [v.model_dump() for v in req.variants], req.reverse_complement)
    return {"model": model.name, "version": model.version, "variants": scores}


@endpoint("explain_dna")
async def explain_dna(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    req = await read_json(request, engine, ExplainRequest)
    model = engine.pick(req.model, "dna")
    if len(req.sequence) > engine.config.max_explain_bases:
        raise TooLarge(f"sequence of {len(req.sequence)} bases; explain takes at most {engine.config.max_explain_bases} "
                       "(BIOMED_MAX_EXPLAIN_BASES)")
    result = await dna_ops.explain(engine.dna_predictor(model, started), model.labels, dna_ops.DnaParams.of(model.doc),
                                   req.sequence, req.task, req.reverse_complement)
    return {"model": model.name, "version": model.version, **result}


async def list_models(request: Request) -> Response:
    engine = current()
    return JSONResponse({"models": [m.describe() for m in engine.models.values()]})


async def openapi(request: Request) -> Response:
    return JSONResponse(openapi_document())


def build_app() -> Starlette:
    return Starlette(routes=[
        Route("/predict_image", predict_image, methods=["POST"]),
        Route("/predict_dna", predict_dna, methods=["POST"]),
        Route("/predict_fasta", predict_fasta, methods=["POST"]),
        Route("/score_variants", score_variants, methods=["POST"]),
        Route("/explain_dna", explain_dna, methods=["POST"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
    ])

