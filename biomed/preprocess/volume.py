"""A CT or MR series to one volume on the model's grid, shared by training and serving.

The order of operations:

1. **Caps from the headers, before any pixel is decoded**: the files' bytes together
   (``VolumeLimits.max_series_bytes``, ``BIOMED_MAX_SERIES_MB``), then each file parsed (pixel data
   still encoded, each file's own caps: ``Limits``) and its voxels, rows x columns x frames, counted
   (``max_voxels``, ``BIOMED_MAX_VOXELS``): 413 past either.
2. **Geometry from the headers** (``biomed.preprocess.slices``): single-frame instances, or the
   frames of an Enhanced multi-frame object (per-frame functional groups), checked to make one
   volume and sorted along the slice normal; a gap or a tilt refused (422) unless the spec's
   ``resample`` lists it.
3. **Decoding, slice by slice**: each file through the image decoder (``biomed.preprocess.dicom``:
   every transfer syntax, its caps and the decode budget), giving modality values (the Modality LUT
   of each slice, or of each frame), each plane resampled at once onto the model's grid in its plane
   (``biomed.preprocess.resample``: every slice at its own position, so a tilt is undone). The stack
   held is slices x the model's grid in the plane, never the series at its own resolution.
4. **Along the normal**: the stack resampled to the model's spacing at every slice's own height
   (a gap is bridged), centred on the series; outside it, the lowest presented value (0).
5. **The model's window** (``VolumeSpec.window``, center and width in modality units: a CT model's
   HU range ``[lo, hi]`` is ``((lo + hi) / 2, hi - lo)``), ``(x - c) / w + 0.5`` clipped to [0, 1]
   (DICOM's LINEAR_EXACT); without one, the volume's own min/max.
6. **A canonical axis order**: (depth, height, width) along the patient's z (towards the head), y
   (towards the back) and x (towards the patient's left) of DICOM's LPS coordinates, each the series'
   own axis closest to it (no rotation is resampled: an oblique series keeps its obliquity).

The result is float32 ``(1, 1, depth, height, width)`` in [0, 1]; ``Grid`` says where every voxel is
in the series' frame of reference (the Parametric Map of an explanation uses it).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from biomed.errors import InputError, TooLarge
from biomed.preprocess import dicom, resample, slices
from biomed.preprocess.budget import Limits, reserve
from biomed.preprocess.frames import FrameSink, bands
from biomed.preprocess.upload import Upload
from biomed.settings import default, env

AXES = "z,y,x (LPS: depth towards the head, height towards the back, width towards the patient's left)"
_MB = 2**20
KEEP_PARSED_BYTES = 64 * _MB  # a series up to this size is parsed once (its parsed copy held until decoded)


@dataclass(frozen=True)
class VolumeSpec:
    """What a volume model takes; stored as JSON in the ONNX metadata (the ``preprocess`` block).

    Attributes:
        size: The model input's (depth, height, width) in voxels.
        spacing: Its voxel spacing (depth, height, width) in mm.
        window: (center, width) in modality units (CT: HU), or None for the volume's own min/max.
        resample: Irregularities resampled instead of refused: "gap" (missing slices, uneven
            spacing) and "tilt" (gantry tilt).
    """

    size: tuple[int, int, int] = (32, 64, 64)
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0)
    window: tuple[float, float] | None = (40.0, 400.0)
    resample: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.size) != 3 or min(self.size) < 1:
            raise ValueError(f"size {self.size!r} is invalid; use (depth, height, width), each >= 1")
        if len(self.spacing) != 3 or not min(self.spacing) > 0:
            raise ValueError(f"spacing {self.spacing!r} is invalid; use (depth, height, width) in mm, each > 0")
        if self.window is not None and (len(self.window) != 2 or not self.window[1] > 0):
            raise ValueError(f"window {self.window!r} is invalid; use (center, width) with width > 0")
        unknown = set(self.resample) - set(slices.IRREGULAR)
        if unknown:
            raise ValueError(f"resample {sorted(unknown)} is unknown; choose from: {', '.join(slices.IRREGULAR)}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict, as the metadata's ``preprocess`` block."""
        return {"type": "volume", "size": list(self.size), "spacing": list(self.spacing),
                "window": list(self.window) if self.window is not None else None, "resample": list(self.resample),
                "axes": "zyx"}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VolumeSpec:
        """Rebuild from ``to_dict()`` output (lists accepted for tuples)."""
        window = d.get("window")
        return cls(size=tuple(int(v) for v in d.get("size", (32, 64, 64))),  # type: ignore[arg-type]
                   spacing=tuple(float(v) for v in d.get("spacing", (4.0, 4.0, 4.0))),  # type: ignore[arg-type]
                   window=(float(window[0]), float(window[1])) if window is not None else None,
                   resample=tuple(str(v) for v in d.get("resample", ())))


