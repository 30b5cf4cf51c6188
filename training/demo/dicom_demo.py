"""Synthetic chest-CT-like slices written as real DICOM Part-10 files.

Each image is a body ellipse (soft tissue, ~0..40 HU) with two lung fields
(~-800 HU), smooth low-frequency texture, noise and a few tiny vessels. The
class is a structure at a random place inside a lung: ``nodule`` a small bright
round blob, ``cavity`` a ring with a bright wall and an air centre, ``normal``
none. Files vary in size, rescale (slope 1 / intercept -1024, or slope 0.5 with
doubled stored values), modality (CT, CR, DX) and photometric interpretation
(about a quarter MONOCHROME1, stored values and window mirrored so the
presented image is the same). All files carry a lung window (-600/1500).

Output is byte-identical for the same seed: per-file generators, UIDs derived
from the seed and index, fixed dates. The patient is ``Demo^Synthetic``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

_SOP_CLASS = {"CT": CTImageStorage, "CR": ComputedRadiographyImageStorage, "DX": DigitalXRayImageStorageForPresentation}
_WINDOW = (-600.0, 1500.0)
_SIZES = np.arange(96, 161, 8)


def generate_images(
    out: Path, n: int = 600, seed: int = 0, classes: tuple[str, ...] = ("normal", "nodule", "cavity")
) -> Path:
    """Write `n` synthetic DICOM images, balanced over `classes`, one folder per class.

    Args:
        out: Output folder (created).
        n: Number of images; class ``i % len(classes)`` for image ``i``.
        seed: Seed for everything, UIDs included.
        classes: Class names; known structures are normal, nodule, cavity (any
            other name gets no structure).

    Returns:
        `out`.
    """
    out = Path(out)
    for name in classes:
        (out / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        label = classes[i % len(classes)]
        rng = np.random.default_rng([seed, i])
        hu = _phantom(rng, label)
        ds = _dataset(rng, hu, seed, i)
        ds.save_as(out / label / f"img_{i:05d}.dcm", enforce_file_format=True)
    return out


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse grid upsampled bilinearly."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _phantom(rng: np.random.Generator, label: str) -> np.ndarray:
    """A slice in Hounsfield units with the class's structure."""
    rows, cols = (int(v) for v in rng.choice(_SIZES, size=2))
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows / 2 + rng.normal(0, 2), cols / 2 + rng.normal(0, 2)
    hu = np.full((rows, cols), -1000.0, dtype=np.float32)
    body = ((yy - cy) / (0.44 * rows)) ** 2 + ((xx - cx) / (0.46 * cols)) ** 2 <= 1
    hu[body] = 20 + 15 * _smooth_noise(rng, (rows, cols), 6)[body]
    lungs = []
    for side in (-1, 1):
        ly, lx = cy + rng.normal(0, 1.5), cx + side * 0.22 * cols
        ay, ax = 0.32 * rows * rng.uniform(0.9, 1.05), 0.15 * cols * rng.uniform(0.9, 1.1)
        lungs.append((ly, lx, ay, ax))
        lung = ((yy - ly) / ay) ** 2 + ((xx - lx) / ax) ** 2 <= 1
        hu[lung] = -820 + 40 * _smooth_noise(rng, (rows, cols), 8)[lung]
    for _ in range(rng.integers(2, 7)):  # tiny vessels in every class
        y, x, _r = _in_lung(rng, lungs, 0.05)
        _disc(hu, yy, xx, y, x, rng.uniform(0.6, 1.0), 30.0)
    scale = min(rows, cols)
    if label == "nodule":
        y, x, _r = _in_lung(rng, lungs, 0.35)
        _disc(hu, yy, xx, y, x, rng.uniform(0.05, 0.08) * scale, rng.uniform(10, 60))
    elif label == "cavity":
        y, x, _r = _in_lung(rng, lungs, 0.4)
        outer = rng.uniform(0.08, 0.11) * scale
        _disc(hu, yy, xx, y, x, outer, rng.uniform(20, 60))
        _disc(hu, yy, xx, y, x, outer * rng.uniform(0.55, 0.7), -950.0)
    hu += rng.normal(0, 12, size=hu.shape).astype(np.float32)
    return hu


def _in_lung(rng: np.random.Generator, lungs: list[tuple[float, ...]], margin: float) -> tuple[float, float, float]:
    """A random point inside one lung, at most ``1 - margin`` of its radius from its centre."""
    ly, lx, ay, ax = lungs[rng.integers(len(lungs))]
    r, t = np.sqrt(rng.uniform(0, 1)) * (1 - margin), rng.uniform(0, 2 * np.pi)
    return ly + r * ay * np.sin(t), lx + r * ax * np.cos(t), r


def _disc(hu: np.ndarray, yy: np.ndarray, xx: np.ndarray, y: float, x: float, radius: float, value: float) -> None:
    """Blend a soft-edged disc of `value` into `hu` in place."""
    d = np.sqrt((yy - y) ** 2 + (xx - x) ** 2)
    alpha = np.clip(radius + 0.5 - d, 0.0, 1.0)
    hu += alpha * (value - hu)


def _uid(seed: int, index: int, part: str) -> str:
    """A UID that depends only on the seed, the image index and which UID it is."""
    return generate_uid(entropy_srcs=["biomed-demo", str(seed), str(index), part])


def _dataset(rng: np.random.Generator, hu: np.ndarray, seed: int, index: int) -> Dataset:
    """Wrap HU values as a DICOM dataset with this file's rescale, modality and polarity."""
    modality = str(rng.choice(["CT", "CT", "CT", "CT", "CT", "CR", "DX"]))
    slope = 0.5 if rng.uniform() < 0.25 else 1.0
    intercept = -1024.0
    top = 4095 if slope == 1.0 else 8191
    stored = np.clip(np.rint((hu - intercept) / slope), 0, top).astype(np.uint16)
    center, width = _WINDOW
    mono1 = rng.uniform() < 0.25
    if mono1:  # mirror stored values and window: the presented image is unchanged
        stored = (top - stored).astype(np.uint16)
        center = top * slope + 2 * intercept - center
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = _SOP_CLASS[modality]
    ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, index, "sop")
    ds.SOPClassUID, ds.SOPInstanceUID = _SOP_CLASS[modality], _uid(seed, index, "sop")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(seed, index, "study"), _uid(seed, index, "series")
    ds.PatientName, ds.PatientID = "Demo^Synthetic", f"DEMO-{index:04d}"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.Modality, ds.SeriesDescription = modality, "synthetic demo, not a patient"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU" if modality == "CT" else "US"
    ds.WindowCenter, ds.WindowWidth = center, width
    ds.PixelData = stored.tobytes()
    return ds
