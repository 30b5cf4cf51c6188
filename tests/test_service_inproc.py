"""The service in-process: BentoML's ``to_asgi()`` app under Starlette's TestClient, with the demo models.

Every endpoint, every error class of docs/api.md, the metrics, patient data kept out of the logs,
no torch in the serving process, and parity with training-side PyTorch on the held-out demo data.
The auth and tiny-limit variants need a service started with other settings: test_service_auth.py.
"""

from __future__ import annotations

import hashlib
import gc
import http.server
import io
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import METRIC_LABELS, inprocess_client, metrics_text
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"
PHI = {"PatientName": "Zebediah^Quux", "PatientID": "PID-998877", "PatientBirthDate": "19010203",
       "AccessionNumber": "ACC-5544"}


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator["TestClient"]:  # noqa: F821
    from prometheus_client import values

    if values.ValueClass is values.MutexValue:  # a test-order problem, said plainly
        pytest.fail("prometheus_client was imported before PROMETHEUS_MULTIPROC_DIR was set; /metrics cannot work "
                    "in-process (run this module in its own session)")
    for name in ("BIOMED_API_TOKEN", "BIOMED_MAX_UPLOAD_MB", "BIOMED_MODELS"):
        assert name not in os.environ, f"{name} is set in the test environment"
    yield from inprocess_client()


def dicom_bytes(path: Path = CT_SMALL, **changes: object) -> bytes:
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def raster(fmt: str, mode: str = "L", size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (size[1], size[0], 3 if mode == "RGB" else 1), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr.squeeze()).convert(mode).save(buf, format=fmt)
    return buf.getvalue()


def upload(client, data: bytes, name: str = "x.dcm", media: str = "application/dicom", path: str = "/predict_image",
           **fields: str):  # type: ignore[no-untyped-def]
    return client.post(path, files={"file": (name, data, media)}, data=fields or None)


