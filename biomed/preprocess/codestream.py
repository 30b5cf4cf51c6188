"""Compressed frames checked against the DICOM header before any of them is decoded.

A decoder allocates what the codestream declares, not what the DICOM header
says, so a small file whose header passes the size caps can still ask for
gigabytes. Every frame pydicom would decode (framed by pydicom's own
``generate_fragmented_frames``, with the same Number of Frames and Extended
Offset Table) is read here first:

* JPEG 2000 and HTJ2K: the SIZ marker of the raw codestream, or of the ``jp2c``
  box of a JP2 wrapper: ``Xsiz - XOsiz`` columns, ``Ysiz - YOsiz`` rows,
  ``Csiz`` components, and the tile count (each tile costs the decoder a few
  kilobytes of bookkeeping whatever its size).
* JPEG (ISO 10918-1: baseline, extended, progressive, lossless, hierarchical)
  and JPEG-LS (SOF55): every frame header (SOF0-SOF15, SOF55 and DHP) up to
  EOI, walking marker segments by their lengths and entropy-coded data by its
  stuffing rules; marker segments and scans are counted. A frame header whose
  number of lines is 0 leaves the height to a later DNL marker (or, for
  JPEG-LS, an LSE oversize-dimension segment) that cannot be checked before
  decoding; such frames, and any DNL marker, are refused: DICOM encoders state
  the rows in the frame header.
* RLE: the 64-byte header: the segment count must be samples x bytes per
  sample, the first offset 64, offsets increasing and inside the frame, so
  the decoder (pylibjpeg-rle) writes into a buffer of the header's size.

A codestream over the caps is refused with 413, one that disagrees with Rows,
Columns or Samples per Pixel with 422 ``bad_pixel_data`` (so is one wider or
taller than 65535, which no DICOM header can describe: that is garbage, not a
large image); messages hold numbers only.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragmented_frames
from pydicom.pixels.common import as_pixel_options
from pydicom.uid import (
    UID,
    JPEG2000TransferSyntaxes,
    JPEGLSTransferSyntaxes,
    JPEGTransferSyntaxes,
    RLELossless,
)

from biomed.errors import InputError, TooLarge
from biomed.settings import env

if TYPE_CHECKING:
    from biomed.preprocess.budget import Limits

MAX_TILES = 4096  # JPEG 2000 tiles per frame
MAX_SEGMENTS = 10_000  # JPEG marker segments per codestream (real files: tens)
MAX_SCANS = 256  # JPEG scans per codestream; each progressive scan revisits the whole image
_HEAD = 64 * 1024  # bytes of a JPEG 2000 frame read for its main header
_MB = 2**20

# ISO 10918-1 frame headers (SOF0-3, 5-7, 9-11, 13-15), JPEG-LS SOF55 (0xF7), DHP (0xDE)
_SOF = frozenset([*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0), 0xF7])
_DHP, _DNL, _SOS, _EOI = 0xDE, 0xDC, 0xDA, 0xD9
# A marker: 0xFF then a code; in entropy-coded data 0xFF is followed by 0x00 (stuffing), RSTn
# (0xD0-0xD7) or more 0xFF (fill) in ISO 10918-1, and by a byte < 0x80 (bit stuffing) in JPEG-LS.
_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_LS_MARKER = re.compile(rb"\xff[\x80-\xcf\xd8-\xfe]")


class BadCodestream(Exception):
    """A frame's codestream is unreadable or inconsistent (internal; becomes an InputError)."""


@dataclass(frozen=True)
class Declared:
    """What one codestream says it holds."""

    rows: int
    columns: int
    components: int
    tiles: int = 1


def _bad(detail: str) -> InputError:
    return InputError(detail, code="bad_pixel_data")


