"""Soak: a real ``bentoml serve`` under mixed valid and invalid traffic at concurrency 32 for ~2 minutes,
with attackers beside it in the measured part: slow bodies, clients leaving mid-upload, record bombs,
explanation bursts, lying and slow-to-parse DICOM, smuggling headers, forged log lines and random paths;
and, with the C-STORE receiver on and its SRs forwarded to a stand-in PACS (tests/sr_sink.py), studies
sent by C-STORE (dcmtk's storescu) and STOW-RS beside attackers of those doors: idle-connection floods,
PDU headers announcing 500 MB, C-STOREs cut by an abort or a reset, trickling STOW-RS bodies, v2
requests asking for one output 300 times or holding 256 small files.

Zero 5xx, zero dropped normal requests (every one gets an HTTP response), every attack answered as
documented, every stored instance's SR delivered exactly once (none lost, none twice), no partial file
left in the receiver's temporary folder, and the RSS of the server's process tree grows less than 10 %
between the end of the warm-up and the end of the run.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import re
import socket
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

try:
    from tests import dimse_attacks as dimse
    from tests import live_server
    from tests.dicom_objects import identity_of
    from tests.sr_sink import Sink
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import dimse_attacks as dimse
    import live_server
    from dicom_objects import identity_of
    from sr_sink import Sink

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
CALLING, CALLED = "MODALITY", "BIOMED"


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


class Doors:
    """The DICOM side of the soak: the receiver's port, the stand-in PACS, and the SRs the studies must produce."""

    def __init__(self, url: str, port: int, sink: Sink, root: Path) -> None:
        from biomed.outputs import Producer

        self.url, self.port, self.sink, self.root = url, port, sink, root
        [m] = [m for m in httpx.get(f"{url}/models", timeout=30).json()["models"] if m["kind"] == "image"]
        self.producer = Producer(m["name"], m["version"], m["sha256"], tuple(m["labels"]))
        self.expected: set[str] = set()  # SR UIDs of every instance a door took
        self.studies = Counter()
        self.cut = dimse_files(root / "cut", 1, rows=1400)[0]  # ~4 MB: 15 PDUs, cut after the sixth

    def study(self, tag: str, n: int = 3) -> tuple[list[Path], set[str]]:
        from biomed.outputs.sr import sr_uid

        files = dimse_files(self.root / tag, n)
        return files, {sr_uid(identity_of(p.read_bytes()), self.producer) for p in files}


def dimse_files(folder: Path, n: int, rows: int = 0) -> list[Path]:
    """``n`` new instances of one new study: pydicom's CT_small with new UIDs (and a new size, when asked)."""
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, files = generate_uid(), generate_uid(), []
    for i in range(n):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if rows:
            ds.Rows = ds.Columns = rows
            ds.PixelData = np.random.default_rng(i).integers(0, 2000, (rows, rows), dtype=np.uint16).tobytes()
        files.append(folder / f"{i}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


async def _studies(doors: Doors, until: float, failures: list) -> None:
    """Normal DICOM traffic: a three-instance study by C-STORE, then one by STOW-RS, again and again."""
    i = 0
    async with httpx.AsyncClient(base_url=doors.url, timeout=120) as client:
        while time.monotonic() < until:
            i += 1
            files, srs = await asyncio.to_thread(doors.study, f"study-{i}")
            if i % 2:
                run = await asyncio.to_thread(dimse.store, doors.port, files, CALLING, CALLED)
                ok = run.returncode == 0
                door = "cstore"
            else:
                body = b"".join(b"--s\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n"
                                for p in files) + b"--s--\r\n"
                r = await client.post("/dicomweb/studies", content=body, headers={
                    "content-type": 'multipart/related; type="application/dicom"; boundary=s'})
                ok, door = r.status_code == 200, "stow"
            doors.studies[f"{door} {'ok' if ok else 'failed'}"] += 1
            if ok:
                doors.expected |= srs
            else:
                failures.append((f"{door} study", i))


def _door_attacks(doors: Doors) -> list[tuple[str, object, set[int]]]:
    """Attacks on the DICOM and v2 doors: (name, a blocking function answering a status, the statuses expected)."""
    import json
    import struct

    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.uid import JPEG2000Lossless

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.compress(JPEG2000Lossless)
    buffer = io.BytesIO()
    ct.save_as(buffer, enforce_file_format=True)
    files = b"".join(struct.pack("<I", len(buffer.getvalue())) + buffer.getvalue() for _ in range(256))
    many = json.dumps({"inputs": [{"name": "file", "datatype": "BYTES", "shape": [256],
                                   "parameters": {"binary_data_size": len(files)}}]}).encode()
    repeated = json.dumps({"inputs": [{"name": "sequence", "datatype": "BYTES", "shape": [1], "data": ["ACGT"]}],
                           "outputs": [{"name": "probabilities"}] * 300}).encode()

    def v2(model: str, body: bytes, header_length: int | None = None) -> int:
        headers = {"content-type": "application/json"}
        if header_length is not None:
            headers = {"content-type": "application/octet-stream", "inference-header-content-length": str(header_length)}
        return httpx.post(f"{doors.url}/v2/models/{model}/infer", content=body, headers=headers, timeout=120).status_code

    def idle_flood() -> int:
        """60 connections that send nothing, from three addresses: a modality still associates meanwhile."""
        socks = [dimse.connect(doors.port, f"127.0.0.{2 + i % 3}") for i in range(60)]
        try:
            return 0 if dimse.echo(doors.port, CALLING, CALLED).returncode == 0 else -1
        finally:
            for sock in socks:
                sock.close()

    def cut_cstore(how: str) -> int:
        dimse.partial_store(doors.port, doors.cut, how, CALLING, CALLED)
        return 0

    def stow_trickle() -> int:
        """A STOW-RS body declaring 60 MB, trickled at ~20 KB/s: 408 within BIOMED_BODY_TIMEOUT_S (30 s)."""
        sock = dimse.connect(int(doors.url.rsplit(":", 1)[1]), "127.0.0.3")
        try:
            sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related; "
                         b"boundary=b\r\nContent-Length: 60000000\r\n\r\n--b\r\n\r\n")
            sock.settimeout(0.1)
            for _ in range(450):
                try:
                    sock.sendall(b"\0" * 2000)
                    line = sock.recv(65536)
                    return int(line.split()[1]) if line else -1
                except socket.timeout:
                    continue
            return -1
        finally:
            sock.close()

    return [
        ("dimse_idle_flood", idle_flood, {0}),
        ("dimse_pdu_bomb", lambda: 0 if dimse.pdu_bomb(doors.port) else -1, {0}),
        ("dimse_pdata_bomb", lambda: 0 if dimse.pdu_bomb(doors.port, 0x04, 256 * 1024 + 7, "127.0.0.4") else -1, {0}),
        ("dimse_cut_by_abort", lambda: cut_cstore("abort"), {0}),
        ("dimse_cut_by_reset", lambda: cut_cstore("reset"), {0}),
        ("stow_trickle", stow_trickle, {408}),
        ("v2_output_300_times", lambda: v2("demo-dna", repeated), {400}),
        ("v2_256_small_files", lambda: v2("demo-image", many + files, len(many)), {200, 429}),
    ]


