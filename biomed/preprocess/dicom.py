"""DICOM to presented pixels, in DICOM order.

decode (any transfer syntax pydicom decodes with the installed plugins) ->
Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, per frame for
Enhanced objects) -> VOI (the model's window, else the file's VOI LUT, else its
first window with its VOI LUT Function, else the frame's min/max) -> MONOCHROME1
inverted (``1 - x``); or, asked for ``MODALITY``, the modality values themselves (no VOI, no
inversion: volumes window the whole series after resampling, ``biomed.preprocess.volume``). Colour images (RGB, YBR_* converted to RGB by pydicom,
PALETTE COLOR through its palette) are scaled by their bit depth; file windows
apply to MONOCHROME images only.

Sizes (pixels, frames, decoded bytes) are checked from the header, and each
compressed frame's codestream header against it (``codestream``), before any
pixel is decoded; data elements are counted before parsing and a deflated
dataset is inflated with a cap (``dicom_read``). Frames are then decoded one at
a time and presented band by band of rows into a ``FrameSink``, so the float32
working set is one band, not the image; the decode reserves its working set
from ``Limits.budget``. Every failure is an ``InputError`` (non-finite rescale
or window values included: they are refused, naming the attribute). Nothing
here puts patient data into a message.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, Union

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, convert_color_space
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.decoders.pylibjpeg import is_available as rle_bounded
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRBigEndian, JPEG2000TransferSyntaxes, JPEGLSTransferSyntaxes, RLELossless

from biomed.errors import InputError, MalformedInput, TooLarge, UnsupportedMedia
from biomed.preprocess.budget import reserve, working_set
from biomed.preprocess.codestream import check_frames
from biomed.preprocess.dicom_read import ACCEPTED, PIXEL_KEYWORDS, transfer_syntax
from biomed.preprocess.dicom_voi import Voi, apply_table, apply_voi, frame_rescale, frame_voi, lut_table
from biomed.preprocess.frames import FrameSink, bands
from biomed.preprocess.identity import PixelDigest
from biomed.preprocess.upload import Upload
from biomed.settings import env

if TYPE_CHECKING:
    from biomed.preprocess.budget import Limits

_SYNTAXES = (
    "implicit/explicit VR little endian, explicit VR big endian, deflated, RLE, JPEG "
    "baseline/extended/lossless, JPEG-LS, JPEG 2000 and HTJ2K"
)
_MONO = ("MONOCHROME1", "MONOCHROME2")
MODALITY = "modality"  # ``window`` asking for modality values (after the Modality LUT), unclipped
_MB = 2**20
_T = TypeVar("_T")


def load_dicom(
    data: bytes | Upload, window: tuple[float, float] | str | None, limits: Limits, sink: FrameSink
) -> dict[str, Any]:
    """Decode and present a DICOM object into `sink`, one frame (and band of rows) at a time.

    Args:
        data: The file's bytes, with or without the Part-10 preamble. Without
            it the bytes are accepted only when they parse as a dataset with
            pixel data. An ``Upload`` is parsed once: its dataset is parsed
            here unless it was before, and once decoded it keeps the header
            without pixel data (``Upload.header``).
        window: The model's (center, width) in modality units, applied with
            LINEAR_EXACT to MONOCHROME images instead of the file's VOI; ``MODALITY``:
            the modality values of MONOCHROME images, unclipped (no VOI, no inversion).
        limits: Size caps, checked from the header (and each compressed frame's
            codestream header) before decoding; ``limits.budget`` is reserved
            for the decode.
        sink: Receives every frame, presented as float32 (rows, columns,
            samples) in [0, 1], samples 1 (grey) or 3 (RGB).

    Returns:
        The response's ``input`` block.

    Raises:
        InputError: a subclass naming the problem (see ``biomed.errors``);
            nothing else escapes.
    """
    upload = Upload.of(data)
    ds = upload.dataset(limits)
    ts = transfer_syntax(ds)
    frames, rows, columns, samples, itemsize = _check_header(ds, limits)
    cap = limits.max_compressed_pixels
    if cap is not None and _codec(ts) not in ("native", "rle") and rows * columns * frames > cap:
        raise TooLarge(f"the DICOM file claims {rows}x{columns} pixels x {frames} frames in {ts.name}; accepted: at "
                       f"most {cap} pixels in all in a compressed transfer syntax")
    decoder = _decoder(ts)
    _check_length(ds, ts)
    check_frames(ds, ts, frames, rows, columns, samples, itemsize, limits)
    info = {
        "format": "dicom",
        "modality": str(ds.get("Modality", "") or "") or None,
        "rows": rows,
        "columns": columns,
        "frames": frames,
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "") or "") or None,
        "transfer_syntax": ts.name,
    }
    encoded = len(ds[next(k for k in PIXEL_KEYWORDS if k in ds)].value or b"")
    need = working_set(encoded, rows * columns * samples * itemsize, _codec(ts),
                       sink.reserve_bytes(frames, rows, columns, samples))
    with reserve(limits.budget, need):
        sink.begin(frames)
        pixels = _decoded_frames(decoder, ds, ts, frames)
        presenter: _Presenter | None = None
        digest = PixelDigest() if upload.identify else None  # the content identity's pixel part
        try:
            for index in range(frames):
                arr, meta = _next_frame(pixels, index, frames)
                arr = _frame_shape(arr, rows, columns, int(meta.get("samples_per_pixel", samples)))
                if digest is not None:
                    digest.add(arr)
                presenter = presenter or _guard(lambda: _presenter(ds, arr, meta, window, ts, frames))
                _guard(lambda: presenter.add(sink, index, arr))  # noqa: B023 - called at once
        finally:
            pixels.close()
        info.update(_guard(presenter.info))  # type: ignore[union-attr]
    if digest is not None:
        upload.pixels_sha256 = digest.hexdigest()
    upload.decoded()
    return info


def _guard(step: Callable[[], _T]) -> _T:
    """Run a presentation step; anything but an InputError becomes a 400/413 naming its type."""
    try:
        return step()
    except InputError:
        raise
    except MemoryError:
        raise TooLarge(f"the image is too large to process; {ACCEPTED} within the limits") from None
    except Exception as exc:
        raise MalformedInput(
            f"the DICOM presentation attributes could not be read ({type(exc).__name__}); "
            f"{ACCEPTED} with valid Modality LUT/VOI LUT/palette attributes", code="malformed_dicom"
        ) from None


def _codec(ts: UID) -> str:
    """The working-set class of a transfer syntax (see ``biomed.preprocess.budget.FRAME_FACTOR``)."""
    if not ts.is_encapsulated:
        return "native"
    if ts in JPEG2000TransferSyntaxes:
        return "jpeg2000"
    if ts in JPEGLSTransferSyntaxes:
        return "jpeg-ls"
    return "rle" if ts == RLELossless else "jpeg"


def _decoded_frames(decoder: Any, ds: Dataset, ts: UID, frames: int) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """pydicom's frame-by-frame decoder: no colour conversion (done per band), no excess frames.

    Native frames are read-only views of the pixel data (no copy) when every allocated bit is stored; RLE uses
    pylibjpeg-rle, which decodes into a buffer of the header's size.
    """
    options: dict[str, Any] = {"as_rgb": False, "allow_excess_frames": False}
    if not ts.is_encapsulated and ds.get("BitsStored") == ds.get("BitsAllocated"):
        options["view_only"] = True  # else pydicom copies anyway, to clear the unused bits (and logs a warning)
    if ts == RLELossless:  # pydicom's own RLE decoder grows its output with every run, without bound
        if not rle_bounded(ts):
            raise UnsupportedMedia(
                f"transfer syntax '{ts.name}' needs the pylibjpeg-rle decoder, which is not installed; "
                f"accepted: {_SYNTAXES}", code="unsupported_transfer_syntax"
            )
        options["decoding_plugin"] = "pylibjpeg"
    return decoder.iter_array(ds, **options)


def _next_frame(pixels: Iterator[tuple[np.ndarray, dict[str, Any]]], index: int, frames: int) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        return next(pixels)
    except StopIteration:
        raise InputError(
            f"the pixel data holds {index} of the {frames} frames the header describes; {ACCEPTED} with "
            "complete pixel data", code="bad_pixel_data"
        ) from None
    except MemoryError:
        raise TooLarge(f"the image is too large to decode; {ACCEPTED} within the limits") from None
    except Exception as exc:
        raise InputError(
            f"the pixel data could not be decoded ({type(exc).__name__}); {ACCEPTED} with "
            "complete, valid pixel data", code="bad_pixel_data"
        ) from None


def _frame_shape(arr: np.ndarray, rows: int, columns: int, samples: int) -> np.ndarray:
    """One decoded frame as (rows, columns, samples), refused when its size is not the header's."""
    try:
        return arr.reshape(rows, columns, samples)
    except Exception:
        raise InputError(
            f"a decoded frame holds {arr.size} values but the header describes {rows}x{columns}x{samples}; "
            f"{ACCEPTED} with pixel data that matches Rows, Columns and Samples per Pixel",
            code="bad_pixel_data",
        ) from None


