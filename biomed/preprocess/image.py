"""Uploads (DICOM, PNG, JPEG) to model input tensors, shared by training and serving.

``load_image`` sniffs the format, presents the pixels the way a viewer would
(see ``biomed.preprocess.dicom`` for the DICOM order of operations), converts
to the model's channels and resizes. Colour to grey for a 1-channel model uses
the ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` on the presented
[0, 1] RGB values (YBR and palette images are converted to RGB first); grey to a
3-channel model repeats the grey plane. Alpha channels are ignored.

Memory and time are bounded before decoding: the upload's bytes, pixels,
frames and decoded bytes (``Limits``) come from the headers, compressed
DICOM frames are checked against their own codestream headers, DICOM data
elements, PNG chunks and JPEG marker segments are counted first, and
presentation and resizing run frame by frame and band by band of rows
(``biomed.preprocess.frames``), so a decode holds about its decoded bytes
plus a few megabytes, never a float32 copy of the whole image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from io import BytesIO
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from biomed.errors import InputError, MalformedInput, TooLarge
from biomed.preprocess import dicom
from biomed.preprocess.budget import Limits, reserve, working_set
from biomed.preprocess.codestream import BadCodestream, jpeg_declared
from biomed.preprocess.frames import FrameSink, KeepingSink
from biomed.preprocess.upload import Upload
from biomed.settings import env

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_MB = 2**20
_BAND_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
MAX_PNG_CHUNKS = 100_000  # PIL handles every chunk in Python; real files have tens to thousands
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "area": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class ImageSpec:
    """What an image model takes; stored as JSON in the ONNX metadata.

    Attributes:
        size: Output (height, width).
        channels: 1 (grey) or 3 (RGB).
        window: The model's fixed (center, width) in modality units (e.g. a CT
            HU window), applied to MONOCHROME DICOM instead of the file's VOI.
        interpolation: One of nearest, bilinear, bicubic, area, lanczos (PIL).
    """

    size: tuple[int, int] = (64, 64)
    channels: int = 1
    window: tuple[float, float] | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size {self.size!r} is invalid; use (height, width), both >= 1")
        if self.channels not in (1, 3):
            raise ValueError(f"channels {self.channels} is invalid; choose 1 or 3")
        if self.window is not None and (len(self.window) != 2 or not self.window[1] > 0):
            raise ValueError(f"window {self.window!r} is invalid; use (center, width) with width > 0")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(
                f"interpolation {self.interpolation!r} is unknown; choose one of: {', '.join(_RESAMPLE)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists), as the metadata's ``preprocess`` block."""
        d = {"type": "image", **asdict(self)}
        d["size"] = list(self.size)
        d["window"] = list(self.window) if self.window is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImageSpec:
        """Rebuild from ``to_dict()`` output (lists accepted for tuples)."""
        window = d.get("window")  # "type" is the kind's, not a field
        return cls(
            size=tuple(int(v) for v in d.get("size", (64, 64))),  # type: ignore[arg-type]
            channels=int(d.get("channels", 1)),
            window=(float(window[0]), float(window[1])) if window is not None else None,
            interpolation=str(d.get("interpolation", "bilinear")),
        )


