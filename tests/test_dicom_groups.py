"""Grouping instances into series (fast): how results combine (``biomed.series``), the series SR
(``biomed.outputs.series_sr``, checked with dciodvfy), and the group store and its closer in the spool
(``service/dicom/groups.py``, ``closer.py``): across workers, claims, late instances, duplicates, restarts and lost records.

The real network (storescu, STOW-RS, two workers, Orthanc) is tests/test_dicom_series.py.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from biomed.outputs import Producer, sr
from biomed.outputs.semantics import Semantics
from biomed.outputs.series_sr import build_series_sr
from biomed.series import Member, aggregate_of, combine, group_key, mixture
from service.dicom.closer import Closer
from service.dicom.groups import Groups, Policy
from service.dicom.spool import Spool
from service.metrics import metrics

try:
    from tests.sr_reader import comments, dciodvfy_errors, library, series_groups
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from sr_reader import comments, dciodvfy_errors, library, series_groups

ALGO = Producer("demo-image", "20250101-000000-abcdef01", "ab" * 32, ("cavity", "nodule", "normal"))
REGRESSION = Producer("demo-age", "1", "cd" * 32, ("age", "volume"), output=Semantics("values", "none", ("a", "mL"),
                                                                                       "mean"))
STUDY = generate_uid(entropy_srcs=["groups-test-study"])


# ---------------------------------------------------------------------------------------------- how results combine


def _member(i: int, values: list[list[float]], number: int | None = None, **kw: object) -> Member:
    fields = {"identity": f"{i:064x}", "sop_class": str(CTImageStorage), "sop_instance": f"1.2.3.{i}",
              "study": "1.2.3", "series": "1.2.3.100", "instance_number": i if number is None else number,
              "modality": "CT", "rows": 16, "columns": 16, **kw}
    return Member(**fields, values=np.array(values, dtype=np.float64))  # type: ignore[arg-type]


@pytest.mark.parametrize("how, values, expected, best, source, frame", [
    ("max", [[[.7, .2, .1]], [[.1, .8, .1]], [[.2, .2, .6]]], [.7, .8, .6], 1, 1, 0),
    ("mean", [[[.7, .2, .1]], [[.1, .8, .1]], [[.1, .1, .8]]], [.3, .366667, .333333], 1, 1, 0),
    ("max", [[[.5, .4, .1]], [[.5, .4, .1]]], [.5, .4, .1], 0, 0, 0),  # a tie: the first in series order
    ("max", [[[.1, .1, .8], [.1, .9, 0.]], [[.6, .3, .1]]], [.6, .9, .8], 1, 0, 1),  # a multi-frame member's frame 2
    ("mean", [[[.1, .1, .8], [.1, .9, 0.]], [[.4, .3, .3]]], [.2, .433333, .366667], 1, 0, 1),  # mean over frames
])
def test_results_combine_over_every_frame(how: str, values: list, expected: list, best: int, source: int,
                                          frame: int) -> None:
    members = [_member(i, v) for i, v in enumerate(values)]
    result = combine(reversed(members), how, ALGO.output)  # any arrival order: series order decides
    assert np.allclose(result.values, expected, atol=1e-6)
    assert (result.best, result.source, result.frame) == (best, source, frame)
    assert result.driver.sop_instance == f"1.2.3.{source}"


def test_regression_values_combine_the_same_way_and_the_first_value_drives() -> None:
    members = [_member(i, [[40.0 + i, 10.0 - i]]) for i in range(3)]
    assert aggregate_of("", REGRESSION.output) == "mean" and aggregate_of("max", REGRESSION.output) == "max"
    assert aggregate_of("", ALGO.output) == "max" and aggregate_of("mean", ALGO.output) == "mean"
    mean = combine(members, "mean", REGRESSION.output)
    assert np.allclose(mean.values, [41, 9]) and mean.best == 0 and mean.source == 2
    assert np.allclose(combine(members, "max", REGRESSION.output).values, [42, 10])


def test_mixture_counts_what_a_series_mixes() -> None:
    same = [_member(i, [[.1, .2, .7]]) for i in range(3)]
    assert mixture(same) is None
    mixed = same + [_member(9, [[.1, .2, .7]], rows=8, modality="OT")]
    assert mixture(mixed) == "sizes 16x16 (3), 8x16 (1); modalities CT (3), OT (1)"


def test_group_keys_follow_series_study_patient_and_model_version() -> None:
    a, b = _member(1, [[1, 0, 0]]), _member(2, [[1, 0, 0]], series="1.2.3.200")
    assert group_key(a, "series", "m", "1") != group_key(b, "series", "m", "1")
    assert group_key(a, "study", "m", "1") == group_key(b, "study", "m", "1")
    assert group_key(a, "series", "m", "1") != group_key(a, "series", "m", "2")
    assert group_key(a, "series", "m", "1") != group_key(_member(1, [[1, 0, 0]], patient="other"), "series", "m", "1")
    with pytest.raises(ValueError, match="accepted: series, study"):
        group_key(a, "patient", "m", "1")


# ---------------------------------------------------------------------------------------------- the series SR


@pytest.mark.parametrize("per_instance", [False, True])
def test_the_series_sr_lists_every_instance_and_references_the_driver(tmp_path: Path, per_instance: bool) -> None:
    header = _header(STUDY, "1.2.3.100", 0)
    members = [_member(i, [[.1 + i / 10, .2, .7 - i / 10]], study=STUDY, patient="GROUPS-1") for i in range(5)]
    members.append(_member(5, [[.1, .3, .6], [.05, .05, .9]], study=STUDY, rows=8, modality="OT",
                           sop_class="1.2.840.10008.5.1.4.1.1.2.1"))  # an Enhanced CT of two frames
    result = combine(members, "max", ALGO.output)
    previous = sr.Previous(STUDY, sr.series_uid(STUDY, ALGO), "1.2.3.999")
    doc = build_series_sr(header, result, ALGO, "1.2.3.4", previous, per_instance, mixture(members), instance_number=2)
    data = sr.sr_bytes(doc)
    assert dciodvfy_errors(data, tmp_path) == []
    back = pydicom.dcmread(io.BytesIO(data))
    assert [e[1] for e in library(back)] == [m.sop_instance for m in result.members]
    assert library(back)[0][2] == {"Modality": "CT", "Pixel Data Rows": 16, "Pixel Data Columns": 16}
    groups = series_groups(back)
    assert len(groups) == (1 + 7 if per_instance else 1)
    assert groups[0]["sop_instance_uid"] == "1.2.3.5" and groups[0]["frames"] == [2]  # .9 of normal drives
    assert groups[0]["label"] == "normal" and (not per_instance or groups[1]["frames"] == [])  # single-frame: none
    assert np.allclose(list(groups[0]["values"].values()), result.values)
    if per_instance:
        assert groups[-1]["sop_instance_uid"] == "1.2.3.5" and groups[-1]["frames"] == [2]
    evidence = back.CurrentRequestedProcedureEvidenceSequence
    assert sum(len(s.ReferencedSOPSequence) for s in evidence[0].ReferencedSeriesSequence) == 6
    assert back.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == "1.2.3.999"
    assert back.InstanceNumber == 2 and back.PatientName == "Groups^Test"
    assert comments(back) == ["sizes 16x16 (5), 8x16 (1); modalities CT (5), OT (1); SOP classes "
                              "1.2.840.10008.5.1.4.1.1.2 (5), 1.2.840.10008.5.1.4.1.1.2.1 (1); frame counts 1 (5), 2 (1)"]


# ---------------------------------------------------------------------------------------------- the group store


def _header(study: str, series: str, i: int, patient: str = "GROUPS-1", rows: int = 16) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, generate_uid(entropy_srcs=[study, series, str(i)])
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    ds.PatientName, ds.PatientID, ds.Modality, ds.InstanceNumber = "Groups^Test", patient, "CT", i + 1
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    return ds


def _instance(study: str, series: str, i: int, **kw: object) -> tuple[bytes, Dataset, str]:
    """(Part-10 bytes, header without pixels, content identity) of a small CT instance."""
    ds = _header(study, series, i, **kw)  # type: ignore[arg-type]
    ds.PixelData = np.full((ds.Rows, ds.Columns), i, dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    del ds.PixelData
    return data, ds, hashlib.sha256(data).hexdigest()


def _values(i: int) -> np.ndarray:
    return np.array([[0.1 + 0.01 * i, 0.2, 0.7 - 0.01 * i]], dtype=np.float32)


class Store:
    """A spool with groups, as one worker has it, and its closer (not started: swept by hand)."""

    def __init__(self, root: Path, by: str = "series", max_instances: int = 100, reclassify=None) -> None:  # type: ignore[no-untyped-def]
        self.spool = Spool(root)
        self.groups = Groups(self.spool, Policy(by, 2.0, max_instances))
        self.closer = Closer(self.groups, reclassify or (lambda *a: None), metrics())

    def add(self, study: str, series: str, i: int, **kw: object) -> bool:
        data, header, identity = _instance(study, series, i, **kw)
        return self.groups.add(data, header, identity, _values(i), ALGO, "max")

    def sweep(self, later: float = 0.0) -> None:
        self.closer.sweep(now=time.time() + later)

    def srs(self) -> list[Dataset]:
        return [pydicom.dcmread(p) for p in self.spool.pending()]


def test_a_series_across_workers_gives_one_sr_once_quiet(tmp_path: Path) -> None:
    a, b = Store(tmp_path), Store(tmp_path)  # two workers on one spool
    series = generate_uid()
    assert all((a if i % 2 else b).add(STUDY, series, i) for i in range(6))
    assert not a.add(STUDY, series, 3) and not b.add(STUDY, series, 4)  # the same content again: counts once
    a.sweep(), b.sweep()
    assert a.spool.pending() == [] and len(a.groups.keys()) == 1  # not quiet yet
    a.sweep(later=3), b.sweep(later=3)
    [doc] = a.srs()
    entries = library(doc)  # in series order: instance numbers 1 to 6
    assert [e[1] for e in entries] == [_header(STUDY, series, i).SOPInstanceUID for i in range(6)]
    [group] = series_groups(doc)
    assert group["values"] == pytest.approx({"cavity": 0.15, "nodule": 0.2, "normal": 0.7}, abs=1e-6)  # the max
    assert group["label"] == "normal" and group["sop_instance_uid"] == entries[0][1]  # 0.7 of normal: instance 1
    assert a.groups.keys() == [] and a.spool.arrived(doc.SOPInstanceUID) is not None
    folder = next((tmp_path / "groups").iterdir())
    assert all(p.stat().st_size == 0 for p in folder.glob("*.dcm"))  # files freed once in a result
    assert not a.add(STUDY, series, 2)  # and the same content is still a duplicate


def test_each_result_is_claimed_once_and_a_late_instance_names_the_previous_sr(tmp_path: Path) -> None:
    a, b = Store(tmp_path), Store(tmp_path)
    series = generate_uid()
    for i in range(3):
        a.add(STUDY, series, i)
    [key] = a.groups.keys()
    last = (a.groups.open / key).stat().st_mtime
    assert a.closer.close(key, last) == (3, 1) and b.closer.close(key, last) is None  # b finds nothing left
    assert b.groups.claim(key, 1, {"n": 1}) is False  # the claim itself: one link wins
    [first] = a.srs()
    assert a.add(STUDY, series, 7)  # late: after the result was made
    b.sweep(later=3)
    second = next(d for d in a.srs() if d.SOPInstanceUID != first.SOPInstanceUID)
    assert second.InstanceNumber == 2 and len(library(second)) == 4
    assert second.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID == sr.series_uid(STUDY, ALGO)


def test_interleaved_series_each_get_one_sr_and_a_study_one(tmp_path: Path) -> None:
    one, two = generate_uid(), generate_uid()
    for by, expected in (("series", [3, 3]), ("study", [6])):
        store = Store(tmp_path / by, by=by)
        for i in range(3):
            store.add(STUDY, one, i), store.add(STUDY, two, i)
        store.sweep(later=3)
        assert sorted(len(library(d)) for d in store.srs()) == expected


def test_max_instances_closes_a_group_at_once(tmp_path: Path) -> None:
    store = Store(tmp_path, max_instances=4)
    series = generate_uid()
    for i in range(3):
        store.add(STUDY, series, i)
    store.sweep()
    assert store.srs() == []
    store.add(STUDY, series, 3)
    store.sweep()
    assert [len(library(d)) for d in store.srs()] == [4]
    store.add(STUDY, series, 4)  # past the cap: a part of its own, naming none (a result covers at most the cap)
    store.sweep(later=3)
    [part] = [d for d in store.srs() if d.InstanceNumber == 2]
    assert len(library(part)) == 1 and "PredecessorDocumentsSequence" not in part


def test_a_restart_resumes_the_quiet_period_and_remakes_lost_records(tmp_path: Path) -> None:
    """A crash lost the open marker and one instance's record (written, not fsynced): the next process reopens the
    group from the instances' own times and classifies the instance again from its file."""
    store = Store(tmp_path)
    series = generate_uid()
    for i in range(3):
        store.add(STUDY, series, i)
    [key] = store.groups.keys()
    folder = tmp_path / "groups" / key
    newest = max(p.stat().st_mtime for p in folder.glob("*.dcm"))
    (store.groups.open / key).unlink()
    victim = sorted(folder.glob("*.json"))[0]
    victim.write_text('{"identity": "torn')
    calls = []

    def reclassify(model: str, version: str, data: bytes) -> np.ndarray:
        calls.append((model, version, pydicom.dcmread(io.BytesIO(data)).InstanceNumber))
        return _values(int(pydicom.dcmread(io.BytesIO(data)).InstanceNumber) - 1)

    again = Store(tmp_path, reclassify=reclassify)
    assert again.groups.recover() == 1
    assert (again.groups.open / key).stat().st_mtime == pytest.approx(newest)  # the quiet period resumes
    again.sweep(later=3)
    [doc] = again.srs()
    assert len(library(doc)) == 3 and len(calls) == 1 and calls[0][:2] == (ALGO.name, ALGO.version)


