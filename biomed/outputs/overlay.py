"""An image explanation drawn over the presented image: the colour map, the blend, PNG bytes.

The map (``biomed/occlusion.py``) is taken to the presented image's rows x columns
(``occlusion.upsample``) and drawn over it red to yellow, transparent where the drop is 0 or
below; its alpha grows with the drop, relative to the map's largest one. The blend runs a band
of rows at a time. The same picture is the ``format=png`` answer, the Secondary Capture's pixels
(``dicom_maps.py``) and the PNG of ``biomed explain-image``.

A PNG is drawn at the presented geometry, scaled down to at most ``MAX_DRAWN_SIDE`` pixels on its
longer side (``drawn``): what a huge source costs to draw, encode and send is bounded, not the
source's (an 8000 x 8000 image would make a PNG of ~100 MB).
"""

from __future__ import annotations

from io import BytesIO

import numpy as np
from PIL import Image

from biomed.errors import MalformedInput
from biomed.occlusion import upsample

DEFAULT_OPACITY = 0.6
# Bytes per presented pixel that drawing or encoding an explanation at the presented geometry holds at once
# (the map upsampled as float32, the RGB overlay, the encoder's or highdicom's copies); ``output_bytes``.
OUTPUT_BYTES_PER_PIXEL = 16
_BAND_PIXELS = 1 << 20  # the overlay is blended a band of about this many pixels at a time
MAX_DRAWN_SIDE = 2048  # the longest side of a PNG drawn of an image (``drawn``)
# Red (low) to yellow (high); the map's alpha also grows with the value (see ``colour``).
_RAMP = np.array([[0.50, 0.00, 0.15], [0.89, 0.10, 0.11], [0.99, 0.55, 0.24], [1.00, 0.93, 0.35]], dtype=np.float32)


def scale(values: np.ndarray) -> float:
    """What the colours are relative to: the map's largest drop (1e-9 when nothing drops)."""
    return max(float(np.max(values)) if values.size else 0.0, 1e-9)


def colour(values: np.ndarray, peak: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """RGB (..., 3) float32 in [0, 1] and alpha (...) in [0, 1] of a map: positive drops only, relative to ``peak``."""
    v = np.clip(values / (scale(values) if peak is None else peak), 0.0, 1.0).astype(np.float32)
    position = v * (len(_RAMP) - 1)
    low = np.minimum(position.astype(np.int64), len(_RAMP) - 2)
    t = (position - low)[..., None]
    rgb = _RAMP[low] * (1 - t) + _RAMP[low + 1] * t
    return rgb, v


def output_bytes(rows: int, columns: int) -> int:
    """What drawing or encoding an explanation at a rows x columns presented geometry holds (reserve it first)."""
    return rows * columns * OUTPUT_BYTES_PER_PIXEL + 8 * 2**20


def drawn_shape(rows: int, columns: int) -> tuple[int, int]:
    """The rows x columns a PNG of a rows x columns image is drawn at: the same, or scaled down to fit
    ``MAX_DRAWN_SIDE`` on its longer side (the aspect ratio kept)."""
    longest = max(rows, columns)
    if longest <= MAX_DRAWN_SIDE:
        return rows, columns
    return max(1, round(rows * MAX_DRAWN_SIDE / longest)), max(1, round(columns * MAX_DRAWN_SIDE / longest))


def drawn(presented: np.ndarray) -> np.ndarray:
    """The presented image (rows, columns, samples) uint8 at ``drawn_shape``: itself when it fits."""
    rows, columns = presented.shape[:2]
    shape = drawn_shape(rows, columns)
    if shape == (rows, columns):
        return presented
    grey = presented.shape[-1] == 1
    image = Image.fromarray(np.ascontiguousarray(presented[..., 0] if grey else presented))
    small = np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BILINEAR, reducing_gap=2.0))
    return small[..., None] if grey else small


def overlay(presented: np.ndarray, values: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """The presented image (rows, columns, 1 or 3) uint8 with the map (rows, columns) drawn over it: uint8 RGB.

    Blended a band of rows at a time, so the float32 working set is one band, not the image.
    """
    if not 0.0 <= opacity <= 1.0:
        raise MalformedInput(f"opacity {opacity} is out of range; accepted: 0 to 1")
    rows, columns = presented.shape[:2]
    out = np.empty((rows, columns, 3), dtype=np.uint8)
    peak_value = scale(values)
    step = max(1, _BAND_PIXELS // max(1, columns))
    for y0 in range(0, rows, step):
        y1 = min(rows, y0 + step)
        base = presented[y0:y1].astype(np.float32) / np.float32(255.0)
        if base.shape[-1] == 1:
            base = np.repeat(base, 3, axis=-1)
        rgb, alpha = colour(values[y0:y1], peak_value)
        a = (alpha * np.float32(opacity))[..., None]
        out[y0:y1] = np.clip(np.rint((base * (1 - a) + rgb * a) * 255.0), 0, 255).astype(np.uint8)
    return out


def png_bytes(pixels: np.ndarray) -> bytes:
    """A PNG of uint8 (rows, columns) grey, (rows, columns, 1) grey or (rows, columns, 3) RGB pixels."""
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    buffer = BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def presented_png(presented: np.ndarray) -> bytes:
    """The presented image alone as PNG bytes, at ``drawn_shape``."""
    return png_bytes(drawn(presented))


def overlay_png(presented: np.ndarray, values: np.ndarray, opacity: float = DEFAULT_OPACITY) -> bytes:
    """``overlay`` as PNG bytes at ``drawn_shape``; ``values`` at the model input's geometry is upsampled to it."""
    image = drawn(presented)
    rows, columns = image.shape[:2]
    return png_bytes(overlay(image, upsample(values, rows, columns), opacity))
