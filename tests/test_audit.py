"""The audit trail (service/audit): DICOM audit messages (PS3.15 A.5) over RFC 5424 syslog, at a real receiver.

One real server (``bentoml serve``, one worker) writes its trail over TCP (RFC 6587) to Debian's rsyslogd on a
local port, with named tokens (``BIOMED_API_TOKENS_FILE``), the C-STORE receiver, a PACS (a pynetdicom SCP here)
as the results' destination and the gRPC door. The test drives a C-STORE study (dcmtk's storescu), a refused
calling AE title, a STOW-RS upload, wrong tokens over HTTP and gRPC, and predictions over the native API, v2 REST
and gRPC, and finds exactly the messages each should make, with their participants and objects; no token is
written anywhere, and the server's log holds no identifier. Then, with rsyslogd stopped, requests still succeed
and the messages that do not fit the buffer are counted in ``/metrics``. In process, a file target (mode 0600)
gets the same kind of trail, the start and stop of the application, and a token added to the tokens file while
serving. The message builders and the UDP transport are checked against the same rsyslogd without a server.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import stat
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pydicom
import pytest

import live_server
from audit_receiver import Received, Rsyslog, parse_line
from tools import require_tool

CALLING, CALLED = "MODALITY", "BIOMED"
TOKENS = {"alice": "tok-alice-0123456789", "bob": "tok-bob-0123456789"}
DNA = "ACGT" * 60


def _rsyslogd() -> str:
    return require_tool("rsyslogd", "apt-get install rsyslog", "/usr/sbin/rsyslogd")


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rsyslog]:
    syslog = Rsyslog(_rsyslogd(), tmp_path_factory.mktemp("rsyslog"), live_server.free_port())
    syslog.start()
    yield syslog
    syslog.stop()


def _study(out: Path, tag: str, n: int, patient: str, modality: str = "CT") -> tuple[str, list[Path]]:
    """``n`` demo images of ``modality`` re-stamped into one study of ``patient``."""
    from training.demo.dicom_demo import generate_images

    generate_images(out / f"demo-{tag}", n=3 * n + 6, seed=sum(map(ord, tag)))
    sources = [p for p in sorted((out / f"demo-{tag}").rglob("*.dcm"))
               if pydicom.dcmread(p, stop_before_pixels=True).Modality == modality][:n]
    study = pydicom.uid.generate_uid(entropy_srcs=["biomed-audit-test", tag])
    files = []
    for i, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID, ds.PatientID, ds.PatientName = study, f"PAT-{tag}", patient
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(
            entropy_srcs=[tag, str(i)])
        path = out / f"{tag}-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study, files


class Pacs:
    """A PACS that takes the service's result objects (a pynetdicom storage SCP)."""

    def __init__(self) -> None:
        from pynetdicom import AE, evt
        from pynetdicom.sop_class import Comprehensive3DSRStorage

        self.port, self.received = live_server.free_port(), []
        ae = AE(ae_title="PACS")
        ae.add_supported_context(Comprehensive3DSRStorage, [pydicom.uid.ExplicitVRLittleEndian,
                                                             pydicom.uid.ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def _store(self, event) -> int:  # type: ignore[no-untyped-def]
        self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000


@pytest.fixture(scope="module")
def service(demo_models: dict[str, str], receiver: Rsyslog,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[live_server.Server, dict]]:
    root = tmp_path_factory.mktemp("audit-service")
    tokens = root / "tokens"
    tokens.write_text("# named API tokens\n" + "".join(f"{n}:{t}\n" for n, t in TOKENS.items()))
    pacs = Pacs()
    ports = {"dicom": live_server.free_port(), "grpc": live_server.free_port()}
    env = {"BIOMED_MODELS": "demo-image,demo-dna", "BIOMED_API_TOKENS_FILE": str(tokens),
           "BIOMED_AUDIT": f"tcp://127.0.0.1:{receiver.port}", "BIOMED_AUDIT_BUFFER": "8",
           "BIOMED_DICOM_PORT": str(ports["dicom"]), "BIOMED_DICOM_HOST": "127.0.0.1", "BIOMED_DICOM_AET": CALLED,
           "BIOMED_DICOM_ALLOWED_AETS": CALLING, "BIOMED_DICOM_DESTINATION": f"PACS@127.0.0.1:{pacs.port}",
           "BIOMED_DICOM_SPOOL": str(root / "spool"), "BIOMED_DICOM_RETRY_MAX_S": "1",
           "BIOMED_GRPC_PORT": str(ports["grpc"])}
    with live_server.running(root / "server.log", **env) as server:
        yield server, {"ports": ports, "pacs": pacs, "root": root}
    pacs.server.shutdown()


def _auth(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


def _storescu(port: int, files: list[Path], calling: str) -> subprocess.CompletedProcess:
    storescu = require_tool("storescu", "apt-get install dcmtk", "/usr/bin/storescu")
    return subprocess.run([storescu, "-aet", calling, "-aec", CALLED, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)


def _grpc_dna(port: int, token: str) -> None:
    import tritonclient.grpc as grpcclient

    triton = grpcclient.InferenceServerClient(url=f"127.0.0.1:{port}")
    inp = grpcclient.InferInput("sequence", [1], "BYTES")
    inp.set_data_from_numpy(np.array([DNA.encode()], dtype=object))
    try:
        triton.infer("demo-dna", [inp], headers={"authorization": f"Bearer {token}"})
    finally:
        triton.close()


def _sent(msg: Received) -> int:
    return sum(n for o in msg.objects() for n in o["classes"].values())


def _settled(receiver: Rsyslog, others: int, sent: int, timeout: float = 30.0) -> list[Received]:
    """The messages once ``others`` messages and the sending of ``sent`` results have arrived (and a moment more, for
    any that should not be there)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = receiver.messages()
        results = [m for m in found if (m.event, m.action) == ("110104", "R")]
        if len(found) - len(results) >= others and sum(map(_sent, results)) >= sent:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    return receiver.messages()


def _by_event(messages: list[Received]) -> dict[tuple[str, str], list[Received]]:
    found: dict[tuple[str, str], list[Received]] = {}
    for msg in messages:
        found.setdefault((msg.event, msg.action), []).append(msg)
    return found


def _participant(msg: Received, **wanted: str) -> dict:
    matches = [p for p in msg.participants() if all(p.get(k) == v for k, v in wanted.items())]
    assert len(matches) == 1, (wanted, msg.participants())
    return matches[0]


def _study_objects(msg: Received) -> dict[str, dict]:
    return {o["id"]: o for o in msg.objects() if o["type"] == "110180"}


def _patient(msg: Received) -> dict:
    [patient] = [o for o in msg.objects() if o["type"] == "2"]
    return patient


def _model(msg: Received) -> dict:
    [model] = [o for o in msg.objects() if o["type"] == "MODEL"]
    return {**model, "details": {k: base64.b64decode(v).decode() for k, v in model["details"].items()}}


def test_every_event_reaches_rsyslog_with_its_participants_and_objects(
        service: tuple[live_server.Server, dict], receiver: Rsyslog, tmp_path: Path) -> None:
    server, extra = service
    ports, pacs = extra["ports"], extra["pacs"]
    models = {m["name"]: m for m in httpx.get(f"{server.url}/models", headers=_auth("alice"), timeout=30).json()["models"]}
    stored_study, stored = _study(tmp_path, "cstore", 3, "Stored^Patient")
    stow_study, stowed = _study(tmp_path, "stow", 2, "Stowed^Patient")
    read_study, [read] = _study(tmp_path, "read", 1, "Read^Patient")

    run = _storescu(ports["dicom"], stored, CALLING)  # a study of three instances, one association
    assert run.returncode == 0, run.stdout + run.stderr
    refused = _storescu(ports["dicom"], stored[:1], "INTRUDER")
    assert refused.returncode != 0
    boundary = "audit-boundary"
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n"
                    for p in stowed) + f"--{boundary}--\r\n".encode()
    stow = httpx.post(f"{server.url}/dicomweb/studies", content=body, timeout=60, headers={
        **_auth("bob"), "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert stow.status_code == 200, stow.text
    wrong = httpx.post(f"{server.url}/predict_dna", json={"sequences": [DNA]}, timeout=30,
                       headers={"Authorization": "Bearer not-a-token"})
    assert wrong.status_code == 401
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match="UNAUTHENTICATED"):
        _grpc_dna(ports["grpc"], "not-a-token")
    image = httpx.post(f"{server.url}/predict_image", files={"file": ("x.dcm", read.read_bytes())}, timeout=60,
                       headers=_auth("alice"))
    assert image.status_code == 200, image.text
    dna = httpx.post(f"{server.url}/predict_dna", json={"sequences": [DNA]}, headers=_auth("alice"), timeout=30)
    assert dna.status_code == 200
    v2 = httpx.post(f"{server.url}/v2/models/demo-dna/infer", headers=_auth("bob"), timeout=30, json={
        "inputs": [{"name": "sequence", "shape": [1], "datatype": "BYTES", "data": [DNA]}]})
    assert v2.status_code == 200, v2.text
    _grpc_dna(ports["grpc"], TOKENS["alice"])
    bad = httpx.post(f"{server.url}/predict_image", files={"file": ("x.dcm", b"DICM" * 100)}, headers=_auth("alice"),
                     timeout=30)
    assert bad.status_code in (400, 415, 422)
    deadline = time.monotonic() + 60
    while len(pacs.received) < 5 and time.monotonic() < deadline:  # the five SRs reach the PACS
        time.sleep(0.2)
    assert len(pacs.received) == 5

    # 1 start, 2 received (C-STORE, STOW-RS), 1 refused AE, 2 failed logins, 1 DICOM read, 4 other predictions, and
    # the five results sent, in one or more delivery rounds
    messages = _settled(receiver, 11, 5)
    events = _by_event(messages)
    assert all(m.input == "imtcp" and m.version == "1" and m.app == "biomed-serve" and m.msgid == "DICOM+RFC3881"
               and m.pri // 8 == 10 for m in messages)
    assert {k: len(v) for k, v in events.items() if k != ("110104", "R")} == {
        ("110100", "E"): 1, ("110104", "C"): 2, ("110113", "E"): 1, ("110114", "E"): 2, ("110103", "R"): 1,
        ("PRED", "E"): 4}

    [start] = events[("110100", "E")]
    assert start.types() == ["110120"] and start.pri == 85
    _participant(start, UserID=CALLED, AlternativeUserID=f"AETITLES={CALLED}")

    received = {m.participants()[0]["UserID"]: m for m in events[("110104", "C")]}
    assert set(received) == {CALLING, "bob"}
    dimse = received[CALLING]
    assert _participant(dimse, UserID=CALLING, UserIsRequestor="true", NetworkAccessPointID="127.0.0.1")["roles"] == [
        "110153"]
    assert _participant(dimse, UserID=CALLED)["roles"] == ["110152"]
    assert _study_objects(dimse) == {stored_study: {"id": stored_study, "type": "110180", "name": None, "details": {},
                                                   "classes": {str(pydicom.uid.CTImageStorage): 3}}}
    assert _patient(dimse)["id"] == "PAT-cstore" and _patient(dimse)["name"] == "Stored^Patient"
    stowed_msg = received["bob"]
    assert _participant(stowed_msg, UserID="bob")["NetworkAccessPointID"] == "127.0.0.1"
    assert list(_study_objects(stowed_msg)) == [stow_study] and _patient(stowed_msg)["id"] == "PAT-stow"
    assert _study_objects(stowed_msg)[stow_study]["classes"] == {str(pydicom.uid.CTImageStorage): 2}

    sent: dict[str, int] = {}
    for msg in events[("110104", "R")]:  # the result SRs, per delivery round
        assert _participant(msg, UserID="PACS")["roles"] == ["110152"]
        assert _participant(msg, UserID=CALLED)["roles"] == ["110153"]
        for uid, obj in _study_objects(msg).items():
            sent[uid] = sent.get(uid, 0) + obj["classes"][str(pydicom.uid.Comprehensive3DSRStorage)]
    assert sent == {stored_study: 3, stow_study: 2}

    [alert] = events[("110113", "E")]
    assert alert.types() == ["110126"] and alert.outcome == "4" and alert.pri == 84
    assert _participant(alert, UserID="INTRUDER")["NetworkAccessPointID"] == "127.0.0.1"
    assert [o["id"] for o in alert.objects()] == ["INTRUDER"]

    logins = events[("110114", "E")]
    assert sorted(m.xml.findtext("EventIdentification/EventOutcomeDescription") for m in logins) == [
        "no valid bearer token (grpc)", "no valid bearer token (http)"]
    assert all(m.outcome == "4" and _participant(m, UserID="unknown")["NetworkAccessPointID"] == "127.0.0.1"
               for m in logins)

    [accessed] = events[("110103", "R")]
    assert accessed.types() == ["PRED"] and _participant(accessed, UserID="alice")["UserIsRequestor"] == "true"
    assert list(_study_objects(accessed)) == [read_study] and _patient(accessed)["name"] == "Read^Patient"
    image_model = _model(accessed)
    assert image_model["id"] == f"demo-image:{models['demo-image']['version']}"
    assert image_model["details"] == {"sha256": models["demo-image"]["sha256"], "door": "native",
                                      "endpoint": "predict_image", "status": "200"}
    predictions = {(_model(m)["details"]["door"], _model(m)["details"]["endpoint"]): m for m in events[("PRED", "E")]}
    assert set(predictions) == {("native", "predict_dna"), ("v2", "v2_infer"), ("grpc", "grpc_ModelInfer"),
                                ("native", "predict_image")}
    assert {door: m.participants()[0]["UserID"] for (door, _), m in predictions.items() if door != "native"} == {
        "v2": "bob", "grpc": "alice"}
    for key in (("native", "predict_dna"), ("v2", "v2_infer"), ("grpc", "grpc_ModelInfer")):
        assert predictions[key].outcome == "0" and _model(predictions[key])["id"].startswith("demo-dna:")
    failed = predictions[("native", "predict_image")]
    assert failed.outcome == "4" and _model(failed)["details"]["status"] == str(bad.status_code)

    raw = receiver.out.read_text()
    log = server.output()
    for token in (*TOKENS.values(), "not-a-token"):
        assert token not in raw and token not in log
    for identifier in (stored_study, stow_study, read_study, "PAT-cstore", "Stowed^Patient", "Read^Patient"):
        assert identifier in raw and identifier not in log  # the trail is the one place they are written


def _dropped(server: live_server.Server) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("biomed_audit_dropped_total{"))


def test_with_the_receiver_down_requests_succeed_and_drops_are_counted(
        service: tuple[live_server.Server, dict], receiver: Rsyslog) -> None:
    server, _ = service
    before = _dropped(server)
    receiver.stop()
    try:
        took = []
        for _ in range(24):  # more than the buffer (8) holds
            started = time.perf_counter()
            r = httpx.post(f"{server.url}/predict_dna", json={"sequences": [DNA]}, headers=_auth("alice"), timeout=30)
            took.append(time.perf_counter() - started)
            assert r.status_code == 200
        assert max(took) < 5.0, took  # nothing waits for the dead receiver
        # the buffer's 8, the one the sender holds, and one that TCP took as the receiver went (plain TCP syslog has
        # no acknowledgement) are not counted
        deadline = time.monotonic() + 10
        while _dropped(server) - before < 24 - 8 - 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _dropped(server) - before >= 24 - 8 - 2
    finally:
        receiver.start()


def test_a_file_target_gets_the_trail_with_mode_0600_and_new_tokens_are_taken_up(demo_models: dict[str, str],
                                                                                  tmp_path: Path) -> None:
    from conftest import inprocess_client

    trail, tokens = tmp_path / "audit.log", tmp_path / "tokens"
    tokens.write_text("carol:tok-carol-0123456789\n")
    study, [image] = _study(tmp_path, "file", 1, "File^Patient")
    env = {"BIOMED_MODELS": "demo-image,demo-dna", "BIOMED_AUDIT": f"file:{trail}",
           "BIOMED_API_TOKENS_FILE": str(tokens), "BIOMED_PROVIDERS": "cpu"}
    for client in inprocess_client(env):
        r = client.post("/predict_image", files={"file": ("x.dcm", image.read_bytes())},
                        headers={"Authorization": "Bearer tok-carol-0123456789"})
        assert r.status_code == 200, r.text
        assert client.post("/predict_dna", json={"sequences": [DNA]}, headers={"Authorization": "Bearer x"}
                           ).status_code == 401
        tokens.write_text("carol:tok-carol-0123456789\n# added while serving\ndave:tok-dave-0123456789\n")
        time.sleep(1.1)  # the file is looked at once a second at most
        r = client.post("/predict_dna", json={"sequences": [DNA]}, headers={"Authorization": "Bearer tok-dave-0123456789"})
        assert r.status_code == 200, r.text
    assert stat.S_IMODE(os.stat(trail).st_mode) == 0o600
    lines = trail.read_text(encoding="utf-8").splitlines()
    frames = [line.split(" ", 7) for line in lines]
    assert all(f[0] in ("<85>1", "<84>1") and f[3] == "biomed-serve" and f[5] == "DICOM+RFC3881" and f[6] == "-"
               for f in frames)
    import xml.etree.ElementTree as ET

    found = [ET.fromstring(f[7].lstrip("\ufeff")) for f in frames]
    summary = [(x.find("EventIdentification/EventID").get("csd-code"),
                [p.get("UserID") for p in x.findall("ActiveParticipant") if p.get("UserIsRequestor") == "true"])
               for x in found]
    assert summary == [("110100", []), ("110103", ["carol"]), ("110114", ["unknown"]), ("PRED", ["dave"]),
                       ("110100", [])]
    assert [t.get("csd-code") for t in found[-1].findall("EventIdentification/EventTypeCode")] == ["110121"]
    assert study in lines[1] and "tok-" not in trail.read_text()


def test_messages_over_udp_and_a_full_buffer_never_waits(receiver: Rsyslog) -> None:
    from service.audit import events, syslog

    source = events.Source("BIOMED", "test-host")
    subject = events.Subject("1.2.3", "PAT-UDP", "Udp^Patient", str(pydicom.uid.CTImageStorage))
    request = events.Request("alice", "10.0.0.7", "native", "predict_image", (("m", "1", "ab"),), 200)
    now = dt.datetime.now(dt.timezone.utc)
    before = len(receiver.messages())
    udp = syslog.UdpSink("127.0.0.1", receiver.port)
    made = events.prediction(source, request, events.counted([subject]), now)
    udp.send([syslog.frame(xml, severity, now, "test-host", "7") for severity, xml in made])
    udp.close()
    deadline = time.monotonic() + 20
    got: list[Received] = []
    while not got and time.monotonic() < deadline:  # the server's queued messages may arrive over TCP meanwhile
        got = [m for m in receiver.messages()[before:] if m.input == "imudp"]
        time.sleep(0.2)
    assert [(m.input, m.event, m.procid) for m in got] == [("imudp", "110103", "7")]
    assert _patient(got[0])["id"] == "PAT-UDP" and _participant(got[0], UserID="alice")["NetworkAccessPointID"] == \
        "10.0.0.7"

    dropped: list[str] = []
    dead = syslog.Sender(syslog.TcpSink("127.0.0.1", live_server.free_port()), 4, dropped.append)
    dead.start()
    started = time.perf_counter()
    for _ in range(1000):
        dead.put(lambda: [b"x"])
    assert time.perf_counter() - started < 0.5 and len(dropped) >= 1000 - 4 - 1
    dead.close(0.5)


def test_a_received_line_parses() -> None:
    line = "imtcp\t85\t1\tbiomed-serve\t1\tDICOM+RFC3881\t\ufeff<AuditMessage><EventIdentification " \
           'EventActionCode=\\"E\\"><EventID csd-code=\\"110100\\"\\/></EventIdentification></AuditMessage>'
    assert parse_line(line).event == "110100"
