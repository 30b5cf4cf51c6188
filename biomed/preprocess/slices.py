"""The slices of a series, from their headers alone: where each is, in what order, and whether they make a volume.

Each slice is one frame of one file: a single-frame CT or MR instance, or a frame of an Enhanced (or
legacy-converted enhanced) multi-frame object, whose Plane Position, Plane Orientation and Pixel
Measures come from its per-frame functional groups (else the shared ones). ``read_slices`` takes
them from a parsed header; ``plan`` checks that they make one volume and orders them:

- one series, one Frame of Reference, one modality, grey pixels (1 sample, MONOCHROME1/2);
- one orientation (direction cosines within ``ORIENTATION_TOLERANCE``), one matrix size, one pixel
  spacing (within ``SPACING_TOLERANCE``, relative);
- sorted along the slice normal (row direction x column direction) by Image Position (Patient);
- no two slices at one position (``series_duplicate``); the same SOP instance and frame sent twice
  counts once;
- slice spacing uniform within ``GAP_TOLERANCE`` of the median (else ``series_gap``: a missing
  slice, or spacing that varies), and positions moving along the normal, not within the plane,
  within ``TILT_DEGREES`` (else ``series_tilt``: a gantry tilt). A model whose spec lists ``gap``
  or ``tilt`` in ``resample`` takes such a series anyway: the resampling uses every slice's own
  position (``biomed.preprocess.resample``).

Every refusal is a 422 ``InputError`` whose detail says what was found and what is accepted; no
value that identifies a patient or study appears in it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from biomed.errors import InputError

ORIENTATION_TOLERANCE = 1e-3  # direction cosines
SPACING_TOLERANCE = 1e-3  # relative, pixel spacing
GAP_TOLERANCE = 0.1  # relative to the median slice spacing
DUPLICATE_MM = 1e-3  # slices closer than this along the normal are at one position
TILT_DEGREES = 0.5  # the largest angle between the slices' displacement and their normal
IRREGULAR = ("gap", "tilt")  # what a spec may resample instead of refusing


class SeriesError(InputError):
    """A series that does not make one volume (422, with a ``series_*`` code)."""

    status = 422


@dataclass(frozen=True)
class Slice:
    """One frame of one file, with its geometry (mm, patient coordinates)."""

    file: int
    frame: int
    instance: str  # SOP Instance UID (never logged or returned)
    position: np.ndarray  # (3,) Image Position (Patient): the centre of the first pixel
    row: np.ndarray  # (3,) direction of a row (increasing column index)
    column: np.ndarray  # (3,) direction of a column (increasing row index)
    spacing: tuple[float, float]  # Pixel Spacing: between rows, between columns
    rows: int
    columns: int


@dataclass(frozen=True)
class Header:
    """What the checks need of one file besides its slices."""

    series: str
    frame_of_reference: str
    modality: str
    samples: int
    photometric: str
    rows: int
    columns: int
    frames: int


def _item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The frame's item of ``sequence`` in the per-frame functional groups, else the shared one, else None."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame) and per_frame[frame].get(sequence):
        return per_frame[frame].get(sequence)[0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get(sequence):
        return shared[0].get(sequence)[0]
    return None


def _numbers(source: Dataset | None, keyword: str, count: int, what: str) -> np.ndarray:
    value = None if source is None else source.get(keyword)
    try:
        numbers = np.array([float(v) for v in value], dtype=np.float64)  # type: ignore[union-attr]
    except Exception:
        numbers = np.array([])
    if numbers.shape != (count,) or not np.isfinite(numbers).all():
        raise SeriesError(f"a slice has no valid {what}; accepted: CT or MR images with Image Position (Patient), "
                          "Image Orientation (Patient) and Pixel Spacing (or their functional groups)",
                          code="series_geometry")
    return numbers


def read_header(ds: Dataset) -> Header:
    """The series-level attributes of one parsed file (422 ``series_geometry`` when it has no image size)."""
    def text(keyword: str) -> str:
        return str(ds.get(keyword, "") or "").strip()

    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames, samples = int(ds.get("NumberOfFrames", 1) or 1), int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception:
        raise SeriesError("a file lacks valid Rows, Columns or Number of Frames; accepted: CT or MR images",
                          code="series_geometry") from None
    return Header(text("SeriesInstanceUID"), text("FrameOfReferenceUID"), text("Modality"), samples,
                  text("PhotometricInterpretation"), rows, columns, frames)


def read_slices(ds: Dataset, file: int, header: Header) -> list[Slice]:
    """Every frame of a parsed file as a ``Slice`` (422 ``series_geometry`` when one lacks its geometry)."""
    instance = str(ds.get("SOPInstanceUID", "") or "")
    out = []
    for frame in range(header.frames):
        enhanced = "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds
        position = _item(ds, frame, "PlanePositionSequence") if enhanced else ds
        orientation = _item(ds, frame, "PlaneOrientationSequence") if enhanced else ds
        measures = _item(ds, frame, "PixelMeasuresSequence") if enhanced else ds
        p = _numbers(position or ds, "ImagePositionPatient", 3, "Image Position (Patient)")
        o = _numbers(orientation or ds, "ImageOrientationPatient", 6, "Image Orientation (Patient)")
        s = _numbers(measures or ds, "PixelSpacing", 2, "Pixel Spacing")
        row, column = o[:3], o[3:]
        if not (abs(np.linalg.norm(row) - 1) < 1e-2 and abs(np.linalg.norm(column) - 1) < 1e-2
                and abs(row @ column) < 1e-2) or (s <= 0).any():
            raise SeriesError("a slice's Image Orientation (Patient) is not two orthogonal unit vectors, or its Pixel "
                              "Spacing is not positive", code="series_geometry")
        out.append(Slice(file, frame, instance, p, row / np.linalg.norm(row), column / np.linalg.norm(column),
                         (float(s[0]), float(s[1])), header.rows, header.columns))
    return out


def check_headers(headers: list[Header]) -> Header:
    """The one series the files make (422 ``series_mixed`` or ``series_not_grey`` otherwise)."""
    first = headers[0]
    if any(h.samples != 1 or h.photometric not in ("MONOCHROME1", "MONOCHROME2") for h in headers):
        raise SeriesError("a file is not a grey image (1 sample per pixel, MONOCHROME1 or MONOCHROME2); accepted: CT "
                          "or MR series", code="series_not_grey")
    for what, of in (("Series Instance UID", lambda h: h.series), ("Frame of Reference UID",
                                                                     lambda h: h.frame_of_reference),
                     ("Modality", lambda h: h.modality), ("matrix size", lambda h: (h.rows, h.columns))):
        found = {of(h) for h in headers}
        if len(found) > 1:
            shown = f": {', '.join(sorted(f'{r}x{c}' for r, c in found))}" if what == "matrix size" else ""
            raise SeriesError(f"the files mix {len(found)} values of {what}{shown}; accepted: the slices of one series "
                              "(one series, frame of reference, modality and matrix size)", code="series_mixed")
    return first


@dataclass(frozen=True)
class Plan:
    """The slices in order along their normal, and the volume's frame (mm, patient coordinates).

    ``heights`` are each slice's position along ``normal``; ``offsets`` each slice's origin within its
    plane relative to the first one's, along (``column``, ``row``): (0, 0) but for a tilt.
    """

    slices: tuple[Slice, ...]
    row: np.ndarray
    column: np.ndarray
    normal: np.ndarray
    spacing: tuple[float, float]
    heights: np.ndarray
    offsets: np.ndarray  # (slices, 2)
    slice_spacing: float
    irregular: tuple[str, ...]  # what was found and resampled: "gap", "tilt"

    def describe(self) -> dict[str, Any]:
        """The geometry for a response's ``input`` block (no UIDs)."""
        return {"slices": len(self.slices), "rows": self.slices[0].rows, "columns": self.slices[0].columns,
                "pixel_spacing": list(self.spacing), "slice_spacing": round(self.slice_spacing, 6),
                "orientation": [*map(float, self.row), *map(float, self.column)], "resampled": list(self.irregular)}