def test_a_result_claimed_but_never_spooled_is_spooled_by_the_next_closer(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path)
    series = generate_uid()
    for i in range(2):
        store.add(STUDY, series, i)
    [key] = store.groups.keys()

    def crash(*args: object, **kwargs: object) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store.spool, "put", crash)
    with pytest.raises(OSError):
        store.closer.close(key, time.time() - 5)
    claim = tmp_path / "groups" / key / "result-000001.json"
    assert claim.exists() and store.spool.pending() == []
    monkeypatch.undo()
    (store.groups.open / key).unlink()  # and the crash lost the group's marker too
    other = Store(tmp_path)
    assert other.groups.recover() == 1  # reopened: its result is not in the spool
    other.sweep(later=3)
    assert store.spool.pending() == []  # a fresh claim is its closer's, still at work
    os.utime(claim, (time.time() - 120, time.time() - 120))  # a claim a minute old lost its closer
    other.sweep(later=3)
    [doc] = other.srs()
    assert len(library(doc)) == 2 and other.groups.keys() == []


def test_a_group_that_cannot_close_is_logged_retried_and_shown_overdue(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    store = Store(tmp_path)
    series = generate_uid()
    store.add(STUDY, series, 0)
    [key] = store.groups.keys()
    (tmp_path / "groups" / key / "group.json").write_text("{}")  # unreadable: the closing fails
    with caplog.at_level(logging.ERROR, logger="biomed.dicom"):
        store.sweep(later=60)
    assert "a group could not be closed (KeyError)" in caplog.text and series not in caplog.text
    assert metrics().dicom_group_overdue._value.get() >= 55  # noqa: SLF001 - this process's own value
    assert metrics().dicom_groups_open._value.get() == 1  # noqa: SLF001


def test_old_closed_groups_are_forgotten(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.add(STUDY, generate_uid(), 0)
    store.sweep(later=3)
    assert store.groups.prune(now=time.time() + 3600) == 0
    assert store.groups.prune(now=time.time() + 8 * 24 * 3600) == 1
    assert list((tmp_path / "groups").iterdir()) == []


# ---------------------------------------------------------------------------------------------- /predict_series, v2


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]):  # type: ignore[no-untyped-def]
    from conftest import inprocess_client

    yield from inprocess_client({"BIOMED_MODELS": "demo-image,demo-dna", "BIOMED_MAX_SERIES_MB": "1",
                                 "BIOMED_MAX_UPLOAD_MB": "0.5", "BIOMED_DICOM_GROUP_MAX_INSTANCES": "6"})


