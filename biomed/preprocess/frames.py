"""Presented frames to model input, strip by strip, so no whole image is ever held as float32.

A frame is handed over as a function that presents any band of its rows as
float32 ``(rows, columns, samples)``; ``FrameSink`` converts each band to the
model's channels (colour to grey by the ITU-R BT.601 luma) and resizes with
PIL into a preallocated ``(frames, channels, height, width)`` array.

A frame that fits in one band is resized in one PIL call, exactly as before.
A larger frame that is wider than the model input is resampled horizontally
band by band (PIL's horizontal pass: float32 output, double accumulation, rows
independent), then vertically on the ``(rows, model width)`` result; PIL 13
sometimes runs the vertical pass first on the whole plane, so this can differ
from one whole-plane call by about one float32 ulp (measured <= 1.2e-7). A
larger frame no wider than the model input is assembled and resized in one
call. The float32 working set of a frame is thus one band (``STRIP_BYTES``)
plus ``rows x min(columns, model width)`` per channel, not ``rows x columns x
samples``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from biomed.errors import InputError

STRIP_BYTES = 4 * 2**20  # float32 bytes of one presented band of rows
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601

Strip = Callable[[int, int], np.ndarray]  # (first row, end row) -> float32 (rows, columns, samples)


def strip_rows(columns: int, samples: int) -> int:
    """Rows per band so that a presented band holds about ``STRIP_BYTES`` of float32."""
    return max(1, STRIP_BYTES // (4 * max(1, columns) * max(1, samples)))


def bands(rows: int, columns: int, samples: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering `rows` in bands of ``strip_rows``."""
    step = strip_rows(columns, samples)
    return [(y, min(rows, y + step)) for y in range(0, rows, step)]


class FrameSink:
    """Collects presented frames into ``(frames, channels, height, width)`` float32 in [0, 1].

    Args:
        size: The model's (height, width).
        channels: The model's channels (1 or 3).
        resample: A PIL resampling filter.
    """

    def __init__(self, size: tuple[int, int], channels: int, resample: int) -> None:
        self.size, self.channels, self.resample = size, channels, resample
        self.frames = 0
        self.out: np.ndarray | None = None
        self.conversion: str | None = None  # set when colour frames are reduced to grey

    def output_bytes(self, frames: int) -> int:
        """Bytes of the model input for `frames` frames (what ``result`` returns)."""
        return frames * self.channels * self.size[0] * self.size[1] * 4

    def reserve_bytes(self, frames: int, rows: int, columns: int, samples: int) -> int:
        """Bytes this sink holds for `frames` frames of rows x columns x samples (the decode reserves them)."""
        return self.output_bytes(frames)

    def begin(self, frames: int) -> None:
        """Announce how many frames will be added (the output is allocated at the first)."""
        self.frames = frames

    def add(self, index: int, rows: int, columns: int, samples: int, strip: Strip) -> None:
        """Present, convert and resize frame `index`, one band of rows at a time."""
        h, w = self.size
        planes = 1 if samples == 3 and self.channels == 1 else samples
        if samples == 3 and self.channels == 1:
            self.conversion = "grey (ITU-R BT.601 luma)"
        if self.out is None:
            self.out = np.empty((self.frames, planes, h, w), dtype=np.float32)
        out = self.out[index]
        resample = self.resample
        if (rows, columns) == (h, w):
            for y0, y1 in bands(rows, columns, samples):
                out[:, y0:y1] = np.moveaxis(self._convert(strip(y0, y1), samples), -1, 0)
            return
        spans = bands(rows, columns, samples)
        banded = len(spans) > 1 and columns > w  # resample horizontally band by band
        plane = np.empty((planes, rows, w if banded else columns), dtype=np.float32) if len(spans) > 1 else None
        for y0, y1 in spans:
            x = self._convert(strip(y0, y1), samples)
            if plane is None:  # one band: the whole frame, resized in one PIL call as always
                for s in range(planes):
                    band = np.ascontiguousarray(x[..., s], dtype=np.float32)
                    out[s] = np.asarray(Image.fromarray(band).resize((w, h), resample), dtype=np.float32)
                return
            for s in range(planes):
                band = np.ascontiguousarray(x[..., s], dtype=np.float32)
                if banded:
                    band = np.asarray(Image.fromarray(band).resize((w, y1 - y0), resample), dtype=np.float32)
                plane[s, y0:y1] = band
            del x
        for s in range(planes):
            if banded and rows == h:
                out[s] = plane[s]
            else:
                out[s] = np.asarray(Image.fromarray(plane[s]).resize((w, h), resample), dtype=np.float32)

    def _convert(self, x: np.ndarray, samples: int) -> np.ndarray:
        """A presented band to the model's channel count (colour to grey by BT.601 luma)."""
        if samples == 3 and self.channels == 1:
            return (x @ _LUMA)[..., None]
        return x

    def result(self) -> np.ndarray:
        """The collected ``(frames, channels, height, width)`` array, finite and clipped to [0, 1]."""
        if self.out is None:
            raise ValueError("no frame was added")
        out = self.out
        np.nan_to_num(out, copy=False)
        np.clip(out, 0.0, 1.0, out=out)
        if out.shape[1] == 1 and self.channels == 3:
            out = np.repeat(out, 3, axis=1)
        return out


class KeepingSink(FrameSink):
    """A ``FrameSink`` that also keeps one frame as presented, at its own geometry, as uint8 (for display).

    The kept frame is ``rows x columns x samples`` bytes (1 or 3 samples, as presented: grey or
    RGB), never more than that frame's decoded bytes; ``reserve_bytes`` counts it.

    Args:
        keep: The 0-based frame to keep.

    Raises:
        InputError: 422 ``frame_out_of_range`` from ``begin`` when the image has no frame ``keep``
            (before any pixel is decoded).
    """

    def __init__(self, size: tuple[int, int], channels: int, resample: int, keep: int = 0) -> None:
        super().__init__(size, channels, resample)
        self.keep = keep
        self.kept: np.ndarray | None = None

    def reserve_bytes(self, frames: int, rows: int, columns: int, samples: int) -> int:
        return self.output_bytes(frames) + rows * columns * samples

    def begin(self, frames: int) -> None:
        if not 0 <= self.keep < frames:
            raise InputError(f"frame {self.keep} is out of range; the image has {frames} frame(s), numbered from 0",
                             code="frame_out_of_range")
        super().begin(frames)

    def add(self, index: int, rows: int, columns: int, samples: int, strip: Strip) -> None:
        if index != self.keep:
            super().add(index, rows, columns, samples, strip)
            return
        kept = self.kept = np.empty((rows, columns, samples), dtype=np.uint8)

        def keeping(y0: int, y1: int) -> np.ndarray:
            band = strip(y0, y1)
            shown = np.nan_to_num(band[..., :samples], nan=0.0, posinf=1.0, neginf=0.0)
            kept[y0:y1] = np.rint(np.clip(shown, 0.0, 1.0) * 255.0).reshape(y1 - y0, columns, samples)
            return band

        super().add(index, rows, columns, samples, keeping)
