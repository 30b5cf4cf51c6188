"""Occlusion sensitivity of image and volume models, torch-free: forward passes only.

An ONNX inference graph has no gradients, so the map is built the way Zeiler and Fergus
(2014) built theirs: a square patch of the model input is replaced by a fill value (the
image's mean, per channel), the occluded copy goes through the model, and the drop of the
explained label's probability is credited to every pixel under the patch. The patch slides
over the model input (``plan``); each pixel's value is the mean drop over the patches that
cover it (``assemble``). Positive values mark evidence for the label, negative ones
evidence against it.

Shared by the service's image handler (``predict`` is the model's batcher) and the command
line (``predict`` runs onnxruntime directly). Occluded copies are built in chunks
(``chunk_rows``) and each chunk goes to ``predict`` in one call, so memory stays at a
chunk of rows however many patches there are, and a chunk runs as a few large batches.

The map lives at the model input's geometry (64x64 for ``demo-image``); ``upsample`` takes
it to the presented image's rows x columns. A volume's patches are boxes (``Boxes``, ``plan_boxes``:
a quarter of each axis, stride half of that, 7 x 7 x 7 = 343 boxes by default); the same
``occlusion_map`` runs them, and the map is at the model input's (depth, height, width). What is made of it (the overlay PNG, the DICOM
objects, the JSON answer) lives in ``biomed/outputs/``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Awaitable, Callable, Union

import numpy as np
from PIL import Image

from biomed.errors import InputError, MalformedInput

Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]  # (N, C, H, W) float32 -> (N, labels) probabilities

VOLUME_DIVISOR = 4  # a volume's default box: a quarter of each axis (7 x 7 x 7 = 343 boxes at stride half of it)
PATCH_DIVISOR = 8  # the default patch is the model input's shorter side / 8: 8 px for a 64x64 input
STRIDE_DIVISOR = 2  # the default stride is half the patch: 4 px for a 64x64 input (15 x 15 = 225 patches)
CHUNK_BYTES = 8 * 2**20  # occluded rows built at once, at most (and never more than CHUNK_ROWS rows)
CHUNK_ROWS = 1024


def default_patch(size: tuple[int, int]) -> int:
    """The default patch side for a model input of ``size`` (height, width): the shorter side / 8."""
    return max(1, min(size) // PATCH_DIVISOR)


def default_stride(patch: int) -> int:
    """The default stride for a patch side: half of it."""
    return max(1, patch // STRIDE_DIVISOR)


def _starts(length: int, patch: int, stride: int) -> list[int]:
    """Patch starts along one axis: every ``stride`` from 0, plus one flush with the end so every pixel is covered."""
    starts = list(range(0, length - patch + 1, stride))
    if starts[-1] != length - patch:
        starts.append(length - patch)
    return starts


@dataclass(frozen=True)
class Grid:
    """Where the patches go on a (height, width) model input."""

    height: int
    width: int
    patch: int
    stride: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def patches(self) -> int:
        return len(self.ys) * len(self.xs)

    @property
    def rows(self) -> int:
        """Model rows of one occlusion: the unoccluded image and one per patch."""
        return 1 + self.patches

    @property
    def shape(self) -> tuple[int, int]:
        return self.height, self.width

    def corners(self) -> list[tuple[int, int]]:
        """(y, x) of every patch's top-left corner, row by row."""
        return [(y, x) for y in self.ys for x in self.xs]

    def occlude(self, x: np.ndarray, first: int, stop: int, fill: np.ndarray) -> np.ndarray:
        return occluded(x, self, first, stop, fill)

    def assemble(self, drops: np.ndarray) -> np.ndarray:
        return assemble(drops, self)


