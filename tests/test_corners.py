"""The documented corners of the settings and the operator endpoints, each tried.

In-process (one app with a token, one request slot, a 1 MB body budget, a 64 MB decode budget, CORS origins and no
store watcher): ``Retry-After`` on the concurrency 429, the 429s of ``BIOMED_MAX_BODIES_MB`` and
``BIOMED_MAX_DECODING_MB`` over HTTP (another request's share held by the worker's own ``Admission``),
``BIOMED_CORS_ORIGINS`` when set, ``/readyz`` 503 while the engine is not ready, the promote endpoint's 409
``reload_off``. A real server started as users start it (``biomed serve --workers 1 --models ... --dicom-port P``):
the flags override the environment, ``BIOMED_BODY_TIMEOUT_S`` with ``BIOMED_BODY_MIN_KBPS=0``, the body budget
over a socket, ``BIOMED_DICOM_MAX_ASSOCIATIONS``, the receiver on ``--host``, and ``biomed_gpu_required``,
``biomed_model_reloads_total{outcome="failed"}`` and ``biomed_dicom_forwarded_total{outcome="rejected"}`` scraped
from it. Start-up refuses a setting that is not a number and an unknown provider.
"""

from __future__ import annotations

import http.server
import io
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import inprocess_client

try:
    from tests import live_server, model_store
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server
    import model_store

TOKEN = "corners-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ORIGIN = "https://viewer.example"
MB = 2**20
CT_SMALL = Path(get_testdata_file("CT_small.dcm"))


def error(response: httpx.Response, status: int, code: str) -> str:
    """The detail of a ``status``/``code`` answer in the error form."""
    assert response.status_code == status, (response.status_code, response.text[:300])
    body = response.json()
    assert body["error"] == code and body["detail"], body
    return body["detail"]


# ---------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator["TestClient"]:  # noqa: F821
    yield from inprocess_client({"BIOMED_API_TOKEN": TOKEN, "BIOMED_WORKERS": "1", "BIOMED_MAX_CONCURRENCY": "1",
                                 "BIOMED_MAX_BODIES_MB": "1", "BIOMED_MAX_DECODING_MB": "64",
                                 "BIOMED_CORS_ORIGINS": f"{ORIGIN},https://other.example", "BIOMED_MODEL_POLL_S": "0"})


@pytest.fixture
def engine(client):  # type: ignore[no-untyped-def]
    """This module's engine (the process's latest: the module's app started last)."""
    from service.engine import current

    return current()


def test_the_concurrency_429_says_when_to_retry(client, engine) -> None:  # type: ignore[no-untyped-def]
    with engine.admission.slot():  # the worker's one slot, held by a request in flight
        r = client.post("/predict_dna", json={"sequences": ["ACGT"]}, headers=AUTH)
        assert "BIOMED_MAX_CONCURRENCY" in error(r, 429, "too_many_requests")
        assert r.headers["retry-after"] == "1"
        assert client.get("/readyz").status_code == 200  # the probes are not counted
    assert client.post("/predict_dna", json={"sequences": ["ACGT"]}, headers=AUTH).status_code == 200


def test_bodies_past_the_worker_s_budget_are_429(client, engine) -> None:  # type: ignore[no-untyped-def]
    body = {"sequences": ["ACGT" * 64]}
    with engine.admission.body(MB - 100):  # another request's body, held by this worker
        r = client.post("/predict_dna", json=body, headers=AUTH)
        assert "BIOMED_MAX_BODIES_MB" in error(r, 429, "too_many_requests")
    assert client.post("/predict_dna", json=body, headers=AUTH).status_code == 200


