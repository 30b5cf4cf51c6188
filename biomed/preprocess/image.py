"""Uploads (DICOM, PNG, JPEG) to model input tensors, shared by training and serving.

``load_image`` sniffs the format, presents the pixels the way a viewer would
(see ``biomed.preprocess.dicom`` for the DICOM order of operations), converts
to the model's channels and resizes. Colour to grey for a 1-channel model uses
the ITU-R BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` on the presented
[0, 1] RGB values (YBR and palette images are converted to RGB first); grey to a
3-channel model repeats the grey plane. Alpha channels are ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from io import BytesIO
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from biomed.errors import InputError, TooLarge
from biomed.preprocess import dicom

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
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


@dataclass(frozen=True)
class Limits:
    """Caps on one upload, checked before decoding wherever the header allows."""

    max_pixels: int = 100_000_000
    max_frames: int = 256
    max_bytes: int = 64 * 2**20


def load_image(data: bytes, spec: ImageSpec, limits: Limits = Limits()) -> tuple[np.ndarray, dict[str, Any]]:
    """Turn an uploaded DICOM, PNG or JPEG into model input.

    Args:
        data: The file's bytes.
        spec: The model's image spec.
        limits: Size caps.

    Returns:
        ``(x, info)``: x float32 (frames, channels, height, width) in [0, 1];
        info the response's ``input`` block (no patient data).

    Raises:
        InputError: a subclass with a short ``code``: unsupported_media_type,
            unsupported_transfer_syntax, no_pixel_data, bad_pixel_data,
            malformed_dicom, too_large.
    """
    if len(data) > limits.max_bytes:
        raise TooLarge(f"the upload has {len(data)} bytes; accepted: at most {limits.max_bytes}")
    if data.startswith(_PNG) or data.startswith(_JPEG):
        x, info = _load_raster(data, limits)
    else:
        x, info = dicom.load_dicom(data, spec.window, limits)
    x, conversion = _to_channels(x, spec.channels)
    if conversion:
        previous = info.get("color_conversion")
        info["color_conversion"] = f"{previous} -> {conversion}" if previous else conversion
    return _resize(x, spec), info


def load_image_file(
    path: str | PathLike[str], spec: ImageSpec, limits: Limits = Limits()
) -> tuple[np.ndarray, dict[str, Any]]:
    """``load_image`` on a file, refusing one over ``limits.max_bytes`` before reading it."""
    path = Path(path)
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise TooLarge(f"the file has {size} bytes; accepted: at most {limits.max_bytes}")
    return load_image(path.read_bytes(), spec, limits)


def _load_raster(data: bytes, limits: Limits) -> tuple[np.ndarray, dict[str, Any]]:
    """PNG or JPEG to (1, H, W, S) float32 in [0, 1], scaled by the bit depth."""
    fmt = "png" if data.startswith(_PNG) else "jpeg"
    try:
        im = Image.open(BytesIO(data), formats=[fmt.upper()])
        width, height = im.size
        if width * height > limits.max_pixels:
            raise TooLarge(
                f"the {fmt.upper()} claims {height}x{width} pixels; accepted: at most "
                f"{limits.max_pixels} pixels"
            )
        arr, scale, grey = _raster_array(im)
    except InputError:
        raise
    except Image.DecompressionBombError:  # PIL's own guard fires in open() for headers over 2x its limit
        raise TooLarge(f"the {fmt.upper()} header claims too many pixels; accepted: at most "
                       f"{limits.max_pixels} pixels") from None
    except Exception as exc:
        raise InputError(
            f"the {fmt.upper()} could not be decoded ({type(exc).__name__}); accepted: a complete, "
            "valid PNG or JPEG", code="bad_pixel_data"
        ) from None
    x = arr.astype(np.float32)
    x *= np.float32(1.0 / scale)
    np.clip(x, 0.0, 1.0, out=x)
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
    return x.reshape(1, height, width, 1 if grey else 3), info


def _raster_array(im: Image.Image) -> tuple[np.ndarray, float, bool]:
    """The decoded pixels, the value that maps to 1.0, and whether the image is grey."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im)
        return arr, 65535.0 if im.mode != "I" or arr.max(initial=0) > 255 else 255.0, True
    if im.mode in ("L", "1", "LA", "La"):
        return np.asarray(im.convert("L")), 255.0, True
    if im.mode == "P":
        im = im.convert("RGBA")
    return np.asarray(im.convert("RGB")), 255.0, False


def _to_channels(x: np.ndarray, channels: int) -> tuple[np.ndarray, str | None]:
    """(F, H, W, S) to (F, H, W, 1) for grey models; colour to grey by BT.601 luma."""
    if x.shape[-1] == 3 and channels == 1:
        return (x @ _LUMA)[..., None], "grey (ITU-R BT.601 luma)"
    return x, None


def _resize(x: np.ndarray, spec: ImageSpec) -> np.ndarray:
    """(F, H, W, S) to (F, C, h, w) float32 in [0, 1]; grey planes repeat for C = 3."""
    frames, height, width, samples = x.shape
    h, w = spec.size
    out = np.empty((frames, samples, h, w), dtype=np.float32)
    resample = _RESAMPLE[spec.interpolation]
    for f in range(frames):
        for s in range(samples):
            plane = np.ascontiguousarray(x[f, :, :, s], dtype=np.float32)
            if (height, width) != (h, w):
                plane = np.asarray(Image.fromarray(plane).resize((w, h), resample), dtype=np.float32)
            out[f, s] = plane
    np.nan_to_num(out, copy=False)
    np.clip(out, 0.0, 1.0, out=out)
    if samples == 1 and spec.channels == 3:
        out = np.repeat(out, 3, axis=1)
    return out
