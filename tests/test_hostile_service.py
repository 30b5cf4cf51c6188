"""Hostile requests against the service's front (in-process): every one a 4xx in the contract form, quickly,
without building what the client asked for.

The real-server halves (slow bodies, disconnects, metric series, log lines, bursts) are in
tests/test_hostile_server.py.
"""

from __future__ import annotations

import time
import tracemalloc
from typing import Iterator

import pytest
from starlette.testclient import TestClient

from conftest import inprocess_client

MB = 2**20


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator[TestClient]:
    yield from inprocess_client()


def error(response, status: int, code: str | None = None) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "detail"} and body["detail"], body
    if code is not None:
        assert body["error"] == code, body
    return body


# --- paths, methods, redirects ------------------------------------------------------------------------------

@pytest.mark.parametrize("method, path, status", [
    ("GET", "/nope", 404), ("POST", "/predict_dna/", 404), ("GET", "/predict_dna", 405), ("POST", "/models", 405),
    ("POST", "/livez", 405), ("DELETE", "/predict_image", 405), ("GET", "/static_content/index.css", 404),
    ("GET", "/v1/../../etc/passwd", 404), ("PUT", "/", 405),
])
def test_unknown_paths_and_wrong_methods_answer_in_the_error_form(client: TestClient, method: str, path: str,
                                                                  status: int) -> None:
    r = client.request(method, path, content=b"{}", headers={"Host": "evil.example"}, follow_redirects=False)
    error(r, status, "not_found" if status == 404 else "method_not_allowed")
    assert "location" not in r.headers  # no redirect built from the client's Host header
    if status == 405:
        assert r.headers["allow"]


