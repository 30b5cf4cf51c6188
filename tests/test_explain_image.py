"""Image explanations (``biomed/occlusion.py``, ``/explain_image``, ``biomed explain-image``): occlusion sensitivity on
ONNX alone.

The batched map equals a one-patch-at-a-time reference (<= 1e-6), through the core and through the service; the
endpoint answers JSON, a PNG overlay at the presented geometry, and a DICOM object that reads back with pydicom and
highdicom and references its source; caps and hostile fields are 4xx, never 5xx; the CLI writes the same map.
The peak-in-lesion rate of the real demo model is asserted by the slow demo-model test (tests/test_demo_models.py).
"""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pydicom
import pytest
from PIL import Image

from biomed import occlusion
from biomed.errors import InputError, MalformedInput
from biomed.outputs import overlay
from biomed.preprocess.image import ImageSpec, Limits, load_image, load_presented

try:
    from tests.conftest import inprocess_client
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from conftest import inprocess_client

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"  # has a frame of reference, position, orientation and spacing


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Demo DICOMs with a lesion (and their lesions.csv), a PNG and a two-frame DICOM."""
    from training.demo.dicom_demo import generate_images

    root = tmp_path_factory.mktemp("explain")
    folder = generate_images(root / "demo", n=4, seed=21, classes=("nodule", "cavity"))
    dicoms = sorted(folder.rglob("*.dcm"))
    x, _, presented = load_presented(dicoms[0].read_bytes(), ImageSpec())
    png = root / "slice.png"
    Image.fromarray(presented[..., 0]).save(png)
    ds = pydicom.dcmread(dicoms[0])
    frame = ds.pixel_array
    ds.NumberOfFrames = 2
    ds.PixelData = frame.tobytes() + np.ascontiguousarray(frame[:, ::-1]).tobytes()
    two = root / "two_frames.dcm"
    ds.save_as(two, enforce_file_format=True)
    return {"dicom": dicoms[0], "folder": folder, "png": png, "two_frames": two}


@pytest.fixture(scope="module")
def session(demo_models: dict[str, str]):  # type: ignore[no-untyped-def]
    """The quick demo image model: its onnxruntime session, spec and labels."""
    import onnxruntime as ort

    from biomed.metadata import read
    from biomed.store import onnx_path, resolve

    path = onnx_path(resolve(demo_models["image"]))
    doc = read(path)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), ImageSpec.from_dict(doc["preprocess"]), \
        doc["labels"]


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator["TestClient"]:  # noqa: F821
    yield from inprocess_client()


def reference_map(run, x: np.ndarray, patch: int, stride: int, index: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """One occluded copy at a time, each run alone (batch 1): the map the batched code must reproduce."""
    channels, height, width = x.shape
    fill = x.reshape(channels, -1).mean(axis=1)
    base = run(x[None])[0, index]
    ys = sorted(set(range(0, height - patch + 1, stride)) | {height - patch})
    xs = sorted(set(range(0, width - patch + 1, stride)) | {width - patch})
    total, count = np.zeros((height, width)), np.zeros((height, width))
    for y in ys:
        for x0 in xs:
            copy = x.copy()
            for c in range(channels):
                copy[c, y : y + patch, x0 : x0 + patch] = fill[c]
            drop = base - run(copy[None])[0, index]
            total[y : y + patch, x0 : x0 + patch] += drop
            count[y : y + patch, x0 : x0 + patch] += 1
    assert count.min() >= 1, "every pixel is covered by some patch"
    return total / count


# --- the core ---------------------------------------------------------------------------------------------------

def test_the_default_plan_and_its_caps() -> None:
    grid = occlusion.plan((64, 64))
    assert (grid.patch, grid.stride, grid.patches, grid.rows) == (8, 4, 225, 226)
    assert occlusion.plan((224, 224)).patch == 28 and occlusion.plan((224, 224)).patches == 225
    odd = occlusion.plan((60, 50), 7, 5)
    assert odd.ys[-1] == 53 and odd.xs[-1] == 43  # a last patch flush with the edge
    covered = np.zeros((60, 50), dtype=bool)
    for y, x in odd.corners():
        covered[y : y + 7, x : x + 7] = True
    assert covered.all()
    for patch, stride in ((0, None), (65, None), (8, 9), (8, 0)):
        with pytest.raises(MalformedInput):
            occlusion.plan((64, 64), patch, stride)
    with pytest.raises(InputError) as err:
        occlusion.label_index(["a", "b"], "c", np.zeros(2))
    assert err.value.code == "unknown_label"


def test_the_batched_map_equals_one_patch_at_a_time(session, images) -> None:  # type: ignore[no-untyped-def]
    sess, spec, labels = session
    x, _ = load_image(images["dicom"].read_bytes(), spec)

    def run(rows: np.ndarray) -> np.ndarray:
        return sess.run(None, {"input": np.ascontiguousarray(rows, dtype=np.float32)})[0]

    calls: list[int] = []

    async def batched(rows: np.ndarray) -> np.ndarray:
        calls.append(len(rows))
        return np.concatenate([run(rows[i : i + 32]) for i in range(0, len(rows), 32)])  # the server's batch size

    for patch, stride, chunk in ((8, 4, None), (6, 5, 40), (16, 16, 7)):
        grid = occlusion.plan(spec.size, patch, stride)
        calls.clear()
        result = asyncio.run(occlusion.occlusion_map(batched, x[0], grid, labels, None, chunk))
        assert sum(calls) == grid.rows and max(calls) <= (chunk or occlusion.chunk_rows(x[0].nbytes))
        expected = reference_map(run, x[0], patch, stride, result.index)
        assert np.abs(result.map - expected).max() <= 1e-6, (patch, stride)
        assert result.index == int(np.argmax(run(x[:1])[0]))


def test_the_overlay_is_drawn_at_the_presented_geometry() -> None:
    presented = np.full((50, 70, 1), 100, dtype=np.uint8)
    values = np.zeros((8, 8))
    values[2, 3] = 0.5
    png = Image.open(io.BytesIO(overlay.overlay_png(presented, values, 1.0)))
    assert png.size == (70, 50) and png.mode == "RGB"
    pixels = np.asarray(png)
    assert (pixels[0, 0] == 100).all()  # no drop: the image unchanged
    assert pixels[int(2.5 * 50 / 8), int(3.5 * 70 / 8)].tolist() != [100, 100, 100]
    assert (np.asarray(Image.open(io.BytesIO(overlay.overlay_png(presented, values, 0.0)))) == 100).all()


def test_the_presented_frame_is_the_windowed_frame_before_resize(images) -> None:  # type: ignore[no-untyped-def]
    data = images["two_frames"].read_bytes()
    x, info, frame1 = load_presented(data, ImageSpec(), Limits(), frame=1)
    _, _, frame0 = load_presented(data, ImageSpec(), Limits(), frame=0)
    assert frame1.shape == (info["rows"], info["columns"], 1) and frame1.dtype == np.uint8
    assert np.array_equal(frame1, frame0[:, ::-1])
    assert np.array_equal(x, load_image(data, ImageSpec())[0])
    with pytest.raises(InputError) as err:
        load_presented(data, ImageSpec(), Limits(), frame=2)
    assert err.value.code == "frame_out_of_range"


def test_the_demo_generator_records_its_lesions_without_changing_pixels(tmp_path: Path) -> None:
    import hashlib

    from training.demo.dicom_demo import generate_images, in_lesion, read_lesions

    folder = generate_images(tmp_path / "demo", n=3, seed=0)
    pixels = {p: hashlib.sha256(pydicom.dcmread(folder / p).PixelData).hexdigest()
              for p in ("nodule/img_00001.dcm", "cavity/img_00002.dcm")}
    assert pixels == {  # the files the demo models were trained on, before lesions were recorded
        "nodule/img_00001.dcm": "a24a116ef83830e4f16ffa8c5b30795e1d8aea2f42ae8e1c1ba80a1c07a70c48",
        "cavity/img_00002.dcm": "b171a0d92a2f63caa5153dc7fb3b530e8c67a590e25fa862e6f29be603c8fced"}
    lesions = read_lesions(folder)
    assert set(lesions) == {"nodule/img_00001.dcm", "cavity/img_00002.dcm"}  # normal images have none
    for path, lesion in lesions.items():
        _, info, presented = load_presented((folder / path).read_bytes(), ImageSpec())
        assert (lesion["rows"], lesion["columns"]) == (info["rows"], info["columns"])
        y, x, r = int(round(lesion["row"])), int(round(lesion["column"])), lesion["radius"]
        ring = presented[y, int(round(lesion["column"] + 0.8 * r)), 0]
        assert (presented[y, x, 0] if lesion["label"] == "nodule" else ring) > 200  # bright tissue in a dark lung
        model = (64, 64)
        cy, cx = (lesion["row"] + 0.5) * 64 / lesion["rows"] - 0.5, (lesion["column"] + 0.5) * 64 / lesion["columns"] - 0.5
        assert in_lesion((round(cy), round(cx)), lesion, model, 0) and not in_lesion((0, 0), lesion, model, 8)


# --- the endpoint -----------------------------------------------------------------------------------------------

def post(client, path: Path | bytes, query: str = "", **fields: str):  # type: ignore[no-untyped-def]
    data = path if isinstance(path, bytes) else path.read_bytes()
    return client.post(f"/explain_image{query}", files={"file": ("upload", data)}, data=fields)


def test_json_map_matches_the_core(client, session, images) -> None:  # type: ignore[no-untyped-def]
    sess, spec, labels = session
    r = post(client, images["dicom"], image="true", label=labels[1])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["method"] == "occlusion" and body["label"] == labels[1] and body["frame"] == 0
    assert set(body["probabilities"]) == set(labels) and body["predicted"] in labels
    m = body["map"]
    assert (m["rows"], m["columns"], m["patch"], m["stride"], m["patches"]) == (64, 64, 8, 4, 225)
    assert body["presented"]["rows"] == body["input"]["rows"] and body["input"]["format"] == "dicom"
    x, _ = load_image(images["dicom"].read_bytes(), spec)
    expected = reference_map(lambda rows: sess.run(None, {"input": rows})[0], x[0], 8, 4, labels.index(labels[1]))
    assert np.abs(np.asarray(m["values"]) - expected).max() <= 1e-6
    shown = Image.open(io.BytesIO(__import__("base64").b64decode(body["image_png"])))
    assert shown.size == (body["presented"]["columns"], body["presented"]["rows"])
    assert "PatientName" not in r.text and "Demo^Synthetic" not in r.text


def test_png_and_frames(client, images) -> None:  # type: ignore[no-untyped-def]
    r = post(client, images["dicom"], "?format=png&opacity=0.8")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    info = load_presented(images["dicom"].read_bytes(), ImageSpec())[1]
    assert Image.open(io.BytesIO(r.content)).size == (info["columns"], info["rows"])
    png = post(client, images["png"], "?format=png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    first, second = (post(client, images["two_frames"], frame=str(f)).json() for f in (0, 1))
    assert second["frame"] == 1 and second["map"]["values"] != first["map"]["values"]


def test_dicom_output_reads_back_and_references_its_source(client, images) -> None:  # type: ignore[no-untyped-def]
    import highdicom as hd

    source = pydicom.dcmread(images["two_frames"])
    r = post(client, images["two_frames"], "?format=dicom")
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    sc = pydicom.dcmread(io.BytesIO(r.content))
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage  # a multi-frame source: no Parametric Map
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert sc.StudyInstanceUID == source.StudyInstanceUID and sc.PatientID == source.PatientID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID and sc.SOPInstanceUID != source.SOPInstanceUID
    assert sc.pixel_array.shape == (source.Rows, source.Columns, 3)
    assert "research use only" in sc.SeriesDescription
    assert isinstance(hd.imread(io.BytesIO(r.content)), hd.Image)

    ct = pydicom.dcmread(CT_SMALL)
    r = post(client, CT_SMALL, "?format=dicom")
    assert r.status_code == 200, r.text
    back = pydicom.dcmread(io.BytesIO(r.content))
    pm = hd.pm.ParametricMap.from_dataset(back)
    assert back.SOPClassUID == pydicom.uid.ParametricMapStorage
    referenced = back.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert referenced.ReferencedSOPInstanceUID == ct.SOPInstanceUID
    assert back.FrameOfReferenceUID == ct.FrameOfReferenceUID and back.StudyInstanceUID == ct.StudyInstanceUID
    assert pm.pixel_array.shape == (ct.Rows, ct.Columns) and pm.pixel_array.dtype == np.float32
    mapping = back.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    assert mapping.QuantityDefinitionSequence[0].ConceptCodeSequence[0].CodeValue == "130402"  # class activation
    values = post(client, CT_SMALL).json()["map"]
    upsampled = occlusion.upsample(np.asarray(values["values"]), ct.Rows, ct.Columns)
    assert np.abs(pm.pixel_array - upsampled).max() <= 1e-5

    two = pydicom.dcmread(io.BytesIO(post(client, images["two_frames"], "?format=dicom", frame="1").content))
    assert two.SourceImageSequence[0].ReferencedFrameNumber == 2
    demo = pydicom.dcmread(images["dicom"])  # a demo CT has a frame of reference, position and spacing
    r = post(client, images["dicom"], "?format=dicom")
    assert demo.Modality == "CT" and r.status_code == 200, r.text
    back = pydicom.dcmread(io.BytesIO(r.content))
    assert back.SOPClassUID == pydicom.uid.ParametricMapStorage and back.FrameOfReferenceUID == demo.FrameOfReferenceUID


@pytest.mark.parametrize(("query", "fields", "status", "code"), [
    ("?patch=0", {}, 400, "malformed"),
    ("?patch=65", {}, 400, "malformed"),
    ("", {"patch": "8", "stride": "9"}, 400, "malformed"),
    ("?patch=eight", {}, 400, "malformed"),
    ("?opacity=nan", {}, 400, "malformed"),
    ("?opacity=1.5", {}, 400, "malformed"),
    ("?format=svg", {}, 400, "malformed"),
    ("?image=maybe", {}, 400, "malformed"),
    ("?patch=1&stride=1", {}, 413, "too_large"),  # 4,097 rows > BIOMED_MAX_OCCLUSION_ROWS
    ("?frame=1", {}, 422, "frame_out_of_range"),
    ("?frame=99999999999999999999", {}, 422, "frame_out_of_range"),
    ("", {"label": "tumour"}, 422, "unknown_label"),
    ("?model=demo-dna", {}, 422, "wrong_model_kind"),
    ("?model=nope", {}, 404, "unknown_model"),
])
def test_bad_fields_are_4xx(client, images, query: str, fields: dict, status: int,  # type: ignore[no-untyped-def]
                            code: str) -> None:
    r = post(client, images["dicom"], query, **fields)
    assert (r.status_code, r.json()["error"]) == (status, code), r.text


def test_hostile_and_unreferenceable_inputs_are_4xx(client, images) -> None:  # type: ignore[no-untyped-def]
    assert post(client, b"not an image at all").status_code == 415
    assert post(client, b"\x89PNG\r\n\x1a\n" + b"\x00" * 64).status_code == 422
    r = post(client, images["png"], "?format=dicom")
    assert (r.status_code, r.json()["error"]) == (422, "no_dicom_source")
    ds = pydicom.dcmread(images["dicom"])
    del ds.SOPInstanceUID
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=False)
    r = post(client, buffer.getvalue(), "?format=dicom")
    assert (r.status_code, r.json()["error"]) == (422, "no_dicom_source")
    assert "Demo^Synthetic" not in r.text
    truncated = images["dicom"].read_bytes()[:-5000]
    assert post(client, truncated).status_code == 422
    big = io.BytesIO()  # the benchmark's size (bench: explain_image_512): its overlay at 512x512
    Image.fromarray(np.zeros((512, 512), dtype=np.uint8)).save(big, format="PNG")
    r = post(client, big.getvalue(), "?format=png")
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size == (512, 512)


def test_drawing_at_the_presented_geometry_is_within_the_decode_budget(demo_models: dict[str, str]) -> None:
    """PNG and DICOM answers reserve their working set (16 bytes a presented pixel) from BIOMED_MAX_DECODING_MB."""
    big = io.BytesIO()
    Image.fromarray(np.zeros((1500, 1500), dtype=np.uint8)).save(big, format="PNG")
    assert overlay.output_bytes(1500, 1500) > 40 * 2**20
    for client in inprocess_client({"BIOMED_MAX_DECODING_MB": "40"}):
        assert post(client, big.getvalue()).status_code == 200  # the map itself is at the model's geometry
        for query in ("?format=png", "?image=true"):
            r = post(client, big.getvalue(), query)
            assert (r.status_code, r.json()["error"]) == (413, "too_large"), query
            assert "BIOMED_MAX_DECODING_MB" in r.json()["detail"]


# --- the command line --------------------------------------------------------------------------------------------

def test_the_cli_writes_the_overlay_dicom_and_json(images, tmp_path: Path, session,  # type: ignore[no-untyped-def]
                                                   capsys) -> None:
    from cli.main import main

    sess, spec, labels = session
    out, dcm, doc = tmp_path / "map.png", tmp_path / "map.dcm", tmp_path / "map.json"
    assert main(["explain-image", str(images["dicom"]), "--out", str(out), "--dicom", str(dcm), "--json", str(doc),
                 "--label", labels[0]]) == 0
    assert "225 patches of 8 px, stride 4" in capsys.readouterr().out
    info = load_presented(images["dicom"].read_bytes(), spec)[1]
    assert Image.open(out).size == (info["columns"], info["rows"])
    source = pydicom.dcmread(images["dicom"])
    assert pydicom.dcmread(dcm).SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    written = json.loads(doc.read_text())
    x, _ = load_image(images["dicom"].read_bytes(), spec)
    expected = reference_map(lambda rows: sess.run(None, {"input": rows})[0], x[0], 8, 4, 0)
    assert written["label"] == labels[0] and np.abs(np.asarray(written["map"]["values"]) - expected).max() <= 1e-6
    assert main(["explain-image", str(images["dicom"]), "--out", str(out), "--patch", "0"]) == 1
    assert "patch 0 is out of range" in capsys.readouterr().err
    assert main(["explain-image", str(images["png"]), "--out", str(out), "--dicom", str(dcm)]) == 1
    assert "needs a DICOM input" in capsys.readouterr().err
    assert main(["explain-image", str(images["dicom"]), "--out", str(out), "--model", "demo-dna"]) == 1
    assert "a model of kind 'image' is needed" in capsys.readouterr().err
