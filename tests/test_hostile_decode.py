"""Hostile images against load_image: every trick refused with its 4xx, without the memory (how fast: bench/timings.py).

The reproductions are built here, small: compressed frames whose codestream lies about its
size (JPEG 2000 raw and JP2, HTJ2K, JPEG baseline and lossless, JPEG-LS, RLE), headers whose
decoded bytes pass the pixel cap but not the byte cap (RGB and 16-bit PNG, JPEG, RLE 16-bit
RGB), rescale and window values that overflow float32 (top level and per frame), excess pixel
data, and element-count bombs (flat, in sequences of every kind, items, fragments, preamble-
less). Memory is checked in a subprocess with ru_maxrss; the decode budget is checked alone and
through load_image.
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import (
    UID,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLSLossless,
    RLELossless,
)

from bench.hostile_dicom import ITEM as _ITEM
from bench.hostile_dicom import ITEM_END as _ITEM_END
from bench.hostile_dicom import SEQ_END as _SEQ_END
from bench.hostile_dicom import bomb as _bomb
from bench.hostile_dicom import dataset as _ds
from bench.hostile_dicom import encapsulated as _encapsulated
from bench.hostile_dicom import enhanced as _enhanced
from bench.hostile_dicom import image_group as _image
from bench.hostile_dicom import part10 as _part10
from bench.hostile_dicom import rle_frame as _rle
from bench.hostile_dicom import to_file as _file
from biomed.errors import InputError, MalformedInput, Overloaded, TooLarge
from biomed.preprocess.budget import DecodeBudget
from biomed.preprocess.image import ImageSpec, Limits, load_image

ROOT = Path(__file__).resolve().parents[1]
MB = 2**20
SPEC = ImageSpec(size=(32, 32))


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore")


# --------------------------------------------------------------------------- builders

def _j2k(rows: int = 64, columns: int = 64, jp2: bool = False) -> bytes:
    from openjpeg import encode

    arr = (np.arange(rows * columns) % 251).astype(np.uint8).reshape(rows, columns)
    return bytes(encode(arr, codec_format=1 if jp2 else 0))


def _siz(cs: bytes, *, width: int | None = None, height: int | None = None, tile: int | None = None,
         components: int | None = None) -> bytes:
    """Patch the SIZ marker (raw codestream or inside a JP2 box): nothing is re-encoded."""
    out = bytearray(cs)
    i = out.index(b"\xff\x4f\xff\x51")
    for offset, value, fmt in ((8, width, ">I"), (12, height, ">I"), (24, tile, ">I"), (28, tile, ">I"),
                               (40, components, ">H")):
        if value is not None:
            struct.pack_into(fmt, out, i + offset, value)
    return bytes(out)


def _jpeg(rows: int = 16, columns: int = 16, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    arr = (np.arange(rows * columns) % 200).astype(np.uint8).reshape(rows, columns)
    Image.fromarray(arr).convert(mode).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _sof(jpeg: bytes, *, height: int | None = None, width: int | None = None, code: int | None = None) -> bytes:
    """Patch the frame header (SOF0 from PIL) of a JPEG."""
    out = bytearray(jpeg)
    i = out.index(b"\xff\xc0")
    if code is not None:
        out[i + 1] = code
    if height is not None:
        struct.pack_into(">H", out, i + 5, height)
    if width is not None:
        struct.pack_into(">H", out, i + 7, width)
    return bytes(out)


def _jpeg_ls(rows: int, columns: int, components: int = 1) -> bytes:
    """A JPEG-LS codestream header (SOF55, SOS) around a token of scan data."""
    comps = b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    sof = b"\xff\xf7" + struct.pack(">HBHHB", 8 + 3 * components, 8, rows, columns, components) + comps
    sos = b"\xff\xda" + struct.pack(">HB", 6 + 2 * components, components) + b"".join(
        bytes([i + 1, 0]) for i in range(components)) + b"\x00\x00\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 32 + b"\xff\xd9"


def _many_scans(n: int) -> bytes:
    jpeg = _jpeg()
    sos = jpeg.index(b"\xff\xda")
    scan = jpeg[sos:-2]
    return jpeg[:sos] + scan * n + b"\xff\xd9"


def _png_header(width: int, height: int, color: int = 0, depth: int = 8) -> bytes:
    """A PNG whose IHDR claims `width` x `height` with a token IDAT (the cap must fire before decoding)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _png_zeros(width: int, height: int) -> bytes:
    """A real, complete black RGB PNG (10000^2: ~300 KB that decodes to 300 MB), compressed row by row."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    deflater, row, parts = zlib.compressobj(9), bytes(1 + 3 * width), []
    for _ in range(height):
        parts.append(deflater.compress(row))
    parts.append(deflater.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")


def _png_chunks(n: int) -> bytes:
    """A 16x16 PNG with `n` tiny ancillary chunks before its image data (PIL walks each in Python)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\0" * (17 * 16)))
    return b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"tIME", b"\x07\xe8\x01\x01\x00\x00\x00") * n + idat + chunk(b"IEND", b"")


