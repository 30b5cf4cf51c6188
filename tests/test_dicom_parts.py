"""The DICOM network's parts on their own (fast): the multipart/related reader, the SR builder, the UID pattern, the
spool and its forwarder, C-STORE delivery to a pynetdicom peer, the settings, and STOW-RS and ``output=sr`` through
the in-process service (each instance parsed once).

The real network (Orthanc, storescu, a real server) is tests/test_dicom_network.py.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import socket
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from biomed.errors import MalformedInput
from biomed.outputs import DICOM_STORAGE, Producer, sr
from biomed.preprocess.dicom_read import is_uid
from service.config import DICOM_CONNECTION_BYTES, GROUP_MEMBER_BYTES, ServiceConfig
from service.dicom import multipart
from service.dicom.spool import Forwarder, Spool
from sr_reader import probabilities_of, read_results

try:
    from tests.dicom_objects import identity_of, objects, sop_of, source
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from dicom_objects import identity_of, objects, sop_of, source

ALGO = Producer("demo-image", "20250101-000000-abcdef01", "ab" * 32, ("cavity", "nodule", "normal"))


# ---------------------------------------------------------------------------------------------- multipart/related


def _body(parts: list[bytes], boundary: str = "b0undary", preamble: bytes = b"") -> bytes:
    return preamble + b"".join(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + p + b"\r\n"
                               for p in parts) + f"--{boundary}--\r\n".encode()


def _read(body: bytes, chunk: int, boundary: bytes = b"b0undary", cap: int = 1 << 20) -> list[multipart.Part]:
    async def stream():  # type: ignore[no-untyped-def]
        for i in range(0, len(body), chunk):
            yield body[i : i + chunk]

    async def collect() -> list[multipart.Part]:
        return [p async for p in multipart.parts(stream(), boundary, cap)]

    return asyncio.run(collect())


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_parts_are_the_same_whatever_the_chunking(chunk: int) -> None:
    parts = [b"", b"--b0undary", b"\r\n--b0undar", b"x\r\n-b0undary\r\n", bytes(range(256)) * 3]  # near misses
    got = _read(_body(parts, preamble=b"a preamble\r\n"), chunk)
    assert [p.data for p in got] == parts
    assert all(p.media_type == "application/dicom" for p in got)


def test_a_part_over_the_cap_is_read_past_not_kept() -> None:
    got = _read(_body([b"x" * 100, b"small"]), 7, cap=50)
    assert got[0].too_large and got[0].data == b"" and got[0].size == 100
    assert not got[1].too_large and got[1].data == b"small"


@pytest.mark.parametrize("body", [b"", b"no delimiter at all", b"--b0undary\r\nContent-Type: x\r\n\r\nunfinished",
                                  b"--b0undary\r\nno colon here\r\n\r\ndata\r\n--b0undary--",
                                  b"--b0undary\r\n" + b"X-Long: " + b"y" * 20000 + b"\r\n\r\n"])
def test_broken_bodies_are_malformed(body: bytes) -> None:
    with pytest.raises(MalformedInput):
        _read(body, 5)


def test_boundary_and_parameters_of_a_content_type() -> None:
    assert multipart.boundary_of('multipart/related; type="application/dicom"; boundary="a b:c"') == b"a b:c"
    assert multipart.boundary_of("multipart/related;boundary=xyz") == b"xyz"
    assert multipart.parameter('multipart/related; Type="application/DICOM"', "type") == "application/dicom"
    # a quoted boundary may hold ';' and '=' (and a backslash-quoted '"'); the parameters after it still count
    quoted = 'multipart/related; boundary="a;b=c"; type="application/dicom"'
    assert multipart.boundary_of(quoted) == b"a;b=c" and multipart.parameter(quoted, "type") == "application/dicom"
    assert multipart.boundary_of('multipart/related; boundary="q\\"x"') == b'q"x'
    for bad in ("multipart/related", "multipart/related; boundary=", "multipart/related; boundary=" + "x" * 71):
        with pytest.raises(MalformedInput):
            multipart.boundary_of(bad)


# ---------------------------------------------------------------------------------------------- the SR


def test_the_sr_reads_back_with_highdicom_and_its_uid_is_deterministic() -> None:
    full = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"))
    identity = identity_of(full)
    source = pydicom.dcmread(get_testdata_file("SC_rgb_rle_2frame.dcm"), stop_before_pixels=True)
    probs = np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]], dtype=np.float32)
    first = sr.build_sr(source, probs, ALGO, identity)
    again = pydicom.dcmread(io.BytesIO(sr.sr_bytes(sr.build_sr(source, probs, ALGO, identity))))
    assert first.SOPInstanceUID == again.SOPInstanceUID == sr.sr_uid(identity, ALGO)
    assert len(first.SOPInstanceUID) <= 64 and first.SOPInstanceUID.startswith("2.25.")
    other = Producer(ALGO.name, "another-version", ALGO.sha256, ALGO.labels)
    assert sr.sr_uid(identity, other) != first.SOPInstanceUID
    assert "PredecessorDocumentsSequence" not in again
    results = read_results(again)
    assert [r["frame"] for r in results] == [0, 1] and [r["label"] for r in results] == ["normal", "cavity"]
    assert np.array_equal(probabilities_of(results, ALGO.labels), probs.astype(np.float64))
    assert {r["sop_instance_uid"] for r in results} == {source.SOPInstanceUID}
    assert (again.VerificationFlag, again.CompletionFlag, again.ContentQualification) == ("UNVERIFIED", "COMPLETE",
                                                                                          "RESEARCH")
    assert (again.PatientID, again.StudyInstanceUID) == (source.PatientID, source.StudyInstanceUID)
    assert again.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == sr.SCHEME


IDENTITY_CASES = [  # (what changes in a re-send of CT_small, whether it is the same instance)
    ("another transfer syntax (RLE)", True),
    ("big-endian explicit VR", True),
    ("another patient name", True),
    ("another patient id", False),
    ("one pixel", False),
    ("another series", False),
]


@pytest.mark.parametrize("change, same", IDENTITY_CASES)
def test_the_content_identity_is_the_decoded_pixels_and_the_patient_and_instance_uids(change: str, same: bool) -> None:
    from pydicom.uid import ExplicitVRBigEndian, RLELossless

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    base = identity_of(ct)
    other = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if change == "another transfer syntax (RLE)":
        other.compress(RLELossless, generate_instance_uid=False)
    elif change == "big-endian explicit VR":
        other.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        other.PixelData = ct.pixel_array.astype(">i2").tobytes()
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, other, little_endian=False, implicit_vr=False, enforce_file_format=True)
        other = buffer.getvalue()
    elif change == "another patient name":
        other.PatientName = "Someone^Else"
    elif change == "another patient id":
        other.PatientID = "OTHER-1"
    elif change == "one pixel":
        pixels = ct.pixel_array.copy()
        pixels[0, 0] += 1
        other.PixelData = pixels.tobytes()
    else:
        other.SeriesInstanceUID = "1.2.3.4.5"
    assert (identity_of(other) == base) is same


def test_a_corrected_instance_gets_a_new_sr_naming_the_previous_one(tmp_path: Path) -> None:
    """The same SOP Instance UID with other pixels: a new SR UID, whose Predecessor Documents Sequence names the
    first SR; the same content again is a duplicate (the pipeline's spooling step, as both doors use it)."""
    from service.dicom.pipeline import _build_and_spool

    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    fixed = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = ct.pixel_array.copy()
    pixels[:8, :8] = 0
    fixed.PixelData = pixels.tobytes()
    fixed.PatientID = "CORRECTED-1"
    spool = Spool(tmp_path / "spool")
    probs = np.array([[0.2, 0.3, 0.5]])
    first, second = identity_of(ct), identity_of(fixed)
    header = ct
    del header.PixelData
    assert _build_and_spool(header, probs, ALGO, first, spool)
    assert not _build_and_spool(header, probs, ALGO, first, spool)  # the same content: a duplicate
    corrected = fixed
    del corrected.PixelData
    assert _build_and_spool(corrected, probs, ALGO, second, spool)
    new = pydicom.dcmread(spool.root / f"{sr.sr_uid(second, ALGO)}.dcm")
    [study] = new.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    [item] = series.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == sr.sr_uid(first, ALGO) != new.SOPInstanceUID
    assert study.StudyInstanceUID == ct.StudyInstanceUID and new.PatientID == "CORRECTED-1"
    assert "PredecessorDocumentsSequence" not in pydicom.dcmread(spool.root / f"{sr.sr_uid(first, ALGO)}.dcm")


def test_a_source_without_patient_attributes_or_image_geometry_still_gets_its_sr() -> None:
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"), stop_before_pixels=True)
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "PixelSpacing",
                    "ImagePositionPatient", "FrameOfReferenceUID"):
        if keyword in source:
            delattr(source, keyword)
    ds = pydicom.dcmread(io.BytesIO(sr.sr_bytes(sr.build_sr(source, np.array([[0.3, 0.3, 0.4]]), ALGO, "0" * 64))))
    assert ds.PatientID == "" and read_results(ds)[0]["sop_instance_uid"] == source.SOPInstanceUID


