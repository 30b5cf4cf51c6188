"""The hospital's way in and out, against real components: Orthanc (with its DICOMweb plugin) as the PACS,
dcmtk's storescu/echoscu as the modality, dicomweb-client as a STOW-RS client, a real ``bentoml serve`` with
two workers sharing the C-STORE port.

One Orthanc and one server per module (the outage test, last, restarts both). Each study is synthetic: demo
CT slices, pydicom's CT_small and a two-frame RLE image, re-stamped into one study with a patient name the
logs must never show.
"""

from __future__ import annotations

import hashlib
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
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

try:
    from tests import dicom_objects, live_server
    from tests.orthanc import Orthanc
    from tests.tools import require_system_tool, require_tool
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import dicom_objects
    import live_server
    from orthanc import Orthanc
    from tools import require_system_tool, require_tool

pytestmark = pytest.mark.slow

CALLING = "MODALITY"
CALLED = "BIOMED"
PATIENT = "Networktest^Patricia"
WAIT_S = 90.0


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tools() -> dict[str, str]:
    return {name: require_system_tool(name, "apt-get install dcmtk") for name in ("storescu", "echoscu")}


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    binary = require_tool("Orthanc", "apt-get install orthanc orthanc-dicomweb")
    if not Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so").exists():
        require_tool("libOrthancDicomWeb.so", "apt-get install orthanc-dicomweb", "/usr/share/orthanc/plugins/"
                     "libOrthancDicomWeb.so")
    pacs = Orthanc(binary, tmp_path_factory.mktemp("orthanc")).start()
    yield pacs
    pacs.stop()


class Service:
    """The module's server: restartable with the same spool (the outage test)."""

    def __init__(self, root: Path, orthanc: Orthanc) -> None:
        self.root = root
        self.spool = root / "spool"
        self.dicom_port = live_server.free_port()
        self.env = {"BIOMED_MODELS": "demo-image", "BIOMED_DICOM_PORT": str(self.dicom_port),
                    "BIOMED_DICOM_HOST": "127.0.0.1", "BIOMED_DICOM_AET": CALLED,
                    "BIOMED_DICOM_ALLOWED_AETS": f"{CALLING},BENCH", "BIOMED_DICOM_DESTINATION": orthanc.dicomweb,
                    "BIOMED_DICOM_SPOOL": str(self.spool), "BIOMED_DICOM_RETRY_MAX_S": "1",
                    "BIOMED_MAX_UPLOAD_MB": "2", "BIOMED_MAX_BODIES_MB": "4", "BIOMED_MAX_STOW_MB": "12",
                    "BIOMED_DICOM_GROUP_BY": "instance"}  # an SR per instance (results per series: test_dicom_series)
        self.server: live_server.Server | None = None
        self.runs = 0

    def start(self, **env: str) -> live_server.Server:
        self.env.update(env)
        self.runs += 1
        self.server = live_server.start(self.root / f"server-{self.runs}.log", workers=2, through_cli=True, **self.env)
        self.server.wait_ready()
        return self.server

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("server-*.log")))