def _check_header(ds: Dataset, limits: Limits) -> tuple[int, int, int, int, int]:
    """Frames, rows, columns, samples and bytes per decoded sample, refused when over the limits."""
    if not any(k in ds for k in PIXEL_KEYWORDS):
        sop = UID(str(ds.get("SOPClassUID", "") or ""))
        kind = f" ({sop.name})" if sop and sop.name != str(sop) else ""
        raise InputError(
            f"the DICOM object{kind} holds no pixel data; accepted: DICOM images such as CT, MR, "
            "CR, DX, US or secondary capture", code="no_pixel_data"
        )
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception:
        raise MalformedInput(
            f"the DICOM header lacks valid Rows, Columns, Number of Frames or Samples per Pixel; "
            f"{ACCEPTED}", code="malformed_dicom"
        ) from None
    if rows <= 0 or columns <= 0 or frames <= 0 or samples not in (1, 3):
        raise MalformedInput(
            f"the DICOM header describes an empty or odd image ({rows}x{columns}, {frames} frames, "
            f"{samples} samples per pixel); accepted: positive sizes and 1 or 3 samples per pixel",
            code="malformed_dicom",
        )
    if frames > limits.max_frames:
        raise TooLarge(f"the DICOM file has {frames} frames; accepted: at most {limits.max_frames}")
    if rows * columns * frames > limits.max_pixels:
        raise TooLarge(
            f"the DICOM file claims {rows}x{columns} pixels x {frames} frames; accepted: at most "
            f"{limits.max_pixels} pixels in all"
        )
    itemsize = _itemsize(ds)
    decoded = rows * columns * frames * samples * itemsize
    if decoded > limits.max_decoded_bytes:
        raise TooLarge(
            f"the DICOM pixel data decodes to {decoded / _MB:.0f} MB ({rows}x{columns} pixels x {frames} "
            f"frames x {samples} samples x {itemsize} bytes); accepted: at most "
            f"{limits.max_decoded_bytes / _MB:.0f} MB decoded ({env('max_decoded_bytes')})"
        )
    return frames, rows, columns, samples, itemsize


