"""Parsing DICOM bytes into a dataset (pixel data still encoded), safely.

The Part-10 meta group is walked by hand so a deflated dataset can be inflated
with a cap (pydicom would inflate it without bound); preamble-less bytes are
accepted only when they parse as a dataset with pixel data.
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from biomed.preprocess.image import Limits

ACCEPTED = "accepted: a DICOM Part-10 file with pixel data, a PNG or a JPEG"
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}


def has_preamble(data: bytes) -> bool:
    """True when `data` carries the Part-10 preamble and 'DICM' prefix."""
    return data[128:132] == b"DICM"


def _not_media() -> UnsupportedMedia:
    return UnsupportedMedia(f"the upload is not a recognised image; {ACCEPTED}")


def read(data: bytes, limits: Limits) -> Dataset:
    """Parse the dataset (pixel data still encoded); inflate deflated ones with a cap."""
    preamble = has_preamble(data)
    try:
        if preamble:
            end = _meta_end(data)
            meta = FileMetaDataset(read_dataset(BytesIO(data[132:end]), False, True))
            if meta.get("TransferSyntaxUID") == DeflatedExplicitVRLittleEndian:
                return _read_deflated(data, end, meta, limits)
        ds = dcmread(BytesIO(data), force=not preamble)
        looks_like_image = all(k in ds for k in ("Rows", "Columns")) and any(
            k in ds for k in PIXEL_KEYWORDS
        )
    except InputError:
        raise
    except Exception as exc:
        if not preamble:
            raise _not_media() from None
        raise MalformedInput(
            f"the DICOM header could not be parsed ({type(exc).__name__}); {ACCEPTED}",
            code="malformed_dicom",
        ) from None
    if not preamble and not looks_like_image:
        raise _not_media()
    return ds


def _meta_end(data: bytes) -> int:
    """Offset just past the (0002,xxxx) file meta group, always explicit VR little endian."""
    pos = 132
    while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
        if data[pos + 4 : pos + 6] in _LONG_VRS:
            pos += 12 + int.from_bytes(data[pos + 8 : pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6 : pos + 8], "little")
    return min(pos, len(data))


def _read_deflated(data: bytes, end: int, meta: FileMetaDataset, limits: Limits) -> Dataset:
    """Inflate the dataset after the meta group, refusing more than ``limits.max_bytes``."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    body = inflater.decompress(data[end:], limits.max_bytes + 1)
    if len(body) > limits.max_bytes:
        raise TooLarge(
            f"the deflated DICOM dataset inflates to more than {limits.max_bytes} bytes; "
            f"{ACCEPTED} of at most {limits.max_bytes} bytes once inflated"
        )
    ds = read_dataset(BytesIO(body), False, True)
    return FileDataset(
        "", ds, preamble=data[:128], file_meta=meta, is_implicit_VR=False, is_little_endian=True
    )


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
