"""Synthetic chest-CT series written as real DICOM: one folder per series, one CT Image file per slice.

Each series images one phantom defined in patient coordinates (mm, DICOM's LPS): a body (soft
tissue, ~20 HU, a smooth texture), two lungs (~-820 HU) and a few vessels (thin bright tubes,
slanted, through the lungs) in every series; a series of class ``lesion`` also holds a sphere of
10-15 mm radius (10-60 HU) inside a lung. Every pixel is the phantom at that pixel's centre, as the
slice's Image Position and Orientation (Patient) and Pixel Spacing place it, plus noise, so the
geometry in the headers is the truth. Series vary in matrix (56, 64 or 72), pixel spacing
(3.2-5 mm, 230-280 mm across), slice spacing (4-5.5 mm) and position; about one in ten is acquired with a gantry
tilt of 10-20 degrees (Gantry/Detector Tilt, the planes tilted, the table moving along z) and
about one in fourteen lacks one slice in its middle. Stored values are unsigned 12-bit with
Rescale Intercept -1024 (HU).

Every file is a conformant CT Image (Patient, Study, Series, Frame of Reference, Equipment,
Image Plane, Image Pixel, CT Image, VOI LUT and SOP Common modules; ``dciodvfy`` reports no
error). Output is byte-identical for the same seed (UIDs derived from it, fixed dates); the
patient is ``Demo^Synthetic``.

``lesions.csv`` lists every series (``series,label,irregular,x,y,z,radius``: the folder relative
to the output, ``irregular`` empty, ``tilt`` or ``gap``, and the lesion's centre and radius in mm,
patient coordinates, empty for a normal series), as the image demo records its lesions.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

LESIONS = "lesions.csv"
LESION_COLUMNS = ("series", "label", "irregular", "x", "y", "z", "radius")
CLASSES = ("normal", "lesion")
WINDOW = (-600.0, 1500.0)  # the lung window the demo model presents with
TILT_SHARE, GAP_SHARE = 0.10, 0.07


def generate_volumes(out: Path, n: int = 440, seed: int = 0) -> Path:
    """Write ``n`` synthetic CT series, alternating normal and lesion, one folder per class holding one per series.

    Returns:
        ``out``, which also holds ``lesions.csv`` (module docstring).
    """
    out = Path(out)
    rows = []
    for i in range(n):
        label = CLASSES[i % len(CLASSES)]
        datasets, anatomy, irregular = series_datasets(seed, i, label)
        folder = f"{label}/series_{i:04d}"
        (out / folder).mkdir(parents=True, exist_ok=True)
        for k, ds in enumerate(datasets):
            ds.save_as(out / folder / f"IM{k + 1:05d}.dcm", enforce_file_format=True)
        lesion = anatomy["lesion"]
        where = [f"{v:.3f}" for v in lesion] if lesion else [""] * 4
        rows.append((folder, label, irregular, *where))
    with (out / LESIONS).open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(LESION_COLUMNS)
        writer.writerows(rows)
    return out


def series_datasets(seed: int, index: int, label: str, irregular: str | None = None
                    ) -> tuple[list[Dataset], dict, str]:
    """Series ``index`` of the data set ``seed``: its slices (in acquisition order), its phantom and its irregularity
    (``irregular`` None: drawn as ``generate_volumes`` draws it; "", "tilt" or "gap": forced, the same anatomy)."""
    rng = np.random.default_rng([seed, 7919, index])
    anatomy = _anatomy(rng, label)
    drawn = "tilt" if rng.uniform() < TILT_SHARE else "gap" if rng.uniform() < GAP_SHARE else ""
    chosen = drawn if irregular is None else irregular
    return _series(rng, anatomy, chosen, seed, index), anatomy, chosen


def read_lesions(folder: Path) -> dict[str, dict[str, str | float]]:
    """``lesions.csv``: series folder (relative) -> label, irregular and, for a lesion, x, y, z, radius (mm)."""
    with (Path(folder) / LESIONS).open(newline="") as f:
        return {r["series"]: {"label": r["label"], "irregular": r["irregular"],
                              **{k: float(r[k]) for k in LESION_COLUMNS[3:] if r[k]}} for r in csv.DictReader(f)}


def _anatomy(rng: np.random.Generator, label: str) -> dict:
    """The phantom's shapes (mm): body, lungs, vessels, the lesion, and the texture's phases."""
    cx, cy = rng.normal(0, 5), rng.normal(0, 5)
    lungs = [(cx + side * rng.uniform(52, 60), cy + rng.normal(0, 3), rng.uniform(34, 42), rng.uniform(50, 60))
             for side in (-1, 1)]
    vessels = []
    for _ in range(rng.integers(3, 9)):
        x, y = _in_lung(rng, lungs, 0.2)
        direction = np.array([rng.normal(0, 0.3), rng.normal(0, 0.3), 1.0])
        vessels.append((np.array([x, y, rng.uniform(-30, 30)]), direction / np.linalg.norm(direction),
                        rng.uniform(1.0, 2.0)))
    lesion = None
    if label == "lesion":
        x, y = _in_lung(rng, lungs, 0.45)
        lesion = (x, y, rng.uniform(-30, 30), rng.uniform(10, 15))
    return {"body": (cx, cy, rng.uniform(105, 118), rng.uniform(78, 88)), "lungs": lungs, "vessels": vessels,
            "lesion": lesion, "lesion_hu": rng.uniform(10, 60), "phase": rng.uniform(0, 2 * np.pi, 3)}


def _in_lung(rng: np.random.Generator, lungs: list, margin: float) -> tuple[float, float]:
    lx, ly, ax, ay = lungs[rng.integers(len(lungs))]
    r, t = np.sqrt(rng.uniform(0, 1)) * (1 - margin), rng.uniform(0, 2 * np.pi)
    return lx + r * ax * np.cos(t), ly + r * ay * np.sin(t)


def _soft(distance: np.ndarray, radius: float) -> np.ndarray:
    """1 inside ``radius``, 0 outside, a 1 mm ramp between (partial volume)."""
    return np.clip(radius - distance + 0.5, 0.0, 1.0)


def phantom(points: np.ndarray, a: dict) -> np.ndarray:
    """HU (N,) at patient points (N, 3), without noise."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    cx, cy, bx, by = a["body"]
    p = a["phase"]
    texture = np.sin(x / 23 + p[0]) * np.cos(y / 31 + p[1]) * np.sin(z / 19 + p[2])
    hu = np.where(((x - cx) / bx) ** 2 + ((y - cy) / by) ** 2 <= 1, 20 + 15 * texture, -1000.0)
    for lx, ly, ax, ay in a["lungs"]:
        inside = ((x - lx) / ax) ** 2 + ((y - ly) / ay) ** 2 <= 1
        hu = np.where(inside, -820 + 30 * texture, hu)
    for origin, direction, radius in a["vessels"]:
        rel = points - origin
        distance = np.linalg.norm(rel - np.outer(rel @ direction, direction), axis=1)
        hu += _soft(distance, radius) * (40 - hu)
    if a["lesion"] is not None:
        lx, ly, lz, radius = a["lesion"]
        distance = np.sqrt((x - lx) ** 2 + (y - ly) ** 2 + (z - lz) ** 2)
        hu += _soft(distance, radius) * (a["lesion_hu"] - hu)
    return hu.astype(np.float32)