def _itemsize(ds: Dataset) -> int:
    """Bytes per decoded sample, as pydicom allocates them from Bits Allocated (1 when unreadable)."""
    try:
        bits = int(ds.get("BitsAllocated", 8) or 8)
    except Exception:
        return 1  # pydicom refuses such a file when decoding
    return 1 if bits <= 8 else 2 if bits <= 16 else 4 if bits <= 32 else 8


def _decoder(ts: UID) -> Any:
    """pydicom's decoder for `ts`, refused when none is implemented or installed."""
    try:
        decoder = get_decoder(ts)
        available = decoder.is_available
    except Exception:
        available = False
    if not available:
        raise UnsupportedMedia(
            f"transfer syntax '{ts.name}' ({ts}) cannot be decoded here; accepted: {_SYNTAXES}",
            code="unsupported_transfer_syntax",
        )
    return decoder


def _check_length(ds: Dataset, ts: UID) -> None:
    """Refuse native pixel data shorter than the header describes."""
    if ts.is_encapsulated:
        return
    keyword = next(k for k in PIXEL_KEYWORDS if k in ds)
    try:
        expected = get_expected_length(ds, "bytes")
        actual = len(ds[keyword].value or b"")
    except Exception:
        raise MalformedInput(
            f"the DICOM pixel description (Bits Allocated, Photometric Interpretation) is invalid; "
            f"{ACCEPTED}", code="malformed_dicom"
        ) from None
    if actual < expected:
        raise InputError(
            f"the pixel data holds {actual} bytes but the header describes {expected}; the file "
            f"looks truncated; {ACCEPTED} with complete pixel data", code="bad_pixel_data"
        )