@dataclass(frozen=True)
class Boxes:
    """Where the patches (boxes) go on a model input of any number of axes: a volume's (depth, height, width)."""

    shape: tuple[int, ...]
    patch: tuple[int, ...]
    stride: tuple[int, ...]
    starts: tuple[tuple[int, ...], ...]  # per axis

    @property
    def patches(self) -> int:
        return int(np.prod([len(s) for s in self.starts]))

    @property
    def rows(self) -> int:
        """Model rows of one occlusion: the unoccluded input and one per box."""
        return 1 + self.patches

    def corners(self) -> list[tuple[int, ...]]:
        """Every box's first corner, the last axis fastest."""
        return list(itertools.product(*self.starts))

    def _box(self, corner: tuple[int, ...]) -> tuple[slice, ...]:
        return tuple(slice(c, c + p) for c, p in zip(corner, self.patch))

    def occlude(self, x: np.ndarray, first: int, stop: int, fill: np.ndarray) -> np.ndarray:
        """Copies of the (C, *shape) input with boxes ``first``..``stop - 1`` (in ``corners`` order) filled."""
        corners = self.corners()[first:stop]
        out = np.repeat(x[None], len(corners), axis=0)
        for i, corner in enumerate(corners):
            out[(i, slice(None), *self._box(corner))] = fill.reshape(-1, *([1] * len(self.shape)))
        return out

    def assemble(self, drops: np.ndarray) -> np.ndarray:
        """The map at ``shape``: at each voxel, the mean of the drops of the boxes that cover it (float64)."""
        total, count = np.zeros(self.shape), np.zeros(self.shape)
        for drop, corner in zip(drops, self.corners()):
            total[self._box(corner)] += float(drop)
            count[self._box(corner)] += 1.0
        return total / count


def plan_boxes(shape: tuple[int, ...], patch: int | tuple[int, ...] | None = None,
               stride: int | tuple[int, ...] | None = None) -> Boxes:
    """The boxes of an occlusion over a model input of ``shape``; counted, nothing built. ``patch`` and ``stride``:
    one number for every axis, or one per axis (default: a quarter of each axis, and half the patch).

    Raises:
        MalformedInput: a patch not in 1..the axis, or a stride not in 1..its patch.
    """
    n = len(shape)
    patches = tuple(max(1, s // VOLUME_DIVISOR) for s in shape) if patch is None else \
        (tuple(int(patch) for _ in shape) if isinstance(patch, int) else tuple(int(p) for p in patch))
    strides = tuple(default_stride(p) for p in patches) if stride is None else \
        (tuple(int(stride) for _ in shape) if isinstance(stride, int) else tuple(int(v) for v in stride))
    if len(patches) != n or any(not 1 <= p <= s for p, s in zip(patches, shape)):
        raise MalformedInput(f"patch {list(patches)} is out of range; accepted: 1 to each axis of the model input "
                             f"({'x'.join(map(str, shape))})")
    if len(strides) != n or any(not 1 <= v <= p for v, p in zip(strides, patches)):
        raise MalformedInput(f"stride {list(strides)} is out of range; accepted: 1 to the patch ({list(patches)}), so "
                             "every voxel is covered")
    return Boxes(tuple(shape), patches, strides, tuple(tuple(_starts(s, p, v)) for s, p, v in zip(shape, patches,
                                                                                                    strides)))


Layout = Union[Grid, Boxes]


def plan(size: tuple[int, int], patch: int | None = None, stride: int | None = None) -> Grid:
    """The patches of an occlusion over a model input of ``size`` (height, width); counted, nothing built.

    Raises:
        MalformedInput: ``patch`` not in 1..min(size), or ``stride`` not in 1..``patch``.
    """
    height, width = int(size[0]), int(size[1])
    patch = default_patch((height, width)) if patch is None else int(patch)
    if not 1 <= patch <= min(height, width):
        raise MalformedInput(f"patch {patch} is out of range; accepted: 1 to {min(height, width)} pixels of the "
                             f"model input ({height}x{width})")
    stride = default_stride(patch) if stride is None else int(stride)
    if not 1 <= stride <= patch:
        raise MalformedInput(f"stride {stride} is out of range; accepted: 1 to the patch ({patch}), so every pixel is "
                             "covered")
    return Grid(height, width, patch, stride, tuple(_starts(height, patch, stride)), tuple(_starts(width, patch, stride)))


def fill_value(x: np.ndarray) -> np.ndarray:
    """What an occluded patch holds: the mean of each channel of the (C, H, W) (or (C, D, H, W)) input."""
    return x.reshape(x.shape[0], -1).mean(axis=1, dtype=np.float64).astype(np.float32)


def occluded(x: np.ndarray, grid: Grid, first: int, stop: int, fill: np.ndarray) -> np.ndarray:
    """Copies of the (C, H, W) input with patches ``first``..``stop - 1`` (in ``corners`` order) filled."""
    corners = grid.corners()[first:stop]
    out = np.repeat(x[None], len(corners), axis=0)
    p = grid.patch
    for i, (y, x0) in enumerate(corners):
        out[i, :, y : y + p, x0 : x0 + p] = fill[:, None, None]
    return out


def chunk_rows(row_bytes: int) -> int:
    """Occluded rows built and submitted at once for rows of ``row_bytes`` bytes."""
    return max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(1, row_bytes)))