def _series(rng: np.random.Generator, anatomy: dict, irregular: str, seed: int, index: int) -> list[Dataset]:
    """The slices of one series, in acquisition order, as DICOM datasets."""
    size = int(rng.choice([56, 64, 72]))
    spacing = rng.uniform(230, 280) / size  # 3.2-5 mm: 230-280 mm across
    step = rng.uniform(4.0, 5.5)
    count = int(round(120 / step)) + 1
    tilt = math.radians(rng.uniform(10, 20) * rng.choice([-1, 1])) if irregular == "tilt" else 0.0
    row, column = np.array([1.0, 0.0, 0.0]), np.array([0.0, math.cos(tilt), math.sin(tilt)])
    first = np.array([-(size - 1) / 2 * spacing + rng.normal(0, 4), -(size - 1) / 2 * spacing * math.cos(tilt)
                      + rng.normal(0, 4), -(count - 1) / 2 * step + rng.normal(0, 3)])
    kept = list(range(count))
    if irregular == "gap":
        kept.remove(int(rng.integers(count // 4, 3 * count // 4)))
    ii, jj = np.mgrid[0:size, 0:size].reshape(2, -1).astype(np.float64)
    out = []
    for k in kept:
        position = first + np.array([0.0, 0.0, k * step / math.cos(tilt)])  # the table moves along z
        points = position + np.outer(jj * spacing, row) + np.outer(ii * spacing, column)
        hu = phantom(points, anatomy).reshape(size, size) + rng.normal(0, 12, (size, size)).astype(np.float32)
        out.append(_dataset(hu, position, row, column, spacing, step, math.degrees(tilt), seed, index, k))
    return out


def _uid(seed: int, index: int, part: str) -> str:
    return generate_uid(entropy_srcs=["biomed-volume-demo", str(seed), str(index), part])


def _dataset(hu: np.ndarray, position: np.ndarray, row: np.ndarray, column: np.ndarray, spacing: float, step: float,
             tilt: float, seed: int, index: int, k: int) -> Dataset:
    """One slice as a CT Image (module docstring), stored as HU + 1024 in 12 bits."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = _uid(seed, index, f"sop{k}")
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240101"
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "120000"
    ds.AccessionNumber, ds.Modality, ds.Manufacturer = "", "CT", "biomed-serve demo"
    ds.BodyPartExamined, ds.PatientPosition = "CHEST", "HFS"  # an unpaired part: no Laterality
    ds.ReferringPhysicianName, ds.SeriesDescription = "", "synthetic demo, not a patient"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Demo^Synthetic", f"DEMO-V{index:04d}", "", "O"
    ds.SliceThickness, ds.KVP = f"{step:.4f}", "120"
    ds.GantryDetectorTilt = f"{tilt:.4f}"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = _uid(seed, index, "study"), _uid(seed, index, "series")
    ds.StudyID, ds.SeriesNumber, ds.AcquisitionNumber, ds.InstanceNumber = "1", 1, 1, k + 1
    ds.ImagePositionPatient = [f"{v:.4f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *column)]
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = _uid(seed, index, "frame"), ""
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = hu.shape
    ds.PixelSpacing = [f"{spacing:.6f}", f"{spacing:.6f}"]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = f"{WINDOW[0]:g}", f"{WINDOW[1]:g}"
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
    ds.PixelData = np.clip(np.rint(hu + 1024), 0, 4095).astype(np.uint16).tobytes()
    return ds


def in_lesion(peak: tuple[int, ...], lesion: dict, affine: np.ndarray, spacing: tuple[float, ...],
              grown: tuple[int, ...]) -> bool:
    """Whether a map's peak voxel (depth, height, width) lies in ``lesion`` (its centre and radius in mm, from
    ``lesions.csv``) grown by ``grown`` voxels along each axis: an ellipsoid in the model's grid."""
    centre = np.linalg.inv(affine) @ np.array([lesion["x"], lesion["y"], lesion["z"], 1.0])
    radii = [float(lesion["radius"]) / s + g for s, g in zip(spacing, grown)]
    return sum(((p - c) / r) ** 2 for p, c, r in zip(peak, centre[:3], radii)) <= 1.0


def occlusion_hits(model_path: Path, folder: Path, run: Path, patch: int | None = None,
                   stride: int | None = None) -> tuple[int, int]:
    """How many held-out series with a lesion have their 3D occlusion map's peak in the lesion (grown by one patch).

    Args:
        model_path: an exported volume model (``model.onnx``), run with onnxruntime on the CPU.
        folder: the generated series (with ``lesions.csv``), as trained on.
        run: the training run, whose ``heldout.npz`` names its held-out series (``sources``).

    Returns:
        ``(hits, series)``; each map explains the series' true class.
    """
    import asyncio

    import onnxruntime as ort

    from biomed import occlusion
    from biomed.metadata import read
    from biomed.preprocess.volume import VolumeSpec, load_volume, series_files

    doc = read(model_path)
    spec, labels = VolumeSpec.from_dict(doc["preprocess"]), doc["labels"]
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])

    async def predict(rows: np.ndarray) -> np.ndarray:
        return session.run(None, {doc["input"]["name"]: rows})[0]

    lesions = read_lesions(folder)
    boxes = occlusion.plan_boxes(spec.size, patch, stride)
    hits = count = 0
    for source in np.load(Path(run) / "heldout.npz")["sources"]:
        lesion = lesions.get(Path(str(source)).resolve().relative_to(Path(folder).resolve()).as_posix())
        if lesion is None or "radius" not in lesion:
            continue
        x, _, grid = load_volume(series_files(str(source)), spec)
        result = asyncio.run(occlusion.occlusion_map(predict, x[0], boxes, labels, str(lesion["label"])))
        hits += in_lesion(occlusion.peak_index(result.map), lesion, grid.affine(), spec.spacing, boxes.patch)
        count += 1
    return hits, count