def test_the_storage_sop_classes_are_those_of_the_objects_written() -> None:
    from pydicom.uid import Comprehensive3DSRStorage, ParametricMapStorage, SecondaryCaptureImageStorage

    written = {name: sop_of(data)[0] for name, data in objects(source()).items()}
    assert written == {"sr": Comprehensive3DSRStorage, "parametric_map": ParametricMapStorage,
                       "secondary_capture": SecondaryCaptureImageStorage}
    assert sorted(DICOM_STORAGE) == sorted(written.values())


@pytest.mark.parametrize("value, ok", [
    ("1.2.840.10008.5.1.4.1.1.2", True), ("2.25." + "9" * 59, True), ("0", True),
    ("2.25." + "9" * 60, False),  # 65 characters
    ("1..2", False), ("1.2.", False), (".1", False), ("1.2\n", False), ("1.2a", False), ("", False),
    ("../../etc/passwd", False), ("1.2 ", False),
])
def test_one_uid_pattern_for_the_doors_and_the_spool(value: str, ok: bool) -> None:
    assert is_uid(value) is ok


# ---------------------------------------------------------------------------------------------- spool, forwarder


class _Scripted:
    """A destination that answers from a script (``delivered``, ``retry``, ``rejected``), recording what it got."""

    def __init__(self, answers: list[str], got: list[bytes]) -> None:
        self.answers, self.got = answers, got

    def send(self, data: bytes) -> str:
        answer = self.answers.pop(0) if self.answers else "delivered"
        if answer == "delivered":
            self.got.append(data)
        return answer

    def close(self) -> None:
        pass