def _unique(slices: list[Slice]) -> list[Slice]:
    """One slice per (SOP instance, frame): an instance sent twice counts once."""
    seen: dict[tuple[str, int], Slice] = {}
    for s in slices:
        seen.setdefault((s.instance, s.frame) if s.instance else (str(s.file), s.frame), s)
    return list(seen.values())


def plan(slices: list[Slice], resample: tuple[str, ...] = ()) -> Plan:
    """Check and order the slices (module docstring); ``resample``: what may be irregular ("gap", "tilt")."""
    slices = _unique(slices)
    if len(slices) < 2:
        raise SeriesError(f"the series has {len(slices)} slice; accepted: at least 2 slices", code="series_geometry")
    first = slices[0]
    for s in slices:
        if max(np.abs(s.row - first.row).max(), np.abs(s.column - first.column).max()) > ORIENTATION_TOLERANCE:
            raise SeriesError("the slices have more than one orientation (Image Orientation (Patient)); accepted: "
                              "one orientation", code="series_mixed")
        if not np.allclose(s.spacing, first.spacing, rtol=SPACING_TOLERANCE, atol=0):
            raise SeriesError("the slices have more than one Pixel Spacing; accepted: one pixel spacing",
                              code="series_mixed")
    normal = np.cross(first.row, first.column)
    heights = np.array([s.position @ normal for s in slices])
    order = np.argsort(heights, kind="stable")
    ordered = tuple(slices[i] for i in order)
    heights = heights[order]
    steps = np.diff(heights)
    if (steps < DUPLICATE_MM).any():
        raise SeriesError(f"{int((steps < DUPLICATE_MM).sum())} pair(s) of slices are at one position along the slice "
                          "normal; accepted: one slice per position", code="series_duplicate")
    irregular = _irregular(ordered, heights, steps, first, resample)
    base = ordered[0].position
    offsets = np.array([[(s.position - base) @ first.column, (s.position - base) @ first.row] for s in ordered])
    return Plan(ordered, first.row, first.column, normal, first.spacing, heights, offsets, float(np.median(steps)),
                irregular)


