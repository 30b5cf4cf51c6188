"""Hostile input against the new doors (DIMSE, STOW-RS, v2, admin), round 3: one real ``bentoml serve`` with the
token set, the C-STORE receiver on and result SRs forwarded to a stand-in PACS (tests/sr_sink.py), attacked from
other loopback addresses (127.0.0.2 and up: other peers) while a probe from 127.0.0.1 sends a small
``/predict_dna`` every 50 ms. Each attack and its siblings is answered as documented, the probe keeps a p99 under
1 s and never a 5xx or a 429, and the server's RSS stays within its memory model.

dcmtk's echoscu and storescu are called by their absolute paths (pynetdicom installs scripts of the same names):
tests/dimse_attacks.py.
"""

from __future__ import annotations

import io
import json
import re
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

try:
    from tests import dimse_attacks as dimse
    from tests import live_server
    from tests.dicom_objects import identity_of
    from tests.sr_sink import Sink
    from tests.tools import require_tool
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import dimse_attacks as dimse
    import live_server
    from dicom_objects import identity_of
    from sr_sink import Sink
    from tools import require_tool

pytestmark = pytest.mark.slow
TOKEN = "hostile-doors-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CALLING, CALLED = "MODALITY", "BIOMED"
SUPERVISOR_BYTES = 256 * 2**20  # bentoml serve's supervisor beside the worker
ENV = {"BIOMED_MODELS": "demo-image,demo-dna", "BIOMED_API_TOKEN": TOKEN, "CUDA_VISIBLE_DEVICES": "",
       "BIOMED_DICOM_HOST": "127.0.0.1", "BIOMED_DICOM_AET": CALLED, "BIOMED_DICOM_ALLOWED_AETS": CALLING,
       "BIOMED_DICOM_RETRY_MAX_S": "1", "BIOMED_DICOM_ASSOCIATE_TIMEOUT_S": "3", "BIOMED_DICOM_MAX_CONNECTIONS": "16",
       "BIOMED_DICOM_TEMP_MB": "6", "BIOMED_MAX_UPLOAD_MB": "8", "BIOMED_MAX_BODIES_MB": "32",
       "BIOMED_MAX_STOW_MB": "64", "BIOMED_BODY_TIMEOUT_S": "6", "BIOMED_DICOM_GROUP_BY": "instance"}


# ---------------------------------------------------------------------------------------------- the server and probe


class Probe(threading.Thread):
    """A small ``/predict_dna`` from 127.0.0.1 every 50 ms: (start time, status, latency) of each."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.samples: list[tuple[float, int, float]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        body = {"sequences": ["ACGT" * 30]}
        with httpx.Client(base_url=self.url, headers=AUTH, timeout=30) as client:
            while not self.stopping.is_set():
                started = time.monotonic()
                try:
                    status = client.post("/predict_dna", json=body).status_code
                except httpx.HTTPError:
                    status = -1
                self.samples.append((started, status, time.monotonic() - started))
                self.stopping.wait(max(0.0, 0.05 - (time.monotonic() - started)))

    def since(self, t0: float) -> list[tuple[float, int, float]]:
        return [s for s in self.samples if s[0] >= t0]

    def check(self, t0: float, what: str) -> float:
        """Every probe since ``t0`` answered 200 and their p99 is under 1 s; returns the p99."""
        time.sleep(0.2)
        samples = self.since(t0)
        assert len(samples) >= 3, f"{what}: the probe did not run"
        bad = [s for s in samples if s[1] != 200]
        assert not bad, f"{what}: the probe got {sorted({s[1] for s in bad})} ({len(bad)} of {len(samples)})"
        p99 = float(np.percentile([s[2] for s in samples], 99))
        assert p99 < 1.0, f"{what}: the probe's p99 was {p99:.2f} s"
        print(f"{what}: probe p99 {p99 * 1000:.0f} ms over {len(samples)}")
        return p99


class Doors:
    """The module's server, its stand-in PACS, the probe and the memory model of its settings."""

    def __init__(self, server: live_server.Server, sink: Sink, dicom_port: int, spool: Path) -> None:
        from service.config import ServiceConfig

        self.server, self.sink, self.dicom_port, self.spool = server, sink, dicom_port, spool
        self.url = server.url
        self.probe = Probe(server.url)
        self.bound = ServiceConfig.from_env(server.env).memory_bound() + SUPERVISOR_BYTES
        self.incoming = Path(tempfile.gettempdir()) / f"biomed-cstore-{dicom_port}"  # the receiver's folder

    def within_memory_model(self, what: str) -> int:
        rss = self.server.rss()
        assert rss <= self.bound, f"{what}: RSS {rss >> 20} MB over the memory model's {self.bound >> 20} MB"
        return rss

    def worker_threads(self) -> int:
        return max(p.num_threads() for p in self.server.tree())


