"""Volume models in the service (service/handlers/volume.py): the v2 door with the raw [N, 1, D, H, W] tensor and with
the series' files, the same probabilities whichever way a series comes, refusals, caps from the headers with memory
unchanged, ``/explain_series`` as JSON and as a Parametric Map, the series doors (``/predict_series``, v2's ``group``,
STOW-RS grouped by series: one volume, one SR) and the DICOM doors' routing by modality."""

from __future__ import annotations

import base64
import io
import json
import random
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

import dimse_attacks as dimse
from conftest import inprocess_client
from live_server import free_port
from sr_reader import dciodvfy_errors, library, series_groups
from tools import require_tool
from training.demo.volume_demo import series_datasets

TOL = 1e-5
MODEL = "demo-volume"
DICOM_PORT = free_port()


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
def spool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("volume-spool")


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str], spool: Path) -> Iterator["TestClient"]:  # noqa: F821
    """demo-image and demo-volume; the DICOM doors grouping by series into ``spool`` (a destination that never
    answers: the SRs stay there to be read), quiet after half a second."""
    yield from inprocess_client({"BIOMED_MODELS": f"demo-image,{MODEL}", "BIOMED_MAX_VOXELS": "2000000",
                                 "BIOMED_DICOM_DESTINATION": "http://127.0.0.1:9/dicom-web",
                                 "BIOMED_DICOM_SPOOL": str(spool), "BIOMED_DICOM_GROUP_TIMEOUT_S": "0.5",
                                 "BIOMED_DICOM_PORT": str(DICOM_PORT), "BIOMED_DICOM_HOST": "127.0.0.1",
                                 "BIOMED_DICOM_AET": "BIOMED", "BIOMED_DICOM_ALLOWED_AETS": "STORESCU"})


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
    assert r.status_code == 422 and r.json()["error"].startswith("series_mismatch: ")  # another series
    odd = pydicom.dcmread(io.BytesIO(files[0]))
    odd.SOPInstanceUID, odd.Rows, odd.Columns = generate_uid(), 32, 32
    odd.PixelData = np.zeros((32, 32), np.uint16).tobytes()
    r = _infer_files(client, files + [_bytes(odd)])
    assert r.status_code == 422 and r.json()["error"].startswith("series_mixed: "), r.text  # one series, two sizes
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
    assert engine.route("CT", "predict_series").model.name == MODEL  # grouped by series: CT series to the volume model


def _labels(client) -> list[str]:  # type: ignore[no-untyped-def]
    return next(m["labels"] for m in client.get("/models").json()["models"] if m["name"] == MODEL)


def test_predict_series_and_v2_give_the_volume_row(client, files) -> None:  # type: ignore[no-untyped-def]
    """/predict_series and v2's group=series (its default) answer the volume's one row, every instance carrying it."""
    labels = _labels(client)
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    r = client.post("/predict_series", files=[("file", (f"{i}.dcm", f, "application/dicom"))
                                              for i, f in enumerate(shuffled)], data={"model": MODEL})
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    series = body["series"]
    assert series["aggregate"] == "volume" and series["instances"] == len(files) and series["source_frame"] == 0
    row = np.array([series["probabilities"][k] for k in labels])
    v2 = _infer_files(client, files)
    assert np.abs(_probabilities(v2)[0] - row).max() <= TOL
    assert v2.json()["parameters"]["group"] == "series" and v2.json()["parameters"]["aggregate"] == "volume"
    assert body["input"]["slices"] == len(files) and len(body["instances"]) == len(files)
    numbers = [i["instance_number"] for i in body["instances"]]
    assert numbers == sorted(numbers)  # series order, whatever the request's
    assert all(i["predictions"][0]["probabilities"] == series["probabilities"] for i in body["instances"])
    one = {"inputs": [{"name": "file", "datatype": "BYTES", "shape": [1], "parameters": {},
                       "data": [base64.b64encode(files[0]).decode()]}], "parameters": {"group": "instance"}}
    r = client.post(f"/v2/models/{MODEL}/infer", json=one)
    assert r.status_code == 400 and "group" in r.json()["error"]
    other = _bytes(series_datasets(0, 8, "normal", "")[0][0])
    r = client.post("/predict_series", files=[("file", ("a.dcm", files[0], "application/dicom")),
                                              ("file", ("b.dcm", other, "application/dicom"))], data={"model": MODEL})
    assert r.status_code == 422 and r.json()["error"] == "series_mismatch"


