"""Hostile clients against one real ``bentoml serve``: slow bodies, clients that leave, forged log lines,
unbounded metric series, smuggling headers and an explanation burst. Each is answered (or dropped) within a
bounded time while a cheap request from another client is served meanwhile.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import statistics
import threading
import time
from typing import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image

try:
    from tests import live_server
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server

pytestmark = pytest.mark.slow
CONCURRENCY = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, demo_models: dict[str, str]) -> Iterator[live_server.Server]:
    log = tmp_path_factory.mktemp("hostile") / "server.log"
    with live_server.running(log, CUDA_VISIBLE_DEVICES="", BIOMED_MAX_CONCURRENCY=str(CONCURRENCY),
                             BIOMED_MAX_QUEUED_MB="64") as s:
        yield s


def _host_port(server: live_server.Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def _raw(server: live_server.Server, data: bytes, read: bool = True, timeout: float = 10) -> bytes:
    with socket.create_connection(_host_port(server), timeout=timeout) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        with_deadline = time.monotonic() + timeout
        while time.monotonic() < with_deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and _complete(b"".join(chunks)):
                break
        return b"".join(chunks)


def _complete(response: bytes) -> bool:
    head, _, body = response.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: *(\d+)", head, re.I)
    return length is not None and len(body) >= int(length.group(1))


def _png() -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(out, format="PNG")
    return out.getvalue()


class Cheap:
    """A client sending a cheap request every 50 ms in the background, recording each latency and status."""

    def __init__(self, server: live_server.Server, kind: str = "dna") -> None:
        self.url, self.kind = server.url, kind
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            while not self._stop.is_set():
                started = time.perf_counter()
                if self.kind == "dna":
                    r = client.post("/predict_dna", json={"sequences": ["ACGTACGTACGTACGT"]})
                else:
                    r = client.post("/predict_image", files={"file": ("x.png", _png(), "image/png")})
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(r.status_code)
                time.sleep(0.05)

    def __enter__(self) -> "Cheap":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def p99(self) -> float:
        return float(np.percentile(self.latencies, 99))


def test_slow_bodies_are_dropped_within_seconds_and_never_hold_a_slot(server: live_server.Server) -> None:
    """2 x BIOMED_MAX_CONCURRENCY connections trickling a body at 1 byte / 0.5 s: 408 each, cheap requests served."""
    answers: list[bytes] = []

    def slow() -> None:
        with socket.create_connection(_host_port(server), timeout=20) as sock:
            sock.sendall(b"POST /predict_dna HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 100000\r\n\r\n")
            got = b""
            for _ in range(40):
                try:
                    sock.sendall(b" ")
                    sock.settimeout(0.5)
                    got += sock.recv(4096)
                    if got:
                        break
                except socket.timeout:
                    continue
                except OSError:
                    break
            sock.settimeout(5)
            while got and not _complete(got):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
            answers.append(got)

    started = time.monotonic()
    threads = [threading.Thread(target=slow) for _ in range(2 * CONCURRENCY)]
    with Cheap(server) as cheap:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    took = time.monotonic() - started
    assert len(answers) == 2 * CONCURRENCY and all(a.startswith(b"HTTP/1.1 408") for a in answers), answers[:2]
    assert b"BIOMED_BODY_MIN_KBPS" in answers[0] and took < 15
    assert cheap.statuses and set(cheap.statuses) == {200}, cheap.statuses
    assert cheap.p99() < 1.0, f"cheap requests p99 {cheap.p99():.2f} s beside the slow bodies"


def test_a_client_that_leaves_is_not_a_server_error(server: live_server.Server) -> None:
    before = server.output()
    # mid-upload
    _raw(server, b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
                 b"Content-Length: 1000000\r\n\r\n" + b"\0" * 10_000, read=False)
    # after the upload, while its explanation runs
    body = b'{"sequence": "' + b"ACGT" * 1000 + b'"}'
    with socket.create_connection(_host_port(server), timeout=10) as sock:
        sock.sendall(b"POST /explain_dna HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        time.sleep(0.3)
    time.sleep(2.0)
    log = server.output()[len(before):]
    assert "Traceback" not in log and " ERROR " not in log and "500" not in log, log[-2000:]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert not re.search(r'http_response_code="5\d\d"\} [1-9]', metrics)
    assert re.search(r'biomed_rejected_requests_total\{endpoint="explain_dna",reason="client_closed_request"\} [1-9]',
                     metrics), [line for line in metrics.splitlines() if "client_closed" in line]
    assert httpx.post(f"{server.url}/predict_dna", json={"sequences": ["ACGT"]}).status_code == 200


def test_unknown_paths_collapse_into_one_metric_series(server: live_server.Server) -> None:
    def series() -> int:
        return sum(1 for line in httpx.get(f"{server.url}/metrics").text.splitlines()
                   if line.startswith("bentoml_service_request_total"))

    first = series()
    with httpx.Client(base_url=server.url) as client:
        for i in range(300):
            assert client.get(f"/random-{i}-{np.random.randint(1 << 30)}").status_code == 404
            assert client.post(f"/v9/{i}").status_code == 404
    grown = series() - first
    assert grown <= 2, f"{grown} new series from 600 unknown paths"
    assert 'endpoint="other"' in httpx.get(f"{server.url}/metrics").text


def test_a_forged_log_line_stays_on_its_own_line(server: live_server.Server) -> None:
    marker = f"FORGED{np.random.randint(1 << 30)}"
    answer = _raw(server, f"GET /%0a2026-11-30T00:00:00%20[ERROR]%20{marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 404")
    time.sleep(0.5)
    lines = [line for line in server.output().splitlines() if marker in line]
    assert lines and all(not line.lstrip().startswith("2026-11-30T00:00:00") for line in lines), lines


def test_both_framings_on_one_request_are_refused(server: live_server.Server) -> None:
    answer = _raw(server, b"POST /predict_dna HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                          b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]


def test_an_explanation_burst_is_refused_at_once_where_it_does_not_fit(server: live_server.Server) -> None:
    """200 concurrent 5,000-base explanations: the excess is a 429 at once, cheap requests stay fast, memory returns."""
    rss_start = server.rss()
    sequence = "".join(np.random.default_rng(3).choice(list("ACGT"), 5000))

    async def burst() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                     limits=httpx.Limits(max_connections=200)) as client:
            async def one() -> tuple[int, float]:
                started = time.perf_counter()
                r = await client.post("/explain_dna", json={"sequence": sequence})
                return r.status_code, time.perf_counter() - started

            return await asyncio.gather(*(one() for _ in range(200)))

    with Cheap(server) as cheap:
        results = asyncio.run(burst())
        peak = server.rss()
    statuses = [s for s, _ in results]
    refused = [t for s, t in results if s == 429]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 1 and refused, sorted(set(statuses))
    assert statistics.median(refused) < 2.0, f"429s took {statistics.median(refused):.2f} s (median)"
    assert set(cheap.statuses) <= {200, 429} and cheap.statuses.count(200) >= len(cheap.statuses) * 0.9
    assert cheap.p99() < 1.0, f"cheap requests p99 {cheap.p99():.2f} s during the burst"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and server.rss() > rss_start * 1.10:
        time.sleep(0.5)
    print(f"\nexplain burst: {statuses.count(200)} x 200, {len(refused)} x 429; cheap p99 {cheap.p99() * 1000:.0f} ms; "
          f"RSS {rss_start / 2**20:.0f} -> peak {peak / 2**20:.0f} -> {server.rss() / 2**20:.0f} MB")
    assert server.rss() <= rss_start * 1.10, f"RSS {rss_start / 2**20:.0f} -> {server.rss() / 2**20:.0f} MB"


def test_slow_dicom_parses_do_not_hold_up_a_small_png(server: live_server.Server) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    head = io.BytesIO()
    ds = Dataset()
    ds.file_meta = meta
    ds.save_as(head, enforce_file_format=True)
    elements = b"".join((0x0009).to_bytes(2, "little") + (0x1000 + (i % 0xEFFF)).to_bytes(2, "little") + b"LO\0\0"
                        for i in range(1_000_000))  # 1,000,000 empty private elements: 8 MB
    bomb = head.getvalue() + elements

    async def attack() -> list[tuple[int, float]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            async def one() -> tuple[int, float]:
                started = time.perf_counter()
                r = await client.post("/predict_image", content=bomb, headers={"content-type": "application/dicom"})
                return r.status_code, time.perf_counter() - started

            return await asyncio.gather(*(one() for _ in range(4)))

    with Cheap(server, "png") as cheap:
        results = asyncio.run(attack())
    assert all(s in (400, 413) for s, _ in results), results
    assert max(t for _, t in results) < 10, results
    assert set(cheap.statuses) == {200} and cheap.p99() < 1.0, (cheap.statuses, cheap.p99())