def _png(side: int) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((side, side), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


def test_decodes_past_the_worker_s_budget_are_429_and_one_too_big_alone_413(client, engine) -> None:  # type: ignore[no-untyped-def]
    upload = {"file": ("ct.dcm", CT_SMALL.read_bytes(), "application/dicom")}
    with engine.admission.decode.reserve(64 * MB - 1024):  # other decodes in flight hold the budget
        r = client.post("/predict_image", files=upload, headers=AUTH)
        assert "BIOMED_MAX_DECODING_MB" in error(r, 429, "too_many_requests")
    assert client.post("/predict_image", files=upload, headers=AUTH).status_code == 200
    alone = client.post("/predict_image", files={"file": ("big.png", _png(8000), "image/png")}, headers=AUTH)
    assert "BIOMED_MAX_DECODING_MB" in error(alone, 413, "too_large")
    assert engine.admission.decode.held == 0


def test_cors_answers_the_configured_origins_only(client) -> None:  # type: ignore[no-untyped-def]
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    ok = client.options("/predict_dna", headers={"Origin": ORIGIN, **preflight})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == ORIGIN
    assert {"GET", "POST"} <= {m.strip() for m in ok.headers["access-control-allow-methods"].split(",")}
    assert "authorization" in ok.headers["access-control-allow-headers"].lower()
    simple = client.post("/predict_dna", json={"sequences": ["ACGT"]}, headers={**AUTH, "Origin": ORIGIN})
    assert simple.status_code == 200 and simple.headers["access-control-allow-origin"] == ORIGIN
    for answer in (client.options("/predict_dna", headers={"Origin": "https://evil.example", **preflight}),
                   client.post("/predict_dna", json={"sequences": ["ACGT"]},
                               headers={**AUTH, "Origin": "https://evil.example"})):
        assert "access-control-allow-origin" not in answer.headers, dict(answer.headers)


def test_readyz_is_503_while_the_engine_is_not_ready(client, engine) -> None:  # type: ignore[no-untyped-def]
    engine.ready = False  # as while a worker's models load (a real server does not answer then: test below)
    try:
        assert client.get("/readyz").status_code == 503
        assert client.get("/v2/health/ready").status_code == 503
        assert client.get("/livez").status_code == 200
    finally:
        engine.ready = True
    assert client.get("/readyz").status_code == 200


def test_promote_is_409_when_the_store_is_not_watched(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/admin/models/promote", json={"model": "demo-dna:latest"}, headers=AUTH)
    assert "BIOMED_MODEL_POLL_S" in error(r, 409, "reload_off")


# ---------------------------------------------------------------- start-up refusals


@pytest.mark.parametrize(("env", "says"), [
    ({"BIOMED_MAX_CONCURRENCY": "lots"}, "BIOMED_MAX_CONCURRENCY='lots' is not a number (an integer)"),
    ({"BIOMED_PROVIDERS": "cuda,tpu"}, "BIOMED_PROVIDERS has unknown ['tpu']; choose from: tensorrt, cuda, cpu"),
])
def test_biomed_serve_refuses_a_bad_setting_in_one_line(env: dict[str, str], says: str, demo_models: dict[str, str],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``biomed serve``'s own check, before it hands over to BentoML (which would start the server)."""
    import os

    from cli.main import main

    monkeypatch.setattr(os, "execvpe", lambda *a: pytest.fail(f"biomed serve went on to start the server: {a}"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["serve", "--port", str(live_server.free_port())]) == 1
    assert capsys.readouterr().err.strip() == f"biomed: error: {says}"


@pytest.mark.slow
def test_the_server_itself_refuses_an_unknown_provider(tmp_path: Path, demo_models: dict[str, str]) -> None:
    """As a container starts it (``bentoml serve``, no CLI in front): the process exits non-zero, naming it."""
    server = live_server.start(tmp_path / "server.log", BIOMED_PROVIDERS="cuda,tpu")
    try:
        code = server.proc.wait(120)
    finally:
        server.stop()
    assert code != 0 and "BIOMED_PROVIDERS has unknown ['tpu']" in server.output(), server.output()[-3000:]


# ---------------------------------------------------------------- a real server, started as users start it


class _RefusingDicomWeb(http.server.BaseHTTPRequestHandler):
    """A DICOMweb destination that refuses every STOW-RS (400): what the forwarder counts as ``rejected``."""

    posts: list[str] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.rfile.read(int(self.headers.get("content-length", 0)))
        _RefusingDicomWeb.posts.append(self.path)
        self.send_response(400)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Corners:
    """The server and what the tests need of it."""

    def __init__(self, server: live_server.Server, store: Path, dicom_port: int, pinned: str) -> None:
        self.server, self.store, self.dicom_port, self.pinned = server, store, dicom_port, pinned
        self.readiness: list[tuple[object, bool]] = []

    def metrics(self) -> str:
        return httpx.get(f"{self.server.url}/metrics", timeout=10).text

    def address(self) -> tuple[str, int]:
        host, port = self.server.url.removeprefix("http://").split(":")
        return host, int(port)


@pytest.fixture(scope="module")
def corners(demo_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Corners]:
    root = tmp_path_factory.mktemp("corners")
    store = model_store.own_store(root, demo_models["image"], demo_models["dna"])
    pinned = demo_models["dna"].split(":")[1]
    model_store.add_version(store, "demo-dna", pinned, "v2")  # the newest export: --models pins the older one
    destination = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RefusingDicomWeb)
    threading.Thread(target=destination.serve_forever, daemon=True).start()
    dicom_port = live_server.free_port()
    env = {"BIOMED_MODEL_STORE": str(store), "BIOMED_MODEL_POLL_S": "0.5", "BIOMED_API_TOKEN": "",
           "BIOMED_MODELS": "demo-dna",  # overridden by --models (and BIOMED_WORKERS=3 below by --workers 1)
           "BIOMED_BODY_TIMEOUT_S": "3", "BIOMED_BODY_MIN_KBPS": "0", "BIOMED_MAX_BODIES_MB": "1",
           "BIOMED_DICOM_MAX_ASSOCIATIONS": "1", "BIOMED_DICOM_ALLOWED_AETS": "CORNERS",
           "BIOMED_DICOM_DESTINATION": f"http://127.0.0.1:{destination.server_address[1]}/dicom-web",
           "BIOMED_DICOM_SPOOL": str(root / "spool"), "BIOMED_DICOM_RETRY_MAX_S": "1"}
    flags = ("--workers", "1", "--models", f"demo-image,demo-dna:{pinned}", "--dicom-port", str(dicom_port))
    server = live_server.start(root / "server.log", workers=3, through_cli=True, args=flags, **env)
    try:
        corners = Corners(server, store, dicom_port, pinned)
        corners.readiness = _poll_until_ready(server)
        yield corners
    finally:
        server.stop()
        destination.shutdown()


def _poll_until_ready(server: live_server.Server) -> list[tuple[object, bool]]:
    """``/readyz`` from the server's first instant until its first 200: (status or error, warmed up then)."""
    seen: list[tuple[object, bool]] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and server.proc.poll() is None:
        try:
            status: object = httpx.get(f"{server.url}/readyz", timeout=2).status_code
        except httpx.HTTPError as err:
            status = type(err).__name__
        seen.append((status, "worst-case memory of this worker" in server.output()))  # logged after the warm-up
        if status == 200:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"not ready: {seen[-5:]}\n{server.output()[-3000:]}")


@pytest.mark.slow
def test_the_serve_flags_override_the_environment(corners: Corners) -> None:
    served = {(m["name"], m["version"]) for m in httpx.get(f"{corners.server.url}/models").json()["models"]}
    assert served == {("demo-image", m) for n, m in served if n == "demo-image"} | {("demo-dna", corners.pinned)}
    assert {n for n, _ in served} == {"demo-image", "demo-dna"}  # --models, not BIOMED_MODELS=demo-dna
    assert corners.server.output().count("serving demo-dna:") == 1  # --workers 1, not BIOMED_WORKERS=3
    listening = {c.laddr for p in corners.server.tree() for c in p.net_connections("tcp")
                 if c.status == "LISTEN" and c.laddr.port == corners.dicom_port}
    assert listening == {("127.0.0.1", corners.dicom_port)}  # --dicom-port, on --host (BIOMED_DICOM_HOST unset)


def _rest_of_answer(sock: socket.socket, got: bytes) -> bytes:
    """``got`` (the start of an answer) completed to its head and Content-Length body."""
    sock.settimeout(10)
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    head, _, body = got.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _slow_but_whole(corners: Corners) -> bytes:
    """60 bytes over ~2.4 s (0.02 KB/s, far under the default 16 KB/s), then the answer's head."""
    body = b'{"sequences": ["' + b"ACGT" * 10 + b'"]}'
    with socket.create_connection(corners.address(), timeout=10) as sock:
        sock.sendall(b"POST /predict_dna HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n")
        for i in range(0, len(body), 2):
            sock.sendall(body[i:i + 2])
            time.sleep(0.08)
        return _rest_of_answer(sock, b"")


def _never_whole(corners: Corners) -> tuple[bytes, float]:
    """64 bytes every 0.25 s of a 100,000-byte body, until the server answers: (the answer, seconds taken)."""
    with socket.create_connection(corners.address(), timeout=10) as sock:
        sock.sendall(b"POST /predict_dna HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100000\r\n\r\n")
        started = time.monotonic()
        got = b""
        while not got and time.monotonic() - started < 15:
            sock.sendall(b" " * 64)
            sock.settimeout(0.25)
            try:
                got = sock.recv(65536)
            except socket.timeout:
                continue
        took = time.monotonic() - started
        return _rest_of_answer(sock, got), took


@pytest.mark.slow
def test_bodies_must_arrive_within_the_deadline_at_any_rate_when_the_rate_check_is_off(corners: Corners) -> None:
    """BIOMED_BODY_TIMEOUT_S=3 and BIOMED_BODY_MIN_KBPS=0, two clients at once: a slow body that is whole within 3 s
    is served; one still arriving after 3 s is answered 408 then, naming the setting."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        whole, never = pool.submit(_slow_but_whole, corners), pool.submit(_never_whole, corners)
        assert whole.result().startswith(b"HTTP/1.1 200"), whole.result()[:300]
        got, took = never.result()
    assert got.startswith(b"HTTP/1.1 408") and b"BIOMED_BODY_TIMEOUT_S" in got, got[:300]
    assert 2.5 < took < 6, took


@pytest.mark.slow
def test_bodies_past_the_worker_s_budget_are_429_over_a_socket(corners: Corners) -> None:
    """BIOMED_MAX_BODIES_MB=1, counted as bytes arrive: a client that has sent 0.9 MB of its body and stalls holds it;
    another request's body does not fit beside it (429); once the first leaves, it does."""
    with socket.create_connection(corners.address(), timeout=10) as holder:
        holder.sendall(b"POST /predict_dna HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 950000\r\n\r\n" + b" " * 900_000)
        time.sleep(0.5)
        r = httpx.post(f"{corners.server.url}/predict_dna", json={"sequences": ["ACGT" * 50_000]}, timeout=10)
        assert "BIOMED_MAX_BODIES_MB" in error(r, 429, "too_many_requests")
    time.sleep(0.5)  # the holder left: its share is given back
    assert httpx.post(f"{corners.server.url}/predict_dna", json={"sequences": ["ACGT" * 50_000]},
                      timeout=30).status_code == 200


@pytest.mark.slow
def test_associations_past_the_limit_are_rejected_and_srs_the_destination_refuses_are_counted(
        corners: Corners) -> None:
    from pydicom import dcmread
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage

    ae = AE(ae_title="CORNERS")
    ae.add_requested_context(CTImageStorage)
    first = ae.associate("127.0.0.1", corners.dicom_port, ae_title="BIOMED")
    assert first.is_established
    try:
        second = ae.associate("127.0.0.1", corners.dicom_port, ae_title="BIOMED")
        assert second.is_rejected and not second.is_established  # BIOMED_DICOM_MAX_ASSOCIATIONS=1
        assert (second.acceptor.primitive.result_source, second.acceptor.primitive.diagnostic) == (3, 2), \
            "expected 'local limit exceeded' from the service provider (presentation)"
        status = first.send_c_store(dcmread(CT_SMALL))
        assert status.Status == 0x0000
    finally:
        first.release()
    deadline = time.monotonic() + 10  # the slot is free again once the receiver's thread of the first has ended
    third = ae.associate("127.0.0.1", corners.dicom_port, ae_title="BIOMED")
    while third.is_rejected and time.monotonic() < deadline:
        time.sleep(0.2)
        third = ae.associate("127.0.0.1", corners.dicom_port, ae_title="BIOMED")
    assert third.is_established
    third.release()
    deadline = time.monotonic() + 30  # the SR goes to the destination, which refuses it: set aside, counted
    while time.monotonic() < deadline and not re.search(
            r'biomed_dicom_forwarded_total\{outcome="rejected"\} [1-9]', corners.metrics()):
        time.sleep(0.5)
    assert re.search(r'biomed_dicom_forwarded_total\{outcome="rejected"\} [1-9]', corners.metrics())
    assert _RefusingDicomWeb.posts and all(p.endswith("/studies") for p in _RefusingDicomWeb.posts)


@pytest.mark.slow
def test_failed_reloads_and_the_gpu_setting_are_scraped(corners: Corners) -> None:
    text = corners.metrics()
    assert re.search(r"^biomed_gpu_required 0\.0$", text, re.M), "BIOMED_REQUIRE_GPU is off: 0"
    image = next(p.name for p in (corners.store / "demo-image").iterdir() if p.is_dir())
    model_store.add_version(corners.store, "demo-image", image, "v-broken", onnx=b"not an onnx file")
    deadline = time.monotonic() + 30  # the watcher (BIOMED_MODEL_POLL_S=0.5) tries the newest export, which fails
    pattern = r'biomed_model_reloads_total\{model="demo-image",outcome="failed"\} [1-9]'
    while time.monotonic() < deadline and not re.search(pattern, corners.metrics()):
        time.sleep(0.5)
    assert re.search(pattern, corners.metrics()), [line for line in corners.metrics().splitlines() if "reload" in line]
    assert httpx.get(f"{corners.server.url}/readyz").status_code == 200  # the loaded version still serves
    served = {m["version"] for m in httpx.get(f"{corners.server.url}/models").json()["models"] if m["name"] == "demo-image"}
    assert served == {image}


@pytest.mark.slow
def test_a_real_server_answers_nothing_before_it_is_ready(corners: Corners) -> None:
    """Polled from its first instant, the starting server refuses or holds connections, then answers 200 only once
    its models are loaded and warmed up (its log says so first): never a 200 early, never a 5xx. (A worker that
    serves answers 503 while its engine is not ready: the in-process test above.)"""
    *before, (last, warmed) = corners.readiness
    assert last == 200 and warmed, corners.readiness[-5:]
    assert {status for status, _ in before} <= {"ConnectError", "ReadTimeout", 503}, before


@pytest.mark.slow
def test_gpu_required_is_1_on_a_gpu_server(tmp_path: Path, demo_models: dict[str, str]) -> None:
    """BIOMED_REQUIRE_GPU=1 where onnxruntime has CUDA: the server starts on it and says 1 (on the CPU the same setting
    stops start-up: tests/test_faults.py)."""
    from biomed.runtime import RuntimeOptions, StartupError, make_session
    from biomed.store import onnx_path, resolve

    try:
        make_session(onnx_path(resolve(demo_models["dna"])), RuntimeOptions(providers=("cuda",), require_gpu=True))
    except StartupError as err:
        pytest.skip(f"needs a GPU: onnxruntime cannot run on CUDA here ({str(err).splitlines()[0][:120]})")
    with live_server.running(tmp_path / "server.log", through_cli=True, BIOMED_REQUIRE_GPU="1") as server:
        text = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert re.search(r"^biomed_gpu_required 1\.0$", text, re.M)
    assert 'provider="CPUExecutionProvider"' not in "".join(l for l in text.splitlines() if "biomed_model_info" in l)