@pytest.fixture(scope="module")
def service(demo_models: dict[str, str], orthanc: Orthanc, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Service]:
    svc = Service(tmp_path_factory.mktemp("dicom-service"), orthanc)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def model(service: Service) -> dict:
    """The served model as /models describes it; its sha256 checked against the store's file here."""
    from biomed.store import onnx_path, resolve

    [m] = httpx.get(f"{service.server.url}/models", timeout=10).json()["models"]
    stored = onnx_path(resolve(f"{m['name']}:{m['version']}"))
    assert m["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    return m


def make_study(out: Path, tag: str, demo: int = 3) -> tuple[str, list[Path]]:
    """Demo CT slices, a two-frame RLE image and pydicom's CT_small, re-stamped into one study of ``PATIENT``."""
    from training.demo.dicom_demo import generate_images

    generate_images(out / "demo", n=demo * 3, seed=sum(map(ord, tag)))
    sources = [p for p in sorted((out / "demo").rglob("*.dcm")) if pydicom.dcmread(p, stop_before_pixels=True)
               .Modality == "CT"][:demo]
    sources += [Path(get_testdata_file("SC_rgb_rle_2frame.dcm")), Path(get_testdata_file("CT_small.dcm"))]
    study = generate_uid(entropy_srcs=["biomed-network-test", tag])
    files = []
    for i, source in enumerate(sources):
        ds = pydicom.dcmread(source)
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[tag, study, str(i // 10)])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[tag, str(i)])
        ds.PatientName, ds.PatientID = PATIENT, f"NET-{tag}"
        path = out / f"{tag}-{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return study, files


def storescu(tools: dict[str, str], port: int, files: list[Path], calling: str = CALLING,
             *extra: str) -> subprocess.CompletedProcess:
    # -R: contexts for the files' SOP classes only; -xr: RLE proposed too (the two-frame image is RLE), as a modality
    # configured for it would
    return subprocess.run([tools["storescu"], *extra, "-R", "-xr", "-aet", calling, "-aec", CALLED, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def expected_sr_uid(source: Path, model: dict) -> str:
    """The SR UID of a file: from its content identity (its decoded pixels, Patient ID and instance UIDs)."""
    from biomed.outputs import Producer
    from biomed.outputs.sr import sr_uid

    identity = dicom_objects.identity_of(source.read_bytes())
    return sr_uid(identity, Producer(model["name"], model["version"], model["sha256"], tuple(model["labels"])))


def wait_for_srs(orthanc: Orthanc, study: str, wanted: set[str], timeout: float = WAIT_S) -> set[str]:
    deadline = time.monotonic() + timeout
    found: set[str] = set()
    while time.monotonic() < deadline:
        found = orthanc.sr_uids(study)
        if wanted <= found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"{len(wanted - found)} of {len(wanted)} SRs did not reach Orthanc within {timeout:.0f} s")


def metric(server: live_server.Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            head = line.split(" ")[0]
            if head == name or head.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
    return total


def texts(ds: pydicom.Dataset) -> dict[str, list[str]]:
    """Every TEXT content item of an SR, by concept code value."""
    found: dict[str, list[str]] = {}

    def walk(items) -> None:  # type: ignore[no-untyped-def]
        for item in items:
            if item.get("ValueType") == "TEXT":
                found.setdefault(item.ConceptNameCodeSequence[0].CodeValue, []).append(str(item.TextValue))
            walk(item.get("ContentSequence", []))

    walk(ds.ContentSequence)
    return found


def check_srs(service: Service, orthanc: Orthanc, model: dict, study: str, files: list[Path]) -> None:
    """Each file's SR is in Orthanc, references it (and its frames), and carries /predict_image's probabilities."""
    from sr_reader import probabilities_of, read_results

    labels = model["labels"]
    for path in files:
        source = pydicom.dcmread(path, stop_before_pixels=True)
        sr = orthanc.retrieve(study, expected_sr_uid(path, model))
        assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        assert sr.VerificationFlag == "UNVERIFIED" and sr.ContentQualification == "RESEARCH"
        assert "research use only, not for diagnostic use" in sr.SeriesDescription.lower()
        assert (sr.PatientName, sr.PatientID, sr.StudyInstanceUID) == (source.PatientName, source.PatientID, study)
        assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == ["99BIOMED"]
        algorithm = texts(sr)
        assert algorithm["111001"][0] == model["name"] and algorithm["111003"][0] == model["version"]
        assert any(model["sha256"] in p for p in algorithm["111002"])
        results = read_results(sr)
        frames = int(source.get("NumberOfFrames", 1) or 1)
        assert [r["frame"] for r in results] == list(range(frames))
        assert {r["sop_instance_uid"] for r in results} == {source.SOPInstanceUID}
        answer = httpx.post(f"{service.server.url}/predict_image", content=path.read_bytes(),
                            headers={"content-type": "application/dicom"}, timeout=60).json()
        native = np.array([[p["probabilities"][label] for label in labels] for p in answer["predictions"]])
        assert np.abs(probabilities_of(results, labels) - native).max() <= 1e-6
        assert [r["label"] for r in results] == [p["label"] for p in answer["predictions"]]


def no_patient_data(service: Service, *studies: str) -> None:
    log = service.output()
    assert "Networktest" not in log and "Patricia" not in log
    assert not re.search(r"NET-(cstore|stow|large|outage)", log)
    for study in studies:
        assert study not in log


# ---------------------------------------------------------------------------------------------- the way in and out


def test_echo_and_unknown_calling_ae_titles(service: Service, tools: dict[str, str]) -> None:
    port = str(service.dicom_port)
    ok = subprocess.run([tools["echoscu"], "-aet", CALLING, "-aec", CALLED, "127.0.0.1", port], capture_output=True,
                        text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr
    refused = subprocess.run([tools["echoscu"], "-aet", "INTRUDER", "-aec", CALLED, "127.0.0.1", port],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "reject" in (refused.stdout + refused.stderr).lower()
    assert subprocess.run([tools["echoscu"], "-aet", CALLING, "-aec", CALLED, "127.0.0.1", port],
                          capture_output=True, timeout=60).returncode == 0
    deadline = time.monotonic() + 60  # /readyz answered when the first worker was ready
    while service.output().count(f"C-STORE receiver {CALLED} on 127.0.0.1:{port}") < 2:
        assert time.monotonic() < deadline, "both workers listen on the port (SO_REUSEPORT)"
        time.sleep(0.5)


def test_storescu_study_lands_in_orthanc_as_srs(service: Service, orthanc: Orthanc, model: dict,
                                                tools: dict[str, str], tmp_path: Path) -> None:
    study, files = make_study(tmp_path, "cstore")
    run = storescu(tools, service.dicom_port, files)
    assert run.returncode == 0, run.stdout + run.stderr
    wanted = {expected_sr_uid(p, model) for p in files}
    assert wait_for_srs(orthanc, study, wanted) == wanted
    check_srs(service, orthanc, model, study, files)
    assert metric(service.server, "biomed_dicom_received_total", door="dimse", outcome="ok") >= len(files)
    no_patient_data(service, study)


def test_stow_study_lands_in_orthanc_as_srs(service: Service, orthanc: Orthanc, model: dict, tmp_path: Path) -> None:
    from dicomweb_client.api import DICOMwebClient

    study, files = make_study(tmp_path, "stow")
    client = DICOMwebClient(url=f"{service.server.url}/dicomweb")
    answer = client.store_instances([pydicom.dcmread(p) for p in files], study_instance_uid=study)
    assert "FailedSOPSequence" not in answer
    referenced = {str(item.ReferencedSOPInstanceUID) for item in answer.ReferencedSOPSequence}
    assert referenced == {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files}
    wanted = {expected_sr_uid(p, model) for p in files}
    assert wait_for_srs(orthanc, study, wanted) == wanted
    check_srs(service, orthanc, model, study, files)
    # The native door answers with the same SR (same UID: a PACS keeps one copy).
    sr = httpx.post(f"{service.server.url}/predict_image?output=sr", content=files[0].read_bytes(),
                    headers={"content-type": "application/dicom"}, timeout=60)
    assert sr.status_code == 200 and sr.headers["content-type"] == "application/dicom"
    assert pydicom.dcmread(io.BytesIO(sr.content)).SOPInstanceUID == expected_sr_uid(files[0], model)
    png = httpx.post(f"{service.server.url}/predict_image", params={"output": "sr"},
                     files={"file": ("x.png", _png(), "image/png")}, timeout=60)
    assert png.status_code == 422 and png.json()["error"] == "sr_needs_dicom"
    no_patient_data(service, study)


def test_a_study_larger_than_an_upload_streams_part_by_part(service: Service, orthanc: Orthanc, model: dict,
                                                            tmp_path: Path) -> None:
    """8 MB of instances through one STOW-RS request, past BIOMED_MAX_UPLOAD_MB (2) and BIOMED_MAX_BODIES_MB (4)."""
    study, files = make_study(tmp_path, "large", demo=0)
    source = pydicom.dcmread(files[-1])  # CT_small, grown to 1 MB a slice
    parts = []
    for i in range(8):
        ds = source.copy()
        ds.Rows = ds.Columns = 724
        ds.PixelData = np.random.default_rng(i).integers(0, 2000, (724, 724), dtype=np.uint16).tobytes()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["large", str(i)])
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        parts.append(buf.getvalue())
    body, content_type = _multipart(parts)
    assert 12 * 2**20 > len(body) > 4 * 2**20  # under BIOMED_MAX_STOW_MB, over BIOMED_MAX_BODIES_MB
    r = httpx.post(f"{service.server.url}/dicomweb/studies/{study}", content=body,
                   headers={"content-type": content_type}, timeout=120)
    assert r.status_code == 200, r.text[:500]
    assert len(r.json()["00081199"]["Value"]) == 8


def test_the_forwarder_sends_every_kind_of_object_in_the_spool_over_c_store(orthanc: Orthanc, tmp_path: Path) -> None:
    """A Parametric Map and a Secondary Capture in the spool reach Orthanc over C-STORE, on one association with the
    SR (the classes ``biomed.outputs`` writes), and an image of another SOP class on an association that asks for it."""
    from service.dicom.destination import connector
    from service.dicom.spool import Forwarder, Spool
    from service.metrics import metrics

    study = generate_uid(entropy_srcs=["biomed-network-test", "forwarder"])
    source = dicom_objects.source(study, PATIENT)
    made = dicom_objects.objects(source)
    buffer = io.BytesIO()
    source.SOPInstanceUID = source.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[study, "ct"])
    source.save_as(buffer, enforce_file_format=True)
    made["ct"] = buffer.getvalue()
    spool = Spool(tmp_path / "spool")
    wanted = {}
    for name in ("parametric_map", "secondary_capture", "sr", "ct"):
        sop_class, uid = dicom_objects.sop_of(made[name])
        assert spool.put(uid, made[name])
        wanted[uid] = sop_class
        time.sleep(0.01)  # spool order
    forwarder = Forwarder(spool, connector(orthanc.peer, "BIOMED"), metrics(), retry_max_s=1)
    forwarder.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while spool.pending():
            assert time.monotonic() < deadline, "the spool did not empty"
            time.sleep(0.2)
    finally:
        forwarder.stop()
    assert not list((tmp_path / "spool" / "rejected").iterdir()), "Orthanc refused an object"
    assert {uid for uid in orthanc.received() if uid in wanted} == set(wanted)
    for uid, sop_class in wanted.items():
        stored = orthanc.retrieve(study, uid)
        assert (stored.SOPClassUID, stored.StudyInstanceUID, stored.PatientName) == (sop_class, study, PATIENT)


# ---------------------------------------------------------------------------------------------- hostile input


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, format="PNG")
    return buf.getvalue()


def _multipart(parts: list[bytes], boundary: str = "biomed-test-boundary") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def _bad_instances(tmp_path: Path) -> dict[str, Path]:
    """Files that must each fail: the name says how."""
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ct.PatientName = PATIENT
    out = {}
    whole = tmp_path / "ct.dcm"
    ct.save_as(whole, enforce_file_format=True)
    data = whole.read_bytes()
    (tmp_path / "truncated.dcm").write_bytes(data[: len(data) - 20000])
    out["truncated"] = tmp_path / "truncated.dcm"
    ds = ct.copy()
    del ds.PixelData
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "no-pixels.dcm", enforce_file_format=True)
    out["no_pixels"] = tmp_path / "no-pixels.dcm"
    jpeg = ct.copy()
    jpeg.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
    jpeg.BitsAllocated, jpeg.BitsStored, jpeg.HighBit = 8, 8, 7
    jpeg.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xe0 not really a jpeg" * 20])
    jpeg["PixelData"].VR = "OB"
    jpeg.SOPInstanceUID = jpeg.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    jpeg.save_as(tmp_path / "undecodable.dcm", enforce_file_format=True)
    out["undecodable"] = tmp_path / "undecodable.dcm"
    huge = ct.copy()  # a header claiming 40,000 x 40,000 pixels: over BIOMED_MAX_PIXELS, refused before decoding
    huge.Rows = huge.Columns = 40000
    huge.SOPInstanceUID = huge.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    huge.save_as(tmp_path / "huge.dcm", enforce_file_format=True)
    out["huge"] = tmp_path / "huge.dcm"
    garbage = bytearray(data[:1000]) + bytes(range(256)) * 40
    (tmp_path / "garbage.dcm").write_bytes(bytes(garbage))
    out["garbage"] = tmp_path / "garbage.dcm"
    out["sr"] = Path(get_testdata_file("test-SR.dcm"))
    out["rtplan"] = Path(get_testdata_file("rtplan.dcm"))
    return out


def test_bad_instances_over_dimse_get_failure_statuses_and_the_association_stays(service: Service, tools: dict[str, str],
                                                                               tmp_path: Path) -> None:
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import CTImageStorage, RTPlanStorage, Verification
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit

    bad = _bad_instances(tmp_path)
    ae = AE(ae_title=CALLING)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    ae.add_requested_context(CTImageStorage, JPEGBaseline8Bit)
    ae.add_requested_context(RTPlanStorage)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", service.dicom_port, ae_title=CALLED)
    assert assoc.is_established
    try:
        accepted = {str(cx.abstract_syntax) for cx in assoc.accepted_contexts}
        assert str(RTPlanStorage) not in accepted and str(CTImageStorage) in accepted  # non-images: not negotiated
        _config.STORE_SEND_CHUNKED_DATASET = True  # send the files' bytes as they are, without pydicom decoding them
        try:
            statuses = {name: assoc.send_c_store(bad[name]) for name in ("truncated", "no_pixels", "undecodable",
                                                                           "garbage", "huge")}
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
        codes = {name: int(s.Status) for name, s in statuses.items()}
        assert codes["no_pixels"] == 0xA900
        assert 0xC000 <= codes["truncated"] <= 0xCFFF and 0xC000 <= codes["undecodable"] <= 0xCFFF
        assert codes["garbage"] == 0xA900 and statuses["garbage"].ErrorComment == "missing_uids"  # pydicom is lenient
        assert statuses["undecodable"].ErrorComment == "bad_pixel_data"
        assert codes["huge"] == 0xA700 and statuses["huge"].ErrorComment == "too_large"  # out of resources
        good = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        assert int(assoc.send_c_store(good).Status) == 0x0000  # same association: still up
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()
    # storescu offers the SR and the RT plan; neither is accepted, the image after them is stored (-nh: go on).
    run = storescu(tools, service.dicom_port, [bad["sr"], bad["rtplan"], Path(get_testdata_file("CT_small.dcm"))],
                   CALLING, "-nh", "-v")
    out = run.stdout + run.stderr
    assert "No presentation context for: (SRc)" in out and "No presentation context for: (RP)" in out, out
    assert "Received Store Response (Success)" in out, out
    assert httpx.get(f"{service.server.url}/readyz", timeout=10).status_code == 200
    assert metric(service.server, "biomed_dicom_received_total", door="dimse", outcome="bad_pixel_data") >= 1
    no_patient_data(service)


def test_bad_instances_over_stow_get_failure_reasons(service: Service, tmp_path: Path) -> None:
    bad = _bad_instances(tmp_path)
    good = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    url = f"{service.server.url}/dicomweb/studies"
    order = ["sr", "rtplan", "truncated", "no_pixels", "undecodable", "garbage"]
    body, content_type = _multipart([bad[name].read_bytes() for name in order] + [good, b"\0" * (3 * 2**20)])
    r = httpx.post(url, content=body, headers={"content-type": content_type}, timeout=120)
    assert r.status_code == 202 and r.headers["content-type"] == "application/dicom+json", r.text[:300]
    failed = [item["00081197"]["Value"][0] for item in r.json()["00081198"]["Value"]]
    assert failed[:2] == [0x0122, 0x0122] and failed[3] == failed[5] == 0xA900 and failed[-1] == 0xA700  # upload cap
    assert all(0xC000 <= code <= 0xCFFF for code in (failed[2], failed[4]))
    assert len(r.json()["00081199"]["Value"]) == 1
    # Nothing stored: 409; an instance of another study than the path's: 0xA900.
    body, content_type = _multipart([bad["sr"].read_bytes()])
    assert httpx.post(url, content=body, headers={"content-type": content_type}, timeout=60).status_code == 409
    body, content_type = _multipart([good])
    r = httpx.post(f"{url}/1.2.3.4", content=body, headers={"content-type": content_type}, timeout=60)
    assert r.status_code == 409 and r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    # Whole-request errors, in the JSON error form.
    for headers, content, status in [
        ({"content-type": "application/json"}, b"{}", 415),
        ({"content-type": 'multipart/related; type="application/dicom+json"; boundary=x'}, b"--x--", 415),
        ({"content-type": "multipart/related"}, b"--x--", 400),
        ({"content-type": "multipart/related; boundary=x"}, b"no delimiter here", 400),
        ({"content-type": "multipart/related; boundary=x"}, b"--x\r\nContent-Type: application/dicom\r\n\r\nabc", 400),
        ({"content-type": "multipart/related; boundary=x"}, b"\0" * (13 * 2**20), 413),  # BIOMED_MAX_STOW_MB=12
    ]:
        r = httpx.post(url, content=content, headers=headers, timeout=60)
        assert r.status_code == status, (headers, r.status_code, r.text[:200])
        assert set(r.json()) == {"error", "detail"}
    r = httpx.post(f"{url}/not-a-uid", content=body, headers={"content-type": content_type}, timeout=60)
    assert r.status_code == 400
    # A body that stops arriving: 408 on the streamed body's clock (2 s of grace, then 16 KB/s), not 30 s.
    host, port = service.server.url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /dicomweb/studies HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/related; boundary=x\r\n"
                     b"Content-Length: 100000\r\n\r\n--x\r\nContent-Type: application/dicom\r\n\r\nDICM")
        status_line = sock.recv(65536).split(b"\r\n")[0]
    assert b" 408 " in status_line and time.monotonic() - started < 15, status_line
    assert httpx.get(f"{service.server.url}/readyz", timeout=10).status_code == 200
    no_patient_data(service)


# ---------------------------------------------------------------------------------------------- durability


def test_orthanc_down_service_restarted_every_sr_delivered_once(service: Service, orthanc: Orthanc, model: dict,
                                                               tools: dict[str, str], tmp_path: Path) -> None:
    from dicomweb_client.api import DICOMwebClient

    orthanc.stop()
    study, files = make_study(tmp_path, "outage")
    stowed = files[-1]
    run = storescu(tools, service.dicom_port, files[:-1])
    assert run.returncode == 0, run.stdout + run.stderr
    answer = DICOMwebClient(url=f"{service.server.url}/dicomweb").store_instances([pydicom.dcmread(stowed)])
    assert "FailedSOPSequence" not in answer
    wanted = {expected_sr_uid(p, model) for p in files}
    assert {p.name[:-4] for p in service.spool.glob("*.dcm")} == wanted  # durable before the answers
    deadline = time.monotonic() + 30
    while (metric(service.server, "biomed_dicom_forwarded_total", outcome="retried") < 1
           or metric(service.server, "biomed_dicom_spool_depth") != len(files)):
        assert time.monotonic() < deadline, "the forwarder never tried the destination, or the depth is wrong"
        time.sleep(0.5)
    service.stop()
    # Back with the PACS as a DICOM peer this time (C-STORE SCU), on the same spool.
    server = service.start(BIOMED_DICOM_DESTINATION=orthanc.peer)
    time.sleep(2)
    assert len(list(service.spool.glob("*.dcm"))) == len(files), "nothing leaves the spool unconfirmed"
    orthanc.start()
    assert wait_for_srs(orthanc, study, wanted) == wanted
    deadline = time.monotonic() + 30
    while list(service.spool.glob("*.dcm")):
        assert time.monotonic() < deadline, "the spool did not empty"
        time.sleep(0.5)
    received = [uid for uid in orthanc.received() if uid in wanted]
    assert sorted(received) == sorted(wanted), "every SR delivered exactly once"
    # The same study again: the same SRs, not delivered a second time.
    assert storescu(tools, service.dicom_port, files[:-1]).returncode == 0
    time.sleep(3)
    assert sorted(uid for uid in orthanc.received() if uid in wanted) == sorted(wanted)
    assert metric(server, "biomed_dicom_forwarded_total", outcome="duplicate") >= len(files) - 1
    assert metric(server, "biomed_dicom_spool_depth") == 0
    no_patient_data(service, study)
    assert not re.search(r"Traceback", service.output())