@pytest.fixture(scope="module")
def doors(demo_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Doors]:
    root = tmp_path_factory.mktemp("hostile-doors")
    sink = Sink().start()
    dicom_port = live_server.free_port()
    env = {**ENV, "BIOMED_DICOM_PORT": str(dicom_port), "BIOMED_DICOM_DESTINATION": sink.peer,
           "BIOMED_DICOM_SPOOL": str(root / "spool")}
    try:
        with live_server.running(root / "server.log", **env) as server:
            d = Doors(server, sink, dicom_port, root / "spool")
            d.probe.start()
            rss = server.rss()
            yield d
            d.probe.stopping.set()
            latencies = [s[2] for s in d.probe.samples]
            print(f"\nhostile doors: RSS {rss >> 20} -> {server.rss() >> 20} MB (memory model {d.bound >> 20} MB); "
                  f"probe p99 {np.percentile(latencies, 99) * 1000:.0f} ms, max {max(latencies) * 1000:.0f} ms over "
                  f"{len(latencies)}, statuses {sorted({s[1] for s in d.probe.samples})}")
            log = server.output()
            assert "Traceback" not in log, log[-3000:]
            assert not re.search(r'http_response_code="5\d\d"[^}]*\} [1-9]', httpx.get(f"{server.url}/metrics").text)
    finally:
        sink.stop()


def _echo(port: int, calling: str = CALLING, called: str = CALLED) -> subprocess.CompletedProcess:
    require_tool("echoscu", "apt-get install dcmtk", dimse.ECHOSCU)
    return dimse.echo(port, calling, called)


def _storescu(port: int, files: list[Path]) -> subprocess.CompletedProcess:
    require_tool("storescu", "apt-get install dcmtk", dimse.STORESCU)
    return dimse.store(port, files, CALLING, CALLED)


