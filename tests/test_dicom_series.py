"""One result per series, against real components: Orthanc as the PACS (C-STORE from the forwarder), dcmtk's
storescu (by its absolute path) and dicomweb STOW-RS as the senders, a real ``bentoml serve`` with two workers
sharing the C-STORE port and the spool, grouping by series with a 3 s quiet period.

One Orthanc and one server for the module (the restart test restarts the server). Each series is small (demo
CT slices resampled to 64x64), re-stamped into a study of a patient the logs must never show.
"""

from __future__ import annotations

import base64
import io
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid

try:
    from tests import live_server
    from tests.orthanc import Orthanc
    from tests.sr_reader import comments, dciodvfy_errors, library, series_groups
    from tests.tools import require_tool
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server
    from orthanc import Orthanc
    from sr_reader import comments, dciodvfy_errors, library, series_groups
    from tools import require_tool

pytestmark = pytest.mark.slow

STORESCU = "/usr/bin/storescu"  # dcmtk's (pynetdicom installs a script of the same name)
CALLING, CALLED = "MODALITY", "BIOMED"
PATIENT = "Seriestest^Sam"
QUIET_S = 3.0
SIZE = 64


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    pacs = Orthanc(binary, tmp_path_factory.mktemp("orthanc-series")).start()
    yield pacs
    pacs.stop()


class Service:
    """The module's server (two workers, grouping by series), restartable on the same spool."""

    def __init__(self, root: Path, orthanc: Orthanc) -> None:
        self.root = root
        self.spool = root / "spool"
        self.dicom_port = live_server.free_port()
        self.env = {"BIOMED_MODELS": "demo-image", "BIOMED_DICOM_PORT": str(self.dicom_port),
                    "BIOMED_DICOM_HOST": "127.0.0.1", "BIOMED_DICOM_AET": CALLED, "BIOMED_DICOM_ALLOWED_AETS": CALLING,
                    "BIOMED_DICOM_DESTINATION": orthanc.peer, "BIOMED_DICOM_SPOOL": str(self.spool),
                    "BIOMED_DICOM_RETRY_MAX_S": "1", "BIOMED_DICOM_GROUP_BY": "series",
                    "BIOMED_DICOM_GROUP_TIMEOUT_S": str(QUIET_S), "BIOMED_BODY_TIMEOUT_S": "4"}
        self.server: live_server.Server | None = None
        self.runs = 0

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self) -> None:
        self.runs += 1
        self.server = live_server.start(self.root / f"server-{self.runs}.log", workers=2, **self.env)
        self.server.wait_ready()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("server-*.log")))


@pytest.fixture(scope="module")
def service(demo_models: dict[str, str], orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Service]:
    require_tool("storescu", "apt-get install dcmtk", STORESCU)
    svc = Service(tmp_path_factory.mktemp("dicom-series"), orthanc)
    svc.start()
    yield svc
    svc.stop()
    log = svc.output()
    assert "Traceback" not in log and "Seriestest" not in log and "SERIES-" not in log


def make_series(out: Path, tag: str, n: int, study: str | None = None, odd: int | None = None
                ) -> tuple[str, str, list[Path]]:
    """``n`` demo CT slices at 64x64 as one series (instance numbers 1..n) of one study of ``PATIENT``; the
    instance at index ``odd`` at 48x48 instead."""
    from training.demo.dicom_demo import generate_images

    generate_images(out / f"demo-{tag}", n=3 * n, seed=sum(map(ord, tag)))
    sources = [p for p in sorted((out / f"demo-{tag}").rglob("*.dcm"))
               if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT"][:n]
    assert len(sources) == n
    study = study or generate_uid(entropy_srcs=["series-test", tag, "study"])
    series = generate_uid(entropy_srcs=["series-test", tag, "series"])
    files = []
    for i, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        size = 48 if i == odd else SIZE
        pixels = Image.fromarray(ds.pixel_array.astype(np.float32)).resize((size, size), Image.Resampling.BILINEAR)
        ds.PixelData = np.clip(np.rint(np.asarray(pixels)), 0, 65535).astype(ds.pixel_array.dtype).tobytes()
        ds.Rows = ds.Columns = size
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.InstanceNumber = study, series, i + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, series, str(i)])
        ds.PatientName, ds.PatientID = PATIENT, f"SERIES-{tag}"
        path = out / f"{tag}-{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study, series, files