def assemble(drops: np.ndarray, grid: Grid) -> np.ndarray:
    """The (height, width) map: at each pixel, the mean of the drops of the patches that cover it (float64)."""
    total = np.zeros((grid.height, grid.width), dtype=np.float64)
    count = np.zeros((grid.height, grid.width), dtype=np.float64)
    p = grid.patch
    for drop, (y, x) in zip(drops, grid.corners()):
        total[y : y + p, x : x + p] += float(drop)
        count[y : y + p, x : x + p] += 1.0
    return total / count


def label_index(labels: list[str], label: str | None, probabilities: np.ndarray) -> int:
    """The explained label's column: ``label`` when given, else the highest probability.

    Raises:
        InputError: 422 ``unknown_label`` naming the model's labels.
    """
    if label is None or label == "":
        return int(np.argmax(probabilities))
    if label not in labels:
        raise InputError(f"label {label!r} is not one of the model's labels: {', '.join(labels)}", code="unknown_label")
    return labels.index(label)


@dataclass(frozen=True)
class Occlusion:
    """An occlusion's result: the baseline probabilities, the explained column and the per-pixel map."""

    probabilities: np.ndarray  # (labels,) of the unoccluded input
    index: int  # the explained label's column
    drops: np.ndarray  # (patches,) probability drop per patch, in ``Grid.corners`` order
    map: np.ndarray  # (height, width) float64 at the model input's geometry (a volume: depth, height, width)
    grid: Layout


async def occlusion_map(predict: Predict, x: np.ndarray, grid: Layout, labels: list[str], label: str | None = None,
                        rows_per_chunk: int | None = None) -> Occlusion:
    """Occlusion sensitivity of one (C, H, W) float32 model input (a volume's: (C, D, H, W), with ``Boxes``).

    The unoccluded input goes first, with the first chunk of occluded copies; each later chunk is
    built only when the previous one has its outputs, so at most ``rows_per_chunk`` rows exist at once.
    """
    if x.shape[1:] != tuple(grid.shape):
        raise ValueError(f"input of shape {x.shape} does not match the grid ({'x'.join(map(str, grid.shape))})")
    x = np.ascontiguousarray(x, dtype=np.float32)
    step = rows_per_chunk or chunk_rows(x.nbytes)
    fill = fill_value(x)
    drops = np.empty(grid.patches, dtype=np.float64)
    base: np.ndarray | None = None
    index = 0
    first = 0
    while first < grid.patches or base is None:
        stop = min(grid.patches, first + (step - 1 if base is None else step))
        rows = grid.occlude(x, first, stop, fill)
        if base is None:
            rows = np.concatenate([x[None], rows])
        out = np.asarray(await predict(rows), dtype=np.float64)
        del rows
        if base is None:
            base, out = out[0], out[1:]
            index = label_index(labels, label, base)
        drops[first:stop] = base[index] - out[:, index]
        first = stop
    return Occlusion(base.astype(np.float64), index, drops, grid.assemble(drops), grid)


def upsample(values: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """A (height, width) map resized bilinearly to (rows, columns), float32 (the presented image's geometry)."""
    plane = np.ascontiguousarray(values, dtype=np.float32)
    if plane.shape == (rows, columns):
        return plane.copy()
    return np.asarray(Image.fromarray(plane).resize((columns, rows), Image.Resampling.BILINEAR), dtype=np.float32)


def peak(values: np.ndarray) -> tuple[int, int]:
    """(row, column) of the map's largest value (the first one on ties)."""
    flat = int(np.argmax(values))
    return flat // values.shape[1], flat % values.shape[1]


def peak_index(values: np.ndarray) -> tuple[int, ...]:
    """The index of the map's largest value, on any number of axes (the first one on ties)."""
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(values)), values.shape))
