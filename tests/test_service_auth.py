"""The service in-process with BIOMED_API_TOKEN and tiny limits set: the token's way in, and 413.

ServiceConfig is read when the service starts, so this is a second app instance with its own
environment; it lives in its own module so that it starts after test_service_inproc.py's app
has stopped (a worker process serves one engine). BentoML registers its own request metrics
in the process-wide Prometheus registry once per app, so a second app in one process must run
with BentoML's metrics off (the service's public ``config``); /metrics with a token set is
covered by the real-server test (test_service_serve.py), ours are read from the registry here.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import inprocess_client
from PIL import Image

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
TOKEN = "tok-3c1b7e-test"
ENV = {
    "BIOMED_API_TOKEN": TOKEN,
    "BIOMED_MAX_UPLOAD_MB": "0.02",  # 20,971 bytes: CT_small.dcm (39 kB) is over, MR_small.dcm (10 kB) under
    "BIOMED_MAX_PIXELS": "10000",
    "BIOMED_MAX_FRAMES": "4",
    "BIOMED_MAX_SEQUENCES": "3",
    "BIOMED_MAX_BASES": "600",
    "BIOMED_MAX_VARIANTS": "2",
    "BIOMED_MAX_EXPLAIN_BASES": "50",
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator["TestClient"]:  # noqa: F821
    yield from inprocess_client(ENV)


def assert_error(response, status: int, code: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"error", "detail"} and body["error"] == code and body["detail"]
    return body


def upload(client, data: bytes, headers: dict | None = AUTH, path: str = "/predict_image", media: str = "application/dicom"):  # type: ignore[no-untyped-def]
    return client.post(path, files={"file": ("f", data, media)}, headers=headers)


REQUESTS = [
    ("POST", "/predict_dna", {"json": {"sequences": ["ACGT"]}}),
    ("POST", "/predict_fasta", {"files": {"file": ("a.fa", b">a\nACGT\n", "text/plain")}}),
    ("POST", "/score_variants", {"json": {"variants": [{"sequence": "ACGT", "position": 0, "ref": "A", "alt": "C"}]}}),
    ("POST", "/explain_dna", {"json": {"sequence": "ACGTACGT"}}),
    ("POST", "/predict_image", {"files": {"file": ("m.dcm", (TEST_FILES / "MR_small.dcm").read_bytes(), "application/dicom")}}),
    ("GET", "/models", {}),
]


# Every guarded route with every kind of wrong credential: tests/test_security.py (one table over the route table).


@pytest.mark.parametrize("method, path, kwargs", REQUESTS, ids=[p for _, p, _ in REQUESTS])
def test_right_token_works(client, method: str, path: str, kwargs: dict) -> None:  # type: ignore[no-untyped-def]
    r = client.request(method, path, headers=AUTH, **kwargs)
    assert r.status_code == 200, r.text
    r = client.request(method, path, headers={"authorization": f"bearer {TOKEN}"}, **kwargs)  # scheme is case-insensitive
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/metrics"])
def test_probes_and_metrics_stay_open(client, path: str) -> None:  # type: ignore[no-untyped-def]
    expected = 404 if path == "/metrics" else 200  # BentoML's /metrics route is off in this app (see above)
    assert client.get(path).status_code == expected
    assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == expected


@pytest.mark.parametrize("path", ["/openapi.json", "/docs.json", "/schema.json", "/nope"])
def test_other_paths_need_the_token(client, path: str) -> None:  # type: ignore[no-untyped-def]
    assert client.get(path).status_code == 401


@pytest.mark.parametrize("path", ["/", "/ui/style.css"])
def test_the_page_and_its_assets_are_open_and_hold_no_data(client, path: str) -> None:  # type: ignore[no-untyped-def]
    r = client.get(path)
    assert r.status_code == 200 and TOKEN not in r.text and "demo-" not in r.text


def test_unauthorized_requests_are_counted(client) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    from prometheus_client.parser import text_string_to_metric_families

    assert client.post("/predict_dna", json={"sequences": ["ACGT"]}).status_code == 401
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    text = generate_latest(registry).decode()
    [family] = [f for f in text_string_to_metric_families(text) if f.name == "biomed_rejected_requests"]
    counted = {(s.labels["endpoint"], s.labels["reason"]) for s in family.samples if s.value > 0}
    assert ("predict_dna", "unauthorized") in counted


def test_413_upload_over_the_byte_limit(client) -> None:  # type: ignore[no-untyped-def]
    big = (TEST_FILES / "CT_small.dcm").read_bytes()
    body = assert_error(upload(client, big), 413, "too_large")
    assert "BIOMED_MAX_UPLOAD_MB" in body["detail"]
    assert_error(upload(client, big, path="/predict_fasta", media="text/plain"), 413, "too_large")
    raw = client.post("/predict_image", content=big, headers={**AUTH, "content-type": "application/dicom"})
    assert_error(raw, 413, "too_large")

    def chunks() -> Iterator[bytes]:  # no content-length: the cap holds while streaming
        for i in range(0, len(big), 4096):
            yield big[i : i + 4096]

    streamed = client.post("/predict_image", content=chunks(), headers={**AUTH, "content-type": "application/dicom"})
    assert_error(streamed, 413, "too_large")
    json_body = client.post("/predict_dna", json={"sequences": ["A" * 25_000]}, headers=AUTH)
    assert_error(json_body, 413, "too_large")
    assert upload(client, (TEST_FILES / "MR_small.dcm").read_bytes()).status_code == 200


def test_413_pixels_and_frames(client) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    Image.fromarray(np.zeros((120, 120), dtype=np.uint8)).save(buf, format="PNG")  # 14,400 pixels, tiny file
    assert_error(upload(client, buf.getvalue(), media="image/png"), 413, "too_large")
    assert_error(upload(client, (TEST_FILES / "rtdose.dcm").read_bytes()), 413, "too_large")  # 15 frames


def test_413_sequences_bases_variants_explain(client) -> None:  # type: ignore[no-untyped-def]
    post = lambda path, body: client.post(path, json=body, headers=AUTH)  # noqa: E731
    assert_error(post("/predict_dna", {"sequences": ["ACGT"] * 4}), 413, "too_large")
    assert post("/predict_dna", {"sequences": ["ACGT"] * 3}).status_code == 200
    assert_error(post("/predict_dna", {"sequences": ["A" * 301, "C" * 300]}), 413, "too_large")
    assert post("/predict_dna", {"sequences": ["A" * 300, "C" * 300]}).status_code == 200
    variant = {"sequence": "ACGT", "position": 0, "ref": "A", "alt": "C"}
    assert_error(post("/score_variants", {"variants": [variant] * 3}), 413, "too_large")
    assert_error(post("/explain_dna", {"sequence": "A" * 51}), 413, "too_large")
    assert post("/explain_dna", {"sequence": "A" * 50}).status_code == 200
    fasta = b">a\nA\n>b\nC\n>c\nG\n>d\nT\n"
    assert_error(upload(client, fasta, path="/predict_fasta", media="text/plain"), 413, "too_large")