def _jpeg_comments(n: int) -> bytes:
    """A JPEG with `n` empty COM segments before its frame header (PIL walks each in Python)."""
    jpeg = _jpeg()
    return jpeg[:2] + b"\xff\xfe\x00\x02" * n + jpeg[2:]


def _nested(depth: int) -> bytes:
    sq = struct.pack("<HH2sHI", 0x0009, 0x1020, b"SQ", 0, 0xFFFFFFFF)
    return _part10((sq + _ITEM) * depth + (_ITEM_END + _SEQ_END) * depth + _image())


def _per_frame(slope: float, intercept: float = 0.0) -> Dataset:
    pvt, group = Dataset(), Dataset()
    pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slope, intercept, "US"
    group.PixelValueTransformationSequence = [pvt]
    return group


def _stored_ct(**attrs: object) -> bytes:
    stored = (np.arange(16 * 16) * 16).astype(np.uint16)  # up to 4080
    return _file(_ds(16, 16, bits=16, pixels=stored.tobytes(), **attrs))


def _enhanced_slope(slope: float) -> bytes:
    ds = _ds(16, 16, frames=2, bits=16, pixels=(np.arange(2 * 256) * 8).astype(np.uint16).tobytes())
    ds.PerFrameFunctionalGroupsSequence = [_per_frame(1.0), _per_frame(slope)]
    return _file(ds)


# --------------------------------------------------------------------------- the table

J2K = _j2k()
LYING_J2K = _siz(J2K, width=20000, height=20000, tile=20000)  # one 20000^2 tile: what a decoder would allocate

