"""The DICOMweb door: STOW-RS (PS3.18 10.5), ``POST /dicomweb/studies[/{StudyInstanceUID}]``.

The body is ``multipart/related; type="application/dicom"``, read part by part from the
connection (the guard does not buffer this route: its own cap is ``BIOMED_MAX_STOW_MB``), each
part held in memory up to ``BIOMED_MAX_UPLOAD_MB``, put through ``service/dicom/pipeline.py``
(checked, every frame classified, its SR spooled when a destination is set) and dropped
before the next is read. The answer is the Store Instances Response Module as
``application/dicom+json``: Referenced SOP Sequence for the instances taken, Failed SOP
Sequence with a Failure Reason for the others, and 200 (all taken), 202 (some failed) or 409
(none taken). Errors of the request as a whole (its framing, media type, size) are the
native JSON error form.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from biomed.errors import MalformedInput, TooLarge, UnsupportedMedia
from biomed.preprocess.dicom_read import is_uid
from service import audit
from service.dicom import current as dicom_current
from service.dicom import multipart, pipeline
from service.doors.http_io import media_type
from service.engine import Engine

MEDIA = "application/dicom+json"
MAX_INSTANCES = 10_000  # parts of one request (each answered in the response)
# DICOM JSON (PS3.18 F.2) tags of the Store Instances Response Module.
_FAILED, _REFERENCED = "00081198", "00081199"
_CLASS, _INSTANCE, _REASON = "00081150", "00081155", "00081197"


class StowResponse(JSONResponse):
    media_type = MEDIA


def _item(outcome: pipeline.Outcome) -> dict:
    item: dict = {_CLASS: {"vr": "UI"}, _INSTANCE: {"vr": "UI"}}
    if outcome.sop_class:
        item[_CLASS]["Value"] = [outcome.sop_class]
    if outcome.sop_instance:
        item[_INSTANCE]["Value"] = [outcome.sop_instance]
    if not outcome.ok:
        item[_REASON] = {"vr": "US", "Value": [outcome.status]}
    return item


async def store(request: Request, engine: Engine) -> StowResponse:
    """STOW-RS: every instance of the body classified, one at a time (module docstring)."""
    study = request.path_params.get("StudyInstanceUID")
    if study is not None and not is_uid(study):
        raise MalformedInput("the Study Instance UID in the path is not a UID (digits and dots, at most 64 characters)")
    content_type = request.headers.get("content-type", "")
    if media_type(request) != "multipart/related":
        raise UnsupportedMedia(f"content type {media_type(request) or 'none'!r} is not accepted; send "
                               'multipart/related; type="application/dicom" (STOW-RS)')
    kind = multipart.parameter(content_type, "type")
    if kind not in (None, "application/dicom"):
        raise UnsupportedMedia(f"multipart/related of type {kind!r} is not accepted; send type=\"application/dicom\" "
                               "(DICOM instances; the JSON/XML metadata forms of STOW-RS are not supported)")
    boundary = multipart.boundary_of(content_type)
    side = dicom_current()
    spool = side.spool if side is not None else None
    groups = side.groups if side is not None else None  # grouped: each instance joins its series in the spool
    operation = pipeline.door_operation(groups)  # what the model an instance reaches must serve
    handler = engine.pick(None, operation)
    referenced, failed, outcomes = [], [], []
    cap = engine.config.max_upload_bytes
    try:
        async for part in multipart.parts(request.stream(), boundary, cap):
            if len(referenced) + len(failed) >= MAX_INSTANCES:
                raise TooLarge(f"the body holds more than {MAX_INSTANCES} instances; send the study in several requests")
            if part.too_large:
                outcome = pipeline.Outcome("too_large")
                handler.metrics.dicom_received.labels(door="stow", outcome="too_large").inc()
            elif part.media_type not in ("", "application/dicom"):
                outcome = pipeline.Outcome("unsupported_media_type")
                handler.metrics.dicom_received.labels(door="stow", outcome="unsupported_media_type").inc()
            else:
                data, part.data = part.data, b""
                outcome = await pipeline.receive(handler, data, "stow", study=study, spool=spool,
                                                 groups=groups,
                                                 route=lambda modality: engine.route(modality, operation))
                del data
            (referenced if outcome.ok else failed).append(_item(outcome))
            outcomes.append(outcome)
    finally:  # one DICOM Instances Transferred message per study, for the instances read (service/audit)
        audit.current().stow_stored(request.scope.get(audit.CLIENT), request.client.host if request.client else "",
                                    outcomes)
    if not referenced and not failed:
        raise MalformedInput("the multipart/related body holds no part")
    body: dict = {}
    if failed:
        body[_FAILED] = {"vr": "SQ", "Value": failed}
    if referenced:
        body[_REFERENCED] = {"vr": "SQ", "Value": referenced}
    status = 200 if not failed else 202 if referenced else 409
    return StowResponse(body, status_code=status)
