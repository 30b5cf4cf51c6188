"""Parsing DICOM bytes into a dataset (pixel data still encoded), safely.

The Part-10 meta group is walked by hand so a deflated dataset can be inflated
with a cap (pydicom would inflate it without bound); preamble-less bytes are
accepted only when they parse as a dataset with pixel data. Before pydicom
parses anything, the data elements it would parse are counted
(``biomed.preprocess.dicom_scan``) and a dataset with more than
``Limits.max_elements`` is refused (413), so parse time is bounded.
"""

from __future__ import annotations

import re
import zlib
from io import BytesIO
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import read_dataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from biomed.errors import InputError, MalformedInput, TooLarge, UnsupportedMedia
from biomed.preprocess.dicom_scan import ElementScanner, TooDeep, TooManyElements
from biomed.settings import env

if TYPE_CHECKING:
    from biomed.preprocess.budget import Limits

ACCEPTED = "accepted: a DICOM Part-10 file with pixel data, a PNG or a JPEG"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_KNOWN_VRS = ElementScanner.known_vrs()
UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")  # PS3.5 9.1: numeric components separated by dots
MAX_UID_LENGTH = 64


def is_uid(value: str) -> bool:
    """True for a DICOM UID: digits in dot-separated components, at most 64 characters, nothing else (no newline)."""
    return len(value) <= MAX_UID_LENGTH and UID_PATTERN.fullmatch(value) is not None


def has_preamble(data: bytes) -> bool:
    """True when `data` carries the Part-10 preamble and 'DICM' prefix."""
    return data[128:132] == b"DICM"


def _not_media() -> UnsupportedMedia:
    return UnsupportedMedia(f"the upload is not a recognised image; {ACCEPTED}")


def read(data: bytes, limits: Limits) -> Dataset:
    """Parse the dataset (pixel data still encoded); inflate deflated ones with a cap.

    Raises:
        TooLarge: more than ``limits.max_elements`` data elements, or a deflated
            dataset inflating past ``limits.max_bytes``.
    """
    return read_counted(data, limits)[0]


def too_many_elements(limit: int) -> TooLarge:
    """The 413 of a dataset with more than ``limit`` data elements."""
    return TooLarge(
        f"the DICOM dataset has more than {limit} data elements (sequence items and "
        f"pixel data fragments included); accepted: at most {limit} "
        f"({env('max_dicom_elements')})"
    )


def read_counted(data: bytes, limits: Limits) -> tuple[Dataset, int]:
    """``read``, and the number of data elements counted before parsing (what ``limits.max_elements`` capped)."""
    preamble = has_preamble(data)
    try:
        start = 132 if preamble else 0
        end, counted = _meta_end(data, start, limits.max_elements)
        meta = FileMetaDataset(read_dataset(BytesIO(data[start:end]), False, True)) if end > start else None
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        if ts == DeflatedExplicitVRLittleEndian:
            ds, counted = _read_deflated(data, end, meta, limits, counted, preamble)
        else:
            counted = _count_elements(data, end, ts, limits.max_elements, counted)
            ds = dcmread(BytesIO(data), force=not preamble)
        looks_like_image = all(k in ds for k in ("Rows", "Columns")) and any(
            k in ds for k in PIXEL_KEYWORDS
        )
    except InputError:
        raise
    except TooManyElements:
        raise too_many_elements(limits.max_elements) from None
    except Exception as exc:
        if not preamble:
            raise _not_media() from None
        what = "sequences nested too deeply" if isinstance(exc, TooDeep) else type(exc).__name__
        raise MalformedInput(
            f"the DICOM header could not be parsed ({what}); {ACCEPTED}",
            code="malformed_dicom",
        ) from None
    if not preamble and not looks_like_image:
        raise _not_media()
    return ds, counted


def _meta_end(data: bytes, start: int, limit: int) -> tuple[int, int]:
    """Offset just past the (0002,xxxx) file meta group at `start`, and its element count.

    Walked as pydicom reads it (explicit VR little endian unless the first
    element looks implicit), counting elements against `limit`.
    """
    scanner = ElementScanner(data, little=True, limit=limit)
    end = scanner.dataset(start, None, implicit=False, group=0x0002)
    return min(end, len(data)), scanner.count


def _count_elements(data: bytes, pos: int, ts: str | None, limit: int, counted: int) -> int:
    """Count what ``dcmread`` parses after the meta group: the command set, then the dataset; the total.

    Raises:
        TooManyElements: past `limit` (with the `counted` meta elements).
    """
    command = ElementScanner(data, little=True, limit=limit, count=counted)
    pos = command.dataset(pos, None, implicit=True, group=0x0000)
    implicit, little = True, True
    if ts is None:  # pydicom's guess from the first element (read_partial)
        if pos + 6 <= len(data) and data[pos + 4 : pos + 6] in _KNOWN_VRS:
            implicit = False
            little = int.from_bytes(data[pos : pos + 2], "little") < 1024
    elif ts == ExplicitVRBigEndian:
        implicit, little = False, False
    elif ts != ImplicitVRLittleEndian:
        implicit = False
    scanner = ElementScanner(data, little=little, limit=limit, count=command.count)
    scanner.dataset(pos, None, implicit)
    return scanner.count


def _read_deflated(
    data: bytes, end: int, meta: FileMetaDataset, limits: Limits, counted: int, preamble: bool
) -> tuple[Dataset, int]:
    """Inflate the dataset after the meta group, refusing more than ``limits.max_bytes``; and the elements counted."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = inflater.decompress(data[end:], limits.max_bytes + 1)
    if len(body) > limits.max_bytes:
        raise TooLarge(
            f"the deflated DICOM dataset inflates to more than {limits.max_bytes} bytes; "
            f"{ACCEPTED} of at most {limits.max_bytes} bytes once inflated"
        )
    scanner = ElementScanner(body, little=True, limit=limits.max_elements, count=counted)
    scanner.dataset(0, None, False)
    ds = read_dataset(BytesIO(body), False, True)
    return FileDataset(
        "", ds, preamble=data[:128] if preamble else None, file_meta=meta, is_implicit_VR=False,
        is_little_endian=True,
    ), scanner.count


def transfer_syntax(ds: Dataset) -> UID:
    """The transfer syntax, inferred from how the dataset parsed when the meta lacks it."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts:
        return UID(str(ts))
    implicit, little = ds.original_encoding
    if little is None:
        raise MalformedInput(f"the DICOM file names no transfer syntax; {ACCEPTED}", code="malformed_dicom")
    ts = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if not hasattr(ds, "file_meta"):
        ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    return ts
