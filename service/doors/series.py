"""``POST /predict_series``: the instances of one series as repeated ``file`` fields, one result for the series.

The body is ``multipart/form-data``, read part by part from the connection like STOW-RS (the guard
does not buffer this route: its cap is ``BIOMED_MAX_SERIES_MB``); each ``file`` part is held in
memory up to ``BIOMED_MAX_UPLOAD_MB``, classified, and dropped before the next is read (one part at a
time, as STOW-RS: what the guard counts in the body budget is what is held): what stays is its model
outputs and UIDs. A ``model`` field,
before the first file, or the ``model`` query parameter picks the model. The series is combined as
the DICOM doors' groups are (``biomed.series``, through ``ImageHandler.series_result``), so the same
instances give the same result ≤ 1e-6 whichever way they came. A model that takes a whole series as
one row (a volume model, ``Handler.series_whole``) holds every file until the last is in, each counted
in the body budget while the request lasts, and answers the volume's one row (with its ``input`` block).

Errors end the request (the answer is one result, unlike STOW-RS's per instance): 400 for framing,
an unknown field or no file; 413 past the body cap, a part over the upload cap, or more than
``BIOMED_DICOM_GROUP_MAX_INSTANCES`` files; 415 for another media type; 422 for a file that is not a
DICOM image with its UIDs (``series_needs_dicom``, ``missing_uids``), one of another series, study or
patient (``series_mismatch``), or any error of ``/predict_image`` (named with the file's place).
"""

from __future__ import annotations

import contextlib
from typing import Any

from starlette.requests import Request

from biomed.errors import MalformedInput, TooLarge, UnsupportedMedia
from biomed.settings import env
from service.dicom import multipart
from service.doors.http_io import media_type
from service.engine import Engine
from service.handlers import Handler
from service.handlers.base import SeriesCollector

MAX_FIELD_BYTES = 1024  # a text field (model)


def _field(part: multipart.Part) -> str:
    """The form field a part is (its Content-Disposition's name)."""
    disposition = part.headers.get("content-disposition", "")
    if disposition.split(";")[0].strip().lower() != "form-data":
        raise MalformedInput("a part of the multipart/form-data body has no 'Content-Disposition: form-data' header")
    return multipart.parameters(disposition).get("name", "")


async def predict_series(request: Request, engine: Engine) -> dict:
    """The series' result and each instance's rows (module docstring)."""
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMedia(f"content type {media_type(request) or 'none'!r} is not accepted; send "
                               "multipart/form-data with one 'file' field per DICOM instance of the series")
    boundary = multipart.boundary_of(request.headers.get("content-type", ""))
    c = engine.config
    model: Any = request.query_params.get("model")
    peer = request.client.host if request.client else None
    handler: Handler | None = None
    collector: SeriesCollector | None = None
    files = 0
    with contextlib.ExitStack() as held:
        async for part in multipart.parts(request.stream(), boundary, c.max_upload_bytes):
            name = _field(part)
            if name == "model":
                if handler is not None or part.too_large or part.size > MAX_FIELD_BYTES:
                    raise MalformedInput("the 'model' field goes before the first file, and holds a model's name")
                model = part.data.decode("utf-8", "replace").strip() or None
                continue
            if name != "file":
                raise MalformedInput(f"field {name[:40]!r} is not taken here; send 'file' fields (one DICOM instance "
                                     "each) and, before them, an optional 'model'")
            if part.too_large:
                raise TooLarge(f"file element {files} is over the {c.max_upload_bytes / 2**20:g} MB limit of one file "
                               f"({env('max_upload_bytes')})")
            if files >= c.dicom_group_max_instances:
                raise TooLarge(f"the body holds more than {c.dicom_group_max_instances} files; a series is at most "
                               f"that many instances ({env('dicom_group_max_instances')})")
            handler = handler or engine.pick(model, "predict_series")
            collector = collector or handler.series_collector()
            if handler.series_whole:  # every file held until the last: all of them in the body budget
                held.enter_context(engine.admission.body(part.size, peer))
            data, part.data = part.data, b""
            await collector.add(data, files)
            del data
            files += 1
        if handler is None or collector is None:
            raise MalformedInput("the request holds no 'file' field: send the instances of one series",
                                 code="missing_file")
        result, extra = await collector.result()
    return handler.series_answer(result, **extra)
