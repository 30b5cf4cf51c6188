"""Volume models in the service (service/handlers/volume.py): the v2 door with the raw [N, 1, D, H, W] tensor and with
the series' files, the same probabilities whichever way a series comes, refusals, caps from the headers with memory
unchanged, ``/explain_series`` as JSON and as a Parametric Map, and the DICOM doors' routing by modality."""

from __future__ import annotations

import base64
import io
import random
import tracemalloc
from collections.abc import Iterator

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from conftest import inprocess_client
from training.demo.volume_demo import series_datasets

TOL = 1e-5
MODEL = "demo-volume"


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def series() -> list[pydicom.Dataset]:
    return series_datasets(0, 5, "lesion", "")[0]


@pytest.fixture(scope="module")
def files(series: list[pydicom.Dataset]) -> list[bytes]:
    return [_bytes(ds) for ds in series]


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator["TestClient"]:  # noqa: F821
    yield from inprocess_client({"BIOMED_MODELS": f"demo-image,{MODEL}", "BIOMED_MAX_VOXELS": "2000000"})


def _infer_files(client, files: list[bytes]):  # type: ignore[no-untyped-def]
    body = {"inputs": [{"name": "file", "datatype": "BYTES", "shape": [len(files)],
                        "data": [base64.b64encode(f).decode() for f in files]}]}
    return client.post(f"/v2/models/{MODEL}/infer", json=body)


def _probabilities(response) -> np.ndarray:  # type: ignore[no-untyped-def]
    assert response.status_code == 200, response.text[:500]
    out = response.json()["outputs"][0]
    return np.array(out["data"], dtype=np.float32).reshape(out["shape"])


def test_v2_metadata_names_the_tensor_and_the_files(client) -> None:  # type: ignore[no-untyped-def]
    meta = client.get(f"/v2/models/{MODEL}").json()
    assert meta["kind"] == "volume" and meta["inputs"][0]["shape"] == [-1, 1, 24, 48, 48]
    assert meta["inputs"][0]["datatype"] == "FP32" and meta["alternative_inputs"][0]["name"] == "file"


def test_the_raw_tensor_and_the_files_give_the_same_probabilities(client, files) -> None:  # type: ignore[no-untyped-def]
    from biomed.preprocess.volume import VolumeSpec, load_volume
    from service.engine import current

    spec = VolumeSpec.from_dict(current().handlers[MODEL].model.doc["preprocess"])
    x, _, _ = load_volume(files, spec)
    raw = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 24, 48, 48],
                       "data": np.concatenate([x, x]).ravel().tolist()}]}
    tensor = _probabilities(client.post(f"/v2/models/{MODEL}/infer", json=raw))
    assert tensor.shape == (2, 2)
    by_files = _probabilities(_infer_files(client, files))
    assert by_files.shape == (1, 2) and np.abs(by_files[0] - tensor[0]).max() <= TOL


def test_shuffled_enhanced_and_rle_series_give_the_same_probabilities(client, series, files) -> None:  # type: ignore[no-untyped-def]
    import highdicom as hd

    first = _probabilities(_infer_files(client, files))
    shuffled = files[:]
    random.Random(9).shuffle(shuffled)
    enhanced = [_bytes(hd.legacy.LegacyConvertedEnhancedCTImage(series, generate_uid(), 2, generate_uid(), 1))]
    rle = []
    for data in files:
        ds = pydicom.dcmread(io.BytesIO(data))
        ds.compress(RLELossless)
        rle.append(_bytes(ds))
    for way in (shuffled, enhanced, rle):
        assert np.abs(_probabilities(_infer_files(client, way)) - first).max() <= TOL


def test_refusals_name_what_is_wrong(client, files) -> None:  # type: ignore[no-untyped-def]
    gapped = files[:10] + files[11:]
    r = _infer_files(client, gapped)
    assert r.status_code == 422 and r.json()["error"].startswith("series_gap: ")
    other = series_datasets(0, 8, "normal", "")[0]
    r = _infer_files(client, files + [_bytes(other[0])])
    assert r.status_code == 422 and r.json()["error"].startswith("series_mixed: ")
    tilted = [_bytes(ds) for ds in series_datasets(0, 5, "lesion", "tilt")[0]]
    assert _probabilities(_infer_files(client, tilted)).shape == (1, 2)  # demo-volume resamples a tilt
    r = client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [{"name": "input", "datatype": "FP32",
                                                                     "shape": [1, 1, 24, 48, 2], "data": [0.0] * 96}]})
    assert r.status_code == 400


def test_a_series_over_the_voxel_cap_is_refused_from_its_headers(client, series) -> None:  # type: ignore[no-untyped-def]
    """BIOMED_MAX_VOXELS is 2,000,000 here: a series of 384x384 slices is refused before any is decoded."""
    from service.engine import current

    big = []
    for ds in series:
        copy = pydicom.dcmread(io.BytesIO(_bytes(ds)))
        copy.Rows = copy.Columns = 384
        copy.PixelData = np.zeros((384, 384), np.uint16).tobytes()
        big.append(_bytes(copy))
    budget = current().admission.decode
    tracemalloc.start()
    r = _infer_files(client, big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert r.status_code == 413 and "BIOMED_MAX_VOXELS" in r.json()["error"], r.text[:300]
    assert budget.held == 0 and peak < 4 * sum(map(len, big)) + 16 * 2**20


def test_explain_series_as_json_and_as_a_parametric_map(client, series, files) -> None:  # type: ignore[no-untyped-def]
    form = [("file", (f"IM{i}.dcm", data, "application/dicom")) for i, data in enumerate(files)]
    r = client.post("/explain_series", files=form, data={"model": MODEL, "label": "lesion"})
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    assert body["label"] == "lesion" and body["map"]["shape"] == [24, 48, 48] and body["map"]["patches"] == 343
    assert np.asarray(body["map"]["values"]).shape == (24, 48, 48) and len(body["map"]["peak"]["position_mm"]) == 3
    r = client.post("/explain_series", files=form, data={"model": MODEL, "format": "dicom", "patch": "12",
                                                         "stride": "12"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    pm = pydicom.dcmread(io.BytesIO(r.content))
    assert pm.SOPClassUID.name == "Parametric Map Storage" and int(pm.NumberOfFrames) == 24
    assert pm.FrameOfReferenceUID == series[0].FrameOfReferenceUID and pm.StudyInstanceUID == series[0].StudyInstanceUID
    r = client.post("/explain_series", files=form[:1] + [("file", ("x.png", b"\x89PNG\r\n\x1a\n", "image/png"))],
                    data={"model": MODEL})
    assert r.status_code in (400, 415, 422)
    r = client.post("/explain_series", files=form, data={"model": "demo-image"})
    assert r.status_code == 422 and r.json()["error"] == "wrong_model_kind"


def test_dicom_doors_route_by_modality(client) -> None:  # type: ignore[no-untyped-def]
    from service.engine import UnknownModel, current

    engine = current()
    assert engine.route("CT", "explain_series").model.name == MODEL  # its metadata lists CT
    assert engine.route("CT", "classify").model.name == "demo-image"  # the volume model classifies no instance
    with pytest.raises(UnknownModel):
        engine.route("MR", "explain_series")  # demo-volume lists CT only
    assert engine.handlers[MODEL].model.doc["modalities"] == ["CT"]