def check_frames(
    ds: Dataset, ts: UID, frames: int, rows: int, columns: int, samples: int, itemsize: int, limits: Limits
) -> None:
    """Refuse encapsulated frames whose codestream disagrees with the header or exceeds the caps.

    Args:
        ds: The dataset (pixel data still encoded).
        ts: Its transfer syntax; native syntaxes return at once.
        frames, rows, columns, samples: From the DICOM header (already capped).
        itemsize: Bytes per decoded sample (from Bits Allocated).
        limits: The caps (``max_pixels``, ``max_decoded_bytes``).

    Raises:
        TooLarge: a codestream declares more than the caps.
        InputError: ``bad_pixel_data``: unreadable, or not what the header says.
    """
    if not ts.is_encapsulated:
        return
    if ts in JPEG2000TransferSyntaxes:
        kind = "JPEG 2000"
    elif ts in JPEGLSTransferSyntaxes:
        kind = "JPEG-LS"
    elif ts in JPEGTransferSyntaxes:
        kind = "JPEG"
    elif ts == RLELossless:
        kind = "RLE"
    else:
        return  # nothing else is decodable here (refused before this is called)
    for index, fragments in enumerate(_frames(ds, frames)):
        where = f"frame {index}" if frames > 1 else "the frame"
        try:
            if kind == "RLE":
                _check_rle(_head(fragments, 64), sum(len(f) for f in fragments), samples, itemsize)
                continue
            if kind == "JPEG 2000":
                declared = j2k_declared(_head(fragments, _HEAD))
            else:
                declared = jpeg_declared(b"".join(fragments), ls=kind == "JPEG-LS")
        except BadCodestream as exc:
            raise _bad(f"{where} of the {kind} pixel data is unreadable: {exc}; accepted: complete, "
                       "valid codestreams") from None
        pixels = declared.rows * declared.columns
        nbytes = pixels * declared.components * itemsize
        dicom_size = declared.rows <= 65535 and declared.columns <= 65535  # Rows, Columns are US
        if dicom_size and (pixels > limits.max_pixels or nbytes > limits.max_decoded_bytes):
            raise TooLarge(
                f"{where}'s {kind} codestream declares {declared.rows}x{declared.columns} pixels x "
                f"{declared.components} components ({nbytes / _MB:.0f} MB decoded) although the DICOM header "
                f"says {rows}x{columns}; accepted: at most {limits.max_pixels} pixels and "
                f"{limits.max_decoded_bytes / _MB:.0f} MB decoded ({env('max_decoded_bytes')})"
            )
        if (declared.rows, declared.columns, declared.components) != (rows, columns, samples):
            raise _bad(
                f"{where}'s {kind} codestream declares {declared.rows}x{declared.columns} pixels with "
                f"{declared.components} components but the DICOM header says {rows}x{columns} with "
                f"{samples} samples per pixel; accepted: codestreams that match Rows, Columns and "
                "Samples per Pixel"
            )
        if declared.tiles > MAX_TILES:
            raise TooLarge(f"{where}'s {kind} codestream is split into {declared.tiles} tiles; accepted: "
                           f"at most {MAX_TILES}")


def _frames(ds: Dataset, frames: int) -> Iterator[tuple[bytes, ...]]:
    """The fragments of each frame pydicom would decode, at most `frames` of them."""
    try:
        offsets = as_pixel_options(ds).get("extended_offsets")
        yield from islice(
            generate_fragmented_frames(ds.PixelData, number_of_frames=frames, extended_offsets=offsets), frames
        )
    except InputError:
        raise
    except Exception as exc:
        raise _bad(f"the encapsulated pixel data could not be split into frames ({type(exc).__name__}); "
                   "accepted: valid encapsulation (basic/extended offset table, item tags)") from None


def _head(fragments: tuple[bytes, ...], size: int) -> bytes:
    """The first `size` bytes of a frame (its fragments concatenated)."""
    out, n = [], 0
    for fragment in fragments:
        out.append(fragment)
        n += len(fragment)
        if n >= size:
            break
    return b"".join(out)[:size]


# --------------------------------------------------------------------------- JPEG 2000

