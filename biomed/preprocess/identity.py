"""The content identity of one DICOM instance: what makes two receptions the same instance.

It is the SHA-256 of the decoded pixel data together with the Patient ID and the Study, Series
and SOP Instance UIDs. Decoded, not encoded: the same instance re-sent in another (lossless)
transfer syntax, or through a router that re-encodes it, is the same instance; the same SOP
Instance UID with other pixels or another Patient ID (a corrected re-send) is not. Every door
uses it (the SR's UID derives from it: ``biomed.outputs.sr.sr_uid``), and so does the grouping
of instances into series.

The decoder computes the pixels' digest while it decodes, when the ``Upload`` asks for it
(``Upload(data, identify=True)``): the instance is neither parsed nor decoded a second time.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

# The attributes that, beside the pixels, say which instance of which patient this is.
KEYWORDS = ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")


class PixelDigest:
    """The SHA-256 of decoded frames fed one at a time, in frame order, as little-endian samples."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def add(self, frame: np.ndarray) -> None:
        """One decoded frame (any shape; its values in C order)."""
        if frame.dtype.byteorder == ">":
            frame = frame.astype(frame.dtype.newbyteorder("<"))
        self._hash.update(memoryview(np.ascontiguousarray(frame)).cast("B"))

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def instance_identity(header: Any, pixels_sha256: str) -> str:
    """The identity (64 hex digits) of the instance whose header is ``header`` and decoded pixels hash to
    ``pixels_sha256`` (``PixelDigest``)."""
    h = hashlib.sha256(b"biomed instance identity 1\0" + pixels_sha256.encode("ascii") + b"\0")
    for keyword in KEYWORDS:
        h.update(str(header.get(keyword, "") or "").strip().encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()