def test_the_spool_keeps_one_copy_and_remembers_what_was_delivered(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.put("1.2.3", b"a") and not spool.put("1.2.3", b"a")  # pending: a duplicate
    time.sleep(0.01)
    assert spool.put("1.2.4", b"b")
    assert [p.name for p in spool.pending()] == ["1.2.3.dcm", "1.2.4.dcm"]  # oldest first
    spool.delivered(spool.pending()[0])
    assert not spool.put("1.2.3", b"a") and spool.is_known("1.2.3")  # delivered: not again
    spool.reject(spool.pending()[0])
    assert spool.pending() == [] and (tmp_path / "rejected" / "1.2.4.dcm").read_bytes() == b"b"
    assert spool.prune(now=time.time() + 8 * 24 * 3600) == 1 and not spool.is_known("1.2.3")
    with pytest.raises(ValueError):
        spool.put("../../etc/passwd", b"x")


def test_one_forwarder_delivers_in_order_retrying_and_setting_refusals_aside(tmp_path: Path) -> None:
    from service.metrics import metrics

    spool = Spool(tmp_path)
    for i in range(4):
        spool.put(f"1.2.{i}", f"sr{i}".encode())
        time.sleep(0.01)
    got: list[bytes] = []
    answers = ["retry", "delivered", "rejected"]  # sr0 retried then delivered, sr1 refused, then the rest
    forwarders = [Forwarder(spool, lambda: _Scripted(answers, got), metrics(), retry_max_s=1) for _ in range(2)]
    for f in forwarders:
        f.start()
    try:
        deadline = time.monotonic() + 20
        while spool.pending():
            assert time.monotonic() < deadline, "the spool did not empty"
            time.sleep(0.05)
    finally:
        for f in forwarders:
            f.stop()
    assert got == [b"sr0", b"sr2", b"sr3"]  # each once, in order, by one forwarder (the lock)
    assert (tmp_path / "rejected" / "1.2.1.dcm").exists()
    assert sorted(p.name for p in (tmp_path / "sent").iterdir()) == ["1.2.0", "1.2.2", "1.2.3"]


class _Counting:
    """A destination that confirms everything, counting what it got."""

    def __init__(self, got: list[bytes]) -> None:
        self.got = got

    def send(self, data: bytes) -> str:
        self.got.append(data)
        return "delivered"

    def close(self) -> None:
        pass


def _drain(forwarder: Forwarder, until: "Callable[[], bool]", timeout: float = 10) -> None:
    forwarder.start()
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert time.monotonic() < deadline, "the forwarder did not get there"
            time.sleep(0.05)
    finally:
        forwarder.stop()


def _unrecorded() -> float:
    from service.metrics import metrics

    return metrics().dicom_forwarded.labels(outcome="unrecorded")._value.get()  # noqa: SLF001 - this process's own


def test_delivered_but_not_recorded_is_not_sent_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """sent/ unusable (here: not a directory, as a full disk would refuse the marker): each SR goes once, leaves the
    spool unmarked, the ones behind it follow, the metric counts it and the log says which step failed and why."""
    from service.metrics import metrics

    spool = Spool(tmp_path)
    for i in range(3):
        spool.put(f"1.2.{i}", f"sr{i}".encode())
        time.sleep(0.01)
    spool.sent.rmdir()
    spool.sent.write_bytes(b"")  # a file where the markers go: every marking fails
    got: list[bytes] = []
    before = _unrecorded()
    _drain(Forwarder(spool, lambda: _Counting(got), metrics(), retry_max_s=1), lambda: not spool.pending())
    time.sleep(1.5)  # a forwarder that re-sent would have done it by now
    assert got == [b"sr0", b"sr1", b"sr2"]
    assert _unrecorded() - before == 3
    assert "marking it sent failed (ENOTDIR" in caplog.text and "removed from the spool unmarked" in caplog.text


def test_a_delivered_sr_that_cannot_leave_the_spool_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """Neither marked nor removable: this process never sends it again; a restart (a new forwarder) sends it once."""
    from service.metrics import metrics

    spool = Spool(tmp_path)
    spool.put("1.2.0", b"sr0")
    time.sleep(0.01)
    spool.put("1.2.1", b"sr1")
    real_replace, real_unlink = os.replace, Path.unlink

    def no_space(src, dst, *a, **kw):  # type: ignore[no-untyped-def]
        if str(src).endswith("1.2.0.dcm"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst, *a, **kw)

    def read_only(self, *a, **kw):  # type: ignore[no-untyped-def]
        if self.name == "1.2.0.dcm":
            raise OSError(errno.EROFS, "Read-only file system")
        return real_unlink(self, *a, **kw)

    monkeypatch.setattr(os, "replace", no_space)
    monkeypatch.setattr(Path, "unlink", read_only)
    got: list[bytes] = []
    first = Forwarder(spool, lambda: _Counting(got), metrics(), retry_max_s=1)
    _drain(first, lambda: got == [b"sr0", b"sr1"] and not (tmp_path / "1.2.1.dcm").exists())
    time.sleep(1.5)
    assert got == [b"sr0", b"sr1"]  # sr0 stuck in the spool, not re-sent; sr1 went on behind it
    assert "ENOSPC" in caplog.text and "EROFS" in caplog.text and "will not send it again" in caplog.text
    monkeypatch.undo()
    # The crash window: a new process finds sr0 pending and sends it once more, then records it.
    _drain(Forwarder(spool, lambda: _Counting(got), metrics(), retry_max_s=1), lambda: not spool.pending())
    time.sleep(1.0)
    assert got == [b"sr0", b"sr1", b"sr0"] and spool.is_known("1.2.0")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_c_store_asks_for_every_class_written_and_associates_again_for_others() -> None:
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE, evt

    from service.dicom.destination import Dimse

    stored: list[str] = []
    associations: list[int] = []

    def on_store(event) -> int:  # type: ignore[no-untyped-def]
        stored.append(str(event.dataset.SOPClassUID))
        return 0x0000

    peer = AE(ae_title="PACS")
    for sop_class in (*DICOM_STORAGE, CTImageStorage):  # no RT Plan
        peer.add_supported_context(sop_class, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    port = _free_port()
    server = peer.start_server(("127.0.0.1", port), block=False,
                               evt_handlers=[(evt.EVT_C_STORE, on_store),
                                             (evt.EVT_ACCEPTED, lambda event: associations.append(1))])
    made = objects(source())
    try:
        dimse = Dimse(f"PACS@127.0.0.1:{port}", "BIOMED")
        for name in ("sr", "parametric_map", "secondary_capture"):
            assert dimse.send(made[name]) == "delivered", name
        assert len(associations) == 1  # one association asks for all three
        ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
        assert dimse.send(ct) == "delivered" and len(associations) == 2  # not asked for: a new association asks
        rtplan = Path(get_testdata_file("rtplan.dcm")).read_bytes()
        assert dimse.send(rtplan) == "rejected" and len(associations) == 3  # asked for, and refused by the peer
        assert dimse.send(made["sr"]) == "delivered" and len(associations) == 3
        dimse.close()
    finally:
        server.shutdown()
    assert stored == [sop_of(made[name])[0] for name in ("sr", "parametric_map", "secondary_capture")] + [
        str(CTImageStorage), sop_of(made["sr"])[0]]


# ---------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("env, message", [
    ({"BIOMED_DICOM_PORT": "11112"}, "BIOMED_DICOM_ALLOWED_AETS is empty"),
    ({"BIOMED_DICOM_PORT": "70000", "BIOMED_DICOM_ALLOWED_AETS": "*"}, "not a TCP port"),
    ({"BIOMED_DICOM_AET": "WAY-TOO-LONG-AE-TITLE"}, "not an AE title"),
    ({"BIOMED_DICOM_ALLOWED_AETS": "OK,BAD\\AET"}, "not an AE title"),
    ({"BIOMED_DICOM_DESTINATION": "ftp://pacs/"}, "neither a DICOMweb base URL"),
    ({"BIOMED_DICOM_DESTINATION": "PACS@host"}, "neither a DICOMweb base URL"),
    ({"BIOMED_DICOM_PORT": "11112", "BIOMED_DICOM_ALLOWED_AETS": "*", "BIOMED_DICOM_MAX_CONNECTIONS": "4"},
     "BIOMED_DICOM_MAX_CONNECTIONS=4 is below BIOMED_DICOM_MAX_ASSOCIATIONS=10"),
])
def test_bad_dicom_settings_stop_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ServiceConfig.from_env(env)