_Presenter = Union["_Colour", "_Palette", "_Mono"]


def _presenter(
    ds: Dataset, arr: np.ndarray, meta: dict[str, Any], window: tuple[float, float] | str | None, ts: UID, frames: int
) -> _Presenter:
    """How decoded frames (rows, columns, samples) become presented float32 in [0, 1]."""
    pi = str(meta.get("photometric_interpretation", ""))
    original = str(ds.get("PhotometricInterpretation", "") or "")
    if arr.shape[-1] == 1 and pi == "PALETTE COLOR":
        return _Palette(ds)
    if arr.shape[-1] == 3:
        return _Colour(ds, arr.dtype, pi, original)
    return _Mono(ds, frames, window, ts != ExplicitVRBigEndian, pi, original, arr.dtype)


class _Colour:
    """RGB (YBR_FULL/YBR_FULL_422 converted by pydicom's own formula, band by band), scaled by the bit depth."""

    def __init__(self, ds: Dataset, dtype: np.dtype, pi: str, original: str) -> None:
        bits = int(ds.get("BitsStored", 0) or 0) or dtype.itemsize * 8
        self.scale = float(2**bits - 1)
        self.ybr = pi in ("YBR_FULL", "YBR_FULL_422")
        self.conversion = f"{original} -> RGB" if original.startswith("YBR") else None

    def add(self, sink: FrameSink, index: int, arr: np.ndarray) -> None:
        rows, columns, _ = arr.shape
        factor = np.float32(1.0 / self.scale)

        def strip(y0: int, y1: int) -> np.ndarray:
            band = arr[y0:y1]
            if self.ybr:
                band = convert_color_space(band, "YBR_FULL", "RGB")
            x = band.astype(np.float32) * factor
            return np.clip(x, 0.0, 1.0, out=x)

        sink.add(index, rows, columns, 3, strip)

    def info(self) -> dict[str, Any]:
        return _colour_info(self.conversion, self.scale)