async def _attack_doors(doors: Doors, until: float, counts: Counter, failures: list) -> None:
    attacks = _door_attacks(doors)
    i = 0
    while time.monotonic() < until:
        name, how, expected = attacks[i % len(attacks)]
        i += 1
        try:
            status = await asyncio.to_thread(how)  # type: ignore[arg-type]
        except (httpx.HTTPError, OSError, AssertionError) as err:
            status = -1
            failures.append((name, type(err).__name__))
        counts[f"attack {name} {status}"] += 1
        if status not in expected:
            failures.append((name, status))


@pytest.mark.slow
def test_soak(tmp_path: Path, demo_models: dict[str, str]) -> None:
    sink = Sink().start()
    port = live_server.free_port()
    with live_server.running(tmp_path / "server.log", CUDA_VISIBLE_DEVICES="", BIOMED_REQUEST_TIMEOUT_S=REQUEST_TIMEOUT,
                             BIOMED_DICOM_PORT=str(port), BIOMED_DICOM_HOST="127.0.0.1", BIOMED_DICOM_AET=CALLED,
                             BIOMED_DICOM_ALLOWED_AETS=CALLING, BIOMED_DICOM_DESTINATION=sink.peer,
                             BIOMED_DICOM_SPOOL=str(tmp_path / "spool"), BIOMED_DICOM_RETRY_MAX_S="1",
                             BIOMED_DICOM_GROUP_BY="instance") as server:
        doors = Doors(server.url, port, sink, tmp_path / "studies")
        warm: Counter = Counter()
        failures: list = []

        async def warm_up() -> None:
            await asyncio.gather(_soak(server.url, time.monotonic() + WARMUP, warm, failures),
                                 _studies(doors, time.monotonic() + WARMUP, failures))

        asyncio.run(warm_up())
        rss_before = server.rss()
        counts: Counter = Counter()
        attacks: Counter = Counter()
        refused: list = []
        started = time.monotonic()

        async def both() -> None:
            await asyncio.gather(_soak(server.url, started + SECONDS, counts, failures),
                                 _attack(server.url, started + SECONDS, attacks, refused),
                                 _studies(doors, started + SECONDS, failures),
                                 _attack_doors(doors, started + SECONDS, attacks, refused))

        asyncio.run(both())
        elapsed = time.monotonic() - started
        time.sleep(3)  # the idle trim (service/memory.py)
        rss_after = server.rss()
        deadline = time.monotonic() + 60
        while not doors.expected <= set(sink.uids()) and time.monotonic() < deadline:
            time.sleep(0.5)
        delivered = sink.uids()
        leftovers = list(Path(tempfile.gettempdir(), f"biomed-cstore-{port}").glob("cstore-*"))
        metrics = httpx.get(f"{server.url}/metrics").text
        alive = server.proc.poll() is None
        log = [line for line in server.output().splitlines()
               if any(w in line for w in ("ERROR", "Error", "Traceback", "WARNING", "exited", "killed"))]
    growth = (rss_after - rss_before) / rss_before
    print(f"\nsoak {elapsed:.0f} s at concurrency {CONCURRENCY}: {dict(counts)} (+{dict(warm)} warm-up); "
          f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB ({growth:+.1%})")
    print(f"attacks: {dict(sorted(attacks.items()))}")
    print(f"studies: {dict(doors.studies)}; SRs expected {len(doors.expected)}, delivered {len(delivered)}")
    sink.stop()
    assert alive
    assert doors.studies["cstore ok"] >= 3 and doors.studies["stow ok"] >= 3, doors.studies
    assert not doors.expected - set(delivered), f"{len(doors.expected - set(delivered))} SRs lost"
    assert all(delivered[uid] == 1 for uid in doors.expected), "an SR was delivered twice"
    assert not leftovers, f"{len(leftovers)} partial datasets left in the receiver's temporary folder"
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
