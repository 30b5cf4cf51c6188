"""DICOM fidelity through HTTP: the same image in every encoding, real tools making the twins.

dcmtk (``dcmconv``, ``dcmcrle``, ``dcmcjpls``, ``dcmcjpeg``) and pydicom's JPEG 2000 encoder
transcode one demo image; every twin must get identical probabilities from ``/predict_image``.
Also through HTTP: the MONOCHROME1 twin, the rescale-offset twin, every file bundled with
pydicom against the documented outcome table, and Enhanced multi-frame per-frame rescale.
"""

from __future__ import annotations

import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless

from conftest import ROOT, inprocess_client
from test_preprocess_image import FRAMES, _frame_group, dataset, to_bytes
from tools import require_system_tool

DATA = Path(pydicom.__file__).parent / "data"  # the outcome table names files relative to this


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]):  # type: ignore[no-untyped-def]
    yield from inprocess_client()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MONOCHROME2 demo CT slice (16-bit, slope 1, intercept -1024, a lung window), explicit little endian."""
    from training.demo.dicom_demo import generate_images

    folder = generate_images(tmp_path_factory.mktemp("inv"), n=12, seed=11)
    for path in sorted(folder.rglob("*.dcm")):
        ds = pydicom.dcmread(path)
        if ds.PhotometricInterpretation == "MONOCHROME2" and ds.Modality == "CT" and float(ds.RescaleSlope) == 1:
            return path
    raise AssertionError("no MONOCHROME2 CT file in the demo set")


def predict(client, data: bytes) -> dict:  # type: ignore[no-untyped-def]
    r = client.post("/predict_image", files={"file": ("x.dcm", data, "application/dicom")})
    assert r.status_code == 200, r.text[:300]
    return r.json()


def probabilities(body: dict) -> np.ndarray:
    return np.array([list(p["probabilities"].values()) for p in body["predictions"]])


DCMTK = [
    ("implicit VR", ["dcmconv", "+ti"], "1.2.840.10008.1.2"),
    ("big endian", ["dcmconv", "+tb"], "1.2.840.10008.1.2.2"),
    ("explicit VR", ["dcmconv", "+te"], "1.2.840.10008.1.2.1"),
    ("RLE", ["dcmcrle"], "1.2.840.10008.1.2.5"),
    ("JPEG-LS lossless", ["dcmcjpls"], "1.2.840.10008.1.2.4.80"),
    ("JPEG lossless SV1", ["dcmcjpeg", "+e1"], "1.2.840.10008.1.2.4.70"),
    ("JPEG lossless", ["dcmcjpeg", "+el"], "1.2.840.10008.1.2.4.57"),
]


@pytest.mark.parametrize("name, command, syntax", DCMTK, ids=[d[0] for d in DCMTK])
def test_transcoded_twins_give_identical_probabilities(name: str, command: list[str], syntax: str, source: Path,
                                                        client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tool = require_system_tool(command[0], "apt-get install dcmtk")
    out = tmp_path / "twin.dcm"
    subprocess.run([tool, *command[1:], str(source), str(out)], check=True, capture_output=True, timeout=60)
    assert str(pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    reference, twin = predict(client, source.read_bytes()), predict(client, out.read_bytes())
    assert twin["input"]["transfer_syntax"] != reference["input"]["transfer_syntax"] or name == "explicit VR"
    assert np.abs(probabilities(twin) - probabilities(reference)).max() <= 1e-6


def test_jpeg2000_lossless_twin(source: Path, client) -> None:  # type: ignore[no-untyped-def]
    ds = pydicom.dcmread(source)
    ds.compress(JPEG2000Lossless)
    buf = io.BytesIO()
    ds.save_as(buf)
    twin = predict(client, buf.getvalue())
    assert "2000" in twin["input"]["transfer_syntax"]
    assert np.abs(probabilities(twin) - probabilities(predict(client, source.read_bytes()))).max() <= 1e-6


def _stored(source: Path) -> tuple[pydicom.Dataset, np.ndarray]:
    ds = pydicom.dcmread(source)
    return ds, ds.pixel_array.astype(np.int64)


def _with(ds: pydicom.Dataset, stored: np.ndarray, **attrs: object) -> bytes:
    twin = pydicom.dcmread(io.BytesIO(to_bytes(ds)))
    for key, value in attrs.items():
        setattr(twin, key, value)
    twin.PixelData = stored.astype(np.uint16).tobytes()
    return to_bytes(twin)


def test_monochrome1_twin(source: Path, client) -> None:  # type: ignore[no-untyped-def]
    """Stored values mirrored, window centre mirrored (DICOM 'linear' is symmetric about c - 0.5)."""
    ds, stored = _stored(source)
    top = 2 ** int(ds.BitsStored) - 1
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    center = float(ds.WindowCenter if not isinstance(ds.WindowCenter, pydicom.multival.MultiValue) else ds.WindowCenter[0])
    mirrored = slope * top + 2 * intercept - center + 1
    twin = _with(ds, top - stored, PhotometricInterpretation="MONOCHROME1", WindowCenter=mirrored)
    a, b = predict(client, source.read_bytes()), predict(client, twin)
    assert b["input"]["inverted"] and not a["input"]["inverted"]
    assert np.abs(probabilities(a) - probabilities(b)).max() <= 1e-3


def test_rescale_offset_twin(source: Path, client) -> None:  # type: ignore[no-untyped-def]
    ds, stored = _stored(source)
    twin = _with(ds, stored + 1000, RescaleIntercept=float(ds.RescaleIntercept) - 1000)
    a, b = predict(client, source.read_bytes()), predict(client, twin)
    assert np.array_equal(probabilities(a), probabilities(b))


def test_enhanced_multiframe_per_frame_rescale_matches_single_frames(client) -> None:  # type: ignore[no-untyped-def]
    stored = np.random.default_rng(3).integers(0, 4096, size=(3, 64, 64))
    ds = dataset(stored)
    ds.PerFrameFunctionalGroupsSequence = [_frame_group(*f) for f in FRAMES]
    multi = predict(client, to_bytes(ds))
    assert [p["frame"] for p in multi["predictions"]] == [0, 1, 2]
    for i, (slope, intercept, center, width) in enumerate(FRAMES):
        single = dataset(stored[i], RescaleSlope=slope, RescaleIntercept=intercept, WindowCenter=center, WindowWidth=width)
        assert np.abs(probabilities(multi)[i] - probabilities(predict(client, to_bytes(single)))[0]).max() <= 1e-6


def _documented() -> dict[str, str]:
    """file -> outcome ('200' or e.g. '422 no_pixel_data') from docs/dicom_test_files.md."""
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", (ROOT / "docs" / "dicom_test_files.md").read_text(), re.M)
    return dict(rows)


def test_every_pydicom_file_through_http_matches_the_documented_outcome(client) -> None:  # type: ignore[no-untyped-def]
    documented = _documented()
    assert len(documented) > 150
    seen = 0
    for name, outcome in documented.items():
        path = DATA / name
        if not path.exists():
            continue
        r = client.post("/predict_image", files={"file": (path.name, path.read_bytes(), "application/octet-stream")})
        status = outcome.split()[0]
        assert str(r.status_code) == status, (name, r.status_code, r.text[:200])
        body = r.json()
        if status == "200":
            assert body["predictions"] and all(abs(sum(p["probabilities"].values()) - 1) < 1e-4 for p in body["predictions"])
        else:
            assert body["error"] == outcome.split()[1] and body["detail"]
        seen += 1
    assert seen == len(documented)