class _Palette:
    """PALETTE COLOR through its palette, band by band, scaled by the palette's range."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds
        self.scale: float | int = 1.0

    def add(self, sink: FrameSink, index: int, arr: np.ndarray) -> None:
        rows, columns, _ = arr.shape

        def strip(y0: int, y1: int) -> np.ndarray:
            rgb = apply_color_lut(arr[y0:y1, :, 0], self.ds)
            self.scale = np.iinfo(rgb.dtype).max if rgb.dtype.kind in "ui" else 1.0
            x = rgb.astype(np.float32) * np.float32(1.0 / self.scale)
            return np.clip(x, 0.0, 1.0, out=x)

        sink.add(index, rows, columns, 3, strip)

    def info(self) -> dict[str, Any]:
        return _colour_info("PALETTE COLOR -> RGB", self.scale)


class _Mono:
    """Modality LUT or rescale, then VOI, then MONOCHROME1 inversion, per frame and band of rows.

    A frame's min/max window (when it has no other) comes from the whole
    frame: a first pass over its bands when it spans more than one.
    """

    def __init__(
        self, ds: Dataset, frames: int, window: tuple[float, float] | str | None, little: bool, pi: str,
        original: str, dtype: np.dtype,
    ) -> None:
        self.params = [frame_rescale(ds, i) for i in range(frames)]
        self.lut: tuple[int, np.ndarray] | None = None
        self.float_pixels = dtype.kind == "f"
        if ds.get("ModalityLUTSequence") and not any(self.params):
            first, table, bits = lut_table(ds.ModalityLUTSequence[0], little)
            self.lut = (first, table)
            self.rescale: dict[str, Any] = {"lut": {"entries": int(table.size), "first_mapped": first, "bits": bits}}
        else:
            slope, intercept = self.params[0] or (1.0, 0.0)
            self.rescale = {"slope": slope, "intercept": intercept}
            if any(p != self.params[0] for p in self.params):
                self.rescale["per_frame"] = True
            if self.float_pixels:
                self.rescale["float_pixels"] = True
        per_frame_rescale = any(p != self.params[0] for p in self.params)
        self.rescale_name = "(0028,1053) Rescale Slope and (0028,1052) Rescale Intercept" + (
            " (per-frame functional groups)" if per_frame_rescale else "")
        if window == MODALITY:
            self.steps = [(("modality",), "modality")]
        elif window is not None:
            self.steps: list[tuple[Voi, str]] = [
                (("window", float(window[0]), float(window[1]), "linear_exact"), "model")]
        elif "PerFrameFunctionalGroupsSequence" in ds:
            self.steps = [frame_voi(ds, i, little) for i in range(frames)]
        else:
            self.steps = [frame_voi(ds, 0, little)]
        monochrome1 = pi == "MONOCHROME1" or (pi not in _MONO and original == "MONOCHROME1")
        self.inverted = monochrome1 and window != MODALITY
        self.descs: list[dict[str, Any]] = []

    def _modality(self, index: int, a: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Modality values of a band (float32) and their extremes, refused when not finite."""
        if self.lut is not None:
            x = apply_table(a, *self.lut)
        else:
            x = a.astype(np.float32)
            if self.float_pixels:
                np.nan_to_num(x, copy=False)
            p = self.params[index]
            if p is not None:
                x *= np.float32(p[0])
                x += np.float32(p[1])
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError(
                f"{self.rescale_name} map the stored values beyond the float32 range; accepted: "
                "rescale values that keep modality values finite", code="bad_pixel_data"
            )
        return x, lo, hi

    def add(self, sink: FrameSink, index: int, arr: np.ndarray) -> None:
        rows, columns, _ = arr.shape
        a = arr[..., 0]
        voi = self.steps[min(index, len(self.steps) - 1)][0]
        spans = bands(rows, columns, 1)
        cached: dict[tuple[int, int], np.ndarray] = {}
        if voi[0] == "minmax":
            lo, hi = math.inf, -math.inf
            for y0, y1 in spans:
                x, band_lo, band_hi = self._modality(index, a[y0:y1])
                lo, hi = min(lo, band_lo), max(hi, band_hi)
                if len(spans) == 1:
                    cached[(y0, y1)] = x
            voi = ("minmax", lo, hi)
        desc: dict[str, Any] = {}

        def strip(y0: int, y1: int) -> np.ndarray:
            x = cached.pop((y0, y1), None)
            if x is None:
                x = self._modality(index, a[y0:y1])[0]
            x, d = apply_voi(x, voi)
            desc.update(d)
            if self.inverted:
                np.subtract(1.0, x, out=x)
            return x[..., None]

        sink.add(index, rows, columns, 1, strip)
        self.descs.append(desc)

    def info(self) -> dict[str, Any]:
        desc = dict(self.descs[0])
        per_frame = any(d != self.descs[0] for d in self.descs)
        desc["source"] = self.steps[0][1]
        if per_frame:
            desc["per_frame"] = True
        return {"rescale": self.rescale, "window": desc, "inverted": self.inverted}


def _colour_info(conversion: str | None, scale: float) -> dict[str, Any]:
    info: dict[str, Any] = {
        "rescale": None,
        "window": {"center": scale / 2, "width": scale, "function": "linear_exact", "source": "bit_depth"},
        "inverted": False,
    }
    if conversion:
        info["color_conversion"] = conversion
    return info