def _stow(parts: list[bytes], boundary: str = "volume-boundary") -> tuple[bytes, dict[str, str]]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, {"content-type": f'multipart/related; type="application/dicom"; boundary={boundary}'}


def _results(spool: Path, wanted: int, timeout: float = 60.0) -> list[dict]:
    """The groups' result records in the spool, once ``wanted`` of them are made."""
    deadline = time.monotonic() + timeout
    while True:
        found = [json.loads(p.read_text()) for p in sorted((spool / "groups").glob("*/result-*.json"))]
        if len(found) >= wanted or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_stow_grouped_by_series_gives_a_volume_model_one_sr_per_series(client, series, files, spool,
                                                                         tmp_path) -> None:  # type: ignore[no-untyped-def]
    """STOW-RS of a CT series (shuffled) and of a gapped one: the CT instances reach demo-volume (it lists CT), each
    is answered once checked and on disk; when the group closes its files make one volume, whose row the series SR
    holds for the whole series (every instance in its library); the gapped series gets no SR (refused, with its
    reason), and the instances' files are emptied either way."""
    labels = _labels(client)
    expected = _probabilities(_infer_files(client, files))[0]
    gapped = [_bytes(ds) for ds in series_datasets(0, 6, "normal", "gap")[0]]
    shuffled = files[:]
    random.Random(5).shuffle(shuffled)
    body, headers = _stow(shuffled + gapped)
    r = client.post("/dicomweb/studies", content=body, headers=headers)
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["00081199"]["Value"]) == len(files) + len(gapped)
    results = _results(spool, 2)
    assert len(results) == 2, results
    made = next(x for x in results if x["sr"])
    refused = next(x for x in results if not x["sr"])
    assert refused["refused"] == "series_gap" and len(refused["members"]) == len(gapped)
    assert made["group"]["model"] == MODEL and made["group"]["aggregate"] == "volume"
    deadline = time.monotonic() + 10
    while not (spool / f"{made['sr']}.dcm").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    data = (spool / f"{made['sr']}.dcm").read_bytes()
    doc = pydicom.dcmread(io.BytesIO(data))
    assert [e[1] for e in library(doc)] == [ds.SOPInstanceUID for ds in series]  # the whole series, in order
    [group] = series_groups(doc)
    assert np.abs(np.array([group["values"][k] for k in labels]) - expected).max() <= TOL
    assert group["sop_instance_uid"] == series[0].SOPInstanceUID
    assert dciodvfy_errors(data, tmp_path) == []
    assert all(p.stat().st_size == 0 for p in (spool / "groups").glob("*/*.dcm"))


def test_c_store_of_a_series_gives_the_volume_model_one_sr(client, spool, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The same through the C-STORE receiver (dcmtk's storescu): one result for the series, the volume's row."""
    require_tool("storescu", "apt-get install dcmtk", dimse.STORESCU)
    sent = series_datasets(0, 7, "lesion", "")[0]
    paths = []
    for i, ds in enumerate(sent):
        paths.append(tmp_path / f"IM{i}.dcm")
        paths[-1].write_bytes(_bytes(ds))
    expected = _probabilities(_infer_files(client, [p.read_bytes() for p in paths]))[0]
    before = len(_results(spool, 0))
    done = dimse.store(DICOM_PORT, paths, "STORESCU", "BIOMED")
    assert done.returncode == 0, done.stderr[-2000:]
    results = _results(spool, before + 1)
    [made] = [r for r in results if r["members"] and r["members"][0]["series"] == sent[0].SeriesInstanceUID]
    assert made["sr"] and len(made["members"]) == len(sent) and made["group"]["model"] == MODEL
    assert np.abs(np.array(made["members"][0]["values"][0]) - expected).max() <= TOL