def _irregular(ordered: tuple[Slice, ...], heights: np.ndarray, steps: np.ndarray, first: Slice,
               resample: tuple[str, ...]) -> tuple[str, ...]:
    """What is irregular and may be resampled; refuses what may not (``series_gap``, ``series_tilt``)."""
    found = []
    median = float(np.median(steps))
    if (np.abs(steps - median) > GAP_TOLERANCE * median).any():
        missing = int(np.round(steps / median).sum() - len(steps))
        what = (f"about {missing} slice(s) missing (spacing {median:.3g} mm, gaps up to {steps.max():.3g} mm)"
                if missing > 0 else f"slice spacing varying from {steps.min():.3g} to {steps.max():.3g} mm")
        if "gap" not in resample:
            raise SeriesError(f"the series is not evenly spaced: {what}; accepted: spacing uniform within "
                              f"{GAP_TOLERANCE:.0%} of the median (this model does not resample gaps)",
                              code="series_gap")
        found.append("gap")
    drift = np.array([[(s.position - ordered[0].position) @ first.column,
                       (s.position - ordered[0].position) @ first.row] for s in ordered])
    height = heights[-1] - heights[0]
    angle = math.degrees(math.atan2(float(np.linalg.norm(drift[-1])), float(height)))
    if angle > TILT_DEGREES:
        if "tilt" not in resample:
            raise SeriesError(f"the slices are tilted: their positions move {angle:.1f} degrees off the slice normal "
                              f"(a gantry tilt); accepted: at most {TILT_DEGREES} degrees (this model does not "
                              "resample tilted series)", code="series_tilt")
        found.append("tilt")
    return tuple(found)
