"""The Open Inference Protocol v2 over REST (KServe's and Triton's): HTTP in and out around the data plane.

Routes (``service/routes.py``): ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``, model
metadata and readiness, and ``POST /v2/models/{name}[/versions/{version}]/infer``. The protocol's
types and codecs (JSON and the binary tensor extension) are ``service/protocol/v2.py``; what a
model takes and how it runs, ``service/inference.py``. This door only reads the body, picks the
model the path names, and writes the answer, whose bytes count in the worker's body budget
(``BIOMED_MAX_BODIES_MB``, with the request's) while it is sent. Errors are ``{"error": "<code>: <message>"}``.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import biomed
from biomed.errors import UnsupportedMedia
from service import inference
from service.doors.endpoint import wrapper
from service.doors.http_io import read_body
from service.engine import Engine
from service.handlers import Handler
from service.protocol.json_bounds import BIG_JSON
from service.protocol.v2 import EXTENSIONS, HEADER_LENGTH, InferRequest, Signature, encode_rest, error_body, \
    header_bytes, parse_rest

_parser: ThreadPoolExecutor | None = None

wrap = wrapper(error_body)


def _handler(request: Request, engine: Engine) -> Handler:
    """The model the path names (``/v2/models/{name}[/versions/{version}]``); 404 for an unknown name or version."""
    return inference.pick(engine, request.path_params["name"], request.path_params.get("version"))


def _parse_pool() -> ThreadPoolExecutor:
    """One thread for large JSON bodies: off the event loop, one at a time (their Python objects are transient)."""
    global _parser
    if _parser is None:
        _parser = ThreadPoolExecutor(1, thread_name_prefix="v2-parse")
    return _parser


async def _parse(request: Request, body: bytes, sig: Signature) -> InferRequest:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMedia(f"Content-Encoding {encoding[:40]!r} is not accepted; send the body uncompressed")
    header_length = request.headers.get(HEADER_LENGTH)
    json_part = len(body) if header_length is None else min(len(body), header_bytes(header_length))
    if json_part > BIG_JSON:  # a large JSON header (tensor data as JSON): parsed off the event loop
        return await asyncio.get_running_loop().run_in_executor(_parse_pool(), parse_rest, body, header_length, sig)
    return parse_rest(body, header_length, sig)


async def server_metadata(request: Request, engine: Engine) -> dict:
    return {"name": "biomed-serve", "version": biomed.__version__, "extensions": list(EXTENSIONS)}


async def live(request: Request, engine: Engine) -> dict:
    return {"live": True}


async def ready(request: Request, engine: Engine) -> Response:
    return JSONResponse({"ready": engine.ready}, status_code=200 if engine.ready else 503)


async def model_metadata(request: Request, engine: Engine) -> dict:
    return inference.model_metadata(engine, _handler(request, engine))


async def model_ready(request: Request, engine: Engine) -> dict:
    handler = _handler(request, engine)
    return {"name": handler.model.name, "ready": engine.ready}


async def infer(request: Request, engine: Engine) -> Response:
    handler = _handler(request, engine)
    body = await read_body(request, engine.config.max_upload_bytes)
    req = await _parse(request, body, inference.signature(handler))
    del body
    answer, header_length = encode_rest(await inference.infer(handler, req, door="v2"))
    held = getattr(request.state, "held", None)  # the guard's count of this request's bytes (None without the guard)
    if held is not None:
        held.grow(len(answer))  # the answer counts in the body budget while it is sent (429 past it)
    if header_length is None:
        return Response(answer, media_type="application/json")
    return Response(answer, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(header_length)})
