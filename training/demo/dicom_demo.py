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

Each file is a valid instance of its IOD (``dciodvfy`` finds no error; tests/test_validators.py):
the Type 1 and 2 attributes of its modules, a CT with a frame of reference, position,
orientation and 2.5 mm pixels (so a CT gets a Parametric Map from ``/explain_image?format=dicom``),
a DX "for presentation" with the identity rescale its IOD requires (its window in stored values,
so it presents as before) and the Presentation LUT Shape of its photometric interpretation. None
of these draws a random number.

Where each structure went is recorded beside the images in ``lesions.csv``
(``path,label,row,column,radius,rows,columns``: the centre and outer radius in
pixels of the stored image, 0-based, ``path`` relative to the output folder), as
the DNA generator records its planted motifs; the explanation tests check that a
model's occlusion map peaks there. Recording it draws no random numbers, so the
pixels are those of earlier versions for the same seed.
"""

from __future__ import annotations

import csv
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
LESIONS = "lesions.csv"
LESION_COLUMNS = ("path", "label", "row", "column", "radius", "rows", "columns")


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
        `out`, which also holds ``lesions.csv`` (see the module docstring).
    """
    out = Path(out)
    for name in classes:
        (out / name).mkdir(parents=True, exist_ok=True)
    lesions = []
    for i in range(n):
        label = classes[i % len(classes)]
        rng = np.random.default_rng([seed, i])
        hu, lesion = _phantom(rng, label)
        ds = _dataset(rng, hu, seed, i)
        path = f"{label}/img_{i:05d}.dcm"
        ds.save_as(out / path, enforce_file_format=True)
        if lesion is not None:
            y, x, radius = lesion
            lesions.append((path, label, f"{y:.3f}", f"{x:.3f}", f"{radius:.3f}", *hu.shape))
    with (out / LESIONS).open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LESION_COLUMNS)
        writer.writerows(lesions)
    return out


def read_lesions(folder: Path) -> dict[str, dict[str, float | str]]:
    """``lesions.csv`` of a generated folder: path (relative) -> label, row, column, radius, rows, columns."""
    with (Path(folder) / LESIONS).open(newline="") as f:
        return {r["path"]: {"label": r["label"], **{k: float(r[k]) for k in LESION_COLUMNS[2:]}}
                for r in csv.DictReader(f)}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse grid upsampled bilinearly."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((shape[1], shape[0]), Image.Resampling.BILINEAR))


def _phantom(rng: np.random.Generator, label: str) -> tuple[np.ndarray, tuple[float, float, float] | None]:
    """A slice in Hounsfield units with the class's structure, and the structure's (row, column, outer radius)."""
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
    lesion = None
    if label == "nodule":
        y, x, _r = _in_lung(rng, lungs, 0.35)
        radius = rng.uniform(0.05, 0.08) * scale
        _disc(hu, yy, xx, y, x, radius, rng.uniform(10, 60))
        lesion = (float(y), float(x), float(radius))
    elif label == "cavity":
        y, x, _r = _in_lung(rng, lungs, 0.4)
        outer = rng.uniform(0.08, 0.11) * scale
        _disc(hu, yy, xx, y, x, outer, rng.uniform(20, 60))
        _disc(hu, yy, xx, y, x, outer * rng.uniform(0.55, 0.7), -950.0)
        lesion = (float(y), float(x), float(outer))
    hu += rng.normal(0, 12, size=hu.shape).astype(np.float32)
    return hu, lesion


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
    ds.PatientBirthDate, ds.PatientSex = "", "O"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = f"DEMO{index:04d}", "", ""
    ds.Modality, ds.SeriesDescription = modality, "synthetic demo, not a patient"
    ds.SeriesNumber, ds.InstanceNumber, ds.BodyPartExamined = 1, 1, "CHEST"
    ds.Manufacturer = "biomed-serve synthetic demo"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1" if mono1 else "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = slope, intercept, "HU" if modality == "CT" else "US"
    ds.WindowCenter, ds.WindowWidth = center, width
    _MODALITY[modality](ds)
    ds.PixelData = stored.tobytes()
    return ds


