"""DICOM to presented pixels, in DICOM order.

decode (any transfer syntax pydicom decodes with the installed plugins) ->
Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence, per frame for
Enhanced objects) -> VOI (the model's window, else the file's VOI LUT, else its
first window with its VOI LUT Function, else the frame's min/max) -> MONOCHROME1
inverted (``1 - x``). Colour images (RGB, YBR_* converted to RGB by pydicom,
PALETTE COLOR through its palette) are scaled by their bit depth; file windows
apply to MONOCHROME images only.

Sizes are checked from the header before any pixel is decoded; a deflated
dataset is inflated with a cap. Nothing here puts patient data into a message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import get_expected_length
from pydicom.uid import UID, ExplicitVRBigEndian

from biomed.errors import InputError, MalformedInput, TooLarge, UnsupportedMedia
from biomed.preprocess.dicom_read import ACCEPTED, PIXEL_KEYWORDS, read, transfer_syntax
from biomed.preprocess.dicom_voi import Voi, apply_table, apply_voi, frame_rescale, frame_voi, lut_table

if TYPE_CHECKING:
    from biomed.preprocess.image import Limits

_SYNTAXES = (
    "implicit/explicit VR little endian, explicit VR big endian, deflated, RLE, JPEG "
    "baseline/extended/lossless, JPEG-LS, JPEG 2000 and HTJ2K"
)
_MONO = ("MONOCHROME1", "MONOCHROME2")


def load_dicom(
    data: bytes, window: tuple[float, float] | None, limits: Limits
) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode and present a DICOM object.

    Args:
        data: The file's bytes, with or without the Part-10 preamble. Without
            it the bytes are accepted only when they parse as a dataset with
            pixel data.
        window: The model's (center, width) in modality units, applied with
            LINEAR_EXACT to MONOCHROME images instead of the file's VOI.
        limits: Size caps, checked from the header before decoding.

    Returns:
        ``(x, info)``: x float32 (frames, rows, columns, samples) in [0, 1],
        samples 1 (grey) or 3 (RGB); info the response's ``input`` block.

    Raises:
        InputError: a subclass naming the problem (see ``biomed.errors``).
    """
    ds = read(data, limits)
    ts = transfer_syntax(ds)
    frames, rows, columns = _check_header(ds, limits)
    decoder = _decoder(ts)
    _check_length(ds, ts)
    try:
        arr, meta = decoder.as_array(ds, as_rgb=True)
    except MemoryError:
        raise TooLarge(f"the image is too large to decode; {ACCEPTED} within the limits") from None
    except Exception as exc:
        raise InputError(
            f"the pixel data could not be decoded ({type(exc).__name__}); {ACCEPTED} with "
            "complete, valid pixel data", code="bad_pixel_data"
        ) from None
    samples = int(meta.get("samples_per_pixel", 1))
    arr = arr.reshape(frames, rows, columns, samples)
    info = {
        "format": "dicom",
        "modality": str(ds.get("Modality", "") or "") or None,
        "rows": rows,
        "columns": columns,
        "frames": frames,
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "") or "") or None,
        "transfer_syntax": ts.name,
    }
    try:
        x, extra = _present(ds, arr, str(meta.get("photometric_interpretation", "")), window, ts)
    except InputError:
        raise
    except MemoryError:
        raise TooLarge(f"the image is too large to process; {ACCEPTED} within the limits") from None
    except Exception as exc:
        raise MalformedInput(
            f"the DICOM presentation attributes could not be read ({type(exc).__name__}); "
            f"{ACCEPTED} with valid Modality LUT/VOI LUT/palette attributes", code="malformed_dicom"
        ) from None
    info.update(extra)
    return x, info


def _check_header(ds: Dataset, limits: Limits) -> tuple[int, int, int]:
    """Frames, rows and columns from the header, refused when over the limits."""
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
    return frames, rows, columns


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