def _ct(tmp_path: Path, name: str, uid: str | None = None, patient: str = "HOSTILE-1", rows: int = 0,
        syntax: str | None = None) -> Path:
    """pydicom's CT_small as a new instance (or ``uid``), grown to ``rows`` x ``rows`` when asked."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid or generate_uid()
    ds.PatientID = patient
    if rows:
        ds.Rows = ds.Columns = rows
        ds.PixelData = np.random.default_rng(rows).integers(0, 2000, (rows, rows), dtype=np.uint16).tobytes()
    if syntax is not None:
        ds.compress(syntax, generate_instance_uid=False)
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------------------------------------- DIMSE


def test_a_pdu_is_checked_before_its_body_is_read(doors: Doors) -> None:
    """Headers announcing 500 MB (before any association), a P-DATA-TF past our Maximum Length and other PDUs
    past 64 KiB: each connection is closed at once, nothing is buffered."""
    t0, rss = time.monotonic(), doors.server.rss()
    heads = [(0x01, 500_000_000), (0x04, 500_000_000), (0x04, 256 * 1024 + 7), (0x07, 64 * 1024 + 1),
             (0x05, 2**32 - 1)]
    socks = []
    for pdu_type, length in heads:
        sock = dimse.connect(doors.dicom_port)
        sock.sendall(struct.pack(">BBL", pdu_type, 0, length) + b"\0" * 65536)
        socks.append(sock)
    for sock, (pdu_type, length) in zip(socks, heads):
        assert dimse.closed_within(sock, 2), f"a PDU of type {pdu_type} announcing {length} bytes was read"
        sock.close()
    # The same after an association: a P-DATA-TF one byte past 256 KiB + 6 closes it.
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=CALLING)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", doors.dicom_port, ae_title=CALLED)
    assert assoc.is_established
    raw = assoc.dul.socket.socket
    raw.sendall(struct.pack(">BBL", 0x04, 0, 256 * 1024 + 7) + b"\0" * 1024)
    deadline = time.monotonic() + 5
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not assoc.is_established, "an over-long P-DATA-TF after association was read"
    assert doors.server.rss() - rss < 64 * 2**20
    assert _echo(doors.dicom_port).returncode == 0
    doors.probe.check(t0, "over-long PDUs")


def test_idle_connections_do_not_lock_out_a_modality(doors: Doors, tmp_path: Path) -> None:
    """200 connections that send nothing (and some that stall inside a PDU header), from three addresses: an allowed
    modality still associates (nine associations held and a tenth) and stores during the flood, the threads stay
    bounded, and the idle ones are closed by the associate timeout."""
    t0 = time.monotonic()
    threads_before = doors.worker_threads()
    flood = []
    for i in range(200):
        flood.append(dimse.connect(doors.dicom_port, f"127.0.0.{2 + i % 3}"))
    stalled = []
    for _ in range(4):
        sock = dimse.connect(doors.dicom_port, "127.0.0.5")
        sock.sendall(b"\x01\x00\x00")  # half a header
        stalled.append(sock)
    time.sleep(0.3)
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title=CALLING)
    ae.add_requested_context(Verification)
    held = [ae.associate("127.0.0.1", doors.dicom_port, ae_title=CALLED) for _ in range(9)]
    try:
        assert all(a.is_established for a in held)  # idle connections do not count against the 10 associations
        started = time.monotonic()
        echo = _echo(doors.dicom_port)  # the tenth
        assert echo.returncode == 0, echo.stdout + echo.stderr
    finally:
        for assoc in held:
            assoc.release()
    store = _storescu(doors.dicom_port, [_ct(tmp_path, "during-flood")])
    assert store.returncode == 0, store.stdout + store.stderr
    assert time.monotonic() - started < 10
    assert doors.worker_threads() - threads_before < 3 * 16 + 10  # three threads at most per admitted connection
    # each closed by the associate timeout (3 s) after it was accepted, or earlier to make room
    open_ = dimse.still_open(stalled + flood, t0 + 8)
    assert not open_, f"{len(open_)} connections outlived the associate timeout"
    for sock in flood + stalled:
        sock.close()
    assert _echo(doors.dicom_port).returncode == 0
    doors.probe.check(t0, "idle connection flood")
    doors.within_memory_model("idle connection flood")


def test_the_called_ae_title_is_checked(doors: Doors) -> None:
    refused = _echo(doors.dicom_port, called="NOT-BIOMED")
    assert refused.returncode != 0 and "called ae title not recognized" in (refused.stdout + refused.stderr).lower()
    assert _echo(doors.dicom_port, calling="INTRUDER").returncode != 0
    assert _echo(doors.dicom_port).returncode == 0


def test_a_cut_transfer_leaves_no_partial_file_and_the_temp_folder_is_capped(doors: Doors, tmp_path: Path) -> None:
    """A C-STORE cut by an A-ABORT or a TCP reset leaves nothing in the receiver's temporary folder; a dataset that
    would take the folder past BIOMED_DICOM_TEMP_MB (6) aborts its association, leaving nothing either; a smaller
    one is stored after them."""
    t0 = time.monotonic()
    big = _ct(tmp_path, "big", rows=1400)  # ~4 MB
    over = _ct(tmp_path, "over", rows=1900)  # ~7 MB: under BIOMED_MAX_UPLOAD_MB, over the temp folder's 6 MB
    for how in ("abort", "reset", "abort", "reset", "abort"):
        dimse.partial_store(doors.dicom_port, big, how, CALLING, CALLED)
    dimse.partial_store(doors.dicom_port, over, "none", CALLING, CALLED)
    deadline = time.monotonic() + 5
    while list(doors.incoming.glob("cstore-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list(doors.incoming.glob("cstore-*")), "a partial dataset stayed in the temporary folder"
    assert "temp_full" in httpx.get(f"{doors.url}/metrics").text
    assert _storescu(doors.dicom_port, [_ct(tmp_path, "after-cuts")]).returncode == 0
    doors.probe.check(t0, "cut transfers")


def test_a_corrected_resend_gets_a_new_sr_naming_the_previous_one(doors: Doors, tmp_path: Path) -> None:
    """The same instance over C-STORE and again over STOW-RS in another transfer syntax: one SR. The same SOP Instance
    UID with another Patient ID and pixels: a new SR, naming the first (Predecessor Documents Sequence)."""
    uid = generate_uid()
    first = _ct(tmp_path, "first", uid=uid)
    same = _ct(tmp_path, "same-rle", uid=uid, syntax=RLELossless)
    fixed = _ct(tmp_path, "fixed", uid=uid, patient="HOSTILE-2", rows=96)
    model = next(m for m in httpx.get(f"{doors.url}/models", headers=AUTH).json()["models"] if m["kind"] == "image")
    from biomed.outputs import Producer
    from biomed.outputs.sr import sr_uid

    algo = Producer(model["name"], model["version"], model["sha256"], tuple(model["labels"]))
    want_first, want_fixed = sr_uid(identity_of(first.read_bytes()), algo), sr_uid(identity_of(fixed.read_bytes()), algo)
    assert identity_of(same.read_bytes()) == identity_of(first.read_bytes())
    assert _storescu(doors.dicom_port, [first]).returncode == 0
    for path in (same, fixed):
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + path.read_bytes() + b"\r\n--b--\r\n"
        r = httpx.post(f"{doors.url}/dicomweb/studies", content=body, timeout=60, headers={
            **AUTH, "content-type": 'multipart/related; type="application/dicom"; boundary="b"'})
        assert r.status_code == 200, r.text[:300]
    deadline = time.monotonic() + 30
    while not {want_first, want_fixed} <= set(doors.sink.uids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    uids = doors.sink.uids()
    assert uids[want_first] == 1 and uids[want_fixed] == 1, uids
    new = doors.sink.by_uid(want_fixed)
    [study] = new.PredecessorDocumentsSequence
    assert study.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == want_first
    assert new.PatientID == "HOSTILE-2" and "PredecessorDocumentsSequence" not in doors.sink.by_uid(want_first)


# ---------------------------------------------------------------------------------------------- HTTP bodies


def _raw_request(port_url: str, head: str, source: str = "127.0.0.2") -> socket.socket:
    host, port = port_url.removeprefix("http://").split(":")
    sock = dimse.connect(int(port), source)
    sock.sendall(head.encode())
    return sock


def _status(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    try:
        line = sock.recv(65536).split(b"\r\n")[0]
    except (socket.timeout, ConnectionResetError):
        return -1
    return int(line.split()[1]) if line.startswith(b"HTTP/") else -1


def test_trickling_bodies_hold_only_what_they_sent_and_stop_in_time(doors: Doors) -> None:
    """Four /predict_image bodies declaring 8 MB (32 MB: all of BIOMED_MAX_BODIES_MB) and four STOW-RS bodies declaring
    60 MB (within BIOMED_MAX_STOW_MB), each trickling at ~20 KB/s from four addresses: the probe is never refused
    (the declared lengths reserve nothing), and each trickle ends with 408 within the body time (6 s for its first
    8 MB), not when its declared length would arrive."""
    t0 = time.monotonic()
    heads = [f"POST /predict_image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: "
             f"application/dicom\r\nContent-Length: {8 * 2**20}\r\n\r\n"] * 4  # 32 MB declared: the whole budget
    heads += [f"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: "
              f"multipart/related; boundary=b\r\nContent-Length: 60000000\r\n\r\n--b\r\n\r\n"] * 4
    socks = [_raw_request(doors.url, head, f"127.0.0.{2 + i % 4}") for i, head in enumerate(heads)]
    statuses: dict[int, int] = {}
    ended: dict[int, float] = {}
    while len(statuses) < len(socks) and time.monotonic() - t0 < 20:
        for i, sock in enumerate(socks):
            if i in statuses:
                continue
            try:
                sock.sendall(b"\0" * 2000)
            except OSError:
                pass
            status = _status(sock, 0.0125)
            if status != -1:
                statuses[i], ended[i] = status, time.monotonic() - t0
    assert statuses == {i: 408 for i in range(len(socks))}, statuses
    assert max(ended.values()) < 12, ended
    for sock in socks:
        sock.close()
    doors.probe.check(t0, "trickling bodies")


def test_one_address_holds_at_most_its_share_of_the_body_budget(doors: Doors) -> None:
    """Three 8 MB bodies from one address, 7 MB of each sent at once then stalled: the third passes the address's
    share (16 of the 32 MB) and gets 429; a body from another address is still taken meanwhile."""
    t0 = time.monotonic()
    head = (f"POST /predict_image HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: "
            f"application/dicom\r\nContent-Length: {8 * 2**20}\r\n\r\n")
    greedy = []
    for _ in range(3):
        sock = _raw_request(doors.url, head, "127.0.0.6")
        try:
            sock.sendall(b"\0" * (7 * 2**20))
        except OSError:
            pass
        greedy.append(sock)
        time.sleep(0.3)
    assert _status(greedy[2], 5) == 429
    other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.7"), timeout=30)
    r = other.post(f"{doors.url}/predict_image", content=b"\0" * (7 * 2**20),
                   headers={**AUTH, "content-type": "application/dicom"})
    assert r.status_code in (400, 413, 415, 422), r.text[:200]  # read, and refused as not an image: not 429
    assert [_status(s, 10) for s in greedy[:2]] == [408, 408]
    for sock in greedy:
        sock.close()
    doors.probe.check(t0, "one address's share")


# ---------------------------------------------------------------------------------------------- v2


def _v2(doors: Doors, model: str, header: dict, binary: bytes = b"", header_length: str | None = None,
        source: str = "127.0.0.2") -> httpx.Response:
    body = json.dumps(header).encode()
    headers = {**AUTH, "content-type": "application/octet-stream" if binary else "application/json"}
    if binary or header_length is not None:
        headers["inference-header-content-length"] = header_length if header_length is not None else str(len(body))
    with httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=120) as client:
        return client.post(f"{doors.url}/v2/models/{model}/infer", content=body + binary, headers=headers)


def test_v2_refuses_repeated_outputs_and_odd_header_lengths(doors: Doors) -> None:
    """An output asked for 300 times (binary and JSON) or twice among others: 400 before anything runs; an
    Inference-Header-Content-Length of 4,301 digits, not a number, or past the body: 400, never a 500."""
    t0 = time.monotonic()
    meta = httpx.get(f"{doors.url}/v2/models/demo-dna", headers=AUTH).json()["inputs"][0]  # UINT8 base codes
    rows = np.zeros((4, meta["shape"][1]), dtype=np.uint8)
    tensor = {"name": meta["name"], "datatype": meta["datatype"], "shape": list(rows.shape)}
    png = io.BytesIO()
    Image.fromarray(np.zeros((16, 16), dtype=np.uint8)).save(png, format="PNG")
    file_input = {"name": "file", "datatype": "BYTES", "shape": [1]}
    file_bytes = struct.pack("<I", len(png.getvalue())) + png.getvalue()
    probabilities = {"name": "probabilities"}
    cases = [  # (model, header, binary part, header length, what the 400 says)
        ("demo-dna", {"inputs": [tensor], "outputs": [probabilities] * 300}, rows.tobytes(), None, "each at most once"),
        ("demo-dna", {"inputs": [{**tensor, "data": rows.ravel().tolist()}], "outputs": [probabilities] * 300}, b"",
         None, "each at most once"),
        ("demo-image", {"inputs": [file_input], "outputs": [probabilities, {"name": "element"}, probabilities]},
         file_bytes, None, "requested twice"),
        ("demo-dna", {"inputs": [tensor]}, rows.tobytes(), "9" * 4301, "not a byte count"),
        ("demo-dna", {"inputs": [tensor]}, rows.tobytes(), "12x", "not a byte count"),
        ("demo-dna", {"inputs": [tensor]}, rows.tobytes(), "99999999", "beyond the body"),
    ]
    for model, header, binary, length, detail in cases:
        if binary:
            header = {**header, "inputs": [{**header["inputs"][0], "parameters": {"binary_data_size": len(binary)}}]}
        r = _v2(doors, model, header, binary, length)
        assert r.status_code == 400 and detail in r.text, (detail, r.status_code, r.text[:300])
    ok = _v2(doors, "demo-dna", {"inputs": [{**tensor, "data": rows.ravel().tolist()}]})
    assert ok.status_code == 200, ok.text[:300]
    doors.probe.check(t0, "v2 outputs and header lengths")


def test_many_small_files_in_one_v2_request_do_not_hold_the_event_loop(doors: Doors) -> None:
    """256 small JPEG 2000 DICOMs, then 200 PNGs of 512 x 512, in one v2 request each, three at a time: all
    answered, while the probe's p99 stays under 1 s."""
    t0 = time.monotonic()
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.compress(JPEG2000Lossless)
    buf = io.BytesIO()
    ct.save_as(buf, enforce_file_format=True)
    j2k = buf.getvalue()
    png_buf = io.BytesIO()
    Image.fromarray((np.add.outer(np.arange(512), np.arange(512)) % 256).astype(np.uint8)).save(png_buf, format="PNG")
    meta = httpx.get(f"{doors.url}/v2/models/demo-image", headers=AUTH).json()
    name = meta["alternative_inputs"][0]["name"]
    results: list[int] = []

    def send(files: list[bytes]) -> None:
        binary = b"".join(struct.pack("<I", len(f)) + f for f in files)
        header = {"inputs": [{"name": name, "datatype": "BYTES", "shape": [len(files)],
                              "parameters": {"binary_data_size": len(binary)}}]}
        results.append(_v2(doors, "demo-image", header, binary).status_code)

    batches = [[j2k] * 256] * 3 + [[png_buf.getvalue()] * 200] * 3
    workers = [threading.Thread(target=send, args=(b,)) for b in batches]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    assert results == [200] * len(batches), results
    doors.probe.check(t0, "many small files in v2")