def _form(files: list[bytes], boundary: str = "series-boundary", names: list[str] | None = None,
          model: str | None = None) -> tuple[bytes, dict[str, str]]:
    parts = [] if model is None else [b'Content-Disposition: form-data; name="model"\r\n\r\n' + model.encode()]
    parts += [f'Content-Disposition: form-data; name="{(names or [])[i] if names else "file"}"; filename="{i}.dcm"\r\n'
              f"Content-Type: application/dicom\r\n\r\n".encode() + f for i, f in enumerate(files)]
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, {"content-type": f"multipart/form-data; boundary={boundary}"}


def _series(n: int, series: str | None = None, study: str = STUDY) -> list[bytes]:
    series = series or generate_uid()
    return [_instance(study, series, i, rows=32)[0] for i in range(n)]


def test_predict_series_and_v2_give_the_series_result_of_each_instances_rows(client) -> None:  # type: ignore[no-untyped-def]
    import base64

    files = _series(4)
    body, headers = _form(files + [files[1]])  # a resent identical instance counts once
    r = client.post("/predict_series", content=body, headers=headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    rows = np.array([[p["probabilities"][label] for label in ALGO.labels] for i in answer["instances"]
                     for p in i["predictions"]])
    series = answer["series"]
    assert series["instances"] == 4 and len(answer["instances"]) == 4 and series["aggregate"] == "max"
    assert np.abs(rows.max(axis=0) - [series["probabilities"][label] for label in ALGO.labels]).max() <= 1e-6
    assert [i["instance_number"] for i in answer["instances"]] == [1, 2, 3, 4] and series["mixed"] is None
    single = [client.post("/predict_image", content=f, headers={"content-type": "application/dicom"}).json()
              for f in files]
    assert np.abs(rows - [[p["predictions"][0]["probabilities"][label] for label in ALGO.labels] for p in single]) \
        .max() <= 1e-6
    best = ALGO.labels.index(series["label"])
    source = int(np.argmax(rows[:, best]))
    assert series["source_instance"] == answer["instances"][source]["sop_instance_uid"]
    v2 = client.post("/v2/models/demo-image/infer", json={
        "inputs": [{"name": "file", "datatype": "BYTES", "shape": [5],
                    "data": [base64.b64encode(f).decode() for f in files + [files[1]]]}],
        "parameters": {"group": "series"}})
    assert v2.status_code == 200, v2.text
    out = {o["name"]: o["data"] for o in v2.json()["outputs"]}
    assert np.abs(np.array(out["probabilities"]) - [series["probabilities"][label] for label in ALGO.labels]).max() <= 1e-6
    assert out["element"] == [source] and out["frame"] == [0]
    assert v2.json()["parameters"] == {"group": "series", "series_instance_uid": series["uid"], "instances": 4,
                                      "source_instance": series["source_instance"], "aggregate": "max"}
    bad = client.post("/v2/models/demo-image/infer", json={
        "inputs": [{"name": "file", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(files[0]).decode()]}],
        "parameters": {"group": "patient"}})
    assert bad.status_code == 400 and "accepted: instance" in bad.json()["error"]


