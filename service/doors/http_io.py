"""Reading HTTP request bodies safely, for every door: capped, in memory, never fetched from a URL.

Parsing is ours, not the framework's, for three reasons: errors keep the contract's
``{"error", "detail"}`` body, an upload is never written to a temp file, and a file field
can never be a URL for the server to fetch (SSRF).
"""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request

from biomed.errors import InputError, MalformedInput, TooLarge, UnsupportedMedia
from biomed.settings import env
from service.protocol.json_bounds import BIG_JSON, json_values

RAW_IMAGE_TYPES = {"application/dicom", "image/png", "image/jpeg", "application/octet-stream"}


async def read_body(request: Request, cap: int) -> bytes:
    """The request body (already read in whole by ``service/guard.py``, under its caps and timeouts).

    Once the body is in, a disconnect of the client cancels the request's work.

    Raises:
        TooLarge past ``cap``; ClientDisconnect when the client left mid-upload.
    """
    chunks, size = [], 0
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > cap:
            raise TooLarge(f"request body is over the {cap / 2**20:g} MB limit ({env('max_upload_bytes')})")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    _watch_for_disconnect(request)
    return b"".join(chunks)


def _watch_for_disconnect(request: Request) -> None:
    """Cancel the request's work (``request.state.work``, set by the door) when its client goes away."""
    work = getattr(request.state, "work", None)
    if work is None:
        return

    async def watch() -> None:
        message = await request.receive()
        if message["type"] == "http.disconnect" and not work.done():
            request.state.client_gone = True
            work.cancel()

    request.state.watch = asyncio.ensure_future(watch())


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_json(request: Request, body: bytes, schema: type[BaseModel], max_values: int, what: str) -> Any:
    """``body`` validated against ``schema``: 415 for another media type, 400 for bad JSON or fields.

    Args:
        max_values: the most comma-separated values a valid body can hold; more is a 413 naming ``what``.
    """
    if media_type(request) not in ("application/json", ""):
        raise UnsupportedMedia(f"content type {media_type(request)!r} is not accepted here; send application/json")
    if json_values(body) > max_values:
        raise TooLarge(f"the body holds more values than {what} allow")
    try:
        if len(body) > BIG_JSON:
            return await asyncio.get_running_loop().run_in_executor(None, schema.model_validate_json, body)
        return schema.model_validate_json(body or b"{}")
    except ValidationError as err:
        raise _validation_error(err) from None


def _validation_error(err: ValidationError) -> InputError:
    first = err.errors(include_input=False, include_context=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    if first["type"] in ("json_invalid", "json_type") or first["type"].startswith("json"):
        hint = "; a \\uD800-\\uDFFF escape is half of a surrogate pair, never a character alone" \
            if "hex escape" in first["msg"] else ""
        return MalformedInput(f"the body is not valid JSON ({first['msg']}{hint})")
    return MalformedInput(f"{where}: {first['msg']} ({err.error_count()} problem(s) in the body)", code="invalid_body")


async def read_upload(request: Request, body: bytes, cap: int) -> tuple[bytes, dict[str, str]]:
    """The uploaded file and the other form fields of ``body``; a raw DICOM/PNG/JPEG body is accepted too."""
    kind = media_type(request)
    if kind in RAW_IMAGE_TYPES:
        return body, dict(request.query_params)
    if kind != "multipart/form-data":
        raise UnsupportedMedia(f"content type {kind or 'none'!r} is not accepted; send multipart/form-data with a "
                               "'file' field (or a raw application/dicom, image/png or image/jpeg body)")

    async def stream():  # type: ignore[no-untyped-def]
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16, max_part_size=64 * 1024)
    parser.spool_max_size = cap  # Starlette spills parts over 1 MB to disk; never here
    try:
        form = await parser.parse()
    except MultiPartException as err:
        raise MalformedInput(f"the multipart body cannot be parsed ({err.message})") from None
    except (UnicodeError, ValueError, LookupError) as err:  # a charset parameter it cannot decode with, say
        raise MalformedInput(f"the multipart body cannot be parsed ({type(err).__name__}); send UTF-8 form fields") from None
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