# ---------------------------------------------------------------------------------------------- the other doors


def test_an_explanation_of_a_huge_image_is_drawn_at_a_bounded_size(doors: Doors) -> None:
    """/explain_image?format=png of an 8000 x 8000 PNG: a PNG of at most 2048 pixels a side (not ~100 MB), within
    the memory model."""
    t0 = time.monotonic()
    buf = io.BytesIO()
    Image.fromarray(np.tile((np.arange(8000) % 251).astype(np.uint8), (8000, 1))).save(buf, format="PNG")
    r = httpx.post(f"{doors.url}/explain_image", params={"format": "png"}, timeout=120, headers=AUTH,
                   files={"file": ("huge.png", buf.getvalue(), "image/png")})
    assert r.status_code == 200, r.text[:300]
    drawn = Image.open(io.BytesIO(r.content))
    assert drawn.size == (2048, 2048) and len(r.content) < 16 * 2**20
    doors.within_memory_model("explaining a huge image")
    doors.probe.check(t0, "explaining a huge image")


def test_minor_items(doors: Doors) -> None:
    """A quoted STOW-RS boundary holding ';', the range message of an unbounded field, a lone surrogate in a DNA
    sequence, and the page's headers."""
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    body = b"--a;b=c\r\nContent-Type: application/dicom\r\n\r\n" + ct + b"\r\n--a;b=c--\r\n"
    r = httpx.post(f"{doors.url}/dicomweb/studies", content=body, timeout=60, headers={
        **AUTH, "content-type": 'multipart/related; boundary="a;b=c"; type="application/dicom"'})
    assert r.status_code == 200, r.text[:300]
    r = httpx.post(f"{doors.url}/explain_image", data={"patch": "0"}, headers=AUTH,
                   files={"file": ("x.png", b"x", "image/png")})
    assert r.status_code == 400 and r.json()["detail"].endswith("accepted: 1 or more")
    meta = httpx.get(f"{doors.url}/v2/models/demo-dna", headers=AUTH).json()
    header = {"inputs": [{"name": meta["alternative_inputs"][0]["name"], "datatype": "BYTES", "shape": [1],
                          "data": ["AC\ud800GT"]}]}
    r = httpx.post(f"{doors.url}/v2/models/demo-dna/infer", headers={**AUTH, "content-type": "application/json"},
                   content=json.dumps(header).encode())
    assert r.status_code == 422 and "'\\\\ud800' at position 2" in r.text, r.text
    for length in (b"9" * 5000, b"\xb2", b"1e3"):  # a sibling of the v2 header's length: never a 500
        sock = _raw_request(doors.url, "")
        sock.sendall(b"POST /predict_dna HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + TOKEN.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: " + length + b"\r\n\r\n{}")
        assert _status(sock, 10) == 400, length[:10]
        sock.close()
    page = httpx.get(f"{doors.url}/")
    csp = page.headers["content-security-policy"]
    for directive in ("frame-ancestors 'none'", "base-uri 'none'", "object-src 'none'", "form-action 'self'"):
        assert directive in csp
    assert page.headers["x-frame-options"] == "DENY"