def j2k_declared(buf: bytes) -> Declared:
    """Size, components and tiles from a JPEG 2000 / HTJ2K codestream's SIZ (JP2 wrapper allowed)."""
    start = _jp2c_start(buf) if buf[4:8] == b"jP  " else 0
    if buf[start : start + 4] != b"\xff\x4f\xff\x51":
        raise BadCodestream("no SOC and SIZ markers at the start of the JPEG 2000 codestream")
    siz = buf[start + 6 : start + 6 + 36]
    if len(siz) < 36:
        raise BadCodestream("truncated SIZ marker")
    _rsiz, xsiz, ysiz, xo, yo, xt, yt, xto, yto, csiz = struct.unpack(">HIIIIIIIIH", siz)
    if not (xo < xsiz and yo < ysiz and xt and yt and xto <= xo and yto <= yo and csiz):
        raise BadCodestream("invalid image, tile or component values in the SIZ marker")
    tiles = -(-(xsiz - xto) // xt) * -(-(ysiz - yto) // yt)
    return Declared(ysiz - yo, xsiz - xo, csiz, tiles)


def _jp2c_start(buf: bytes) -> int:
    """Offset of the codestream inside a JP2 file's ``jp2c`` box."""
    pos = 0
    for _ in range(64):
        if pos + 8 > len(buf):
            break
        length, kind = struct.unpack(">I4s", buf[pos : pos + 8])
        header = 8
        if length == 1:
            if pos + 16 > len(buf):
                break
            length, header = struct.unpack(">Q", buf[pos + 8 : pos + 16])[0], 16
        if kind == b"jp2c":
            return pos + header
        if length < header:  # 0 = "to the end of the file": no codestream box follows
            break
        pos += length
    raise BadCodestream("no codestream box in the JP2 file")


# --------------------------------------------------------------------------- JPEG and JPEG-LS

def jpeg_declared(buf: bytes, ls: bool = False) -> Declared:
    """The frame size a JPEG / JPEG-LS codestream declares, every frame header checked."""
    headers = jpeg_frame_headers(buf, ls)
    if not headers:
        raise BadCodestream("no frame header (SOF) before the end of the codestream")
    main = next((h for h in headers if h[0] == _DHP), headers[0])
    _, rows, columns, components = main
    for _, y, x, nf in headers:
        if y > rows or x > columns or nf > components:
            raise BadCodestream(f"a frame header declares {y}x{x} pixels with {nf} components, more "
                                f"than the first ({rows}x{columns} with {components})")
    return Declared(rows, columns, components)


def jpeg_frame_headers(buf: bytes, ls: bool = False) -> list[tuple[int, int, int, int]]:
    """``(marker, lines, samples per line, components)`` of each frame header up to EOI.

    Raises:
        BadCodestream: no SOI, a truncated frame header, height left to DNL (0
            lines or a DNL marker), a zero width, or more than ``MAX_SEGMENTS``
            marker segments or ``MAX_SCANS`` scans.
    """
    if buf[:2] != b"\xff\xd8":
        raise BadCodestream("no SOI marker at the start of the JPEG codestream")
    marker = _LS_MARKER if ls else _MARKER
    headers: list[tuple[int, int, int, int]] = []
    pos, segments, scans, n = 2, 0, 0, len(buf)
    while (m := marker.search(buf, pos)) is not None:
        code, p = buf[m.start() + 1], m.start() + 2
        if code == _EOI:
            break
        if code == 0x01 or 0xD0 <= code <= 0xD8:  # TEM, RSTn, SOI: no segment
            pos = p
            continue
        segments += 1
        if segments > MAX_SEGMENTS:
            raise BadCodestream(f"more than {MAX_SEGMENTS} marker segments")
        if p + 2 > n:
            break
        length = int.from_bytes(buf[p : p + 2], "big")
        if code in _SOF or code == _DHP:
            if p + 8 > n:
                raise BadCodestream("truncated frame header")
            lines, width, components = int.from_bytes(buf[p + 3 : p + 5], "big"), int.from_bytes(
                buf[p + 5 : p + 7], "big"), buf[p + 7]
            if lines == 0:
                raise BadCodestream("the frame header leaves the number of lines to a DNL marker or an "
                                    "oversize-dimension segment, which is not accepted")
            if width == 0 or components == 0:
                raise BadCodestream("the frame header declares no columns or no components")
            headers.append((code, lines, width, components))
        elif code == _DNL:
            raise BadCodestream("a DNL marker redefines the number of lines, which is not accepted")
        elif code == _SOS:
            scans += 1
            if scans > MAX_SCANS:
                raise BadCodestream(f"more than {MAX_SCANS} scans")
        pos = p + max(length, 2)
    return headers


# --------------------------------------------------------------------------- RLE

def _check_rle(header: bytes, length: int, samples: int, itemsize: int) -> None:
    """The RLE header (PS3.5 Annex G) of a frame of `length` bytes against the DICOM header."""
    if len(header) < 64:
        raise BadCodestream("the frame is shorter than the 64-byte RLE header")
    count, *offsets = struct.unpack("<16I", header[:64])
    expected = samples * itemsize
    if count != expected:
        raise BadCodestream(f"the RLE header lists {count} segments but the DICOM header implies "
                            f"{expected} ({samples} samples x {itemsize} bytes)")
    used = offsets[:count]
    if used[0] != 64 or any(b <= a for a, b in zip(used, used[1:])) or used[-1] >= length:
        raise BadCodestream("the RLE segment offsets are not increasing from 64 within the frame")