def _present(
    ds: Dataset, arr: np.ndarray, pi: str, window: tuple[float, float] | None, ts: UID
) -> tuple[np.ndarray, dict[str, Any]]:
    """Map decoded pixels (F, R, C, S) to presented float32 in [0, 1] and describe how."""
    original = str(ds.get("PhotometricInterpretation", "") or "")
    if arr.shape[-1] == 1 and pi == "PALETTE COLOR":
        rgb = apply_color_lut(arr[..., 0], ds)
        scale = np.iinfo(rgb.dtype).max if rgb.dtype.kind in "ui" else 1.0
        x = rgb.astype(np.float32) * np.float32(1.0 / scale)
        return np.clip(x, 0.0, 1.0, out=x), _colour_info("PALETTE COLOR -> RGB", scale)
    if arr.shape[-1] == 3:
        bits = int(ds.get("BitsStored", 0) or 0) or arr.dtype.itemsize * 8
        scale = float(2**bits - 1)
        x = arr.astype(np.float32) * np.float32(1.0 / scale)
        conversion = f"{original} -> RGB" if original.startswith("YBR") else None
        return np.clip(x, 0.0, 1.0, out=x), _colour_info(conversion, scale)
    little = ts != ExplicitVRBigEndian
    x, rescale = _modality(ds, arr, little)
    x, voi = _voi(ds, x, window, little)
    inverted = pi == "MONOCHROME1" or (pi not in _MONO and original == "MONOCHROME1")
    if inverted:
        np.subtract(1.0, x, out=x)
    return x, {"rescale": rescale, "window": voi, "inverted": inverted}


def _colour_info(conversion: str | None, scale: float) -> dict[str, Any]:
    info: dict[str, Any] = {
        "rescale": None,
        "window": {"center": scale / 2, "width": scale, "function": "linear_exact", "source": "bit_depth"},
        "inverted": False,
    }
    if conversion:
        info["color_conversion"] = conversion
    return info


def _modality(ds: Dataset, arr: np.ndarray, little: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Apply the Modality LUT or rescale (per frame when the functional groups say so)."""
    frames = arr.shape[0]
    params = [frame_rescale(ds, i) for i in range(frames)]
    if ds.get("ModalityLUTSequence") and not any(params):
        first, table, bits = lut_table(ds.ModalityLUTSequence[0], little)
        x = apply_table(arr, first, table)
        return x, {"lut": {"entries": int(table.size), "first_mapped": first, "bits": bits}}
    x = arr.astype(np.float32)
    if float_pixels := arr.dtype.kind == "f":
        np.nan_to_num(x, copy=False)
    if all(p == params[0] for p in params):
        if params[0] is not None:
            x *= np.float32(params[0][0])
            x += np.float32(params[0][1])
    else:
        for i, p in enumerate(params):
            if p is not None:
                x[i] *= np.float32(p[0])
                x[i] += np.float32(p[1])
    slope, intercept = params[0] or (1.0, 0.0)
    info: dict[str, Any] = {"slope": slope, "intercept": intercept}
    if any(p != params[0] for p in params):
        info["per_frame"] = True
    if float_pixels:
        info["float_pixels"] = True
    return x, info


def _voi(
    ds: Dataset, x: np.ndarray, window: tuple[float, float] | None, little: bool
) -> tuple[np.ndarray, dict[str, Any]]:
    """Map modality values to [0, 1]: the model's window, else the file's VOI per frame."""
    frames = x.shape[0]
    if window is not None:
        steps: list[tuple[Voi, str]] = [(("window", float(window[0]), float(window[1]), "linear_exact"), "model")]
    elif "PerFrameFunctionalGroupsSequence" in ds:
        steps = [frame_voi(ds, i, little) for i in range(frames)]
    else:
        steps = [frame_voi(ds, 0, little)]
    keys = [_voi_key(voi) for voi, _ in steps]
    if len(set(keys)) == 1 and steps[0][0][0] != "minmax":
        x, desc = apply_voi(x, steps[0][0])
        per_frame = False
    else:
        descs = []
        for i in range(frames):
            voi = steps[min(i, len(steps) - 1)][0]
            x[i], d = apply_voi(x[i], voi)
            descs.append(d)
        desc, per_frame = descs[0], any(d != descs[0] for d in descs)
    desc["source"] = steps[0][1]
    if per_frame:
        desc["per_frame"] = True
    return x, desc


def _voi_key(voi: Voi) -> tuple[Any, ...]:
    """A hashable key for comparing VOI steps across frames."""
    if voi[0] == "lut":
        return ("lut", voi[1], voi[2].tobytes())
    return voi
