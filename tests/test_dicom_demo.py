"""training.demo.dicom_demo: deterministic, balanced, readable synthetic DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from training.demo.dicom_demo import generate_images
from biomed.preprocess.image import ImageSpec, load_image_file

CLASSES = ("normal", "nodule", "cavity")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_images(tmp_path_factory.mktemp("demo"), n=60, seed=7)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.dcm"))}


def test_reruns_are_byte_identical(demo: Path, tmp_path: Path) -> None:
    again = generate_images(tmp_path / "again", n=60, seed=7)
    assert _files(demo) == _files(again)
    other = generate_images(tmp_path / "other", n=6, seed=8)
    assert _files(other) != {k: v for k, v in _files(demo).items() if k in _files(other)}


def test_classes_are_balanced(demo: Path) -> None:
    assert {c: len(list((demo / c).glob("*.dcm"))) for c in CLASSES} == {c: 20 for c in CLASSES}


def test_files_are_real_synthetic_dicom(demo: Path) -> None:
    photometric, modalities = [], set()
    for path in sorted(demo.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        assert str(ds.PatientName) == "Demo^Synthetic" and ds.PatientID.startswith("DEMO-")
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
        assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID
        photometric.append(ds.PhotometricInterpretation)
        modalities.add(ds.Modality)
        x, info = load_image_file(path, ImageSpec())
        assert x.shape == (1, 1, 64, 64) and info["window"]["source"] == "file"
    share = photometric.count("MONOCHROME1") / len(photometric)
    assert 0.1 <= share <= 0.45 and "CT" in modalities


def test_monochrome1_presents_like_monochrome2(demo: Path) -> None:
    means: dict[bool, list[float]] = {True: [], False: []}
    for path in sorted(demo.rglob("*.dcm")):
        x, info = load_image_file(path, ImageSpec())
        means[info["inverted"]].append(float(x.mean()))
    assert means[True] and means[False]
    assert abs(np.mean(means[True]) - np.mean(means[False])) < 0.05
