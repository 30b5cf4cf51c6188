"""One received DICOM instance, whichever door it came through: checked, classified, its SR spooled (or the
instance stored in its group, whose one SR is made when the group closes: ``groups.py``).

``receive`` is shared by the C-STORE receiver (``scp.py``, called from its threads through the
event loop) and STOW-RS (``service/doors/dicomweb.py``): the instance is parsed once, with the
decoder's own caps (``biomed.preprocess.upload.Upload``; on the event loop when it is small enough
to be decoded there too), its UIDs and SOP class checked, every
frame classified by the image handler from that same parse (``ImageHandler.classify``: the same
decode and model run as ``/predict_image``, through the same batchers), and when a destination
is set its SR is built (``biomed/outputs/sr.py``) from the header the decoder kept and written
to the spool (``spool.py``) before ``receive`` returns, so the sender is answered only once the
result is durable. Grouped (``BIOMED_DICOM_GROUP_BY`` series or study), the instance's file is
written and fsynced while it is checked and classified, and committed to its group with its model
outputs (``groups.py``) before ``receive`` returns: the group's SR comes when the group closes. The
instance goes to the model ``Engine.route`` picks for its Modality (``door_operation``: grouped by
series, a model that takes series); a volume model's handler checks and decodes the instance
(``receive_instance``) without running it: its group's files are assembled when the group closes
(``closer.py``). The SR's UID derives from the instance's content identity
(``biomed.preprocess.identity``, hashed by that same decode): the same instance again, in any
transfer syntax, is a duplicate; a corrected one under the same SOP Instance UID gets a new SR
naming the one before it (recorded in the spool). It never raises for bad input: it answers an ``Outcome`` with the DIMSE
status / STOW-RS failure reason (the same codes for both doors):

- ``ok``, 0x0000: classified (and its SR spooled, or already spooled or delivered; or, grouped, the
  instance durably in its group, or already there);
- ``too_large``, ``too_many_requests``, ``timeout``, ``spool_unavailable``, 0xA700 (out of
  resources): over a size cap, a shared budget full, the spool not writable;
- ``not_an_image``, 0x0122: a SOP class that is not an image storage class (an SR, an RT Plan);
- ``no_pixel_data``, ``missing_uids``, ``study_mismatch``, 0xA900: the dataset does not match its
  SOP class, lacks its UIDs (grouped: its Series Instance UID too), or is not of the study named in
  the STOW-RS path;
- ``unsupported_transfer_syntax``, 0xC122: no decoder for its transfer syntax;
- any other input error (``malformed_dicom``, ``bad_pixel_data``, ``unsupported_media_type``...),
  0xC000: cannot be understood;
- ``internal``, 0x0110: a bug of ours (logged with its code location, never the input).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import (
    BreastProjectionXRayImageStorageForPresentation, BreastProjectionXRayImageStorageForProcessing,
    BreastTomosynthesisImageStorage, ComputedRadiographyImageStorage, CTImageStorage,
    DermoscopicPhotographyImageStorage, DigitalIntraOralXRayImageStorageForPresentation,
    DigitalIntraOralXRayImageStorageForProcessing, DigitalMammographyXRayImageStorageForPresentation,
    DigitalMammographyXRayImageStorageForProcessing, DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing, EnhancedCTImageStorage, EnhancedMRColorImageStorage, EnhancedMRImageStorage,
    EnhancedPETImageStorage, EnhancedUSVolumeStorage, EnhancedXAImageStorage, EnhancedXRFImageStorage,
    LegacyConvertedEnhancedCTImageStorage, LegacyConvertedEnhancedMRImageStorage,
    LegacyConvertedEnhancedPETImageStorage, MRImageStorage, MultiFrameGrayscaleByteSecondaryCaptureImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage, MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage, NuclearMedicineImageStorage,
    OphthalmicPhotography8BitImageStorage, OphthalmicPhotography16BitImageStorage, PhotoacousticImageStorage,
    PositronEmissionTomographyImageStorage, SecondaryCaptureImageStorage, UltrasoundImageStorage,
    UltrasoundMultiFrameImageStorage, VLEndoscopicImageStorage, VLMicroscopicImageStorage,
    VLPhotographicImageStorage, VLSlideCoordinatesMicroscopicImageStorage, VLWholeSlideMicroscopyImageStorage,
    XRay3DAngiographicImageStorage, XRay3DCraniofacialImageStorage, XRayAngiographicImageStorage,
    XRayRadiofluoroscopicImageStorage,
)

from biomed.errors import InputError, TooLarge
from biomed.outputs import Producer, sr
from biomed.preprocess.dicom_read import is_uid
from biomed.preprocess.upload import Upload
from service import audit
from service.audit.events import Subject

if TYPE_CHECKING:
    from service.dicom.groups import Groups
    from service.dicom.spool import Spool
    from service.handlers.image import ImageHandler

log = logging.getLogger("biomed.dicom")

# The image storage SOP classes the doors accept: single- and multi-frame images our decoder presents.
IMAGE_STORAGE = (
    CTImageStorage, EnhancedCTImageStorage, LegacyConvertedEnhancedCTImageStorage, MRImageStorage,
    EnhancedMRImageStorage, EnhancedMRColorImageStorage, LegacyConvertedEnhancedMRImageStorage,
    ComputedRadiographyImageStorage, DigitalXRayImageStorageForPresentation, DigitalXRayImageStorageForProcessing,
    DigitalMammographyXRayImageStorageForPresentation, DigitalMammographyXRayImageStorageForProcessing,
    DigitalIntraOralXRayImageStorageForPresentation, DigitalIntraOralXRayImageStorageForProcessing,
    BreastTomosynthesisImageStorage, BreastProjectionXRayImageStorageForPresentation,
    BreastProjectionXRayImageStorageForProcessing, UltrasoundImageStorage, UltrasoundMultiFrameImageStorage,
    EnhancedUSVolumeStorage, SecondaryCaptureImageStorage, MultiFrameSingleBitSecondaryCaptureImageStorage,
    MultiFrameGrayscaleByteSecondaryCaptureImageStorage, MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    MultiFrameTrueColorSecondaryCaptureImageStorage, NuclearMedicineImageStorage,
    PositronEmissionTomographyImageStorage, EnhancedPETImageStorage, LegacyConvertedEnhancedPETImageStorage,
    XRayAngiographicImageStorage, EnhancedXAImageStorage, XRayRadiofluoroscopicImageStorage, EnhancedXRFImageStorage,
    XRay3DAngiographicImageStorage, XRay3DCraniofacialImageStorage, VLEndoscopicImageStorage,
    VLMicroscopicImageStorage, VLSlideCoordinatesMicroscopicImageStorage, VLPhotographicImageStorage,
    VLWholeSlideMicroscopyImageStorage, OphthalmicPhotography8BitImageStorage, OphthalmicPhotography16BitImageStorage,
    DermoscopicPhotographyImageStorage, PhotoacousticImageStorage,
)
_IMAGE_STORAGE = frozenset(str(u) for u in IMAGE_STORAGE)
_SR_THREADS = 4  # SR building (highdicom: tens of ms per SR) and spool writes (fsync), off the event loop

OK = 0x0000
OUT_OF_RESOURCES = 0xA700
NOT_SUPPORTED = 0x0122
DOES_NOT_MATCH = 0xA900
SYNTAX_NOT_SUPPORTED = 0xC122
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
_STATUS = {"too_large": OUT_OF_RESOURCES, "too_many_requests": OUT_OF_RESOURCES, "timeout": OUT_OF_RESOURCES,
           "spool_unavailable": OUT_OF_RESOURCES, "not_an_image": NOT_SUPPORTED, "no_pixel_data": DOES_NOT_MATCH,
           "missing_uids": DOES_NOT_MATCH, "study_mismatch": DOES_NOT_MATCH,
           "unsupported_transfer_syntax": SYNTAX_NOT_SUPPORTED, "internal": PROCESSING_FAILURE}


def status_of(code: str) -> int:
    """The DIMSE status / STOW-RS failure reason of an outcome code (module docstring)."""
    return OK if code == "ok" else _STATUS.get(code, CANNOT_UNDERSTAND)


@dataclass
class Outcome:
    """What became of one instance: ``code`` is ``ok`` or the reason (module docstring); no patient data but the
    ``subject`` the audit trail writes."""

    code: str
    sop_class: str | None = None
    sop_instance: str | None = None
    detail: str = ""
    spooled: bool = False
    subject: Subject | None = None  # the instance's study and patient, for the audit trail only (never logged)

    @property
    def status(self) -> int:
        return status_of(self.code)

    @property
    def ok(self) -> bool:
        return self.code == "ok"


class Refused(InputError):
    """An instance the doors take no further (module docstring's codes)."""


@functools.lru_cache(maxsize=1)
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(_SR_THREADS, thread_name_prefix="dicom-sr")


async def _off_loop(fn: Any, *args: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(_pool(), fn, *args)


def producer(handler: "ImageHandler") -> Producer:
    """The model version the handler runs, as its SRs name it."""
    m = handler.model
    return Producer(m.name, m.version, m.sha256, tuple(handler.labels), output=handler.semantics)


def _uid_of(ds: Dataset, keyword: str) -> str | None:
    value = str(ds.get(keyword, "") or "").strip()
    return value if is_uid(value) else None


def check_header(ds: Dataset, study: str | None = None, series: bool = False) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) of an image instance of ``study`` (any when None), with a Series Instance
    UID when ``series``; else ``Refused``."""
    sop_class, sop_instance = _uid_of(ds, "SOPClassUID"), _uid_of(ds, "SOPInstanceUID")
    if sop_class is None or sop_instance is None or _uid_of(ds, "StudyInstanceUID") is None:
        raise Refused("the instance lacks a valid SOP Class, SOP Instance or Study Instance UID", code="missing_uids")
    if series and _uid_of(ds, "SeriesInstanceUID") is None:
        raise Refused("the instance lacks a valid Series Instance UID (instances are grouped by series)",
                      code="missing_uids")
    if sop_class not in _IMAGE_STORAGE:
        raise Refused("the instance is not of an image storage SOP class (an SR, RT or other non-image object)",
                      code="not_an_image")
    if study is not None and _uid_of(ds, "StudyInstanceUID") != study:
        raise Refused("the instance belongs to another study than the one in the request path", code="study_mismatch")
    return sop_class, sop_instance


async def sr_for(handler: "ImageHandler", data: bytes, door: str = "native") -> bytes:
    """The SR of one uploaded DICOM file (``/predict_image?output=sr``); InputError for bad input."""
    if data.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        raise InputError("output=sr needs a DICOM image to reference; this upload is a PNG or JPEG (use output=json)",
                         code="sr_needs_dicom")
    upload = Upload(data, identify=True)
    probs, _ = await handler.classify(upload, door)
    header, identity = upload.header, upload.identity  # the decoder's parse, without pixel data
    if header is None or identity is None:
        raise InputError("output=sr needs a DICOM image to reference", code="sr_needs_dicom")
    try:
        check_header(header)
    except Refused as err:
        raise InputError(f"output=sr cannot reference this file: {err.detail}", code="sr_needs_dicom") from None
    return await _off_loop(_build, header, probs, producer(handler), identity)


def _build(header: Dataset, probs: np.ndarray, algo: Producer, identity: str, previous: sr.Previous | None = None
           ) -> bytes:
    return sr.sr_bytes(sr.build_sr(header, probs, algo, identity, previous=previous))


def _build_and_spool(header: Dataset, probs: np.ndarray, algo: Producer, identity: str, spool: "Spool") -> bool:
    """Spool the SR of this content; False when it is already pending or delivered. A changed instance under a SOP
    Instance UID seen before gets an SR naming the previous one."""
    uid = sr.sr_uid(identity, algo)
    if spool.is_known(uid):
        return False
    key = sr.source_key(str(header.SOPInstanceUID), algo)
    previous = spool.previous(key)
    if previous is not None and previous.sop_instance == uid:
        previous = None
    if not spool.put(uid, _build(header, probs, algo, identity, previous)):
        return False
    try:
        spool.remember(key, sr.Previous(str(header.StudyInstanceUID), sr.series_uid(str(header.StudyInstanceUID),
                                                                                     algo), uid))
    except OSError as err:  # the SR is durable; only a later correction would not name it
        log.warning("the SR spool could not record which SR an instance got (%s); a corrected re-send of it will not "
                    "name this SR", type(err).__name__)
    return True


def door_operation(groups: "Groups | None") -> str:
    """What a DICOM door asks of the model an instance reaches (``Engine.route``): with series groups, a model that
    takes series (``predict_series``: an image model classifying each instance, or a volume model assembling the
    group's files when it closes); else one that classifies single instances (``classify``)."""
    return "predict_series" if groups is not None and groups.policy.by == "series" else "classify"


async def _parse(handler: "ImageHandler", upload: Upload) -> Dataset:
    """The instance's dataset: parsed on the event loop when it is small enough to decode there too (as
    ``ImageHandler.decode`` does, under the same inline caps: a thread's handoffs cost more than such a parse),
    else on a thread under the full limits."""
    if len(upload.data) <= handler.config.inline_decode_bytes:
        with contextlib.suppress(TooLarge):
            return upload.dataset(handler.inline_limits)
    return await handler.in_thread(upload.dataset, handler.file_limits,
                                   small=len(upload.data) <= handler.config.small_upload_bytes)


def _stage(groups: "Groups | None", data: bytes) -> "asyncio.Future | None":
    """With groups, the instance's file written and fsynced off the loop (``Groups.stage``), while it is classified."""
    return None if groups is None else asyncio.ensure_future(_off_loop(groups.stage, data))


def _unstage(staged: "asyncio.Future | None") -> None:
    """A staged file not committed (the instance failed, was a duplicate, or its request ended): removed once
    written (a committed one is linked into its group under its own name first)."""
    if staged is not None:
        staged.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().unlink(missing_ok=True))


async def _durably(handler: "ImageHandler", header: Dataset, probs: np.ndarray, identity: str,
                   staged: "asyncio.Future | None", spool: "Spool | None", groups: "Groups | None") -> bool:
    """The instance's SR in the spool, or the staged instance in its group; False for a duplicate
    (``spool_unavailable`` when the spool cannot be written)."""
    algo = producer(handler)
    try:
        if groups is not None and staged is not None:
            how = handler.group_aggregate()  # a volume model's: the series assembled when its group closes
            try:
                path = await asyncio.shield(staged)
            except asyncio.CancelledError:
                _unstage(staged)
                raise
            return bool(await _off_loop(groups.commit, path, header, identity, probs, algo, how))
        return bool(await _off_loop(_build_and_spool, header, probs, algo, identity, spool))
    except OSError as err:
        log.error("the spool could not be written (%s); the instance was refused with 0xA700", type(err).__name__)
        raise InputError("the spool cannot be written", code="spool_unavailable") from None


async def receive(handler: "ImageHandler", data: bytes, door: str, study: str | None = None,
                  spool: "Spool | None" = None, groups: "Groups | None" = None,
                  route: "Callable[[str], ImageHandler] | None" = None) -> Outcome:
    """Check, classify and (with a spool) spool the SR of one instance, or with ``groups`` store it in its group
    (``groups.py``: its SR is the group's); never raises for bad input. ``route``: the handler for the instance's
    Modality (``Engine.route``: ``BIOMED_DICOM_MODEL``, else by modality), in place of ``handler`` once the header
    is parsed."""
    outcome = Outcome("ok")
    staged = _stage(groups, data)  # the file on its way to the disk while it is checked and classified
    try:
        upload = Upload(data, identify=True)
        del data
        header = await _parse(handler, upload)
        outcome.sop_class, outcome.sop_instance = (_uid_of(header, "SOPClassUID"), _uid_of(header, "SOPInstanceUID"))
        outcome.subject = Subject.of(header) if audit.current().enabled else None
        check_header(header, study, series=groups is not None)
        if route is not None:
            handler = route(str(header.get("Modality", "") or "").strip())
        probs = await handler.receive_instance(upload, door)  # decoded from the dataset parsed above
        header, identity = upload.header, upload.identity  # the header now without pixel data
        del upload
        if identity is not None and (groups is not None or spool is not None):
            outcome.spooled = await _durably(handler, header, probs, identity, staged, spool, groups)
            if not outcome.spooled:
                handler.metrics.dicom_forwarded.labels(outcome="duplicate").inc()
    except InputError as err:
        outcome.code, outcome.detail = err.code, err.detail
    except asyncio.CancelledError:
        raise
    except Exception as err:  # noqa: BLE001 - a bug of ours: say where, never the input
        log.error("a DICOM instance failed with %s\n%s", type(err).__name__,
                  "".join(traceback.format_tb(err.__traceback__)))
        outcome.code, outcome.detail = "internal", "the server failed; see its log"
    finally:
        _unstage(staged)  # a staged file not committed (a refused instance, a duplicate) is removed
    handler.metrics.dicom_received.labels(door=door, outcome=outcome.code).inc()
    return outcome