def test_dicom_settings_and_their_defaults(tmp_path: Path) -> None:
    c = ServiceConfig.from_env({"BENTOML_HOME": str(tmp_path)})
    assert (c.dicom_port, c.dicom_aet, c.dicom_destination) == (0, "BIOMED", "")
    assert c.dicom_spool == str(tmp_path / "dicom-spool") and c.max_stow_bytes == 1024 * 2**20
    env_on = {"BIOMED_DICOM_PORT": "11112", "BIOMED_DICOM_ALLOWED_AETS": "CT01, PACS",
              "BIOMED_DICOM_DESTINATION": "PACS@[::1]:104"}
    on = ServiceConfig.from_env(env_on)
    assert on.dicom_allowed_aets == ("CT01", "PACS")
    # the receiver's instances, its connections (32 at most, one PDU each), and the result of a series being built
    assert on.memory_bound() == c.memory_bound() + 3 * c.max_body_bytes + 32 * DICOM_CONNECTION_BYTES \
        + 2000 * GROUP_MEMBER_BYTES
    assert ServiceConfig.from_env({**env_on, "BIOMED_DICOM_GROUP_BY": "instance"}).group_bytes() == 0
    assert (on.dicom_max_connections, on.dicom_associate_timeout_s, on.dicom_temp_bytes) == (32, 10.0, 1024 * 2**20)


