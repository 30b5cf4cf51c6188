"""Caps on one image upload (``Limits``) and a process-wide bound on what all in-flight decodes hold together.

Each decode reserves its header-derived working set before decoding and gives it
back when done; a reservation that does not fit is refused at once (HTTP 429,
``Overloaded``) rather than queued, so a burst of large uploads cannot stack up
past the bound and no request thread waits on memory.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from biomed.errors import Overloaded, TooLarge
from biomed.settings import default, env

_MB = 2**20


class DecodeBudget:
    """Thread-safe byte budget shared by concurrent decodes.

    Args:
        total_bytes: What all reservations may hold together (the service's
            ``BIOMED_MAX_DECODING_MB``).
    """

    def __init__(self, total_bytes: int) -> None:
        if total_bytes <= 0:
            raise ValueError(f"total_bytes {total_bytes} is invalid; use a positive number of bytes")
        self.total = int(total_bytes)
        self._held = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> int:
        """Bytes reserved right now."""
        with self._lock:
            return self._held

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold `nbytes` for the duration of the ``with`` block.

        Raises:
            Overloaded: the reservation does not fit next to what others hold
                (never waits).
        """
        n = max(0, int(nbytes))
        with self._lock:
            if self._held + n > self.total:
                held = self._held
                raise Overloaded(
                    f"the server is decoding other images ({held / _MB:.0f} MB of "
                    f"{self.total / _MB:.0f} MB held, this one needs {n / _MB:.0f} MB; "
                    f"{env('max_decoding_bytes')}); retry shortly"
                )
            self._held += n
        try:
            yield
        finally:
            with self._lock:
                self._held -= n

    def __repr__(self) -> str:
        return f"DecodeBudget(total_bytes={self.total})"


# The working set of one load_image, measured with ru_maxrss in a fresh process on 58-98 MB
# (decoded) images, is about
#     encoded pixel bytes (pydicom's parsed copy; 0 for PNG/JPEG uploads)
#     + FRAME_FACTOR[codec] x the decoded bytes of one frame
#     + the model input being filled + BASE (one band of rows in float32, PIL's resize buffers).
# Frames are decoded, presented and resized one at a time, so only one frame's
# decoder buffers are alive. The factors hold each decoder's own buffers:
# PIL stores RGB in 4 bytes a pixel; native frames are views of the parsed
# data (a copy only for YBR_FULL_422, big-endian swaps or 1-bit data);
# pylibjpeg-rle decodes into a Rust buffer then a bytearray, after pydicom's
# copy of the frame; libjpeg (JPEG) and OpenJPEG (JPEG 2000: int32 per sample)
# hold several times the frame while decoding it.
FRAME_FACTOR = {
    "raster": 1.4,  # measured 1.47 (8-bit RGB PNG), 1.10 (16-bit grey PNG), 1.49 (RGB JPEG)
    "native": 1.0,  # measured 0.04-0.2 beyond the parsed copy
    "rle": 3.2,  # measured 2.9 (RGB, 1 frame), ~3 (16-bit, 24 frames)
    "jpeg": 6.0,  # measured 5.6 (baseline RGB, 1 frame), ~3 (lossless 16-bit)
    "jpeg-ls": 3.5,  # measured 3.1 (16-bit, 1 frame)
    "jpeg2000": 7.0,  # measured 6.5 (8-bit RGB, 1 frame), ~3 (16-bit, 24 frames)
}
BASE = 24 * _MB


def working_set(encoded_bytes: int, frame_bytes: int, codec: str, output_bytes: int = 0) -> int:
    """Bytes to reserve for one decode (see ``FRAME_FACTOR``).

    Args:
        encoded_bytes: The pixel data as parsed (DICOM), else 0.
        frame_bytes: Decoded bytes of one frame (rows x columns x samples x
            bytes per sample; PNG/JPEG: the whole image in PIL's mode).
        codec: A ``FRAME_FACTOR`` key.
        output_bytes: The model input being filled (frames x channels x
            height x width x 4), which can be large for big models.
    """
    factor = FRAME_FACTOR.get(codec, max(FRAME_FACTOR.values()))
    return int(encoded_bytes + factor * frame_bytes) + output_bytes + BASE


@contextmanager
def reserve(budget: DecodeBudget | None, nbytes: int) -> Iterator[None]:
    """``budget.reserve(nbytes)``, or nothing without a budget.

    An image that alone needs more than the whole budget could never be decoded within it: it is
    refused (413) rather than let past the bound the budget promises.

    Raises:
        TooLarge: ``nbytes`` over the whole budget.
        Overloaded: ``nbytes`` does not fit beside what other decodes hold now.
    """
    if budget is None:
        yield
        return
    if nbytes > budget.total:
        raise TooLarge(f"decoding this image needs about {nbytes / _MB:.0f} MB, more than all decodes may hold together "
                       f"({budget.total / _MB:.0f} MB, {env('max_decoding_bytes')}); send a smaller image or raise "
                       "the setting")
    with budget.reserve(nbytes):
        yield


@dataclass(frozen=True)
class Limits:
    """Caps on one upload, checked before decoding wherever the header allows.

    Attributes:
        max_pixels: Rows x columns x frames.
        max_frames: Frames of a multi-frame DICOM.
        max_bytes: The upload (and a deflated DICOM dataset once inflated).
        max_decoded_bytes: Rows x columns x frames x samples x bytes per sample
            of the decoded array (DICOM: Bits Allocated; PNG/JPEG: PIL's mode),
            the service's ``BIOMED_MAX_DECODED_MB``. One ``load_image`` holds
            about ``budget.working_set`` (measured: 1.1-1.5 times this for PNG,
            JPEG and uncompressed DICOM; compressed single frames more, their
            decoders' own buffers).
        max_elements: DICOM data elements, sequence items and pixel data
            fragments, counted before parsing (``BIOMED_MAX_DICOM_ELEMENTS``).
        max_compressed_pixels: Rows x columns x frames of a DICOM in a JPEG,
            JPEG-LS or JPEG 2000 transfer syntax, whose decoders cost several
            times more per pixel (None: ``max_pixels`` alone).
        budget: Shared by concurrent decodes (``BIOMED_MAX_DECODING_MB``):
            each reserves ``budget.working_set(...)`` (from the header) while
            it decodes and presents, or is refused at once with 429 when that
            does not fit.
    """

    max_pixels: int = default("max_pixels")
    max_frames: int = default("max_frames")
    max_bytes: int = default("max_upload_bytes")
    max_decoded_bytes: int = default("max_decoded_bytes")
    max_elements: int = default("max_dicom_elements")
    max_compressed_pixels: int | None = None
    budget: DecodeBudget | None = None
