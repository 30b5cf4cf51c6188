"""Security: bearer auth (constant-time), no fetching of URLs, size caps, CORS off, no patient data in logs,
and a dependency audit of the serving requirements.

In-process tests run one app with a token and small caps; the slow ones start ``bentoml serve``.
"""

from __future__ import annotations

import http.server
import io
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pytest

from conftest import inprocess_client
from PIL import Image
from starlette.testclient import TestClient

try:
    from tests import live_server
    from tests.tools import REPO
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server
    from tools import REPO

TOKEN = "s3cret-token-for-tests"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DNA = {"sequences": ["ACGTACGTAC"]}


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator[TestClient]:
    """The in-process app with a token, a 1 MB upload cap and a 10,000-pixel cap (set only while it starts)."""
    yield from inprocess_client({"BIOMED_API_TOKEN": TOKEN, "BIOMED_MAX_UPLOAD_MB": "1", "BIOMED_MAX_PIXELS": "10000"})


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((height, width), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


WRONG = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Bearer {TOKEN[:-1]}"},
         {"Authorization": TOKEN}, {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer "},
         {"X-Api-Token": TOKEN}, {"Authorization": f"Bearer {TOKEN}".encode() + b"\xe9"}]


def test_every_guarded_route_is_401_without_the_right_token(client: TestClient) -> None:
    """The route table's every route not marked open (every door: native, v2, DICOMweb, admin), and an unknown path,
    with each wrong credential: 401 in the door's error form with a Bearer challenge, before the body is read; the
    right token gets past the guard on each."""
    from service.routes import ROUTES

    guarded = [(r.method, r.path.replace("{name}", "demo-dna").replace("{version}", "1")
                .replace("{StudyInstanceUID}", "1.2.3").replace("{name:path}", "app.js")) for r in ROUTES if not r.open]
    assert len(guarded) >= 15 and ("POST", "/admin/models/promote") in guarded
    for method, path in [*guarded, ("GET", "/nope")]:
        for headers in WRONG:
            response = client.request(method, path, headers=headers, json=DNA if method == "POST" else None)
            assert response.status_code == 401, (method, path, headers, response.status_code)
            assert response.headers["www-authenticate"].startswith("Bearer"), (method, path)
            assert "unauthorized" in response.text and TOKEN not in response.text, (method, path, response.text)
        right = client.request(method, path, headers=AUTH, json=DNA if method == "POST" else None)
        assert right.status_code != 401, (method, path, right.text[:200])


def test_right_token_and_open_probes(client: TestClient) -> None:
    assert client.post("/predict_dna", json=DNA, headers=AUTH).status_code == 200
    assert client.post("/predict_dna", json=DNA, headers={"Authorization": f"bearer {TOKEN}"}).status_code == 200
    assert client.get("/models", headers=AUTH).status_code == 200
    for probe in ("/livez", "/readyz"):
        assert client.get(probe).status_code == 200


def _refusal_seconds(check, given: bytes, calls: int = 3) -> float:  # type: ignore[no-untyped-def]
    """The fastest of ``calls`` refusals of ``given`` by ``check`` (noise only adds time)."""
    best = float("inf")
    for _ in range(calls):
        started = time.perf_counter()
        assert not check(given)
        best = min(best, time.perf_counter() - started)
    return best


def test_a_near_miss_token_is_refused_no_slower_than_a_far_miss() -> None:
    """Constant time, as behaviour: with a 4 MiB token, a guess wrong only in its last byte takes as long to refuse as
    one wrong in its first, so timing says nothing about how much of a guess is right. The same measurement tells a
    plain ``==`` apart (its near miss costs a 4 MiB memcmp, its far miss nothing), so it can see such a leak."""
    import dataclasses

    from biomed.preprocess.budget import DecodeBudget
    from service.admission import Admission
    from service.config import ServiceConfig

    token = bytes(range(ord("a"), ord("z") + 1)) * (4 * 2**20 // 26)
    admission = Admission(dataclasses.replace(ServiceConfig(), api_token=token.decode()), DecodeBudget(1))
    far, near = b"#" + token[1:], token[:-1] + b"#"
    assert admission.authorised(token) and admission.authorised(token.decode())
    leaky = lambda given: given.strip() == token  # noqa: E731 - what a naive check would do

    def ratio(check) -> float:  # type: ignore[no-untyped-def]
        times = [(_refusal_seconds(check, near), _refusal_seconds(check, far)) for _ in range(5)]  # interleaved
        return min(n for n, _ in times) / min(f for _, f in times)

    assert ratio(leaky) > 10, "the measurement cannot see a leaking comparison on this machine"
    assert 0.8 < ratio(admission.authorised) < 1.25


def test_caps_are_413(client: TestClient) -> None:
    big = client.post("/predict_image", headers=AUTH, files={"file": ("x.png", _png(8, 8) + bytes(2 * 2**20))})
    assert big.status_code == 413 and big.json()["error"] == "too_large"
    pixels = client.post("/predict_image", headers=AUTH, files={"file": ("x.png", _png(200, 100))})
    assert pixels.status_code == 413 and "pixels" in pixels.json()["detail"]
    ok = client.post("/predict_image", headers=AUTH, files={"file": ("x.png", _png(50, 50))})
    assert ok.status_code == 200


def test_cors_is_off_by_default(client: TestClient) -> None:
    origin = {"Origin": "https://evil.example"}
    simple = client.post("/predict_dna", json=DNA, headers={**AUTH, **origin})
    preflight = client.options("/predict_dna", headers={**origin, "Access-Control-Request-Method": "POST"})
    for response in (simple, preflight):
        assert not any(h.lower().startswith("access-control-") for h in response.headers), dict(response.headers)


class _Recorder(http.server.BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        _Recorder.hits.append(self.path)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"\0" * 128 + b"DICM")

    def log_message(self, *args: object) -> None:
        pass


def test_urls_are_never_fetched(client: TestClient) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/scan.dcm"
    try:
        as_field = client.post("/predict_image", headers=AUTH, files={"file": (None, url)})
        assert as_field.status_code == 400 and as_field.json()["error"] == "missing_file"
        as_query = client.post("/predict_image", headers=AUTH, params={"file": url}, files={"model": (None, "demo-image")})
        assert as_query.status_code == 400
        as_raw = client.post("/predict_image", headers={**AUTH, "content-type": "application/dicom"}, content=url.encode())
        assert as_raw.status_code == 415
        as_fasta = client.post("/predict_fasta", headers=AUTH, files={"file": (None, url)})
        assert as_fasta.status_code == 400
        as_json = client.post("/predict_image", headers=AUTH, json={"file": url})
        assert as_json.status_code == 415
    finally:
        server.shutdown()
    assert _Recorder.hits == []


# --------------------------------------------------------------------------- real server (slow)

PATIENT = {"PatientName": "Zebediah^Quux", "PatientID": "PID-998877", "PatientBirthDate": "19010203",
           "AccessionNumber": "ACC-5544"}
NEEDLES = ["Zebediah", "Quux", "PID-998877", "998877", "19010203", "ACC-5544"]


def _dicom_with_patient(broken: str | None) -> bytes:
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    ds = dcmread(get_testdata_file("CT_small.dcm"))
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    if broken == "no_pixels":
        del ds.PixelData
    if broken == "bad_window":
        ds.WindowCenter = "1234567890123"  # replaced below by a same-length window that is patient data
    out = io.BytesIO()
    ds.save_as(out)
    data = out.getvalue().replace(b"1234567890123", b"Zebediah^Quux")
    return data[: len(data) - 5000] if broken == "truncated" else data


@pytest.mark.slow
def test_real_server_auth_and_no_patient_data_in_logs(tmp_path: Path, demo_models: dict[str, str]) -> None:
    with live_server.running(tmp_path / "server.log", through_cli=True, BIOMED_API_TOKEN=TOKEN) as server:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            for probe in ("/livez", "/readyz", "/metrics"):
                assert c.get(probe).status_code == 200, probe
            assert c.get("/models").status_code == 401
            assert c.get("/models", headers={"Authorization": "Bearer nope"}).json()["error"] == "unauthorized"
            assert c.get("/models", headers=AUTH).status_code == 200
            statuses = {}
            for broken in (None, "bad_window", "no_pixels", "truncated"):
                data = _dicom_with_patient(broken)
                r = c.post("/predict_image", headers=AUTH, files={"file": ("Zebediah^Quux.dcm", data)},
                           data={"model": "demo-image"})
                statuses[broken] = r.status_code
                assert r.status_code < 500 and not any(n in r.text for n in NEEDLES), r.text[:500]
                raw = c.post("/predict_image", headers={**AUTH, "content-type": "application/dicom"}, content=data)
                assert raw.status_code < 500
            assert statuses[None] == 200 and statuses["no_pixels"] == 422, statuses
            assert 'biomed_rejected_requests_total{endpoint="models",reason="unauthorized"}' in c.get("/metrics").text
    log = server.output()
    assert "predict_image" in log  # the access log is there, so the grep below means something
    leaked = [n for n in NEEDLES if n in log]
    assert not leaked, f"patient data in the server log: {leaked}"


@pytest.mark.slow
def test_dependency_audit(tmp_path: Path) -> None:
    """scripts/audit.sh: pip-audit over [project].dependencies; findings must be accepted with a reason.

    Only an unreachable vulnerability database (exit 2: no package could be looked up) skips, saying so; pip-audit
    that cannot be installed or fails, or an audit that could look up only some packages (exit 3), fails."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "audit.sh")], cwd=REPO, capture_output=True, text=True,
                            timeout=900)
    output = result.stdout + result.stderr
    if result.returncode == 2:
        pytest.skip("needs a network: pip-audit's vulnerability database is not reachable from this machine "
                    f"({output.strip().splitlines()[-1]})")
    assert result.returncode == 0, output[-4000:]
