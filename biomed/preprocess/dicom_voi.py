"""Modality LUT and VOI for monochrome DICOM frames, per frame where the file says so.

Enhanced (multi-frame) objects keep their rescale and window in functional
groups: the frame's item of (5200,9230) *Per-Frame Functional Groups Sequence*
wins over (5200,9229) *Shared Functional Groups Sequence*, which wins over the
top-level attributes. pydicom's own helpers look at the top level only, so the
look-ups here walk the groups first.

All maths is float32 and in place where possible; every VOI maps to [0, 1].
Rescale and window values that are not finite float32 numbers are refused
(422 ``bad_pixel_data`` naming the attribute, never its value): they would
turn the pixels and the response's ``window`` block into inf/NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from biomed.errors import InputError

_WINDOW_FUNCTIONS = ("linear", "linear_exact", "sigmoid")
_FLOAT32_MAX = float(np.finfo(np.float32).max)

# A VOI step: ("window", center, width, function) | ("lut", first, table) | ("minmax",) | ("minmax", lo, hi)
# | ("modality",): none, the modality values kept (volumes window the whole series later)
Voi = tuple[Any, ...]


def _group_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The first item of `sequence` in the frame's functional group, else the shared one."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and frame < len(per_frame):
        seq = per_frame[frame].get(sequence)
        if seq:
            return seq[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared:
        seq = shared[0].get(sequence)
        if seq:
            return seq[0]
    return None


def _first(value: Any) -> float:
    """The first number of a possibly multi-valued DS/IS attribute."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0]
    return float(value)


def lut_table(item: Dataset, little_endian: bool) -> tuple[int, np.ndarray, int]:
    """Decode a LUT item (Modality or VOI LUT Sequence).

    Returns:
        ``(first_mapped, table, bits)``: the first input value mapped, the
        table as float32 and the nominal bits per entry.
    """
    entries, first, bits = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536
    data = item.LUTData
    if isinstance(data, (bytes, bytearray)):
        table = np.frombuffer(data, dtype="<u2" if little_endian else ">u2")
    else:
        table = np.asarray(data if isinstance(data, (list, tuple)) else list(data))
    if table.size == 0:
        raise ValueError("empty LUT")
    return first, table[:entries].astype(np.float32), bits


def apply_table(x: np.ndarray, first: int, table: np.ndarray) -> np.ndarray:
    """Look every value of `x` up in `table`, clamping below and above its range."""
    idx = np.rint(x).astype(np.int64, copy=False)
    idx -= first
    np.clip(idx, 0, table.size - 1, out=idx)
    return table[idx]


def finite_float32(value: float, name: str, where: str = "") -> float:
    """`value` if it is a finite float32 number, else a 422 naming the attribute (not the value)."""
    if not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
        raise InputError(
            f"{name}{where} is not a finite number within the float32 range; accepted: finite rescale "
            "and window values of magnitude up to 3.4e38", code="bad_pixel_data"
        )
    return value


def frame_rescale(ds: Dataset, frame: int) -> tuple[float, float] | None:
    """``(slope, intercept)`` for one frame, or None where the file sets none (or a zero slope).

    Raises:
        InputError: a slope or intercept that is not a finite float32 number.
    """
    item = _group_item(ds, frame, "PixelValueTransformationSequence")
    for src, where in ((item, " (per-frame functional groups)"), (ds, "")):
        if src is not None and "RescaleSlope" in src and "RescaleIntercept" in src:
            slope = finite_float32(_first(src.RescaleSlope), "(0028,1053) Rescale Slope", where)
            intercept = finite_float32(_first(src.RescaleIntercept), "(0028,1052) Rescale Intercept", where)
            if slope != 0:
                return slope, intercept
    return None


def frame_voi(ds: Dataset, frame: int, little_endian: bool) -> tuple[Voi, str]:
    """The file's VOI for one frame and where it came from.

    Order: the frame's (or shared) Frame VOI LUT item, then the top-level VOI
    LUT Sequence, then the first top-level Window Center/Width; else min/max.
    """
    item = _group_item(ds, frame, "FrameVOILUTSequence")
    for src in (item, ds):
        if src is None:
            continue
        if src.get("VOILUTSequence"):
            first, table, _ = lut_table(src.VOILUTSequence[0], little_endian)
            return ("lut", first, table), "voi_lut"
        if "WindowCenter" in src and "WindowWidth" in src:
            voi = window_voi(src)
            if voi is not None:
                return voi, "file"
    return ("minmax",), "minmax"


def window_voi(src: Dataset) -> Voi | None:
    """The first window of `src` as a VOI step, or None when its width is unusable.

    Raises:
        InputError: a center or width that is not a finite float32 number.
    """
    center = finite_float32(_first(src.WindowCenter), "(0028,1050) Window Center")
    width = finite_float32(_first(src.WindowWidth), "(0028,1051) Window Width")
    function = str(src.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().lower()
    if function not in _WINDOW_FUNCTIONS:
        function = "linear"
    minimum = 1.0 if function == "linear" else 0.0
    if width < minimum or width <= 0:
        return None
    return ("window", center, width, function)


def apply_voi(x: np.ndarray, voi: Voi) -> tuple[np.ndarray, dict[str, Any]]:
    """Map float32 modality values `x` (any shape) to [0, 1] in place (``("modality",)``: left as they are).

    Windows follow DICOM PS3.3 C.11.2.1.2: LINEAR uses ``(x - (c - 0.5)) /
    (w - 1) + 0.5``, LINEAR_EXACT ``(x - c) / w + 0.5`` (both clipped), SIGMOID
    ``1 / (1 + exp(-4 (x - c) / w))``. A VOI LUT's output is scaled by the
    table's own min/max. Min/max uses the extremes of `x`, or the given ones
    for ``("minmax", lo, hi)`` (a frame's extremes when `x` is one band of it).

    Returns:
        The mapped array (usually `x` itself) and the window description.
    """
    kind = voi[0]
    if kind == "modality":
        return x, {"center": None, "width": None, "function": "none"}
    if kind == "lut":
        _, first, table = voi
        lo, hi = float(table.min()), float(table.max())
        scaled = (table - lo) / (hi - lo) if hi > lo else np.zeros_like(table)
        return apply_table(x, first, scaled), {"center": None, "width": None, "function": "lut"}
    if kind == "minmax":
        if len(voi) == 3:
            lo, hi = float(voi[1]), float(voi[2])
        else:
            lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        voi = ("window", (lo + hi) / 2, hi - lo, "linear_exact")
        if hi <= lo:
            x.fill(0.0)
            return x, {"center": lo, "width": 0.0, "function": "linear_exact"}
    _, center, width, function = voi
    if function == "sigmoid":
        x -= center
        x *= -4.0 / width
        with np.errstate(over="ignore"):
            np.exp(x, out=x)
        x += 1.0
        np.reciprocal(x, out=x)
    elif function == "linear" and width == 1.0:
        np.greater(x, center - 0.5, out=x)
    else:
        offset, scale = (center - 0.5, width - 1.0) if function == "linear" else (center, width)
        x -= offset
        x *= 1.0 / scale
        x += 0.5
        np.clip(x, 0.0, 1.0, out=x)
    return x, {"center": float(center), "width": float(width), "function": function}