@dataclass(frozen=True)
class VolumeLimits:
    """Caps on one series: its files' bytes and voxels (from the headers), and each file's own caps.

    Attributes:
        max_voxels: Rows x columns x frames over every file (``BIOMED_MAX_VOXELS``).
        max_series_bytes: The files' bytes together (``BIOMED_MAX_SERIES_MB``).
        files: Each file's decode: its elements, frames, decoded bytes, and the shared decode budget.
    """

    max_voxels: int = default("max_voxels")
    max_series_bytes: int = default("max_series_bytes")
    files: Limits = field(default_factory=lambda: Limits(max_frames=default("max_voxels"),
                                                         max_pixels=default("max_voxels")))


@dataclass(frozen=True)
class Grid:
    """The model's grid in the series' frame: per output axis (depth, height, width), the series' axis it runs
    along (0: down a column, 1: along a row, 2: along the normal) and its sign, and each axis' sample positions
    (mm, in the series' own coordinates: within the first slice's plane, and height along the normal)."""

    plan: slices.Plan
    axis: tuple[int, int, int]
    sign: tuple[int, int, int]
    positions: tuple[np.ndarray, np.ndarray, np.ndarray]  # by series axis 0, 1, 2

    def affine(self) -> np.ndarray:
        """4x4: voxel (depth, height, width, 1) to patient coordinates (mm, LPS)."""
        p = self.plan
        vectors = (p.column, p.row, p.normal)
        base = p.slices[0].position - p.heights[0] * p.normal
        out = np.eye(4)
        origin = base + sum(self.positions[a][0] * vectors[a] for a in range(3))
        for d in range(3):
            a = self.axis[d]
            out[:3, d] = (self.positions[a][1] - self.positions[a][0]) * vectors[a] if len(self.positions[a]) > 1 \
                else self.sign[d] * vectors[a]
        out[:3, 3] = origin
        return out


def grid(plan: slices.Plan, spec: VolumeSpec) -> Grid:
    """Where the model's voxels go in the series (the canonical axis order of the module docstring)."""
    vectors = np.stack([plan.column, plan.row, plan.normal])  # series axes x patient (x, y, z)
    targets = (2, 1, 0)  # depth, height, width run along patient z, y, x
    axis = max(itertools.permutations(range(3)), key=lambda perm: sum(abs(vectors[perm[d], targets[d]])
                                                                       for d in range(3)))
    sign = tuple(1 if vectors[axis[d], targets[d]] >= 0 else -1 for d in range(3))
    first = plan.slices[0]
    centres = (float(plan.offsets[:, 0].mean()) + (first.rows - 1) * plan.spacing[0] / 2,
               float(plan.offsets[:, 1].mean()) + (first.columns - 1) * plan.spacing[1] / 2,
               float(plan.heights[0] + plan.heights[-1]) / 2)
    positions: list[np.ndarray] = [np.empty(0)] * 3
    for d in range(3):
        n, step = spec.size[d], spec.spacing[d]
        positions[axis[d]] = centres[axis[d]] + sign[d] * (np.arange(n) - (n - 1) / 2) * step
    return Grid(plan, axis, sign, tuple(positions))  # type: ignore[arg-type]