def assert_error(response, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"} and isinstance(body["error"], str) and isinstance(body["detail"], str)
    assert body["error"] and len(body["detail"]) > 10
    if code is not None:
        assert body["error"] == code, body
    return body


def assert_image_prediction(body: dict, frames: int, labels: list[str]) -> None:
    assert body["model"] == "demo-image" and body["version"]
    assert [p["frame"] for p in body["predictions"]] == list(range(frames))
    for p in body["predictions"]:
        assert list(p["probabilities"]) == labels
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert p["label"] == max(p["probabilities"], key=p["probabilities"].get)
    assert body["input"]["frames"] == frames


@pytest.fixture(scope="module")
def models(client) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    r = client.get("/models")
    assert r.status_code == 200
    return {m["kind"]: m for m in r.json()["models"]}


# --- probes and /models ----------------------------------------------------------------------


def test_probes(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_models_lists_every_demo_model_with_provenance(client, demo_models: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    from biomed.store import onnx_path, resolve

    entries = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert set(entries) == {"demo-image", "demo-dna", "demo-volume"}  # the default BIOMED_MODELS
    for kind in ("image", "dna", "volume"):
        tag = demo_models[kind]
        m = entries[tag.split(":")[0]]
        assert f"{m['name']}:{m['version']}" == tag and m["kind"] == kind
        assert m["provider"] in ("CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider")
        assert m["sha256"] == hashlib.sha256(onnx_path(resolve(tag)).read_bytes()).hexdigest()  # of the file itself
        assert m["metrics"] and isinstance(m["metrics"], dict)
        assert "research use only" in m["intended_use"].lower() and "not for diagnostic use" in m["intended_use"].lower()
        assert m["labels"] and m["input"]["shape"][0] not in (1, 2) and m["preprocess"]
    assert client.get("/openapi.json").status_code == 200


# --- /predict_image --------------------------------------------------------------------------


def test_predict_image_ct_small(client, models) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, CT_SMALL.read_bytes())
    assert r.status_code == 200, r.text
    body = r.json()
    assert_image_prediction(body, 1, models["image"]["labels"])
    info = body["input"]
    assert info["format"] == "dicom" and info["modality"] == "CT" and info["rows"] == info["columns"] == 128
    assert info["photometric_interpretation"] == "MONOCHROME2" and info["transfer_syntax"]
    # the same file by name and by name:version, and as a raw body
    for model in ("demo-image", f"demo-image:{models['image']['version']}", "demo-image:latest"):
        again = upload(client, CT_SMALL.read_bytes(), model=model)
        assert again.status_code == 200 and again.json()["predictions"] == body["predictions"]
    raw = client.post("/predict_image", content=CT_SMALL.read_bytes(), headers={"content-type": "application/dicom"})
    assert raw.status_code == 200 and raw.json()["predictions"] == body["predictions"]


@pytest.mark.parametrize("fmt, mode, media", [("PNG", "L", "image/png"), ("PNG", "RGB", "image/png"),
                                              ("JPEG", "L", "image/jpeg"), ("JPEG", "RGB", "image/jpeg")])
def test_predict_image_png_and_jpeg(client, models, fmt: str, mode: str, media: str) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, raster(fmt, mode), name=f"x.{fmt.lower()}", media=media)
    assert r.status_code == 200, r.text
    body = r.json()
    assert_image_prediction(body, 1, models["image"]["labels"])
    assert body["input"]["format"] == fmt.lower().replace("jpg", "jpeg") and body["input"]["rows"] == 40


def test_small_uploads_decode_on_the_loop_within_caps(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """CT_small and an uncompressed 384x384 slice decode on the event loop's thread; files past the inline caps
    (pixels, compressed pixels, DICOM elements) are decoded again on a preprocessing thread, to the same rows as a
    decode under the full limits."""
    import asyncio

    from service.engine import current
    from service.handlers import image as image_handler

    handler = current().pick(None, "predict_file")
    calls: list[tuple[str, bool]] = []
    load_image = image_handler.load_image

    def recording(data, spec, limits):  # type: ignore[no-untyped-def]
        try:
            out = load_image(data, spec, limits)
        except Exception:
            calls.append((threading.current_thread().name, False))
            raise
        calls.append((threading.current_thread().name, True))
        return out

    monkeypatch.setattr(image_handler, "load_image", recording)

    def dicom_bytes(ds: pydicom.Dataset) -> bytes:
        out = io.BytesIO()
        ds.save_as(out)
        return out.getvalue()

    wide = io.BytesIO()
    Image.fromarray(np.tile(np.arange(600) % 256, (600, 1)).astype(np.uint8)).save(wide, format="PNG")  # 360,000 px
    many = pydicom.dcmread(CT_SMALL)
    for i in range(2_100):  # over 2,000 elements
        many.add_new((0x0011, 0x1000 + i), "US", i)
    slice_384 = pydicom.dcmread(CT_SMALL)  # 384 x 384: within the pixels uncompressed, past them in JPEG 2000
    slice_384.PixelData = np.tile(slice_384.pixel_array, (3, 3)).tobytes()
    slice_384.Rows = slice_384.Columns = 384
    uncompressed = dicom_bytes(slice_384)
    slice_384.compress(pydicom.uid.JPEG2000Lossless)
    cases = [(CT_SMALL.read_bytes(), True), (uncompressed, True), (wide.getvalue(), False),
             (dicom_bytes(many), False), (dicom_bytes(slice_384), False)]
    for data, inline in cases:
        calls.clear()
        x, _ = asyncio.run(handler.decode(data))
        loop_thread = threading.current_thread().name
        if inline:
            assert calls == [(loop_thread, True)]
        else:  # refused by the inline caps, then decoded on a thread
            assert calls[0] == (loop_thread, False) and calls[1][1] and calls[1][0] != loop_thread, calls
        expected, _ = load_image(data, handler.spec, handler.limits)
        np.testing.assert_array_equal(x, expected)


@pytest.mark.parametrize("name, frames", [("rtdose.dcm", 15), ("SC_rgb_rle_2frame.dcm", 2)])
def test_multi_frame_dicom_gives_one_prediction_per_frame(client, models, name: str, frames: int) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, (TEST_FILES / name).read_bytes())
    assert r.status_code == 200, r.text
    assert_image_prediction(r.json(), frames, models["image"]["labels"])


# --- DNA endpoints ---------------------------------------------------------------------------


def test_predict_dna_strings_objects_short_and_long(client, models) -> None:  # type: ignore[no-untyped-def]
    length, stride = models["dna"]["preprocess"]["length"], models["dna"]["preprocess"]["stride"]
    rng = np.random.default_rng(1)
    long_seq = "".join(rng.choice(list("ACGT"), 2 * length + stride // 2))
    r = client.post("/predict_dna", json={"sequences": ["acgtNACGT", {"id": "long-one", "sequence": long_seq},
                                                        {"id": "exact", "sequence": long_seq[:length]}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "demo-dna"
    short, long, exact = body["predictions"]
    assert (short["id"], short["length"], long["id"], long["length"]) == ("0", 9, "long-one", len(long_seq))
    assert "windows" not in short and "windows" not in exact
    starts = [w["start"] for w in long["windows"]]
    assert starts[0] == 0 and starts[-1] == len(long_seq) - length and all(b - a <= stride for a, b in zip(starts, starts[1:]))
    assert all(w["end"] - w["start"] == length for w in long["windows"])
    labels = models["dna"]["labels"]
    for p in (short, long, exact, *long["windows"]):
        assert list(p["probabilities"]) == labels and all(0.0 <= v <= 1.0 for v in p["probabilities"].values())
    for t in labels:
        assert long["probabilities"][t] == max(w["probabilities"][t] for w in long["windows"])
    assert exact["probabilities"] == pytest.approx(long["windows"][0]["probabilities"], abs=1e-6)
    # case-insensitive, and the default model picked by kind equals naming it
    again = client.post("/predict_dna", json={"sequences": ["ACGTNACGT"], "model": "demo-dna"}).json()
    assert again["predictions"][0]["probabilities"] == pytest.approx(short["probabilities"], abs=1e-7)


def test_predict_dna_reverse_complement_flag(client) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    for n in (137, 451):  # odd padding; an uneven tiling: a sequence and its reverse complement agree
        seq = "".join(rng.choice(list("ACGT"), n))
        comp = seq[::-1].translate(str.maketrans("ACGT", "TGCA"))
        both = client.post("/predict_dna", json={"sequences": [seq, comp]}).json()["predictions"]
        assert both[0]["probabilities"] == pytest.approx(both[1]["probabilities"], abs=1e-6), n
    seq = "ACGTTGCAAGGCTTAACCGGTTAAGGCCAAACGT" * 4  # even padding: one window per strand
    comp = seq[::-1].translate(str.maketrans("ACGT", "TGCA"))
    both = client.post("/predict_dna", json={"sequences": [seq, comp]}).json()["predictions"]
    assert both[0]["probabilities"] == pytest.approx(both[1]["probabilities"], abs=1e-6)
    fwd = client.post("/predict_dna", json={"sequences": [seq, comp], "reverse_complement": False}).json()["predictions"]
    for t, p in both[0]["probabilities"].items():
        assert p == pytest.approx((fwd[0]["probabilities"][t] + fwd[1]["probabilities"][t]) / 2, abs=1e-6)


def test_predict_fasta_matches_predict_dna(client) -> None:  # type: ignore[no-untyped-def]
    fasta = ">seq1 some description\nACGTACGTAC\nGGTTAACC\n; comment\n>seq2\nttttaaaaccccgggg\n"
    r = upload(client, fasta.encode(), name="x.fa", media="text/plain", path="/predict_fasta", reverse_complement="false")
    assert r.status_code == 200, r.text
    body = r.json()
    assert [(p["id"], p["length"]) for p in body["predictions"]] == [("seq1", 18), ("seq2", 16)]
    same = client.post("/predict_dna", json={"sequences": [{"id": "seq1", "sequence": "ACGTACGTACGGTTAACC"},
                                                           {"id": "seq2", "sequence": "TTTTAAAACCCCGGGG"}],
                                             "reverse_complement": False}).json()
    assert body["predictions"] == same["predictions"]


def test_score_variants(client, models) -> None:  # type: ignore[no-untyped-def]
    seq = "ACGT" * 60
    r = client.post("/score_variants", json={"variants": [
        {"id": "v1", "sequence": seq, "position": 100, "ref": "A", "alt": "G"},
        {"sequence": seq, "position": 3, "ref": "t", "alt": "c"}]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "demo-dna" and [v["id"] for v in body["variants"]] == ["v1", "1"]
    labels = models["dna"]["labels"]
    for v in body["variants"]:
        assert set(v) == {"id", "ref", "alt", "diff", "log_odds_diff"}
        for t in labels:
            assert 0 <= v["ref"][t] <= 1 and 0 <= v["alt"][t] <= 1
            assert v["diff"][t] == pytest.approx(v["alt"][t] - v["ref"][t], abs=1e-6)
            assert np.sign(v["log_odds_diff"][t]) == np.sign(v["diff"][t]) or abs(v["diff"][t]) < 1e-6


def test_explain_dna(client, models) -> None:  # type: ignore[no-untyped-def]
    seq = "GATTACA" * 20
    task = models["dna"]["labels"][1]
    r = client.post("/explain_dna", json={"sequence": seq, "task": task})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["task"] == task and 0 <= body["probability"] <= 1
    scores = np.array(body["scores"])
    assert scores.shape == (len(seq), 4) and len(body["importance"]) == len(seq)
    codes = ["ACGT".index(c) for c in seq]
    assert (scores[np.arange(len(seq)), codes] == 0).all()
    np.testing.assert_allclose(body["importance"], np.abs(scores).sum(axis=1) / 3, atol=1e-6)
    default = client.post("/explain_dna", json={"sequence": seq}).json()
    predicted = client.post("/predict_dna", json={"sequences": [seq]}).json()["predictions"][0]["probabilities"]
    assert default["task"] == max(predicted, key=predicted.get)  # documented: the task the sequence scores highest
    assert default["probability"] == pytest.approx(predicted[default["task"]], abs=1e-6)


# --- errors ----------------------------------------------------------------------------------

JSON = {"content-type": "application/json"}


@pytest.mark.parametrize("path, body, code", [
    ("/predict_dna", b"{not json", "malformed"),
    ("/predict_dna", b'{"sequences": ["ACGT"]', "malformed"),
    ("/score_variants", b"\xff\xfe garbage", "malformed"),
    ("/explain_dna", b"[1, 2", "malformed"),
    ("/predict_dna", b'{"sequences": "ACGT"}', "invalid_body"),
    ("/predict_dna", b'{"sequences": [1, 2]}', "invalid_body"),
    ("/predict_dna", b'{"sequences": []}', "invalid_body"),
    ("/predict_dna", b'{"sequences": [{"sequence": "ACGT"}]}', "invalid_body"),
    ("/predict_dna", b'{"sequences": ["ACGT"], "reverse_complement": "yes"}', "invalid_body"),
    ("/predict_dna", b'{"sequences": ["ACGT"], "model": 3}', "invalid_body"),
    ("/predict_dna", b'{"sequences": ["ACGT"], "extra": 1}', "invalid_body"),
    ("/predict_dna", b"null", "invalid_body"),
    ("/predict_dna", b"", "invalid_body"),
    ("/score_variants", b'{"variants": [{"sequence": "ACGT", "position": "1", "ref": "C", "alt": "G"}]}', "invalid_body"),
    ("/score_variants", b'{"variants": [{"sequence": "ACGT", "position": -1, "ref": "C", "alt": "G"}]}', "invalid_body"),
    ("/score_variants", b'{"variants": [{"sequence": "ACGT", "position": 1, "ref": "CG", "alt": "G"}]}', "invalid_body"),
    ("/explain_dna", b'{"sequence": 5}', "invalid_body"),
    ("/explain_dna", b'{"sequence": ""}', "invalid_body"),
])
def test_400_malformed_json_and_wrong_types(client, path: str, body: bytes, code: str) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.post(path, content=body, headers=JSON), 400, code)


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(CT_SMALL.read_bytes())

    def log_message(self, *args: object) -> None:
        pass


def test_400_missing_file_and_urls_are_never_fetched(client) -> None:  # type: ignore[no-untyped-def]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ct.dcm"
    try:
        dummy = {"other": ("a.txt", b"x", "text/plain")}
        assert_error(client.post("/predict_image", files=dummy, data={"file": url}), 400, "missing_file")
        assert_error(client.post("/predict_image", files=dummy, data={"model": "demo-image"}), 400, "missing_file")
        assert_error(client.post("/predict_fasta", files=dummy, data={"file": url}), 400, "missing_file")
        assert_error(client.post("/predict_image", data={"file": url}), 415)  # urlencoded form
        assert_error(client.post("/predict_image", json={"file": url}), 415)
        assert_error(client.post("/predict_image", params={"file": url}, files=dummy), 400, "missing_file")
        bad = client.post("/predict_image", content=b"--x\r\nnot a part", headers={"content-type": "multipart/form-data; boundary=x"})
        assert bad.status_code == 400
    finally:
        server.shutdown()
    assert _Recorder.hits == []


def test_400_bad_fasta(client) -> None:  # type: ignore[no-untyped-def]
    assert_error(upload(client, b"ACGT\n>late\nACGT\n", path="/predict_fasta", media="text/plain"), 400)
    assert_error(upload(client, b"", path="/predict_fasta", media="text/plain"), 400)
    assert_error(upload(client, b">x\n\xff\xfe\n", path="/predict_fasta", media="text/plain"), 400)
    assert_error(upload(client, b">x\nACGT\n", path="/predict_fasta", media="text/plain", reverse_complement="maybe"), 400)


@pytest.mark.parametrize("request_kwargs, path", [
    ({"json": {"sequences": ["ACGT"], "model": "nope"}}, "/predict_dna"),
    ({"json": {"sequences": ["ACGT"], "model": "demo-dna:0000-not-a-version"}}, "/predict_dna"),
    ({"json": {"variants": [{"sequence": "ACGT", "position": 0, "ref": "A", "alt": "C"}], "model": "nope"}}, "/score_variants"),
    ({"json": {"sequence": "ACGT", "model": "nope:1"}}, "/explain_dna"),
    ({"files": {"file": ("x.dcm", CT_SMALL.read_bytes(), "application/dicom")}, "data": {"model": "nope"}}, "/predict_image"),
    ({"files": {"file": ("x.fa", b">a\nACGT\n", "text/plain")}, "data": {"model": "nope"}}, "/predict_fasta"),
])
def test_404_unknown_model(client, request_kwargs: dict, path: str) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(client.post(path, **request_kwargs), 404, "unknown_model")
    assert "demo-" in body["detail"]  # names what is loaded


def test_413_too_many_sequences_bases_variants(client) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.post("/predict_dna", json={"sequences": ["A"] * 10_001}), 413, "too_large")
    assert_error(client.post("/predict_dna", json={"sequences": ["ACGT" * 500_001]}), 413, "too_large")
    assert_error(client.post("/score_variants", json={"variants": [
        {"sequence": "ACGT", "position": 0, "ref": "A", "alt": "C"}] * 10_001}), 413, "too_large")
    assert_error(client.post("/explain_dna", json={"sequence": "A" * 5_001}), 413, "too_large")
    fasta = "".join(f">s{i}\nA\n" for i in range(10_001)).encode()
    assert_error(upload(client, fasta, path="/predict_fasta", media="text/plain"), 413, "too_large")


def test_413_decoded_pixel_cap_is_checked_from_the_header(client) -> None:  # type: ignore[no-untyped-def]
    # a 20000 x 20000 x 1 frame header with a tiny body: refused before any allocation
    assert_error(upload(client, dicom_bytes(Rows=20000, Columns=20000)), 413, "too_large")


@pytest.mark.parametrize("path, kwargs", [
    ("/predict_dna", {"content": b'{"sequences": ["ACGT"]}', "headers": {"content-type": "text/plain"}}),
    ("/predict_dna", {"data": {"sequences": "ACGT"}}),
    ("/score_variants", {"content": b"<xml/>", "headers": {"content-type": "application/xml"}}),
    ("/explain_dna", {"files": {"file": ("a", b"ACGT", "text/plain")}}),
    ("/predict_image", {"content": b"ACGT", "headers": {"content-type": "text/plain"}}),
    ("/predict_image", {"content": b"x"}),  # no content type at all
])
def test_415_wrong_content_type(client, path: str, kwargs: dict) -> None:  # type: ignore[no-untyped-def]
    assert_error(client.post(path, **kwargs), 415, "unsupported_media_type")


@pytest.mark.parametrize("data", [
    np.random.default_rng(0).bytes(4096),
    b"\x00" * 128 + b"DICM" + np.random.default_rng(1).bytes(512),  # a preamble and then garbage
    b"GIF89a" + b"\x00" * 100,
    b"%PDF-1.4 not an image",
])
def test_415_random_bytes_as_dicom(client, data: bytes) -> None:  # type: ignore[no-untyped-def]
    r = upload(client, data)
    assert r.status_code in (400, 415, 422), r.text
    if not data.startswith(b"\x00" * 128):
        assert_error(r, 415, "unsupported_media_type")


def test_422_invalid_base_names_sequence_position_and_character(client) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(client.post("/predict_dna", json={"sequences": ["ACGT", {"id": "chr7-frag", "sequence": "ACGTXAC"}]}),
                        422, "invalid_sequence")
    assert "chr7-frag" in body["detail"] and "position 4" in body["detail"] and "'X'" in body["detail"]
    body = assert_error(client.post("/predict_dna", json={"sequences": ["ACGTAC", "AC-GT"]}), 422, "invalid_sequence")
    assert "'1'" in body["detail"] and "position 2" in body["detail"] and "'-'" in body["detail"]
    body = assert_error(upload(client, b">rec9\nACGU\n", path="/predict_fasta", media="text/plain"), 422, "invalid_sequence")
    assert "rec9" in body["detail"] and "position 3" in body["detail"] and "'U'" in body["detail"]
    assert_error(client.post("/explain_dna", json={"sequence": "ACGZ"}), 422, "invalid_sequence")
    assert_error(client.post("/predict_dna", json={"sequences": [""]}), 422, "empty_sequence")


def test_422_variants(client) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(client.post("/score_variants", json={"variants": [
        {"id": "rs1", "sequence": "ACGTACGT", "position": 2, "ref": "A", "alt": "T"}]}), 422, "ref_mismatch")
    assert "rs1" in body["detail"] and "position 2" in body["detail"] and "'G'" in body["detail"]
    assert_error(client.post("/score_variants", json={"variants": [
        {"sequence": "ACGT", "position": 4, "ref": "A", "alt": "T"}]}), 422, "position_out_of_range")
    assert_error(client.post("/score_variants", json={"variants": [
        {"sequence": "ACGT", "position": 0, "ref": "A", "alt": "A"}]}), 422, "invalid_alt")
    assert_error(client.post("/explain_dna", json={"sequence": "ACGT", "task": "nope"}), 422, "unknown_task")


@pytest.mark.parametrize("name", ["rtplan.dcm", "test-SR.dcm"])
def test_422_dicom_without_pixel_data(client, name: str) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(upload(client, (TEST_FILES / name).read_bytes()), 422, "no_pixel_data")
    assert "no pixel data" in body["detail"]


def test_422_broken_pixel_data(client) -> None:  # type: ignore[no-untyped-def]
    data = CT_SMALL.read_bytes()
    assert_error(upload(client, data[: len(data) - 5000]), 422)
    assert_error(upload(client, raster("PNG")[:200], media="image/png"), 422, "bad_pixel_data")


def test_422_wrong_model_kind(client) -> None:  # type: ignore[no-untyped-def]
    body = assert_error(client.post("/predict_dna", json={"sequences": ["ACGT"], "model": "demo-image"}), 422,
                        "wrong_model_kind")
    assert "is an image model; this endpoint needs a dna model" in body["detail"]
    assert_error(client.post("/explain_dna", json={"sequence": "ACGT", "model": "demo-image"}), 422, "wrong_model_kind")
    body = assert_error(upload(client, CT_SMALL.read_bytes(), model="demo-dna"), 422, "wrong_model_kind")
    assert "is a dna model; this endpoint needs an image model" in body["detail"]


def test_a_dicom_sent_as_fasta_is_told_it_is_not_fasta(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/predict_fasta", files={"file": ("ct.dcm", CT_SMALL.read_bytes(), "application/dicom")})
    body = assert_error(r, 400, "malformed")
    assert body["detail"].startswith("the upload is a DICOM file, not FASTA; send images to /predict_image")
    r = client.post("/predict_fasta", files={"file": ("x.fa", b">s\nAC\xffGT\n", "text/plain")})
    assert assert_error(r, 400, "malformed")["detail"].startswith("the upload is not FASTA: it is not UTF-8 text")


def test_no_5xx_for_odd_requests_and_service_still_serves(client) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    odd = [rng.bytes(64), b"{}", b"[]", b'{"sequences": [null]}', b'{"sequences": [{"id": 1, "sequence": 2}]}',
           b'{"variants": [{}]}', b'{"sequence": "ACGT", "task": null, "model": null}', "{\"sequences\": [\"\u00e9\"]}".encode(),
           b'{"sequences": ["' + b"N" * 300 + b'"]}', b'{"sequence": "NNNN"}', b"1e999999"]
    for path in ("/predict_dna", "/score_variants", "/explain_dna", "/predict_image", "/predict_fasta"):
        for body in odd:
            for media in ("application/json", "multipart/form-data; boundary=zz", "application/octet-stream"):
                r = client.post(path, content=body, headers={"content-type": media})
                assert r.status_code < 500, (path, body[:40], media, r.status_code, r.text)
    assert client.get("/predict_dna").status_code == 405
    assert client.get("/nope").status_code == 404
    r = upload(client, CT_SMALL.read_bytes())
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    assert client.post("/predict_dna", json={"sequences": ["ACGT"]}).status_code == 200
    assert client.get("/readyz").status_code == 200


# --- metrics ---------------------------------------------------------------------------------


def scrape(client) -> dict[str, list]:  # type: ignore[no-untyped-def]
    """The biomed_* families of the app's metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f.samples for f in text_string_to_metric_families(metrics_text(client)) if f.name.startswith("biomed_")}


def test_metrics_after_traffic(client, models) -> None:  # type: ignore[no-untyped-def]
    assert upload(client, CT_SMALL.read_bytes()).status_code == 200
    assert upload(client, raster("PNG"), media="image/png").status_code == 200
    assert client.post("/predict_dna", json={"sequences": ["ACGT" * 10]}).status_code == 200
    assert client.post("/predict_dna", json={"sequences": ["ACGTX"]}).status_code == 422
    families = scrape(client)
    for name, labels in METRIC_LABELS.items():
        assert name in families, f"{name} missing from /metrics"
        samples = [s for s in families[name] if not s.name.endswith(("_created", "_gsum", "_gcount"))]
        assert samples, name
        for s in samples:
            assert set(s.labels) - {"le"} == labels, (name, s.labels)
    kinds = {s.labels["kind"] for s in families["biomed_preprocess_seconds"]}
    assert {"dicom", "png", "dna"} <= kinds
    info = {(s.labels["model"], s.labels["version"], s.labels["sha256"]): s.value for s in families["biomed_model_info"]}
    for m in models.values():
        assert info[(m["name"], m["version"], m["sha256"])] == 1
    rejected = {(s.labels["endpoint"], s.labels["reason"]): s.value for s in families["biomed_rejected_requests"]
                if s.name.endswith("_total")}
    assert rejected[("predict_dna", "invalid_sequence")] >= 1
    preds = {s.labels["model"] for s in families["biomed_predictions"] if s.name.endswith("_total") and s.value > 0}
    assert {"demo-image", "demo-dna"} <= preds  # other test modules may have served more models in this session
    counts: dict = {}
    for s in families["biomed_batch_size"]:  # summed over the model's versions
        if s.name.endswith("_count"):
            counts[s.labels["model"]] = counts.get(s.labels["model"], 0) + s.value
    assert counts["demo-image"] >= 2 and counts["demo-dna"] >= 1


# --- torch-free serving and patient data -----------------------------------------------------


def test_service_imports_without_torch() -> None:
    code = ("import service.service, service.engine, biomed.runtime, service.app, service.handlers, biomed.dna_ops, sys; "
            "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


def big_ct(rows: int = 1024, frames: int = 1, **changes: object) -> bytes:
    """CT_small with a larger image (rows x rows, uint16), e.g. 2 MB of pixel data at 1024."""
    ds = pydicom.dcmread(CT_SMALL)
    rng = np.random.default_rng(rows + frames)
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    shape = (frames, rows, rows) if frames > 1 else (rows, rows)
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = rng.integers(0, 4096, shape, dtype=np.uint16).tobytes()
    for key, value in changes.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf)
    return buf.getvalue()


def test_uploads_are_never_written_to_disk(client, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """http.py promises an upload never lands in a temp file (patient data on disk): not even a large one."""
    spilled: list[object] = []
    real = tempfile.TemporaryFile

    def spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        spilled.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", spy)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", spy)
    data = big_ct(1024, **PHI)
    assert len(data) > 2 * 2**20
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = upload(client, data)
        assert r.status_code == 200, r.text
        fasta = (">big\n" + "ACGT" * 400_000 + "\n").encode()  # 1.6 MB
        assert upload(client, fasta, path="/predict_fasta", media="text/plain").status_code == 200
        assert upload(client, b">a\nACGT\n", path="/predict_fasta", media="text/plain", model="nope").status_code == 404
        gc.collect()
    assert spilled == []
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, unclosed  # the form's files are closed, not left to the garbage collector


def test_frames_split_across_batches_keep_their_order(client) -> None:  # type: ignore[no-untyped-def]
    """More frames than BIOMED_MAX_BATCH_SIZE (32): the batcher splits them; each frame keeps its own answer."""
    window = {"WindowCenter": 2048, "WindowWidth": 4096}  # a fixed window: each frame presents alone as in the stack
    stack = pydicom.dcmread(io.BytesIO(big_ct(32, frames=40, **window)))
    r = upload(client, big_ct(32, frames=40, **window))
    assert r.status_code == 200, r.text
    predictions = r.json()["predictions"]
    assert len(predictions) == 40
    frames = np.frombuffer(stack.PixelData, dtype=np.uint16).reshape(40, 32, 32)
    for k in (0, 1, 31, 32, 39):
        one = pydicom.dcmread(io.BytesIO(big_ct(32, **window)))
        one.PixelData = frames[k].tobytes()
        buf = io.BytesIO()
        one.save_as(buf)
        alone = upload(client, buf.getvalue()).json()["predictions"][0]["probabilities"]
        assert predictions[k]["probabilities"] == pytest.approx(alone, abs=1e-6), k


def test_patient_data_never_reaches_logs_or_responses(client, caplog, capfd) -> None:  # type: ignore[no-untyped-def]
    valid = dicom_bytes(**PHI)
    ds = pydicom.dcmread(io.BytesIO(valid))
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # truncated pixel data
    buf = io.BytesIO()
    ds.save_as(buf)
    broken = buf.getvalue()
    assert all(v.encode() in valid and v.encode() in broken for v in PHI.values())
    caplog.set_level(logging.DEBUG)
    for name, logger in list(logging.root.manager.loggerDict.items()):  # every logger, pydicom's too
        if isinstance(logger, logging.Logger):
            caplog.set_level(logging.DEBUG, logger=name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        responses = [
            upload(client, valid),
            upload(client, broken),
            upload(client, valid[: len(valid) // 2]),  # truncated file
            upload(client, valid, model="no-such-model"),
            upload(client, broken, model="demo-dna"),
            client.post("/predict_image", content=broken, headers={"content-type": "application/dicom"}),
        ]
    assert responses[0].status_code == 200
    assert all(400 <= r.status_code < 500 for r in responses[1:]), [r.status_code for r in responses]
    out, err = capfd.readouterr()
    texts = {"log": caplog.text, "stdout": out, "stderr": err, "responses": " ".join(r.text for r in responses)}
    leaked = {where: v for where, text in texts.items() for v in PHI.values() if v in text or v.replace("^", " ") in text}
    assert not leaked, leaked
    warned = [str(w.message) for w in caught]  # all of them, even those the service filters in production
    assert not [v for v in PHI.values() for m in warned if v in m]


# --- parity with training-side PyTorch -------------------------------------------------------


def _run(demo_models: dict[str, str], kind: str) -> Path:
    run = Path(demo_models["workdir"]) / "runs" / kind
    assert (run / "split.json").is_file(), f"{run}: the demo models' training run is missing"
    return run


def test_image_parity_with_training(client, demo_models: dict[str, str], models) -> None:  # type: ignore[no-untyped-def]
    import torch

    from biomed.preprocess.image import load_image_file
    from training.config import TrainConfig
    from training.data import load_images
    from training.engine import predict
    from training.export import load_run_model
    from training.kinds.image import image_spec

    run = _run(demo_models, "image")
    model, best = load_run_model(run)
    config = TrainConfig.from_dict(best["config"])
    spec = image_spec(config)
    test_index = np.asarray(json.loads((run / "split.json").read_text())["test"])
    paths = load_images(config.data, spec).subset(test_index).sources
    assert len(paths) >= 5 and all(Path(p).is_file() for p in paths)
    labels = models["image"]["labels"]
    worst = 0.0
    for path in paths:
        x, _ = load_image_file(path, spec)
        expected = predict(model, x, multilabel=False, device=torch.device("cpu"))
        r = upload(client, Path(path).read_bytes())
        assert r.status_code == 200, r.text
        served = np.array([[p["probabilities"][t] for t in labels] for p in r.json()["predictions"]])
        assert served.shape == expected.shape
        worst = max(worst, float(np.abs(served - expected).max()))
    assert worst <= 1e-5, worst


def test_dna_parity_with_training(client, demo_models: dict[str, str], models) -> None:  # type: ignore[no-untyped-def]
    import csv

    import torch

    from training.config import TrainConfig
    from training.data import load_dna_table
    from training.engine import predict
    from training.export import load_run_model

    run = _run(demo_models, "dna")
    model, best = load_run_model(run)
    config = TrainConfig.from_dict(best["config"])
    test_index = np.asarray(json.loads((run / "split.json").read_text())["test"])
    with open(config.data, newline="") as f:
        sequences = [row[0] for row in csv.reader(f)][1:]
    data = load_dna_table(config.data).subset(test_index)
    assert data.x.shape[1] == models["dna"]["preprocess"]["length"]
    expected = predict(model, data.x, multilabel=True, device=torch.device("cpu"))
    r = client.post("/predict_dna", json={"sequences": [sequences[i] for i in test_index], "reverse_complement": False})
    assert r.status_code == 200, r.text
    labels = models["dna"]["labels"]
    served = np.array([[p["probabilities"][t] for t in labels] for p in r.json()["predictions"]])
    assert served.shape == expected.shape and len(served) >= 10
    assert float(np.abs(served - expected).max()) <= 1e-5
    heldout = np.load(run / "heldout.npz")  # the run's own copy of the held-out split agrees
    np.testing.assert_array_equal(heldout["x"], data.x)