def _trickle(body: bytes) -> Iterator[bytes]:
    for i in range(0, len(body), 65536):
        yield body[i : i + 65536]


def test_predict_series_errors_as_an_attacker_meets_them(client) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    files = _series(2)
    other = _series(1)[0]
    png = io.BytesIO()
    Image.new("L", (8, 8)).save(png, format="PNG")
    cases = [
        (_form(files + [other]), 422, "series_mismatch"),  # another series mixed in
        (_form(files + [_instance(generate_uid(), generate_uid(), 9)[0]]), 422, "series_mismatch"),
        (_form([png.getvalue()]), 422, "series_needs_dicom"),
        (_form([b"\0" * 600_000]), 413, "too_large"),  # one part over BIOMED_MAX_UPLOAD_MB (0.5)
        (_form(files * 1 + _series(6)[:5]), 422, "series_mismatch"),
        (_form(_series(7)), 413, "too_large"),  # more parts than BIOMED_DICOM_GROUP_MAX_INSTANCES (6)
        (_form(files, names=["file", "notes"]), 400, "malformed"),
        (_form([]), 400, "missing_file"),
        (_form(files, model="nope"), 404, "unknown_model"),
        (_form(files, model="demo-dna"), 422, "wrong_model_kind"),
        (_form([b"DICM not really"]), 415, "unsupported_media_type"),  # a part that is not an image, as /predict_image
        ((b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", {"content-type": "multipart/form-data; boundary=x"}), 400, "malformed"),
        ((b"--x\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--x--\r\n", {"content-type": "multipart/form-data; boundary=x"}), 400, "malformed"),
        ((b"{}", {"content-type": "application/json"}), 415, "unsupported_media_type"),
        ((b"--x--", {"content-type": "multipart/form-data"}), 400, "malformed"),
    ]
    for (body, headers), status, code in cases:
        r = client.post("/predict_series", content=body, headers=headers)
        assert r.status_code == status, (code, r.status_code, r.text[:300])
        assert set(r.json()) == {"error", "detail"} and (code is None or r.json()["error"] == code), r.text[:300]
    series = generate_uid()
    big, headers = _form([_instance(STUDY, series, i, rows=440)[0] for i in range(3)])  # 1.16 MB, each within 0.5
    assert len(big) > 2**20  # over BIOMED_MAX_SERIES_MB (1)
    r = client.post("/predict_series", content=big, headers=headers)
    assert r.status_code == 413 and "BIOMED_MAX_SERIES_MB" in r.json()["detail"]
    r = client.post("/predict_series", content=_trickle(big), headers=headers)  # no Content-Length: capped as it streams
    assert r.status_code == 413 and "BIOMED_MAX_SERIES_MB" in r.json()["detail"]
    assert client.get("/readyz").status_code == 200