def _ct(ds: Dataset) -> None:
    """CT Image and Image Plane: an axial slice of 2.5 mm pixels centred on the table's axis."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.KVP, ds.AcquisitionNumber, ds.SliceThickness, ds.PatientPosition = 120, 1, 2.5, "HFS"
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=["biomed-demo-frame", str(ds.StudyInstanceUID)])
    ds.PositionReferenceIndicator = ""
    ds.PixelSpacing = [_SPACING, _SPACING]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [-(ds.Columns - 1) * _SPACING / 2, -(ds.Rows - 1) * _SPACING / 2, 0]


def _cr(ds: Dataset) -> None:
    """CR Series and Image: a chest PA view."""
    ds.ViewPosition, ds.PatientOrientation = "PA", ["L", "F"]


def _dx(ds: Dataset) -> None:
    """DX Series, Anatomy Imaged, Image and Detector: a chest PA view "for presentation". Its IOD requires the
    identity rescale (PS3.3 C.8.11.3), so the window moves to stored values, which present as before."""
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    ds.WindowCenter = (float(ds.WindowCenter) - intercept) / slope
    ds.WindowWidth = float(ds.WindowWidth) / slope
    ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = 1, 0, "US"
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.ViewPosition, ds.PatientOrientation, ds.ImageLaterality = "PA", ["L", "F"], "U"
    ds.ViewCodeSequence, ds.PositionerType = [_code("399348003", "SCT", "postero-anterior")], "COLUMN"
    ds.AnatomicRegionSequence = [_code("51185008", "SCT", "Chest")]
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LIN", 1
    ds.PresentationLUTShape = "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
    ds.LossyImageCompression, ds.BurnedInAnnotation = "00", "NO"
    ds.DetectorType, ds.ImagerPixelSpacing = "DIRECT", [_SPACING, _SPACING]
    ds.AcquisitionContextSequence = []


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return item


_SPACING = 2.5  # mm per pixel (rows and columns; the detector's for DX)
_MODALITY = {"CT": _ct, "CR": _cr, "DX": _dx}


def in_lesion(peak: tuple[int, int], lesion: dict[str, float | str], size: tuple[int, int], grown: float) -> bool:
    """Whether a map's peak (row, column) at the model input's ``size`` lies in ``lesion`` grown by ``grown`` pixels.

    The lesion (centre and radius in stored pixels, from ``lesions.csv``) is mapped to the model input
    as the resize maps pixel centres: an ellipse when rows and columns are scaled differently.
    """
    height, width = size
    sy, sx = height / float(lesion["rows"]), width / float(lesion["columns"])
    cy, cx = (float(lesion["row"]) + 0.5) * sy - 0.5, (float(lesion["column"]) + 0.5) * sx - 0.5
    ry, rx = float(lesion["radius"]) * sy + grown, float(lesion["radius"]) * sx + grown
    return ((peak[0] - cy) / ry) ** 2 + ((peak[1] - cx) / rx) ** 2 <= 1.0


def occlusion_hits(model_path: Path, folder: Path, split: Path, patch: int | None = None,
                   stride: int | None = None) -> tuple[int, int]:
    """How many held-out images with a lesion have their occlusion map's peak in the lesion (grown by one patch).

    Args:
        model_path: an exported image model (``model.onnx``), run with onnxruntime on the CPU.
        folder: the generated images (with ``lesions.csv``), as trained on.
        split: the run's ``split.json``; its ``test`` indices number the images as training loaded them.
        patch, stride: the occlusion's (default: ``biomed.occlusion``'s).

    Returns:
        ``(hits, images)``; each map explains the image's true class.
    """
    import asyncio
    import json

    import onnxruntime as ort

    from biomed import occlusion
    from biomed.metadata import read
    from biomed.preprocess.image import ImageSpec, load_image_file
    from training.data import _image_items

    doc = read(model_path)
    spec, labels = ImageSpec.from_dict(doc["preprocess"]), doc["labels"]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    async def predict(rows: np.ndarray) -> np.ndarray:
        return session.run(None, {doc["input"]["name"]: rows})[0]

    items = _image_items(Path(folder))
    lesions = read_lesions(folder)
    grid = occlusion.plan(spec.size, patch, stride)
    hits = images = 0
    for index in json.loads(Path(split).read_text())["test"]:
        path, _ = items[index]
        lesion = lesions.get(Path(path).relative_to(Path(folder)).as_posix())
        if lesion is None:
            continue
        x, _ = load_image_file(path, spec)
        result = asyncio.run(occlusion.occlusion_map(predict, x[0], grid, labels, str(lesion["label"])))
        hits += in_lesion(occlusion.peak(result.map), lesion, spec.size, grid.patch)
        images += 1
    return hits, images