# (name, data, limits or None, error class, status, code, words the detail must hold)
Case = tuple[str, Callable[[], bytes], "Limits | None", type, int, str, tuple[str, ...]]
CASES: list[Case] = [
    # compressed frames that lie about their size
    ("j2k_siz_20000", lambda: _encapsulated(JPEG2000Lossless, [LYING_J2K], 16, 16),
     None, TooLarge, 413, "too_large", ("20000x20000", "16x16", "BIOMED_MAX_DECODED_MB")),
    ("j2k_siz_mismatch", lambda: _encapsulated(JPEG2000Lossless, [_siz(J2K, height=65)], 64, 64),
     None, InputError, 422, "bad_pixel_data", ("65x64", "64x64")),
    ("j2k_components", lambda: _encapsulated(JPEG2000Lossless, [_siz(J2K, components=3)], 64, 64),
     None, InputError, 422, "bad_pixel_data", ("3 components", "1 samples")),
    ("j2k_tiles", lambda: _encapsulated(JPEG2000Lossless, [_siz(_j2k(128, 128), tile=1)], 128, 128),
     None, TooLarge, 413, "too_large", ("16384 tiles",)),
    ("jp2_wrapper_20000", lambda: _encapsulated(JPEG2000Lossless, [_siz(_j2k(jp2=True), width=20000, height=20000)], 64, 64),
     None, TooLarge, 413, "too_large", ("20000x20000",)),
    ("j2k_second_frame_lies", lambda: _encapsulated(JPEG2000Lossless, [J2K, _siz(J2K, width=20000, height=20000)], 64, 64),
     None, TooLarge, 413, "too_large", ("frame 1",)),
    ("j2k_not_a_codestream", lambda: _encapsulated(JPEG2000Lossless, [b"\0" * 64], 64, 64),
     None, InputError, 422, "bad_pixel_data", ("SOC",)),
    ("htj2k_siz_20000", lambda: _encapsulated(HTJ2KLossless, [LYING_J2K], 16, 16),
     None, TooLarge, 413, "too_large", ("20000x20000",)),
    ("jpeg_baseline_sof_20000", lambda: _encapsulated(JPEGBaseline8Bit, [_sof(_jpeg(), height=20000, width=20000)], 16, 16),
     None, TooLarge, 413, "too_large", ("20000x20000",)),
    ("jpeg_baseline_sof_mismatch", lambda: _encapsulated(JPEGBaseline8Bit, [_sof(_jpeg(), height=17)], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("17x16",)),
    ("jpeg_baseline_components", lambda: _encapsulated(JPEGBaseline8Bit, [_jpeg(mode="RGB")], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("3 components",)),
    ("jpeg_lossless_sof3_20000", lambda: _encapsulated(JPEGLossless, [_sof(_jpeg(), height=20000, width=20000, code=0xC3)], 16, 16),
     None, TooLarge, 413, "too_large", ("20000x20000",)),
    ("jpeg_dnl_zero_lines", lambda: _encapsulated(JPEGBaseline8Bit, [_sof(_jpeg(), height=0)], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("DNL",)),
    ("jpeg_too_many_scans", lambda: _encapsulated(JPEGBaseline8Bit, [_many_scans(300)], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("scans",)),
    ("jpeg_ls_sof55_20000", lambda: _encapsulated(JPEGLSLossless, [_jpeg_ls(20000, 20000)], 16, 16),
     None, TooLarge, 413, "too_large", ("20000x20000",)),
    ("jpeg_ls_mismatch", lambda: _encapsulated(JPEGLSLossless, [_jpeg_ls(16, 17)], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("16x17",)),
    ("jpeg_ls_zero_lines", lambda: _encapsulated(JPEGLSLossless, [_jpeg_ls(0, 16)], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("DNL",)),
    ("rle_segment_count", lambda: _encapsulated(RLELossless, [_rle([b"\x00\x00"] * 3)], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("3 segments", "implies 1")),
    ("rle_offset_outside", lambda: _encapsulated(RLELossless, [_rle([b"\x81\x00"], offsets=[4096])], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("offsets",)),
    ("rle_header_truncated", lambda: _encapsulated(RLELossless, [b"\x01\x00\x00\x00"], 16, 16),
     None, InputError, 422, "bad_pixel_data", ("64-byte",)),
    # decoded bytes over the cap while the pixels are under it
    ("rle_rgb16_7000", lambda: _encapsulated(RLELossless, [_rle([b"\x81\x00"] * 6)], 7000, 7000, samples=3, bits=16),
     None, TooLarge, 413, "too_large", ("BIOMED_MAX_DECODED_MB", "7000x7000")),
    ("dicom_native_over_decoded", lambda: _file(_ds(64, 64, bits=16)), Limits(max_decoded_bytes=4096),
     TooLarge, 413, "too_large", ("BIOMED_MAX_DECODED_MB",)),
    ("png_rgb_10000", lambda: _png_header(10000, 10000, color=2), None, TooLarge, 413, "too_large",
     ("BIOMED_MAX_DECODED_MB", "10000x10000")),
    ("png_rgba_9500", lambda: _png_header(9500, 9500, color=6), None, TooLarge, 413, "too_large", ("RGBA",)),
    ("png_grey16_9000", lambda: _png_header(9000, 9000, depth=16), Limits(max_decoded_bytes=100 * MB),
     TooLarge, 413, "too_large", ("BIOMED_MAX_DECODED_MB",)),
    ("png_60000", lambda: _png_header(60000, 60000), None, TooLarge, 413, "too_large", ()),
    ("jpeg_raster_60000", lambda: _sof(_jpeg(), height=60000, width=60000), None, TooLarge, 413, "too_large", ()),
    ("jpeg_raster_rgb_9000", lambda: _sof(_jpeg(mode="RGB"), height=9000, width=9000), Limits(max_decoded_bytes=64 * MB),
     TooLarge, 413, "too_large", ("BIOMED_MAX_DECODED_MB",)),
    ("jpeg_raster_dnl", lambda: _sof(_jpeg(), height=0), None, InputError, 422, "bad_pixel_data", ("DNL",)),
    ("jpeg_raster_scans", lambda: _many_scans(300), None, InputError, 422, "bad_pixel_data", ("scans",)),
    ("jpeg_raster_segments", lambda: _jpeg_comments(1_000_000), None, InputError, 422, "bad_pixel_data", ("segments",)),
    ("jpeg_dicom_segments", lambda: _encapsulated(JPEGBaseline8Bit, [_jpeg_comments(20_000)], 16, 16), None, InputError,
     422, "bad_pixel_data", ("segments",)),
    ("png_chunks", lambda: _png_chunks(200_000), None, InputError, 422, "bad_pixel_data", ("chunks",)),
    # values that overflow float32 (and would put inf into the JSON answer)
    ("slope_1e38", lambda: _stored_ct(RescaleSlope="1e38", RescaleIntercept="0"), None, InputError, 422,
     "bad_pixel_data", ("Rescale Slope",)),
    ("slope_1e39", lambda: _stored_ct(RescaleSlope="1e39", RescaleIntercept="0"), None, InputError, 422,
     "bad_pixel_data", ("Rescale Slope",)),
    ("slope_inf", lambda: _stored_ct(RescaleSlope="inf", RescaleIntercept="0"), None, InputError, 422,
     "bad_pixel_data", ("Rescale Slope",)),
    ("intercept_1e308", lambda: _stored_ct(RescaleSlope="1", RescaleIntercept="1e308"), None, InputError, 422,
     "bad_pixel_data", ("Rescale Intercept",)),
    ("per_frame_slope_1e38", lambda: _enhanced_slope(1e38), None, InputError, 422, "bad_pixel_data",
     ("Rescale Slope", "per-frame")),
    ("per_frame_slope_1e39", lambda: _enhanced_slope(1e39), None, InputError, 422, "bad_pixel_data",
     ("Rescale Slope", "per-frame")),
    ("window_center_1e39", lambda: _stored_ct(WindowCenter="1e39", WindowWidth="400"), None, InputError, 422,
     "bad_pixel_data", ("Window Center",)),
    ("window_width_nan", lambda: _stored_ct(WindowCenter="40", WindowWidth="nan"), None, InputError, 422,
     "bad_pixel_data", ("Window Width",)),
    # element-count bombs: refused from a pre-scan, before pydicom parses anything
    *[(f"elements_{kind}", (lambda kind=kind: _bomb(kind)), Limits(max_bytes=96 * MB), TooLarge, 413, "too_large",
       ("BIOMED_MAX_DICOM_ELEMENTS",))
      for kind in ("flat", "64MB", "undefined_sq", "defined_sq", "implicit_defined_sq", "items", "fragments", "meta",
                   "no_preamble")],
    ("sequences_nested_100", lambda: _nested(100), None, MalformedInput, 400, "malformed_dicom", ("nested",)),
]


@pytest.mark.parametrize("name, build, limits, error, status, code, words", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_refused(name: str, build: Callable[[], bytes], limits: Limits | None, error: type,
                                  status: int, code: str, words: tuple[str, ...]) -> None:
    data = build()
    with pytest.raises(error) as exc:
        load_image(data, SPEC, limits or Limits())
    assert (exc.value.status, exc.value.code) == (status, code), exc.value.detail
    for word in words:
        assert word in exc.value.detail, (word, exc.value.detail)
    assert "Corpus" not in exc.value.detail and "1e38" not in exc.value.detail  # numbers of sizes only
    # how fast the bombs are refused: python -m bench.refusals (docs/benchmarks.md)


def test_decoders_behind_the_table_are_installed() -> None:
    """The codestream cases above only mean something if their decoders would otherwise run."""
    from pydicom.pixels.decoders.base import get_decoder

    for ts in (JPEG2000Lossless, HTJ2KLossless, JPEGBaseline8Bit, JPEGLossless, JPEGLSLossless, RLELossless):
        assert get_decoder(UID(ts)).is_available, UID(ts).name


# --------------------------------------------------------------------------- accepted edges

def test_honest_codestreams_still_decode() -> None:
    for data in (_encapsulated(JPEG2000Lossless, [J2K], 64, 64), _encapsulated(JPEG2000Lossless, [_j2k(jp2=True)], 64, 64),
                 _encapsulated(JPEGBaseline8Bit, [_jpeg()], 16, 16)):
        x, info = load_image(data, SPEC)
        assert x.shape == (1, 1, 32, 32) and np.isfinite(x).all()


def test_rle_segment_that_expands_past_the_frame_is_bounded() -> None:
    """A PackBits segment decoding to 512 MB for a 16x16 frame: pylibjpeg-rle writes the header's 256 bytes only (the
    memory: test_rle_bomb_segment_memory below; the time: python -m bench.refusals)."""
    data = _encapsulated(RLELossless, [_rle([b"\x81\x07" * (4 * MB)])], 16, 16)
    x, info = load_image(data, SPEC, Limits(max_bytes=16 * MB))
    assert x.shape == (1, 1, 32, 32) and info["rows"] == info["columns"] == 16 and np.isfinite(x).all()


def test_excess_pixel_data_is_ignored() -> None:
    """Twice the pixel data the header describes: pydicom would read it as two frames; the header's one is used."""
    stored = (np.arange(16 * 16) % 200).astype(np.uint8)
    x, info = load_image(_file(_ds(16, 16, pixels=stored.tobytes() * 2)), SPEC)
    reference, _ = load_image(_file(_ds(16, 16, pixels=stored.tobytes())), SPEC)
    assert x.shape == (1, 1, 32, 32) and info["frames"] == 1
    np.testing.assert_array_equal(x, reference)


def test_large_but_finite_rescale_gives_finite_json() -> None:
    x, info = load_image(_stored_ct(RescaleSlope="1e30", RescaleIntercept="-1e30"), SPEC)
    json.dumps(info, allow_nan=False)
    assert np.isfinite(x).all() and info["rescale"]["slope"] == 1e30


def test_every_pydicom_file_answers_with_finite_json() -> None:
    """Every bundled file is accepted with a JSON-safe info block, or refused with an InputError."""
    root = Path(pydicom.__file__).parent / "data"
    seen = 0
    for path in sorted(p for d in ("test_files", "charset_files", "palettes") for p in (root / d).rglob("*") if p.is_file()):
        if path.suffix in (".py", ".pyc"):
            continue
        try:
            _, info = load_image(path.read_bytes(), SPEC)
        except InputError:
            continue
        json.dumps(info, allow_nan=False)
        seen += 1
    assert seen > 80


@pytest.mark.parametrize("name", ["liver_1frame.dcm", "liver_expb_1frame.dcm", "MR_small.dcm", "rtdose.dcm",
                                  "examples_ybr_color.dcm", "SC_rgb_rle_2frame.dcm"])
def test_legitimate_files_pass_a_tight_element_count(name: str) -> None:
    path = Path(pydicom.__file__).parent / "data" / "test_files" / name
    x, info = load_image(path.read_bytes(), SPEC, Limits(max_elements=2_000))
    assert x.shape[0] == info["frames"]


def test_enhanced_file_at_the_frame_cap_passes_the_default_element_count() -> None:
    """256 frames (Limits.max_frames) of scanner-like functional groups stay far below 100,000."""
    from biomed.preprocess.dicom_read import _meta_end
    from biomed.preprocess.dicom_scan import ElementScanner

    data = _enhanced(256)
    end, meta = _meta_end(data, 132, 10**9)
    scanner = ElementScanner(data, little=True, limit=10**9, count=meta)
    scanner.dataset(end, None, implicit=False)
    assert scanner.count < 25_000, scanner.count
    x, info = load_image(data, SPEC)
    assert x.shape[0] == 256 and info["rescale"]["per_frame"]  # its load time: python -m bench.refusals


def test_element_count_just_under_the_limit_is_served() -> None:
    """99,000 elements, under the default 100,000: parsed and served (its parse time: python -m bench.refusals)."""
    x, _ = load_image(_bomb("flat", n=99_000), SPEC)
    assert x.shape == (1, 1, 32, 32)
    with pytest.raises(TooLarge, match="BIOMED_MAX_DICOM_ELEMENTS"):
        load_image(_bomb("flat", n=99_000), SPEC, Limits(max_elements=98_000))


def test_banded_resize_matches_one_call(monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames larger than one band (forced small here) give what one whole-frame PIL call gives."""
    import biomed.preprocess.frames as frames

    rng = np.random.default_rng(4)
    mono = rng.integers(0, 4096, size=(300, 260)).astype(np.uint16)
    rgb = rng.integers(0, 256, size=(170, 230, 3)).astype(np.uint8)
    inputs = [_file(_ds(300, 260, bits=16, pixels=mono.tobytes(), WindowCenter=2000, WindowWidth=3000)),
              _file(_ds(300, 260, bits=16, pixels=mono.tobytes())),  # min/max window over all bands
              _file(_ds(170, 230, samples=3, pixels=rgb.tobytes()))]
    specs = [ImageSpec(size=(40, 64)), ImageSpec(size=(64, 300), channels=3, interpolation="bicubic"),
             ImageSpec(size=(32, 32), interpolation="nearest"), ImageSpec(size=(50, 50), interpolation="area")]
    whole = [[load_image(d, s)[0] for s in specs] for d in inputs]
    monkeypatch.setattr(frames, "STRIP_BYTES", 4 * 7 * 300)  # bands of a few rows
    for d, expected in zip(inputs, whole):
        for s, e in zip(specs, expected):
            np.testing.assert_allclose(load_image(d, s)[0], e, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- the decode budget

def test_decode_budget_reserves_and_releases() -> None:
    budget = DecodeBudget(100)
    with budget.reserve(60):
        assert budget.held == 60
        with pytest.raises(Overloaded) as exc:
            with budget.reserve(50):
                pass
        assert exc.value.status == 429 and exc.value.code == "too_many_requests"
        assert "BIOMED_MAX_DECODING_MB" in exc.value.detail and "retry shortly" in exc.value.detail
        with budget.reserve(40):
            assert budget.held == 100
    assert budget.held == 0
    with pytest.raises(Overloaded):
        with budget.reserve(101):
            pass
    assert budget.held == 0
    with pytest.raises(RuntimeError), budget.reserve(100):
        raise RuntimeError("the decode failed")
    assert budget.held == 0  # released on the way out of a failure too


def test_decode_budget_is_thread_safe() -> None:
    """8 threads contend for 3 units (each holds its unit across a sleep, so holders overlap): the budget is full at
    times and refuses then, and never lets more than 3 in, nor counts more than 3."""
    budget, lock, inside = DecodeBudget(3), threading.Lock(), [0]
    peak, refused, over = [0], [0], [0]
    start = threading.Barrier(8)

    def work() -> None:
        start.wait()
        for _ in range(150):
            try:
                with budget.reserve(1):
                    with lock:
                        inside[0] += 1
                        peak[0] = max(peak[0], inside[0])
                        over[0] += budget.held > 3
                    time.sleep(0.0005)
                    with lock:
                        inside[0] -= 1
            except Overloaded:
                with lock:
                    refused[0] += 1
            time.sleep(0.0001)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert budget.held == 0 and peak[0] == 3 and refused[0] > 0 and over[0] == 0, (peak, refused, over)


def test_load_image_reserves_from_the_budget() -> None:
    data = _stored_ct(WindowCenter="40", WindowWidth="400")
    budget = DecodeBudget(64 * MB)
    seen: list[int] = []
    original = budget.reserve

    def spy(nbytes: int):  # type: ignore[no-untyped-def]
        seen.append(nbytes)
        return original(nbytes)

    budget.reserve = spy  # type: ignore[method-assign]
    load_image(data, SPEC, Limits(budget=budget))
    assert seen and seen[0] > 16 * 16 * 2 and budget.held == 0
    with budget.reserve(60 * MB):  # others hold most of it: refused at once, nothing waits
        start = time.perf_counter()
        with pytest.raises(Overloaded):
            load_image(data, SPEC, Limits(budget=budget))
        assert time.perf_counter() - start < 0.5
    assert budget.held == 0
    small = DecodeBudget(1024)  # one image needing more than the whole budget could never decode within it
    with pytest.raises(TooLarge, match="BIOMED_MAX_DECODING_MB"):
        load_image(data, SPEC, Limits(budget=small))
    with pytest.raises(InputError):  # refused after reserving: the reservation is released
        load_image(_stored_ct(RescaleSlope="1e38", RescaleIntercept="0"), SPEC, Limits(budget=budget))
    assert budget.held == 0 and small.held == 0


# --------------------------------------------------------------------------- memory, in a subprocess

_MEASURE = r"""
import gc, json, resource, sys, warnings, logging
warnings.simplefilter("ignore"); logging.disable(logging.CRITICAL)
from biomed.errors import InputError
from biomed.preprocess.image import ImageSpec, Limits, load_image
warm, data = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
try:
    load_image(warm, ImageSpec(size=(32, 32)))
except InputError:
    pass
gc.collect()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    x, info = load_image(data, ImageSpec(size=(32, 32)), Limits(max_bytes=int(sys.argv[3])))
    outcome = "ok"
except InputError as exc:
    outcome = f"{exc.status} {exc.code}"
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"outcome": outcome, "peak": peak}))
"""


def _peak(tmp_path: Path, data: bytes, warm: bytes, max_bytes: int = 64 * MB) -> tuple[str, int]:
    """(outcome, peak extra RSS in bytes) of one load_image in a fresh interpreter."""
    (tmp_path / "data").write_bytes(data)
    (tmp_path / "warm").write_bytes(warm)
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "warm"), str(tmp_path / "data"), str(max_bytes)],
                         capture_output=True, text=True, timeout=60, cwd=ROOT, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["outcome"], result["peak"]


def test_refused_lying_headers_allocate_nothing(tmp_path: Path) -> None:
    """Each was decoded (or half decoded) before: the RSS it cost then is noted; now < 100 MB."""
    warm_j2k = _encapsulated(JPEG2000Lossless, [J2K], 64, 64)
    cases = [
        (_encapsulated(JPEG2000Lossless, [LYING_J2K], 16, 16), warm_j2k),  # before: +420 MB
        (_encapsulated(HTJ2KLossless, [LYING_J2K], 16, 16), warm_j2k),
        (_encapsulated(JPEGBaseline8Bit, [_sof(_jpeg(), height=20000, width=20000)], 16, 16),  # before: +1.9 GB
         _encapsulated(JPEGBaseline8Bit, [_jpeg()], 16, 16)),
        (_encapsulated(JPEGLSLossless, [_jpeg_ls(20000, 20000)], 16, 16), warm_j2k),  # before: +1.9 GB, 24 s
        (_png_zeros(10000, 10000), _jpeg()),  # before: +1.7 GB
        (_encapsulated(RLELossless, [_rle([b"\x81\x00"] * 6)], 7000, 7000, samples=3, bits=16), warm_j2k),
    ]
    for data, warm in cases:
        outcome, peak = _peak(tmp_path, data, warm)
        assert outcome.startswith("413") and peak < 100 * MB, (outcome, peak / MB)


def test_decoding_holds_about_the_decoded_bytes(tmp_path: Path) -> None:
    """An accepted 8-bit RGB PNG and a 16-bit multi-frame DICOM: peak extra RSS < 2x decoded + 48 MB (was 4-6x)."""
    rgb = np.add.outer(np.arange(3000), np.arange(3000)).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(np.stack([rgb, rgb.T, rgb // 2], -1)).save(buf, format="PNG", compress_level=1)
    mono = (np.add.outer(np.arange(1000), np.arange(1000)) % 4096).astype(np.uint16)
    dicom = _file(_ds(1000, 1000, frames=16, bits=16, pixels=np.tile(mono, (16, 1, 1)).tobytes()))
    for data, decoded, warm in ((buf.getvalue(), 3000 * 3000 * 3, _jpeg()), (dicom, 1000 * 1000 * 16 * 2, _stored_ct())):
        outcome, peak = _peak(tmp_path, data, warm)
        assert outcome == "ok" and peak < 2 * decoded + 48 * MB, (peak / decoded, peak / MB)


def test_rle_bomb_segment_memory(tmp_path: Path) -> None:
    data = _encapsulated(RLELossless, [_rle([b"\x81\x07" * (4 * MB)])], 16, 16)
    outcome, peak = _peak(tmp_path, data, _stored_ct(), max_bytes=16 * MB)
    assert outcome == "ok" and peak < 100 * MB, peak / MB
