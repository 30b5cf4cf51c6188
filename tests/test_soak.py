"""Soak: a real ``bentoml serve`` under mixed valid and invalid traffic at concurrency 32 for ~2 minutes,
with attackers beside it in the measured part: slow bodies, clients leaving mid-upload, record bombs,
explanation bursts, lying and slow-to-parse DICOM, smuggling headers, forged log lines and random paths.

Zero 5xx, zero dropped normal requests (every one gets an HTTP response), every attack answered as
documented, and the RSS of the server's process tree grows less than 10 % between the end of the
warm-up and the end of the run.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

try:
    from tests import live_server
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server

SECONDS = float(os.environ.get("BIOMED_SOAK_SECONDS", "75"))
WARMUP = float(os.environ.get("BIOMED_SOAK_WARMUP", "45"))
# The default request timeout (60 s, longer than the warm-up): BentoML 1.4's own timeout middleware kept each
# request's context (~6 kB) alive that long (docs/reliability.md); service/traffic.py must not.
REQUEST_TIMEOUT = "60"
# uvicorn closes a connection idle for 5 s; a client reusing it at that moment gets a reset before its request
# reaches the server (the classic keep-alive race; proxies must likewise idle out first). Expire sooner.
KEEPALIVE = 2.0
CONCURRENCY = 32
ATTACKERS = 4


def _ct() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def _requests() -> list[tuple[str, dict, int]]:
    """(path, httpx kwargs, expected status class): valid and invalid, images and DNA."""
    ct = _ct()
    rng = random.Random(8)
    seq = "".join(rng.choice("ACGT") for _ in range(400))
    return [
        ("/predict_dna", {"json": {"sequences": [seq[:101], {"id": "b", "sequence": seq}]}}, 2),
        ("/predict_dna", {"json": {"sequences": ["ACGTRYACGT"]}}, 4),
        ("/predict_dna", {"content": b'{"sequences": [', "headers": {"content-type": "application/json"}}, 4),
        ("/predict_image", {"files": {"file": ("ct.dcm", ct)}}, 2),
        ("/predict_image", {"files": {"file": ("ct.dcm", ct[: len(ct) // 2])}}, 4),
        ("/predict_image", {"files": {"file": ("x.bin", rng.randbytes(2048))}}, 4),
        ("/predict_fasta", {"files": {"file": ("s.fa", f">a\n{seq}\n>b\n{seq[:50]}\n".encode())}}, 2),
        ("/score_variants", {"json": {"variants": [{"sequence": seq[:101], "position": 50, "ref": seq[50],
                                                    "alt": "A" if seq[50] != "A" else "C"}]}}, 2),
        ("/score_variants", {"json": {"variants": [{"sequence": "ACGT", "position": 9, "ref": "A", "alt": "C"}]}}, 4),
        ("/explain_dna", {"json": {"sequence": seq[:120]}}, 2),
        ("/models", {}, 2),
    ]


async def _soak(url: str, until: float, counts: Counter, failures: list) -> None:
    mix = _requests()
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=CONCURRENCY, keepalive_expiry=KEEPALIVE)) as client:
        async def worker(index: int) -> None:
            i = index
            while time.monotonic() < until:
                path, kwargs, expected = mix[i % len(mix)]
                i += 7
                try:
                    r = await (client.get(path) if path == "/models" else client.post(path, **kwargs))
                except httpx.HTTPError as err:
                    counts["dropped"] += 1
                    failures.append((path, type(err).__name__))
                    continue
                counts["requests"] += 1
                counts[f"{r.status_code // 100}xx"] += 1
                if r.status_code // 100 != expected:
                    failures.append((path, r.status_code, r.text[:200]))

        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))


def _dicom_bomb() -> bytes:
    """A Part-10 file of 1,000,000 empty private elements (8 MB): slow to parse without an element cap."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    head = io.BytesIO()
    ds.save_as(head, enforce_file_format=True)
    return head.getvalue() + b"".join((0x0009 + 2 * (i // 0xE000)).to_bytes(2, "little")
                                      + (0x1000 + i % 0xE000).to_bytes(2, "little") + b"LO\0\0" for i in range(1_000_000))


def _attacks() -> list[tuple[str, object, set[int]]]:
    """(name, what to send, the statuses that answer it); raw byte strings go over a socket as they are."""
    rng = random.Random(9)
    ct = _ct()
    big = "".join(rng.choice("ACGT") for _ in range(5000))
    return [
        ("fasta_record_bomb", ("/predict_fasta", {"files": {"file": ("x.fa", b">\n" * 2_000_000)}}), {413}),
        ("json_value_bomb", ("/predict_dna", {"content": b'{"sequences": [' + b'"A",' * 2_000_000 + b'"A"]}',
                                              "headers": {"content-type": "application/json"}}), {413}),
        ("explain_5kb", ("/explain_dna", {"json": {"sequence": big}}), {200, 429}),
        ("dicom_element_bomb", ("/predict_image", {"content": _dicom_bomb(),
                                                   "headers": {"content-type": "application/dicom"}}), {413}),
        ("dicom_lying_header", ("/predict_image", {"files": {"file": ("x.dcm", ct[:128] + ct[128:].replace(
            b"\x28\x00\x10\x00US\x02\x00\x80\x00", b"\x28\x00\x10\x00US\x02\x00\x60\xea"))}}), {413, 422}),
        ("multipart_idna", ("/predict_fasta", {"content": b'--B\r\nContent-Disposition: form-data; name="xn--"\r\n\r\n'
                                               b'v\r\n--B--\r\n', "headers": {
                                                   "content-type": "multipart/form-data; boundary=B; charset=idna"}}),
         {400}),
        ("random_path", ("/nope-%d", {}), {404}),
        ("smuggling", b"POST /predict_dna HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", {400}),
        ("forged_log_line", b"GET /%0a2026-01-01T00:00:00%20[ERROR]%20FORGED HTTP/1.1\r\nHost: x\r\n\r\n", {404}),
        ("slow_body", b"SLOW", {408}),
        ("gone_mid_upload", b"GONE", {0}),  # no answer awaited: the server's count of 499s is checked at the end
    ]


async def _raw(url: str, data: bytes) -> int:
    """Send raw bytes (or trickle a body, or leave mid-upload); the status line's code, 0 when none is awaited."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        if data in (b"SLOW", b"GONE"):
            writer.write(b"POST /predict_image HTTP/1.1\r\nHost: x\r\nContent-Type: application/dicom\r\n"
                         b"Content-Length: 100000\r\n\r\n")
            if data == b"GONE":
                writer.write(b"\0" * 5000)
                await writer.drain()
                return 0
            for _ in range(60):  # a byte every half second until the server answers
                writer.write(b"\0")
                await writer.drain()
                try:
                    line = await asyncio.wait_for(reader.readline(), 0.5)
                    return int(line.split()[1]) if line else -1
                except asyncio.TimeoutError:
                    continue
            return -1
        writer.write(data)
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 30)
        return int(line.split()[1]) if line else -1
    finally:
        writer.close()


async def _attack(url: str, until: float, counts: Counter, failures: list) -> None:
    attacks = _attacks()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        async def attacker(index: int) -> None:
            i = index
            while time.monotonic() < until:
                name, how, expected = attacks[i % len(attacks)]
                i += 1
                try:
                    if isinstance(how, bytes):
                        status = await _raw(url, how)
                    else:
                        path, kwargs = how
                        path = path % i if "%d" in path else path
                        status = (await (client.get(path) if not kwargs else client.post(path, **kwargs))).status_code
                except (httpx.HTTPError, OSError) as err:
                    status = -1
                    failures.append((name, type(err).__name__))
                counts[f"attack {name} {status}"] += 1
                if status not in expected:
                    failures.append((name, status))

        await asyncio.gather(*(attacker(i) for i in range(ATTACKERS)))


@pytest.mark.slow
def test_soak(tmp_path: Path, demo_models: dict[str, str]) -> None:
    with live_server.running(tmp_path / "server.log", CUDA_VISIBLE_DEVICES="",
                             BIOMED_REQUEST_TIMEOUT_S=REQUEST_TIMEOUT) as server:
        warm: Counter = Counter()
        failures: list = []
        asyncio.run(_soak(server.url, time.monotonic() + WARMUP, warm, failures))
        rss_before = server.rss()
        counts: Counter = Counter()
        attacks: Counter = Counter()
        refused: list = []
        started = time.monotonic()

        async def both() -> None:
            await asyncio.gather(_soak(server.url, started + SECONDS, counts, failures),
                                 _attack(server.url, started + SECONDS, attacks, refused))

        asyncio.run(both())
        elapsed = time.monotonic() - started
        time.sleep(3)  # the idle trim (service/memory.py)
        rss_after = server.rss()
        metrics = httpx.get(f"{server.url}/metrics").text
        alive = server.proc.poll() is None
        log = [line for line in server.output().splitlines()
               if any(w in line for w in ("ERROR", "Error", "Traceback", "WARNING", "exited", "killed"))]
    growth = (rss_after - rss_before) / rss_before
    print(f"\nsoak {elapsed:.0f} s at concurrency {CONCURRENCY}: {dict(counts)} (+{dict(warm)} warm-up); "
          f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB ({growth:+.1%})")
    print(f"attacks: {dict(sorted(attacks.items()))}")
    assert alive
    assert not refused, refused[:10]
    assert not re.search(r'http_response_code="5\d\d"[^}]*\} [1-9]', metrics), "a 5xx was counted"
    assert sum(v for k, v in attacks.items()) > 40
    assert counts["5xx"] == 0 and counts["dropped"] == 0 and warm["5xx"] == 0 and warm["dropped"] == 0, (failures[:10], log[-20:])
    assert not failures, (failures[:10], log[-20:])
    assert counts["requests"] > 500
    gone = sum(v for k, v in attacks.items() if k.startswith("attack gone_mid_upload "))
    left = re.search(r'biomed_rejected_requests_total\{endpoint="predict_image",reason="client_closed_request"\} '
                     r'(\d+(?:\.\d+)?)', metrics)
    assert gone and left and float(left.group(1)) >= gone, (gone, left and left.group(0))  # each one counted as 499
    assert growth < 0.10, f"server RSS grew {growth:.1%}"