# ---------------------------------------------------------------------------------------------- in-process service


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator:  # type: ignore[type-arg]
    from conftest import inprocess_client

    yield from inprocess_client({"BIOMED_MODELS": "demo-image", "BIOMED_MAX_STOW_MB": "1"})


def test_stow_in_process_and_the_guard_streams_it(client) -> None:  # type: ignore[no-untyped-def]
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    kind = 'multipart/related; type="application/dicom"; boundary=b0undary'
    r = client.post("/dicomweb/studies", content=_body([ct, ct]), headers={"content-type": kind})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom+json"
    assert len(r.json()["00081199"]["Value"]) == 2 and "00081198" not in r.json()
    assert r.headers["content-security-policy"].startswith("default-src 'self'; frame-ancestors 'none'")
    big = _body([b"\0" * (2**20 + 1)])
    r = client.post("/dicomweb/studies", content=big, headers={"content-type": kind})
    assert r.status_code == 413 and "BIOMED_MAX_STOW_MB" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while streaming
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = client.post("/dicomweb/studies", content=chunks(), headers={"content-type": kind})
    assert r.status_code == 413 and r.json()["error"] == "too_large"
    r = client.post("/predict_image", content=ct, params={"output": "sr"}, headers={"content-type": "application/dicom"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    [result] = read_results(pydicom.dcmread(io.BytesIO(r.content)))
    native = client.post("/predict_image", content=ct, headers={"content-type": "application/dicom"}).json()
    assert result["probabilities"] == native["predictions"][0]["probabilities"]
    r = client.post("/predict_image", content=ct, params={"output": "xml"}, headers={"content-type": "application/dicom"})
    assert r.status_code == 400 and r.json()["error"] == "malformed"


def test_the_access_log_writes_stows_study_path_as_its_template() -> None:
    import logging

    from service.traffic import EscapedAccessLog

    record = logging.LogRecord("bentoml.access", logging.INFO, "", 0, "%s (%s) (%s) %.3fms",
                               ("127.0.0.1:1", "scheme=http,method=POST,path=/dicomweb/studies/1.2.840.99,type=x",
                                "status=200", 1.0), None)
    EscapedAccessLog().filter(record)
    assert "1.2.840.99" not in record.getMessage() and "path=/dicomweb/studies/{StudyInstanceUID}," in record.getMessage()


@pytest.mark.parametrize("path, params, content_type", [
    ("/predict_image", {"output": "sr"}, "application/dicom"),
    ("/explain_image", {"format": "dicom"}, "application/dicom"),
    ("/dicomweb/studies", {}, 'multipart/related; type="application/dicom"; boundary=b0undary'),
])
def test_each_instance_is_parsed_once_per_request(client, monkeypatch,  # type: ignore[no-untyped-def]
                                                  path: str, params: dict, content_type: str) -> None:
    """Decoding, the SOP class and UID checks and the DICOM answer or SR all read the one dataset the decoder parsed."""
    import pydicom.filereader

    parses: list[int] = []
    read_partial = pydicom.filereader.read_partial  # every pydicom.dcmread goes through it

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        parses.append(1)
        return read_partial(*args, **kwargs)

    monkeypatch.setattr(pydicom.filereader, "read_partial", counted)
    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    body = _body([ct]) if path.startswith("/dicomweb") else ct
    r = client.post(path, content=body, params=params, headers={"content-type": content_type})
    assert r.status_code == 200, r.text[:300]
    assert len(parses) == 1