def storescu(service: Service, files: list[Path]) -> float:
    """Send ``files`` on one association; the time its last answer came."""
    run = subprocess.run([STORESCU, "-R", "-aet", CALLING, "-aec", CALLED, "127.0.0.1", str(service.dicom_port),
                          *map(str, files)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    return time.monotonic()


def srs_of(orthanc: Orthanc, study: str, count: int, timeout: float = 30.0) -> list[pydicom.Dataset]:
    """The SRs Orthanc holds in ``study`` once there are ``count`` (oldest result first)."""
    deadline = time.monotonic() + timeout
    while len(found := orthanc.sr_uids(study)) < count:
        assert time.monotonic() < deadline, f"{len(found)} of {count} SR(s) reached Orthanc within {timeout:.0f} s"
        time.sleep(0.1)
    assert len(found) == count, f"{len(found)} SRs, expected {count}"
    return sorted((orthanc.retrieve(study, uid) for uid in found), key=lambda ds: int(ds.InstanceNumber))


def sop_uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def metric(service: Service, name: str) -> float:
    text = httpx.get(f"{service.url}/metrics", timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def _form(files: list[Path]) -> tuple[bytes, dict[str, str]]:
    parts = [b'Content-Disposition: form-data; name="file"; filename="x.dcm"\r\nContent-Type: application/dicom\r\n\r\n'
             + p.read_bytes() for p in files]
    body = b"".join(b"--b0undary\r\n" + p + b"\r\n" for p in parts) + b"--b0undary--\r\n"
    return body, {"content-type": "multipart/form-data; boundary=b0undary"}


# ---------------------------------------------------------------------------------------------- one result per series


def test_a_series_over_two_associations_gives_one_sr_of_all_its_instances(service: Service, orthanc: Orthanc,
                                                                          tmp_path: Path) -> None:
    """60 instances over two associations 1.5 s apart (within the quiet period): one SR, listing all 60 in series
    order, referencing the most suspicious, confirmed by Orthanc within the quiet period + 2 s; /predict_series and
    v2 give the same result (≤ 1e-6)."""
    study, series, files = make_series(tmp_path, "two-associations", 60)
    storescu(service, files[:30])
    time.sleep(1.5)
    last = storescu(service, files[30:])
    [sr] = srs_of(orthanc, study, 1)
    confirmed = time.monotonic() - last
    assert confirmed <= QUIET_S + 2.0, f"the SR came {confirmed:.2f} s after the last instance"
    print(f"\nseries SR confirmed by Orthanc {confirmed:.2f} s after the last instance (quiet period {QUIET_S:g} s)")
    assert [e[1] for e in library(sr)] == sop_uids(files) and sr.PatientName == PATIENT
    assert "PredecessorDocumentsSequence" not in sr and sr.InstanceNumber == 1
    [group] = series_groups(sr)
    answer = httpx.post(f"{service.url}/predict_series", content=_form(files)[0], headers=_form(files)[1],
                        timeout=120).json()
    labels = list(answer["series"]["probabilities"])
    assert np.abs(np.array([group["values"][k] for k in labels])
                  - [answer["series"]["probabilities"][k] for k in labels]).max() <= 1e-6
    rows = np.array([[p["probabilities"][k] for k in labels] for i in answer["instances"] for p in i["predictions"]])
    best = labels.index(group["label"])
    assert group["sop_instance_uid"] == answer["series"]["source_instance"] == sop_uids(files)[int(rows[:, best].argmax())]
    assert np.abs(rows.max(axis=0) - [group["values"][k] for k in labels]).max() <= 1e-6  # max: any slice shows it
    v2 = httpx.post(f"{service.url}/v2/models/demo-image/infer", timeout=120, json={
        "inputs": [{"name": "file", "datatype": "BYTES", "shape": [60],
                    "data": [base64.b64encode(p.read_bytes()).decode() for p in files]}],
        "parameters": {"group": "series"}}).json()
    assert np.abs(np.array(v2["outputs"][0]["data"]) - [group["values"][k] for k in labels]).max() <= 1e-6
    assert v2["parameters"]["source_instance"] == group["sop_instance_uid"]
    buffer = io.BytesIO()
    sr.save_as(buffer, enforce_file_format=True)
    assert dciodvfy_errors(buffer.getvalue(), tmp_path) == []
    assert metric(service, "biomed_dicom_group_instances_count") >= 1
    assert 0 < metric(service, "biomed_dicom_group_seconds_sum") / metric(service, "biomed_dicom_group_seconds_count") \
        <= QUIET_S + 2.0


def test_interleaved_studies_give_one_sr_per_series_and_a_mixed_series_says_so(service: Service, orthanc: Orthanc,
                                                                               tmp_path: Path) -> None:
    """Two studies' series interleaved on one association and through STOW-RS: one SR per series, each listing its
    own instances; a series with an instance of another size is reported in its SR (a Comment) and the log."""
    from dicomweb_client.api import DICOMwebClient

    a_study, _, a_files = make_series(tmp_path, "interleaved-a", 8, odd=3)
    b_study, _, b_files = make_series(tmp_path, "interleaved-b", 8)
    storescu(service, [f for pair in zip(a_files[:6], b_files[:6]) for f in pair])
    answer = DICOMwebClient(url=f"{service.url}/dicomweb").store_instances(
        [pydicom.dcmread(p) for p in a_files[6:] + b_files[6:]])
    assert "FailedSOPSequence" not in answer
    [a_sr], [b_sr] = srs_of(orthanc, a_study, 1), srs_of(orthanc, b_study, 1)
    assert [e[1] for e in library(a_sr)] == sop_uids(a_files) and [e[1] for e in library(b_sr)] == sop_uids(b_files)
    assert comments(a_sr) == [f"sizes {SIZE}x{SIZE} (7), 48x48 (1)"] and comments(b_sr) == []
    assert f"a group of 8 instances mixes sizes {SIZE}x{SIZE} (7), 48x48 (1)" in service.output()


def test_predict_series_trickled_is_cut_off(service: Service) -> None:
    """A /predict_series body that stops arriving: 408 on the streamed body's clock, not the request timeout."""
    host, port = service.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /predict_series HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                     b"Content-Length: 100000\r\n\r\n--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nDICM")
        status_line = sock.recv(65536).split(b"\r\n")[0]
    assert b" 408 " in status_line and time.monotonic() - started < 10, status_line


def test_a_restart_mid_series_a_duplicate_and_a_late_instance(service: Service, orthanc: Orthanc,
                                                             tmp_path: Path) -> None:
    """The server stops within the quiet period of a series and comes back: one SR of every instance. The same
    instance again: nothing new. One more instance after the SR: a second SR of all of them, naming the first."""
    study, series, files = make_series(tmp_path, "restart", 13)
    storescu(service, files[:12])
    service.stop()  # before the quiet period ends: the group waits in the spool
    assert orthanc.sr_uids(study) == set()
    service.start()
    [first] = srs_of(orthanc, study, 1, timeout=30)
    assert [e[1] for e in library(first)] == sop_uids(files[:12])
    storescu(service, files[:1])  # a resent identical instance counts once
    time.sleep(QUIET_S + 2.0)
    assert len(orthanc.sr_uids(study)) == 1
    storescu(service, files[12:])  # late: after the series' SR
    first_again, second = srs_of(orthanc, study, 2)
    assert first_again.SOPInstanceUID == first.SOPInstanceUID and second.InstanceNumber == 2
    assert [e[1] for e in library(second)] == sop_uids(files)
    named = second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert named.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert re.search(r"reopened 1 group|a group's result was made: 12 instance", service.output())
    assert study not in service.output() and series not in service.output()
