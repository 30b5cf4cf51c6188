"""biomed.preprocess.image: every pydicom test file, twins, invariances and refusals."""

from __future__ import annotations

import importlib.util
import io
import json
import re
import tracemalloc
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from biomed.errors import InputError, MalformedInput, TooLarge, UnsupportedMedia
from biomed.preprocess.dicom_voi import apply_voi
from biomed.preprocess.image import ImageSpec, Limits, load_image, load_image_file

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(pydicom.__file__).parent / "data"
TEST_FILES = DATA / "test_files"
SPEC = ImageSpec(size=(32, 32))

_spec = importlib.util.spec_from_file_location("dicom_outcomes", ROOT / "scripts" / "dicom_outcomes.py")
outcomes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(outcomes)  # type: ignore[union-attr]


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore")


def load(name: str, spec: ImageSpec = SPEC) -> tuple[np.ndarray, dict]:
    return load_image((TEST_FILES / name).read_bytes(), spec)


def dataset(stored: np.ndarray, **attrs: object) -> Dataset:
    """A CT dataset around uint16 `stored` (frames, rows, cols) or (rows, cols)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = "1.2.3.4"
    ds.Modality, ds.SamplesPerPixel, ds.PhotometricInterpretation = "CT", 1, "MONOCHROME2"
    ds.Rows, ds.Columns = stored.shape[-2:]
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    ds.PixelData = stored.astype(np.uint16).tobytes()
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


DOC = ROOT / "docs" / "dicom_test_files.md"
_ROW = re.compile(r"^\| `(?P<file>[^`]+)` \| (?P<outcome>[^|]+?) \| (?P<detail>[^|]*?) ?\|$")


def documented() -> dict[str, tuple[str, str]]:
    """docs/dicom_test_files.md's table: file (relative to pydicom's data folder) -> (outcome, detail)."""
    rows = {}
    for line in DOC.read_text().splitlines():
        found = _ROW.match(line)
        if found:
            rows[found["file"]] = (found["outcome"].strip(), found["detail"].strip())
    return rows


DOCUMENTED = documented()


@pytest.mark.parametrize("name", sorted(DOCUMENTED))
def test_every_pydicom_file_has_its_documented_outcome(name: str) -> None:
    """The documented row, exactly: "200" with the shape, photometric, transfer syntax and window source, or the
    named refusal ("<status> <code>") with a detail for the user."""
    outcome, detail = DOCUMENTED[name]
    try:
        x, info = load_image((DATA / name).read_bytes(), ImageSpec())  # the document's spec: 64x64, one channel
    except InputError as exc:
        assert (f"{exc.status} {exc.code}", "") == (outcome, detail), exc.detail
        assert 400 <= exc.status < 500 and exc.detail
        return
    window = (info.get("window") or {}).get("source")
    got = f"{tuple(x.shape)} {info['photometric_interpretation']}, {info['transfer_syntax']}, {window}"
    assert ("200", got) == (outcome, detail)
    assert x.dtype == np.float32 and np.isfinite(x).all() and x.min() >= 0.0 and x.max() <= 1.0


def test_the_outcome_doc_covers_this_pydicoms_files() -> None:
    """The table above is the whole of the installed pydicom's test files, its summary counts its rows; a pydicom with
    other files needs the document regenerated (``python scripts/dicom_outcomes.py``), it does not skip."""
    text = DOC.read_text()
    assert f"pydicom {pydicom.__version__};" in text, "regenerate docs/dicom_test_files.md for this pydicom"
    on_disk = {p.relative_to(DATA).as_posix() for p in outcomes.test_file_paths()}
    assert set(DOCUMENTED) == on_disk
    counts = Counter(outcome for outcome, _ in DOCUMENTED.values())
    summary = dict(re.findall(r"^\| (\d{3}(?: \w+)?) \| (\d+) \|$", text, re.M))
    assert {k: int(v) for k, v in summary.items()} == dict(counts)


def test_ct_small_reports_rescale_and_window() -> None:
    _, info = load("CT_small.dcm")
    assert info["format"] == "dicom" and info["modality"] == "CT"
    assert info["rescale"] == {"slope": 1.0, "intercept": -1024.0}
    assert info["window"]["source"] == "minmax"  # CT_small has no window of its own
    x, info = load("CT_small.dcm", ImageSpec(size=(32, 32), window=(40.0, 400.0)))
    assert info["window"] == {"center": 40.0, "width": 400.0, "function": "linear_exact", "source": "model"}
    assert "PatientName" not in json.dumps(info) and "CompressedSamples" not in json.dumps(info)


def test_file_window_and_monochrome1_inversion() -> None:
    _, info = load("MR_small.dcm")
    assert info["window"]["source"] == "file" and info["inverted"] is False
    _, info = load("dicomdirtests/77654033/CR1/6154")
    assert info["photometric_interpretation"] == "MONOCHROME1" and info["inverted"] is True


@pytest.mark.parametrize("name, frames", [("rtdose.dcm", 15), ("SC_rgb_rle_2frame.dcm", 2), ("examples_ybr_color.dcm", 30)])
def test_multi_frame(name: str, frames: int) -> None:
    x, info = load(name)
    assert x.shape == (frames, 1, 32, 32) and info["frames"] == frames


TWINS = [
    ("MR_small.dcm", "MR_small_bigendian.dcm"),
    ("MR_small.dcm", "MR_small_expb.dcm"),
    ("MR_small.dcm", "MR_small_implicit.dcm"),
    ("MR_small.dcm", "MR_small_RLE.dcm"),
    ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
    ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"),
    ("rtdose.dcm", "rtdose_expb.dcm"),
    ("rtdose.dcm", "rtdose_rle.dcm"),
    ("liver_1frame.dcm", "liver_expb_1frame.dcm"),
    ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb_gdcm_KY.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm"),
    ("SC_rgb_rle.dcm", "SC_rgb_rle_32bit.dcm"),
]


@pytest.mark.parametrize("a, b", TWINS)
def test_lossless_and_byte_order_twins_are_identical(a: str, b: str) -> None:
    np.testing.assert_allclose(load(a)[0], load(b)[0], rtol=0, atol=1e-6)


def test_rgb_twin_with_three_channels() -> None:
    spec = ImageSpec(size=(32, 32), channels=3)
    x, info = load("SC_rgb_rle.dcm", spec)
    assert x.shape == (1, 3, 32, 32) and "color_conversion" not in info
    grey = load("SC_rgb_rle.dcm")[0][:, 0]
    np.testing.assert_allclose(grey, np.einsum("fchw,c->fhw", x, [0.299, 0.587, 0.114]), atol=1e-5)


def test_header_claiming_huge_image_is_refused_without_allocating() -> None:
    data = to_bytes(dataset(np.zeros((4, 4)), Rows=60000, Columns=60000))
    tracemalloc.start()
    with pytest.raises(TooLarge) as exc:
        load_image(data, SPEC)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert exc.value.status == 413 and "60000x60000" in exc.value.detail
    assert peak < 20 * 2**20


def test_frame_and_byte_limits() -> None:
    data = to_bytes(dataset(np.zeros((3, 4, 4))))
    with pytest.raises(TooLarge):
        load_image(data, SPEC, Limits(max_frames=2))
    with pytest.raises(TooLarge):
        load_image(data, SPEC, Limits(max_bytes=100))


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian])
def test_an_upload_is_parsed_once_and_every_decode_keeps_its_element_cap(syntax: str) -> None:
    from biomed.preprocess.upload import Upload

    ds = dataset(np.arange(64).reshape(8, 8), ImageComments="x")
    ds.file_meta.TransferSyntaxUID = syntax
    data = to_bytes(ds)
    upload = Upload(data)
    parsed = upload.dataset(Limits())
    with pytest.raises(TooLarge, match="data elements"):  # a tighter cap than the parse's: refused, not recounted
        load_image(upload, SPEC, Limits(max_elements=5))
    x, info = load_image(upload, SPEC)
    assert upload.header is parsed and "PixelData" not in parsed and parsed.ImageComments == "x"
    np.testing.assert_array_equal(x, load_image(data, SPEC)[0])
    x, _ = load_image(upload, SPEC)  # decoded already: parsed again, the same pixels
    np.testing.assert_array_equal(x, load_image(data, SPEC)[0])
    assert Upload(b"\x89PNG").header is None


def test_deflated_twin_and_zip_bomb() -> None:
    ds = dataset(np.arange(64 * 64).reshape(64, 64) % 4096, WindowCenter=2000, WindowWidth=4000)
    plain = load_image(to_bytes(ds), SPEC)[0]
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = to_bytes(ds)
    x, info = load_image(deflated, SPEC)
    assert info["transfer_syntax"] == "Deflated Explicit VR Little Endian"
    np.testing.assert_array_equal(x, plain)
    bomb = to_bytes(_bomb())  # 2 MiB of zeros deflate to a few KiB
    with pytest.raises(TooLarge):
        load_image(bomb, SPEC, Limits(max_bytes=len(bomb) + 2**20))


def _bomb() -> Dataset:
    ds = dataset(np.zeros((1024, 1024)))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    return ds


@pytest.mark.parametrize(
    "data, error, code",
    [
        (np.random.default_rng(0).bytes(4096), UnsupportedMedia, "unsupported_media_type"),
        (b"", UnsupportedMedia, "unsupported_media_type"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 64, InputError, "bad_pixel_data"),
        (b"\xff\xd8\xff\xe0" + b"\0" * 64, InputError, "bad_pixel_data"),
        ((TEST_FILES / "badVR.dcm").read_bytes(), MalformedInput, "malformed_dicom"),  # Number of Frames '1A'
        (b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff", InputError, "no_pixel_data"),
    ],
)
def test_refusals(data: bytes, error: type, code: str) -> None:
    with pytest.raises(error) as exc:
        load_image(data, SPEC)
    assert exc.value.code == code


def test_truncated_and_no_pixel_data() -> None:
    data = (TEST_FILES / "MR_small.dcm").read_bytes()
    with pytest.raises(InputError) as exc:
        load_image(data[: len(data) // 2 + 3000], SPEC)
    assert exc.value.code == "bad_pixel_data"
    with pytest.raises(InputError) as exc:
        load("MR_truncated.dcm")
    assert exc.value.code == "bad_pixel_data"
    with pytest.raises(InputError) as exc:
        load("test-SR.dcm")
    assert exc.value.code == "no_pixel_data" and exc.value.status == 422


def test_unsupported_transfer_syntax_is_named() -> None:
    ds = dataset(np.zeros((4, 4)))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 MP@ML
    ds.PixelData = encapsulate([b"\0" * 16])
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    with pytest.raises(UnsupportedMedia) as exc:
        load_image(to_bytes(ds), SPEC)
    assert exc.value.code == "unsupported_transfer_syntax" and "MPEG2" in exc.value.detail


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    "arr, fmt, expected",
    [
        (np.full((40, 50), 128, np.uint8), "PNG", 128 / 255),
        (np.full((40, 50), 30000, np.uint16), "PNG", 30000 / 65535),
        (np.full((40, 50, 3), (255, 0, 0), np.uint8), "PNG", 0.299),
        (np.full((40, 50), 200, np.uint8), "JPEG", 200 / 255),
    ],
)
def test_png_and_jpeg(arr: np.ndarray, fmt: str, expected: float) -> None:
    x, info = load_image(_png(arr, fmt), SPEC)
    assert x.shape == (1, 1, 32, 32) and info["format"] == fmt.lower()
    assert info["rows"] == 40 and info["columns"] == 50
    np.testing.assert_allclose(x, expected, atol=2e-3)


def test_monochrome1_twin_presents_the_same() -> None:
    stored = np.random.default_rng(1).integers(0, 4096, size=(48, 40))
    m2 = dataset(stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=-600, WindowWidth=1500)
    mirrored_center = 4095 + 2 * -1024 - -600
    m1 = dataset(4095 - stored, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=mirrored_center,
                 WindowWidth=1500, PhotometricInterpretation="MONOCHROME1")
    a, b = load_image(to_bytes(m2), SPEC)[0], load_image(to_bytes(m1), SPEC)[0]
    assert np.abs(a - b).max() <= 1e-3


def test_rescale_offset_twin_is_identical() -> None:
    stored = np.random.default_rng(2).integers(0, 3000, size=(40, 48))
    a = dataset(stored, RescaleSlope=1, RescaleIntercept=0, WindowCenter=1000, WindowWidth=2000)
    b = dataset(stored + 1000, RescaleSlope=1, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=2000)
    np.testing.assert_array_equal(load_image(to_bytes(a), SPEC)[0], load_image(to_bytes(b), SPEC)[0])


FRAMES = [(1.0, -1024.0, 40.0, 400.0), (0.5, -1000.0, -600.0, 1500.0), (2.0, 0.0, 300.0, 1000.0)]


def test_enhanced_per_frame_functional_groups() -> None:
    stored = np.random.default_rng(3).integers(0, 4096, size=(3, 24, 32))
    ds = dataset(stored)
    ds.PerFrameFunctionalGroupsSequence = [_frame_group(*f) for f in FRAMES]
    x, info = load_image(to_bytes(ds), SPEC)
    assert info["rescale"]["per_frame"] and info["window"]["per_frame"]
    for i, (slope, intercept, center, width) in enumerate(FRAMES):
        single = dataset(stored[i], RescaleSlope=slope, RescaleIntercept=intercept,
                         WindowCenter=center, WindowWidth=width)
        np.testing.assert_array_equal(x[i], load_image(to_bytes(single), SPEC)[0][0])


def _frame_group(slope: float, intercept: float, center: float, width: float) -> Dataset:
    pvt, voi, group = Dataset(), Dataset(), Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
    voi.WindowCenter, voi.WindowWidth = center, width
    group.PixelValueTransformationSequence, group.FrameVOILUTSequence = [pvt], [voi]
    return group


@pytest.mark.parametrize(
    "function, values, expected",
    [
        ("linear", [0.0, 49.5, 100.0], [0.0, 0.5, 1.0]),
        ("linear_exact", [0.0, 50.0, 100.0], [0.0, 0.5, 1.0]),
        ("sigmoid", [-1e6, 50.0, 1e6], [0.0, 0.5, 1.0]),
    ],
)
def test_voi_functions(function: str, values: list[float], expected: list[float]) -> None:
    y, desc = apply_voi(np.array(values, np.float32), ("window", 50.0, 100.0, function))
    np.testing.assert_allclose(y, expected, atol=1e-6)
    assert desc["function"] == function


def test_image_spec_round_trips_through_json() -> None:
    spec = ImageSpec(size=(96, 80), channels=3, window=(-600.0, 1500.0), interpolation="bicubic")
    assert ImageSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError):
        ImageSpec(channels=2)


def test_load_image_file(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(_png(np.zeros((8, 8), np.uint8)))
    assert load_image_file(path, SPEC)[0].shape == (1, 1, 32, 32)
    with pytest.raises(TooLarge):
        load_image_file(path, SPEC, Limits(max_bytes=10))