def test_our_page_replaces_bentoml_pages_and_loads_nothing_from_elsewhere(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "biomed-serve" in page.text and "/predict_image" in page.text
    assert "googletagmanager" not in page.text and "http://" not in page.text and "https://" not in page.text
    css = client.get("/ui/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    error(client.get("/ui/nope.js"), 404)
    for path in ("/docs.json", "/schema.json"):
        doc = client.get(path)
        assert doc.status_code == 200 and "/predict_dna" in doc.json()["paths"], path
    for r in (page, css, client.get("/livez"), client.post("/predict_dna", json={"sequences": ["ACGT"]})):
        assert r.headers["content-security-policy"] == ("default-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
                                                         "object-src 'none'; form-action 'self'")
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"


# --- bodies: framing, multipart charsets ----------------------------------------------------------------------

@pytest.mark.parametrize("charset, status", [
    ("idna", 400),  # the field name "xn--" is not IDNA: the body cannot be parsed, said as the error form
    ("utf-7", 200),  # every field decodes: the FASTA is served
    ("no-such-codec", 200),  # a charset Python does not know is ignored (UTF-8), not a 500
])
def test_multipart_charsets_are_decoded_or_the_body_is_a_400(client: TestClient, charset: str, status: int) -> None:
    body = (b'--B\r\nContent-Disposition: form-data; name="xn--"\r\n\r\nv\r\n'
            b'--B\r\nContent-Disposition: form-data; name="file"; filename="x.fa"\r\n\r\n>a\nACGT\n\r\n--B--\r\n')
    r = client.post("/predict_fasta", content=body,
                    headers={"content-type": f"multipart/form-data; boundary=B; charset={charset}"})
    if status == 400:
        assert "send UTF-8 form fields" in error(r, 400, "malformed")["detail"]
    else:
        assert r.status_code == 200, r.text[:300]
        assert [p["id"] for p in r.json()["predictions"]] == ["a"]


# --- records counted while parsing ---------------------------------------------------------------------------

def _timed(send) -> tuple[object, float, int]:  # type: ignore[no-untyped-def]
    tracemalloc.start()
    started = time.perf_counter()
    try:
        r = send()
        return r, time.perf_counter() - started, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("name, path, body, media", [
    ("fasta_empty_records", "/predict_fasta", b">\n" * (4 * MB // 2), "upload"),
    ("fasta_many_records", "/predict_fasta", b">s\nA\n" * (6 * MB // 5), "upload"),
    ("json_tiny_sequences", "/predict_dna", b'{"sequences": [' + b'"A",' * (15 * MB // 4) + b'"A"]}', "json"),
    ("json_tiny_objects", "/predict_dna", b'{"sequences": [' + b'{"id":"a","sequence":"A"},' * 400_000 + b'"A"]}',
     "json"),
    ("json_tiny_variants", "/score_variants", b'{"variants": [' + b'{"sequence":"A","position":0,"ref":"A","alt":"C"},'
     * 200_000 + b'{}]}', "json"),
])
def test_record_bombs_are_refused_before_they_are_built(client: TestClient, name: str, path: str, body: bytes,
                                                        media: str) -> None:
    if media == "upload":
        send = lambda: client.post(path, files={"file": ("x.fa", body, "text/plain")})  # noqa: E731
    else:
        send = lambda: client.post(path, content=body, headers={"content-type": "application/json"})  # noqa: E731
    r, seconds, peak = _timed(send)
    error(r, 413, "too_large")  # type: ignore[arg-type]
    # what the parser built beside the body: a fraction of it, not the hundreds of MB of the records
    assert peak < 4 * len(body) + 64 * MB, f"{name}: {peak / MB:.0f} MB traced"
    assert seconds < 10, f"{name}: {seconds:.1f} s"


def test_fasta_ids_and_headers_are_capped(client: TestClient) -> None:
    long_id = b">" + b"x" * 300 + b"\nACGT\n"
    error(client.post("/predict_fasta", files={"file": ("x.fa", long_id, "text/plain")}), 400)
    huge_header = b">a " + b"d" * (5 * MB) + b"\nACGT\n"
    r = client.post("/predict_fasta", files={"file": ("x.fa", huge_header, "text/plain")})
    body = error(r, 413)
    assert "ddddd" not in r.text and len(body["detail"]) < 300  # nothing of the header echoed back
    ok = client.post("/predict_fasta", files={"file": ("x.fa", b">" + b"y" * 256 + b" a description\nACGT\n")})
    assert ok.status_code == 200 and ok.json()["predictions"][0]["id"] == "y" * 256


def test_variant_ref_n_is_refused(client: TestClient) -> None:
    r = client.post("/score_variants", json={"variants": [{"sequence": "ACGNACGT", "position": 3, "ref": "N", "alt": "A"}]})
    error(r, 422, "invalid_ref")


# --- queue admission -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_queue(demo_models: dict[str, str]) -> Iterator[TestClient]:
    yield from inprocess_client({"BIOMED_MAX_QUEUED_MB": "2", "BIOMED_MAX_REQUEST_ROWS": "8000"})


def test_a_request_over_the_row_limit_is_a_413_and_a_full_queue_a_429(small_queue: TestClient) -> None:
    from service.engine import current

    seq = "ACGT" * 1250  # 5,000 bases: ~59,000 rows to explain, over 8,000
    error(small_queue.post("/explain_dna", json={"sequence": seq}), 413, "too_large")
    one = {"sequence": seq[:600]}  # ~7,200 rows x 200 B = 1.4 MB: one fits in 2 MB, two do not
    assert small_queue.post("/explain_dna", json=one).status_code == 200
    handler = current().pick("demo-dna")
    with handler.admit(7_200, "an explanation in flight"):  # the queue holds another request's 1.4 MB
        full = small_queue.post("/explain_dna", json=one)
        detail = error(full, 429, "too_many_requests")["detail"]
        assert "queue is full" in detail and "BIOMED_MAX_QUEUED_MB" in detail
        assert small_queue.post("/predict_dna", json={"sequences": ["ACGT"]}).status_code == 200  # 2 rows still fit
    assert small_queue.post("/explain_dna", json=one).status_code == 200  # room again once it is released