class _Slices(FrameSink):
    """Receives one file's frames as modality values and puts each, resampled in its plane, into the stack."""

    def __init__(self, g: Grid, steps: tuple[float, float], stack: np.ndarray, where: dict[int, int]) -> None:
        super().__init__((1, 1), 1, 0)
        self.grid, self.steps, self.stack, self.where = g, steps, stack, where

    def reserve_bytes(self, frames: int, rows: int, columns: int, samples: int) -> int:
        return rows * columns * 12  # one plane as float32, and its float64 copy in the product

    def add(self, index: int, rows: int, columns: int, samples: int, strip: Any) -> None:
        k = self.where.get(index)
        if k is None:  # a frame sent twice: its first copy is used
            return
        plane = np.empty((rows, columns), dtype=np.float32)
        for y0, y1 in bands(rows, columns, 1):
            plane[y0:y1] = strip(y0, y1)[..., 0]
        p = self.grid.plan
        dy, dx = p.offsets[k]
        wy = resample.weights(self.grid.positions[0], dy + np.arange(rows) * p.spacing[0], self.steps[0])
        wx = resample.weights(self.grid.positions[1], dx + np.arange(columns) * p.spacing[1], self.steps[1])
        self.stack[k] = resample.plane(plane, wy, wx)


def present(volume: np.ndarray, window: tuple[float, float] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Modality values (NaN outside the series) to [0, 1] by the model's window or the volume's min/max."""
    if window is not None:
        center, width = window
        desc = {"center": center, "width": width, "function": "linear_exact", "source": "model"}
    else:
        finite = volume[np.isfinite(volume)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        center, width = (lo + hi) / 2, max(hi - lo, 1e-6)
        desc = {"center": center, "width": width, "function": "linear_exact", "source": "minmax"}
    volume -= np.float32(center)
    volume *= np.float32(1.0 / width)
    volume += np.float32(0.5)
    np.nan_to_num(volume, copy=False, nan=0.0)
    np.clip(volume, 0.0, 1.0, out=volume)
    return volume, desc


def _headers(uploads: list[Upload], limits: VolumeLimits, keep: bool
             ) -> tuple[list[slices.Header], list[slices.Slice]]:
    """Every file's header and slices, parsed one at a time, voxels counted before any is decoded. ``keep``: the
    parsed datasets are kept for the decode (else their encoded pixels are dropped at once, and parsed again)."""
    headers, found, voxels = [], [], 0
    for i, upload in enumerate(uploads):
        try:
            ds = upload.dataset(limits.files)
            header = slices.read_header(ds)
            found += slices.read_slices(ds, i, header)
        except InputError as err:
            err.detail = f"file element {i}: {err.detail}"
            err.args = (err.detail,)
            raise
        finally:
            if not keep:
                upload.decoded()
        voxels += header.rows * header.columns * header.frames
        if voxels > limits.max_voxels:
            raise TooLarge(f"the series' headers describe more than {limits.max_voxels} voxels (rows x columns x "
                           f"frames) by file element {i}; accepted: at most {limits.max_voxels} ({env('max_voxels')})")
        headers.append(header)
    return headers, found


def load_volume(files: Sequence[bytes | Upload], spec: VolumeSpec, limits: VolumeLimits = VolumeLimits()
                ) -> tuple[np.ndarray, dict[str, Any], Grid]:
    """The files of one series as the model's input (module docstring).

    Returns:
        ``(x, info, grid)``: x float32 (1, 1, depth, height, width) in [0, 1]; info the response's ``input``
        block (no patient data); grid where each voxel lies in the series' frame of reference.

    Raises:
        InputError: 413 past a cap (before decoding); 422 ``series_*`` for a set of files that is not one
            volume; any error of the image decoder, naming the file element.
    """
    if not files:
        raise InputError("no file: send the files of one series", code="missing_file", status=400)
    total = sum(len(f.data if isinstance(f, Upload) else f) for f in files)
    if total > limits.max_series_bytes:
        raise TooLarge(f"the series' files hold {total / _MB:.1f} MB; accepted: at most "
                       f"{limits.max_series_bytes / _MB:g} MB ({env('max_series_bytes')})")
    uploads = [Upload.of(f) for f in files]
    keep = total <= KEEP_PARSED_BYTES  # small series: parsed once, the parsed copies held from the decode budget
    with reserve(limits.files.budget, total if keep else 0):
        headers, found = _headers(uploads, limits, keep)
        first = slices.check_headers(headers)
        p = slices.plan(found, spec.resample)
        g = grid(p, spec)
        volume, window, syntaxes = _assemble(uploads, p, g, spec, limits)
    info = {"format": "dicom", "modality": first.modality or None, "files": len(files),
            "transfer_syntax": sorted(syntaxes), **p.describe(), "window": window, "size": list(spec.size),
            "spacing": list(spec.spacing), "axes": "zyx"}
    return volume[None, None], info, g


def _assemble(uploads: list[Upload], p: slices.Plan, g: Grid, spec: VolumeSpec, limits: VolumeLimits
              ) -> tuple[np.ndarray, dict[str, Any], set[str]]:
    """Decode every file into the stack (each plane resampled as it comes), then along the normal, then present."""
    n = [len(x) for x in g.positions]
    held = len(p.slices) * n[0] * n[1] * 4 + 3 * n[0] * n[1] * n[2] * 4
    with reserve(limits.files.budget, held):
        stack = np.full((len(p.slices), n[0], n[1]), np.nan, dtype=np.float32)
        where: dict[int, dict[int, int]] = {}
        for k, s in enumerate(p.slices):
            where.setdefault(s.file, {})[s.frame] = k
        steps = (spec.spacing[g.axis.index(0)], spec.spacing[g.axis.index(1)])
        syntaxes = set()
        for i, upload in enumerate(uploads):
            if i in where:
                syntaxes.add(_decode(upload, i, _Slices(g, steps, stack, where[i]), limits)["transfer_syntax"])
        wz = resample.weights(g.positions[2], p.heights, spec.spacing[g.axis.index(2)])
        along = resample.along(stack, wz)  # (series axis 2, 0, 1)
        del stack
        volume = np.ascontiguousarray(np.transpose(along, [(2, 0, 1).index(a) for a in g.axis]))
        volume, window = present(volume, spec.window)
    return volume, window, syntaxes


def _decode(upload: Upload, index: int, sink: _Slices, limits: VolumeLimits) -> dict[str, Any]:
    try:
        return dicom.load_dicom(upload, dicom.MODALITY, limits.files, sink)
    except InputError as err:
        err.detail = f"file element {index}: {err.detail}"
        err.args = (err.detail,)
        raise


def read_files(paths: Sequence[str | PathLike[str]], limits: VolumeLimits = VolumeLimits()) -> list[bytes]:
    """The files of one series, refused (413) before any is read when their sizes add up past
    ``limits.max_series_bytes``."""
    total = sum(Path(p).stat().st_size for p in paths)
    if total > limits.max_series_bytes:
        raise TooLarge(f"the series' files hold {total / _MB:.1f} MB; accepted: at most "
                       f"{limits.max_series_bytes / _MB:g} MB ({env('max_series_bytes')})")
    return [Path(p).read_bytes() for p in paths]


def series_files(folder: str | PathLike[str], limits: VolumeLimits = VolumeLimits()) -> list[bytes]:
    """The files of a series folder (every regular, non-hidden file, in name order), as ``read_files``."""
    return read_files(sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")), limits)


class _Discard(FrameSink):
    """Takes a file's frames and keeps none: a file checked (and its pixels hashed) on its own."""

    def __init__(self) -> None:
        super().__init__((1, 1), 1, 0)

    def reserve_bytes(self, frames: int, rows: int, columns: int, samples: int) -> int:
        return 0

    def add(self, index: int, rows: int, columns: int, samples: int, strip: Any) -> None:
        return None


def check_member(upload: Upload, limits: VolumeLimits = VolumeLimits()) -> int:
    """One file of a series that arrives file by file (the DICOM doors), checked as ``load_volume`` reads it: its
    header has the geometry of a slice (422 ``series_*`` otherwise), its voxels are within ``max_voxels`` (413), and
    its pixels decode (every decoder error; with ``upload.identify`` they are hashed, the content identity). The
    assembly of the whole series comes later, from the files kept (``load_volume``). Returns its frame count."""
    ds = upload.dataset(limits.files)
    header = slices.check_headers([slices.read_header(ds)])
    slices.read_slices(ds, 0, header)
    voxels = header.rows * header.columns * header.frames
    if voxels > limits.max_voxels:
        raise TooLarge(f"the file's header describes {voxels} voxels (rows x columns x frames); accepted: at most "
                       f"{limits.max_voxels} for a series ({env('max_voxels')})")
    dicom.load_dicom(upload, dicom.MODALITY, limits.files, _Discard())
    return header.frames