def load_image(data: bytes | Upload, spec: ImageSpec, limits: Limits = Limits()) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn an uploaded DICOM, PNG or JPEG into model input.

    Args:
        data: The file's bytes, or an ``Upload`` of them: a DICOM upload's
            dataset is then parsed once (or taken as parsed before) and kept,
            without pixel data, as ``Upload.header``.
        spec: The model's image spec.
        limits: Size caps, and the shared decode budget if any.

    Returns:
        ``(x, info)``: x float32 (frames, channels, height, width) in [0, 1];
        info the response's ``input`` block (no patient data; every float
        finite, so it serialises with ``allow_nan=False``).

    Raises:
        InputError: a subclass with a short ``code``: unsupported_media_type,
            unsupported_transfer_syntax, no_pixel_data, bad_pixel_data,
            malformed_dicom, too_large, too_many_requests (429, the shared
            decode budget is held by other requests). Nothing else escapes.

    Working set and reservation: ``biomed.preprocess.budget.working_set`` =
    encoded pixel bytes + ``FRAME_FACTOR[codec]`` x one frame's decoded bytes
    + the model input + 24 MB. Measured peak extra RSS over decoded bytes
    (58-98 MB images, 64x64 model input): 8-bit RGB PNG 1.47, 16-bit grey PNG
    1.12, RGB JPEG 1.49, uncompressed DICOM (8-bit RGB or 16-bit mono, 1 or
    20-24 frames) 1.08-1.17, RLE 24 frames 0.77, JPEG lossless 24 frames
    0.50, JPEG 2000 24 frames 0.41; a single large compressed frame costs its
    decoder's buffers: RLE 4.0, JPEG-LS 3.4, JPEG baseline 6.5, JPEG 2000
    (8-bit RGB) 7.2.
    That much is reserved from ``limits.budget`` for the decode.
    """
    return _load(data, limits, FrameSink(spec.size, spec.channels, _RESAMPLE[spec.interpolation]), spec)


def load_presented(
    data: bytes | Upload, spec: ImageSpec, limits: Limits = Limits(), frame: int = 0
) -> tuple[np.ndarray, dict[str, Any], np.ndarray]:
    """``load_image``, plus frame ``frame`` as presented, before any resize: for display and explanations.

    Returns:
        ``(x, info, presented)``: x and info as ``load_image``; presented uint8 (rows,
        columns, 1 or 3) at the file's own geometry, after the Modality LUT, VOI and
        MONOCHROME1 inversion (or palette/YBR conversion), scaled by 255. It is bounded by
        the same caps as the decode (at most one decoded frame's bytes) and reserved from
        ``limits.budget`` with it.

    Raises:
        InputError: as ``load_image``; 422 ``frame_out_of_range`` when the file has no frame ``frame``.
    """
    sink = KeepingSink(spec.size, spec.channels, _RESAMPLE[spec.interpolation], frame)
    x, info = _load(data, limits, sink, spec)
    if sink.kept is None:
        raise InputError(f"frame {frame} is out of range; the file has {info.get('frames', len(x))} frame(s), "
                         "numbered from 0", code="frame_out_of_range")
    return x, info, sink.kept


def _load(upload: bytes | Upload, limits: Limits, sink: FrameSink, spec: ImageSpec
          ) -> tuple[np.ndarray, dict[str, Any]]:
    data = upload.data if isinstance(upload, Upload) else upload
    if len(data) > limits.max_bytes:
        raise TooLarge(f"the upload has {len(data)} bytes; accepted: at most {limits.max_bytes}")
    raster = data.startswith(_PNG) or data.startswith(_JPEG)
    try:
        info = _load_raster(data, limits, sink) if raster else dicom.load_dicom(upload, spec.window, limits, sink)
        if sink.conversion:
            previous = info.get("color_conversion")
            info["color_conversion"] = f"{previous} -> {sink.conversion}" if previous else sink.conversion
        x = sink.result()
        _check_finite(info)
    except InputError:
        raise
    except MemoryError:
        raise TooLarge("the image is too large to process within the limits") from None
    except Exception as exc:  # a safety net: every refusal is a 4xx with a code
        if raster:
            raise InputError(f"the image could not be processed ({type(exc).__name__}); accepted: a "
                             "complete, valid PNG or JPEG", code="bad_pixel_data") from None
        raise MalformedInput(f"the DICOM file could not be processed ({type(exc).__name__}); accepted: a "
                             "valid DICOM Part-10 file with pixel data", code="malformed_dicom") from None
    return x, info


def load_image_file(
    path: str | PathLike[str], spec: ImageSpec, limits: Limits = Limits()
) -> tuple[np.ndarray, dict[str, Any]]:
    """``load_image`` on a file, refusing one over ``limits.max_bytes`` before reading it."""
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise TooLarge(f"the file has {size} bytes; accepted: at most {limits.max_bytes}")
    return load_image(path.read_bytes(), spec, limits)


def _check_finite(info: dict[str, Any], where: str = "") -> None:
    """Refuse an ``info`` block holding inf/NaN (JSON cannot carry them)."""
    for key, value in info.items():
        if isinstance(value, dict):
            _check_finite(value, f"{where}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise InputError(f"the presentation parameter {where}{key} is not a finite number; accepted: "
                             "images whose rescale and window values are finite", code="bad_pixel_data")


def _load_raster(data: bytes, limits: Limits, sink: FrameSink) -> dict[str, Any]:
    """PNG or JPEG into `sink` as (1, H, W, S) in [0, 1], scaled by the bit depth, band by band."""
    fmt = "png" if data.startswith(_PNG) else "jpeg"
    try:
        _check_structure(data, fmt)
        im = Image.open(BytesIO(data), formats=[fmt.upper()])
        width, height = im.size
        if width * height > limits.max_pixels:
            raise TooLarge(
                f"the {fmt.upper()} claims {height}x{width} pixels; accepted: at most "
                f"{limits.max_pixels} pixels"
            )
        decoded = width * height * len(im.getbands()) * _BAND_BYTES.get(im.mode, 1)
        if decoded > limits.max_decoded_bytes:
            raise TooLarge(
                f"the {fmt.upper()} decodes to {decoded / _MB:.0f} MB ({height}x{width} pixels, mode "
                f"{im.mode}); accepted: at most {limits.max_decoded_bytes / _MB:.0f} MB decoded "
                f"({env('max_decoded_bytes')})"
            )
        with reserve(limits.budget, working_set(0, decoded, "raster", sink.reserve_bytes(1, height, width, 3))):
            im.load()
            strip, scale, grey = _raster_strips(im)
            sink.begin(1)
            sink.add(0, height, width, 1 if grey else 3, strip)
    except InputError:
        raise
    except Image.DecompressionBombError:  # PIL's own guard fires in open() for headers over 2x its limit
        raise TooLarge(f"the {fmt.upper()} header claims too many pixels; accepted: at most "
                       f"{limits.max_pixels} pixels") from None
    except MemoryError:
        raise TooLarge(f"the {fmt.upper()} is too large to decode within the limits") from None
    except Exception as exc:
        raise InputError(
            f"the {fmt.upper()} could not be decoded ({type(exc).__name__}); accepted: a complete, "
            "valid PNG or JPEG", code="bad_pixel_data"
        ) from None
    info = {
        "format": fmt,
        "modality": None,
        "rows": height,
        "columns": width,
        "frames": 1,
        "photometric_interpretation": "MONOCHROME2" if grey else "RGB",
        "transfer_syntax": None,
        "rescale": None,
        "window": {"center": scale / 2, "width": scale, "function": "linear_exact", "source": "bit_depth"},
        "inverted": False,
    }
    if im.mode not in ("L", "RGB", "I;16", "I", "1"):
        info["color_conversion"] = f"{im.mode} -> {'L' if grey else 'RGB'}"
    return info


def _check_structure(data: bytes, fmt: str) -> None:
    """Count PNG chunks / JPEG marker segments and scans before PIL walks them (in Python)."""
    if fmt == "jpeg":
        try:
            jpeg_declared(data)
        except BadCodestream as exc:
            raise InputError(f"the JPEG is unreadable: {exc}; accepted: a complete, valid PNG or JPEG",
                             code="bad_pixel_data") from None
        return
    pos, count, n = 8, 0, len(data)
    while pos + 8 <= n:
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise InputError(f"the PNG has more than {MAX_PNG_CHUNKS} chunks; accepted: at most "
                             f"{MAX_PNG_CHUNKS}", code="bad_pixel_data")
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length


def _raster_strips(im: Image.Image) -> tuple[Callable[[int, int], np.ndarray], float, bool]:
    """A band presenter for a loaded image, the value that maps to 1.0, and whether it is grey."""
    width = im.size[0]
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        scale, grey = 65535.0 if im.mode != "I" or im.getextrema()[1] > 255 else 255.0, True

        def pixels(part: Image.Image) -> np.ndarray:
            return np.asarray(part)
    elif im.mode in ("L", "1", "LA", "La"):
        scale, grey = 255.0, True

        def pixels(part: Image.Image) -> np.ndarray:
            return np.asarray(part.convert("L"))
    else:
        scale, grey = 255.0, False

        def pixels(part: Image.Image) -> np.ndarray:
            if part.mode == "P":
                part = part.convert("RGBA")
            return np.asarray(part.convert("RGB"))

    factor = np.float32(1.0 / scale)

    def strip(y0: int, y1: int) -> np.ndarray:
        x = pixels(im.crop((0, y0, width, y1))).astype(np.float32)
        x *= factor
        np.clip(x, 0.0, 1.0, out=x)
        return x.reshape(y1 - y0, width, 1 if grey else 3)

    return strip, scale, grey
