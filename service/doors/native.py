"""The native door: the JSON and multipart API of docs/api.md.

Each endpoint parses its request, picks the model's handler and returns the handler's
answer; ``wrap`` turns input errors into the ``{"error", "detail"}`` 4xx body.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
import traceback
from typing import Any, Awaitable, Callable

from pydantic import BaseModel
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from biomed.errors import InputError, MalformedInput
from biomed.flags import parse_flag
from biomed.genome import parse_fasta
from service.doors.http_io import read_body, read_json, read_upload
from service.engine import Engine, current
from service.handlers import DnaHandler, ImageHandler
from service.schemas import DnaRequest, ExplainRequest, VariantsRequest

log = logging.getLogger("biomed.service")
MAX_ID = 256  # characters of a sequence id, as in the JSON bodies
MAX_FASTA_HEADER = 4096  # characters of a FASTA header line

Endpoint = Callable[[Request, Engine], Awaitable[dict]]


def error_response(err: InputError) -> JSONResponse:
    return JSONResponse({"error": err.code, "detail": err.detail}, status_code=err.status)


def wrap(name: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    """An ASGI endpoint: contract errors become 4xx with the error body; anything else a logged 500 without input data.

    A client that leaves mid-request is not a server error: its work is cancelled, one line is logged,
    and the (unsent) answer is a 499, as nginx counts it.
    """

    async def route(request: Request) -> Response:
        engine = current()
        work = asyncio.ensure_future(endpoint(request, engine))
        request.state.work = work  # cancelled by http_io when the client goes away
        try:
            return JSONResponse(await work)
        except InputError as err:
            engine.metrics.rejected.labels(endpoint=name, reason=err.code).inc()
            return error_response(err)
        except ClientDisconnect:  # gone while sending the body
            return client_gone(name, engine)
        except asyncio.CancelledError:
            if getattr(request.state, "client_gone", False):  # gone while waiting for the answer
                return client_gone(name, engine)
            raise  # cancelled from outside (the request timeout, shutdown): not ours to answer
        except Exception as err:  # noqa: BLE001 - a bug of ours: log where, never the input
            frames = "".join(traceback.format_tb(err.__traceback__))
            log.error("%s failed with %s\n%s", name, type(err).__name__, frames)
            return JSONResponse({"error": "internal", "detail": "the server failed; see its log"}, status_code=500)
        finally:
            engine.trimmer.after_request()  # memory back to the system once requests stop
            work.cancel()  # no-op when finished
            watch = getattr(request.state, "watch", None)
            if watch is not None:
                watch.cancel()
            # An exception's traceback holds this frame, whose ``work`` holds the exception: a cycle that would keep
            # the request's data (bodies, parsed records) alive until a full garbage collection.
            request.state.work = request.state.watch = work = None

    route.__name__ = name
    return route


def client_gone(name: str, engine: Engine) -> Response:
    """The answer to a request whose client left: logged in one line, counted apart from errors (499)."""
    log.info("%s: the client closed the connection before the answer; its work was stopped", name)
    engine.metrics.rejected.labels(endpoint=name, reason="client_closed_request").inc()
    return JSONResponse({"error": "client_closed_request", "detail": "the client closed the connection"},
                        status_code=499)


def _flag(fields: dict[str, str], name: str, default: bool) -> bool:
    """A true/false form field: ``default`` when absent; blank or anything else is a 400."""
    value = fields.get(name)
    try:
        if value is not None and not value.strip():
            raise ValueError(f"{name} is blank; send true or false")
        return parse_flag(value, default, name)
    except ValueError as err:
        raise MalformedInput(str(err)) from None


async def _body(request: Request, engine: Engine) -> bytes:
    return await read_body(request, engine.config.max_upload_bytes)


async def _upload(request: Request, engine: Engine) -> tuple[bytes, dict[str, str]]:
    return await read_upload(request, await _body(request, engine), engine.config.max_upload_bytes)


async def _json(request: Request, engine: Engine, schema: type[BaseModel], max_values: int, what: str) -> Any:
    return await read_json(request, await _body(request, engine), schema, max_values, what)


async def predict_image(request: Request, engine: Engine) -> dict:
    data, fields = await _upload(request, engine)
    return await engine.pick(fields.get("model"), ImageHandler).predict_file(data)


async def predict_dna(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    c = engine.config
    req = await _json(request, engine, DnaRequest, 2 * c.max_sequences + 16,
                      f"{c.max_sequences} sequences (BIOMED_MAX_SEQUENCES)")
    items = [(str(i), s) if isinstance(s, str) else (s.id, s.sequence) for i, s in enumerate(req.sequences)]
    return await engine.pick(req.model, DnaHandler).predict_sequences(items, req.reverse_complement, started)


def fasta_items(data: bytes, max_records: int) -> list[tuple[str, str]]:
    """(id, sequence) of each record, counted while parsing; ids as long as JSON ids at most."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput("the FASTA file is not UTF-8 text") from None
    items = []
    for record in parse_fasta(io.StringIO(text), max_records=max_records, max_header=MAX_FASTA_HEADER):
        if len(record.id) > MAX_ID:
            raise MalformedInput(f"the id of FASTA record {record.number} has {len(record.id)} characters; "
                                 f"accepted: at most {MAX_ID}", code="invalid_body")
        items.append((record.id, record.sequence))
    return items


async def predict_fasta(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    data, fields = await _upload(request, engine)
    items = await asyncio.get_running_loop().run_in_executor(None, fasta_items, data, engine.config.max_sequences)
    reverse_complement = _flag(fields, "reverse_complement", True)
    return await engine.pick(fields.get("model"), DnaHandler).predict_sequences(items, reverse_complement, started)


async def score_variants(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    c = engine.config
    req = await _json(request, engine, VariantsRequest, 6 * c.max_variants + 16,
                      f"{c.max_variants} variants (BIOMED_MAX_VARIANTS)")
    handler = engine.pick(req.model, DnaHandler)
    return await handler.score_variants([v.model_dump() for v in req.variants], req.reverse_complement, started)


async def explain_dna(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    req = await _json(request, engine, ExplainRequest, 16, "one sequence")
    return await engine.pick(req.model, DnaHandler).explain(req.sequence, req.task, req.reverse_complement, started)


async def list_models(request: Request, engine: Engine) -> dict:
    return {"models": [m.describe() for m in engine.models.values()]}


async def openapi(request: Request, engine: Engine) -> dict:
    from service.openapi import openapi_document  # built from the route table, which lists this endpoint

    return openapi_document()
