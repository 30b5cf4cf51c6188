"""The native door: the JSON and multipart API of docs/api.md.

Each endpoint parses its request, picks the model's handler and returns the handler's
answer; ``wrap`` turns input errors into the ``{"error", "detail"}`` 4xx body.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from biomed.errors import MalformedInput, TooLarge, UnsupportedMedia
from biomed.flags import parse_flag
from biomed.genome import parse_fasta
from biomed.outputs.overlay import DEFAULT_OPACITY
from biomed.runtime import LoadedModel
from biomed.settings import env
from service.doors.endpoint import wrapper
from service.dicom import multipart
from service.doors.http_io import media_type, read_body, read_json, read_upload
from service.engine import Engine
from service.protocol import errors
from service.schemas import DnaRequest, ExplainRequest, VariantsRequest

log = logging.getLogger("biomed.service")
MAX_ID = 256  # characters of a sequence id, as in the JSON bodies
MAX_FASTA_HEADER = 4096  # characters of a FASTA header line

wrap = wrapper(errors.native)


def _flag(fields: dict[str, str], name: str, default: bool | None) -> bool | None:
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


async def predict_image(request: Request, engine: Engine) -> dict | Response:
    data, fields = await _upload(request, engine)
    output = (fields.get("output") or "json").strip().lower()
    if output not in ("json", "sr"):
        raise MalformedInput(f"output {output[:32]!r} is unknown; accepted: json, sr (a DICOM SR of the results)")
    handler = engine.pick(fields.get("model"), "predict_file")
    if output == "sr":  # the results as a DICOM Comprehensive 3D SR over the source instance (biomed/outputs/sr.py)
        from service.dicom.pipeline import sr_for

        return Response(await sr_for(handler, data), media_type="application/dicom",
                        headers={"Content-Disposition": 'attachment; filename="results-sr.dcm"'})
    return await handler.predict_file(data)


async def predict_dna(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    c = engine.config
    req = await _json(request, engine, DnaRequest, 2 * c.max_sequences + 16,
                      f"{c.max_sequences} sequences ({env('max_sequences')})")
    items = [(str(i), s) if isinstance(s, str) else (s.id, s.sequence) for i, s in enumerate(req.sequences)]
    return await engine.pick(req.model, "predict_sequences").predict_sequences(items, req.reverse_complement, started)


def fasta_items(data: bytes, max_records: int) -> list[tuple[str, str]]:
    """(id, sequence) of each record, counted while parsing; ids as long as JSON ids at most."""
    if data[128:132] == b"DICM":
        raise MalformedInput("the upload is a DICOM file, not FASTA; send images to /predict_image (accepted here: "
                             "FASTA text, '>' header lines and sequences)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedInput("the upload is not FASTA: it is not UTF-8 text; accepted: FASTA text, '>' header lines "
                             "and sequences") from None
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
    reverse_complement = _flag(fields, "reverse_complement", None)  # None: as the model's metadata says
    return await engine.pick(fields.get("model"), "predict_sequences").predict_sequences(items, reverse_complement, started)


async def score_variants(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    c = engine.config
    req = await _json(request, engine, VariantsRequest, 6 * c.max_variants + 16,
                      f"{c.max_variants} variants ({env('max_variants')})")
    handler = engine.pick(req.model, "score_variants")
    return await handler.score_variants([v.model_dump() for v in req.variants], req.reverse_complement, started)


async def explain_dna(request: Request, engine: Engine) -> dict:
    started = time.perf_counter()
    req = await _json(request, engine, ExplainRequest, 16, "one sequence")
    return await engine.pick(req.model, "explain").explain(req.sequence, req.task, req.reverse_complement, started)


EXPLAIN_FORMATS = {"json": "application/json", "png": "image/png", "dicom": "application/dicom"}


def _number(fields: dict[str, str], name: str, kind: type, low: float, high: float | None = None) -> Any:
    """An integer or float form field in [low, high] (None when absent or empty); anything else is a 400."""
    value = fields.get(name)
    if value is None or value.strip() == "":
        return None
    try:
        number = kind(value.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise MalformedInput(f"{name} must be {what}; got {value[:32]!r}") from None
    if not (low <= number and (high is None or number <= high)):  # NaN fails both
        accepted = f"{low:g} or more" if high is None else f"{low:g} to {high:g}"
        raise MalformedInput(f"{name} {number} is out of range; accepted: {accepted}")
    return number


async def explain_image(request: Request, engine: Engine) -> dict | Response:
    data, fields = await _upload(request, engine)
    fmt = (fields.get("format") or "json").strip().lower()
    if fmt not in EXPLAIN_FORMATS:
        raise MalformedInput(f"format {fmt[:32]!r} is unknown; accepted: {', '.join(EXPLAIN_FORMATS)}")
    patch, stride = _number(fields, "patch", int, 1), _number(fields, "stride", int, 1)
    frame = _number(fields, "frame", int, 0) or 0
    opacity = _number(fields, "opacity", float, 0.0, 1.0)
    include_image = _flag(fields, "image", False)
    label = fields.get("label") or None
    handler = engine.pick(fields.get("model"), "explain_file")
    explained = await handler.explain_file(data, label, patch, stride, frame, dicom_header=fmt == "dicom")
    del data
    opacity = DEFAULT_OPACITY if opacity is None else opacity
    if fmt == "png":
        return Response(await handler.explanation_png(explained, opacity), media_type=EXPLAIN_FORMATS[fmt])
    if fmt == "dicom":
        return Response(await handler.explanation_dicom(explained, opacity), media_type=EXPLAIN_FORMATS[fmt],
                        headers={"Content-Disposition": 'attachment; filename="explanation.dcm"'})
    return await handler.explanation_json(explained, include_image)


SERIES_FIELDS = ("model", "format", "label", "patch", "stride")
MAX_FIELD_BYTES = 1024  # a text field of a streamed form


async def series_form(request: Request, engine: Engine, held: contextlib.ExitStack
                      ) -> tuple[list[bytes], dict[str, str]]:
    """The files and text fields of a ``multipart/form-data`` series body, read part by part from the connection.

    Each ``file`` part is held up to ``BIOMED_MAX_UPLOAD_MB`` and counted in the worker's body budget (and its
    address's share) until ``held`` closes: a series is all in memory at once, so all of it counts (429 past the
    budget). The body as a whole is capped by ``BIOMED_MAX_SERIES_MB`` (the route's cap).
    """
    if media_type(request) != "multipart/form-data":
        raise UnsupportedMedia(f"content type {media_type(request) or 'none'!r} is not accepted; send "
                               "multipart/form-data with one 'file' field per DICOM file of the series")
    c = engine.config
    peer = request.client.host if request.client else None
    files: list[bytes] = []
    fields: dict[str, str] = {}
    boundary = multipart.boundary_of(request.headers.get("content-type", ""))
    async for part in multipart.parts(request.stream(), boundary, c.max_upload_bytes):
        disposition = part.headers.get("content-disposition", "")
        name = multipart.parameters(disposition).get("name", "") if disposition.lower().startswith("form-data") else ""
        if name == "file":
            if part.too_large:
                raise TooLarge(f"file element {len(files)} is over the {c.max_upload_bytes / 2**20:g} MB limit of one "
                               f"file ({env('max_upload_bytes')})")
            held.enter_context(engine.admission.body(part.size, peer))
            files.append(part.data)
        elif name in SERIES_FIELDS and not part.too_large and part.size <= MAX_FIELD_BYTES:
            fields[name] = part.data.decode("utf-8", "replace").strip()
        else:
            raise MalformedInput(f"field {name[:40]!r} is not taken here; send 'file' fields (one DICOM file each) and "
                                 f"the optional text fields {', '.join(SERIES_FIELDS)} (each at most {MAX_FIELD_BYTES} "
                                 "bytes)")
    if not files:
        raise MalformedInput("the request holds no 'file' field: send the files of one series", code="missing_file")
    return files, fields


async def explain_series(request: Request, engine: Engine) -> dict | Response:
    """``/explain_series``: a volume model's 3D occlusion map of one series, as JSON or a DICOM Parametric Map."""
    with contextlib.ExitStack() as held:
        files, fields = await series_form(request, engine, held)
        fmt = (fields.get("format") or "json").strip().lower()
        if fmt not in ("json", "dicom"):
            raise MalformedInput(f"format {fmt[:32]!r} is unknown; accepted: json, dicom")
        patch, stride = _number(fields, "patch", int, 1), _number(fields, "stride", int, 1)
        handler = engine.pick(fields.get("model") or None, "explain_series")
        explained = await handler.explain_series(files, fields.get("label") or None, patch, stride,
                                                 dicom_header=fmt == "dicom")
        del files
        if fmt == "dicom":
            return Response(await handler.explanation_dicom(explained), media_type=EXPLAIN_FORMATS[fmt],
                            headers={"Content-Disposition": 'attachment; filename="explanation.dcm"'})
        return handler.explanation_json(explained)


async def list_models(request: Request, engine: Engine) -> dict:
    return {"models": [describe(m) for m in engine.models.values()]}


def describe(model: LoadedModel) -> dict:
    """The ``GET /models`` entry of a loaded model: an imported model's ``source``, ``description`` and ``checks``
    (null for biomed's own), and ``batch``: the fixed batch size its graph runs at (null: any)."""
    d = model.doc
    training, imported = d.get("training", {}), d.get("import", {})
    return {
        "name": model.name, "version": model.version, "kind": d["kind"], "labels": d["labels"],
        "multilabel": d["multilabel"], "input": d["input"], "output": d["output"], "preprocess": d["preprocess"],
        "provider": model.provider, "sha256": model.sha256, "architecture": d.get("architecture", {}).get("arch"),
        "metrics": training.get("metrics"), "baseline": training.get("baseline"),
        "export": d.get("export", {}), "intended_use": d["intended_use"], "batch": model.fixed_batch,
        "source": imported.get("source"), "description": imported.get("description"), "checks": imported.get("checks"),
        "default": model.serving["default"], "canary_percent": model.serving["canary_percent"],
        "memory": dict(model.memory),
    }


async def openapi(request: Request, engine: Engine) -> dict:
    """The OpenAPI document the app was built with (``service/app.py``, from the route table)."""
    return request.app.state.openapi
