"""A malformed-input corpus against the in-process service: every item gets its documented status and error code.

The corpus is generated here (pydicom, zlib, struct), nothing binary is committed: broken and
hostile DICOM (truncated, random bytes, no pixel data, headers claiming 60,000 x 60,000 pixels
or 1,000 frames, a deflate bomb), PNG headers over the pixel cap, non-UTF-8 and oversized JSON,
sequences with every class of invalid character, empty lists and 10^6 tiny sequences. Memory
must stay bounded: the process RSS after three passes over the corpus is compared with the RSS
after the first, and the 60,000^2 header is checked with tracemalloc not to allocate its pixels.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import io
import struct
import tracemalloc
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import psutil
import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from starlette.testclient import TestClient

try:
    from tests import live_server
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server

MB = 2**20


@dataclass(frozen=True)
class Item:
    """One hostile request: a name, how to send it, and its documented answer: the status and the error code
    (docs/api.md names each)."""

    name: str
    send: Callable[[TestClient], Any]
    status: int
    code: str


# --------------------------------------------------------------------------- DICOM and PNG builders

def _ct() -> bytes:
    return open(get_testdata_file("CT_small.dcm"), "rb").read()  # noqa: SIM115 - pydicom's bundled file


def _dicom(rows: int, columns: int, frames: int | None = None, pixel_bytes: int = 16, pixels: bool = True) -> bytes:
    """A small Part-10 MONOCHROME2 secondary capture whose header may claim far more than it holds."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID = "OT", "Corpus^Test", "CORPUS-1"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if frames is not None:
        ds.NumberOfFrames = frames
    if pixels:
        ds.PixelData = bytes(pixel_bytes)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _no_pixel_data() -> bytes:
    ds = dcmread(io.BytesIO(_ct()))
    del ds.PixelData
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _deflate_bomb(inflated: int = 96 * MB) -> bytes:
    """A deflated-transfer-syntax file of ~100 kB whose dataset inflates to ``inflated`` bytes of zeros."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    out.write(deflater.compress(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, inflated)))
    zeros = bytes(MB)
    for _ in range(inflated // MB):
        out.write(deflater.compress(zeros))
    out.write(deflater.flush())
    return out.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width`` x ``height`` grey pixels, with a token IDAT."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _upload(data: bytes, name: str = "x.dcm", **fields: str) -> Callable[[TestClient], Any]:
    return lambda c: c.post("/predict_image", files={"file": (name, data, "application/octet-stream")}, data=fields)


def _json(path: str, body: Any) -> Callable[[TestClient], Any]:
    return lambda c: c.post(path, json=body)


def _raw(path: str, content: bytes | Iterator[bytes], content_type: str = "application/json",
         **headers: str) -> Callable[[TestClient], Any]:
    return lambda c: c.post(path, content=content() if callable(content) else content,
                            headers={"content-type": content_type, **headers})


def _chunks(total: int, size: int = MB) -> Callable[[], Iterator[bytes]]:
    """A chunked body of ``total`` bytes (no Content-Length): the cap must stop reading it."""
    def gen() -> Iterator[bytes]:
        yield b'{"sequences": ["'
        for _ in range(total // size):
            yield b"A" * size
        yield b'"]}'
    return gen


def _fasta(data: bytes) -> Callable[[TestClient], Any]:
    return lambda c: c.post("/predict_fasta", files={"file": ("x.fa", data)})


# --------------------------------------------------------------------------- the corpus

INVALID_CHARACTERS = {
    "digit": "ACGT5ACGT", "punctuation": "ACG-TACGT", "space_inside": "ACGT ACGT", "tab_inside": "ACGT\tACGT",
    "newline_inside": "ACGT\nACGT", "unicode_letter": "ACGTÄACGT", "greek": "ACGTαCGT", "emoji": "ACGT🧬ACGT",
    "nul": "ACGT\x00ACGT", "iupac_R": "ACGTRACGT", "iupac_Y": "acgtyacgt", "iupac_all": "ACGTWSKMBDHV",
    "uracil": "ACGU", "zero_width_space": "ACGT\u200bACGT", "fullwidth_A": "ＡCGT", "control": "ACGT\x1bACGT",
}


def corpus() -> list[Item]:
    ct = _ct()
    rng = np.random.default_rng(8)
    items = [
        Item("dicom_truncated_half", _upload(ct[: len(ct) // 2]), 422, "bad_pixel_data"),
        Item("dicom_truncated_meta", _upload(ct[:160]), 422, "no_pixel_data"),
        Item("dicom_truncated_preamble", _upload(ct[:100]), 415, "unsupported_media_type"),
        Item("dicom_random_bytes", _upload(rng.bytes(4096)), 415, "unsupported_media_type"),
        Item("dicom_random_after_preamble", _upload(b"\0" * 128 + b"DICM" + rng.bytes(4096)), 422, "no_pixel_data"),
        Item("dicom_empty_file", _upload(b""), 415, "unsupported_media_type"),
        Item("dicom_no_pixel_data", _upload(_no_pixel_data()), 422, "no_pixel_data"),
        Item("dicom_60000x60000", _upload(_dicom(60000, 60000)), 413, "too_large"),
        Item("dicom_1000_frames", _upload(_dicom(8, 8, frames=1000, pixel_bytes=64000)), 413, "too_large"),
        Item("dicom_pixels_over_cap_multiframe", _upload(_dicom(1024, 1024, frames=200)), 413, "too_large"),
        Item("dicom_pixel_data_short", _upload(_dicom(64, 64, pixel_bytes=100)), 422, "bad_pixel_data"),
        Item("dicom_zero_rows", _upload(_dicom(0, 64)), 400, "malformed_dicom"),
        Item("dicom_deflate_bomb", _upload(_deflate_bomb()), 413, "too_large"),
        Item("png_60000x60000", _upload(_png_header(60000, 60000), "x.png"), 413, "too_large"),
        Item("png_truncated", _upload(_png_header(16, 16)[:40], "x.png"), 422, "bad_pixel_data"),
        Item("jpeg_truncated", _upload(b"\xff\xd8\xff\xe0" + rng.bytes(200), "x.jpg"), 422, "bad_pixel_data"),
        Item("image_url_in_file_field", lambda c: c.post("/predict_image", files={"file": (None, "http://127.0.0.1:9/x.dcm")}),
             400, "missing_file"),
        Item("image_no_multipart_boundary", _raw("/predict_image", b"--x\r\n", "multipart/form-data"), 400, "malformed"),
        Item("image_wrong_content_type", _raw("/predict_image", b"{}", "text/plain"), 415, "unsupported_media_type"),
        Item("image_unknown_model", _upload(ct, model="nope:1"), 404, "unknown_model"),
        Item("json_not_utf8", _raw("/predict_dna", b'{"sequences": ["\xff\xfe\xfd"]}'), 400, "malformed"),
        Item("json_latin1_body", _raw("/predict_dna", '{"sequences": ["ACGTé"]}'.encode("latin-1")), 400, "malformed"),
        Item("json_truncated", _raw("/predict_dna", b'{"sequences": ["ACGT"'), 400, "malformed"),
        Item("json_deep_nesting", _raw("/predict_dna", b'{"sequences": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"),
             400, "malformed"),
        Item("json_over_upload_cap_declared", _raw("/predict_dna", b"{}", **{"content-length": str(65 * MB)}),
             413, "too_large"),
        Item("json_over_upload_cap_chunked", _raw("/predict_dna", _chunks(65 * MB)), 413, "too_large"),
        Item("json_wrong_content_type", _raw("/predict_dna", b'{"sequences": ["ACGT"]}', "text/csv"),
             415, "unsupported_media_type"),
        Item("json_not_an_object", _json("/predict_dna", ["ACGT"]), 400, "invalid_body"),
        Item("json_sequence_not_string", _json("/predict_dna", {"sequences": [12345]}), 400, "invalid_body"),
        Item("json_extra_field", _json("/predict_dna", {"sequences": ["ACGT"], "evil": 1}), 400, "invalid_body"),
        Item("sequences_empty_list", _json("/predict_dna", {"sequences": []}), 400, "invalid_body"),
        Item("sequence_empty_string", _json("/predict_dna", {"sequences": [""]}), 422, "empty_sequence"),
        Item("variants_empty_list", _json("/score_variants", {"variants": []}), 400, "invalid_body"),
        Item("explain_empty_sequence", _json("/explain_dna", {"sequence": ""}), 400, "invalid_body"),
        Item("sequences_one_million", _raw("/predict_dna", b'{"sequences": [' + b",".join([b'"A"'] * 10**6) + b"]}"),
             413, "too_large"),
        Item("bases_over_cap", _json("/predict_dna", {"sequences": ["ACGT" * 600_000]}), 413, "too_large"),
        Item("explain_over_cap", _json("/explain_dna", {"sequence": "A" * 5001}), 413, "too_large"),
        Item("variant_ref_mismatch", _json("/score_variants", {"variants": [
            {"sequence": "ACGTACGT", "position": 0, "ref": "G", "alt": "T"}]}), 422, "ref_mismatch"),
        Item("variant_position_outside", _json("/score_variants", {"variants": [
            {"sequence": "ACGT", "position": 99, "ref": "A", "alt": "T"}]}), 422, "position_out_of_range"),
        Item("variant_position_negative", _json("/score_variants", {"variants": [
            {"sequence": "ACGT", "position": -1, "ref": "A", "alt": "T"}]}), 400, "invalid_body"),
        Item("fasta_not_utf8", _fasta(b">s\nAC\xffGT\n"), 400, "malformed"),
        Item("fasta_no_header", _fasta(b"ACGT\n"), 400, "malformed"),
        Item("fasta_empty", _fasta(b""), 400, "malformed"),
        Item("fasta_bad_base", _fasta(b">s\nACGTXACGT\n"), 422, "invalid_sequence"),
        Item("fasta_bad_flag", lambda c: c.post("/predict_fasta", files={"file": ("x.fa", b">s\nACGT\n")},
                                                data={"reverse_complement": "maybe"}), 400, "malformed"),
    ]
    for kind, seq in INVALID_CHARACTERS.items():
        items.append(Item(f"dna_invalid_{kind}", _json("/predict_dna", {"sequences": [{"id": "q", "sequence": seq}]}),
                          422, "invalid_sequence"))
        items.append(Item(f"explain_invalid_{kind}", _json("/explain_dna", {"sequence": seq}), 422, "invalid_sequence"))
    return items


CORPUS = corpus()


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator[TestClient]:
    with TestClient(live_server.asgi_app(), raise_server_exceptions=False) as c:
        yield c


def _check(client: TestClient, item: Item) -> None:
    response = item.send(client)
    body = response.json()
    assert (response.status_code, body.get("error")) == (item.status, item.code), (item.name, response.text[:300])
    assert set(body) == {"error", "detail"} and all(isinstance(v, str) and v for v in body.values()), (item.name, body)


def _rss() -> int:
    """Resident memory after a collection, with glibc's free heap pages handed back (live memory, not arenas)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return psutil.Process().memory_info().rss


def test_corpus_is_refused_with_bounded_memory(client: TestClient) -> None:
    for item in CORPUS:  # warm-up pass: imports, thread pools, allocator arenas
        _check(client, item)
    before = _rss()
    held = 0  # the most one request left resident, measured from a trimmed heap just before it
    for item in CORPUS:
        start = _rss()
        _check(client, item)
        held = max(held, psutil.Process().memory_info().rss - start)
    for item in CORPUS:
        _check(client, item)
    after = _rss()
    growth = after - before
    print(f"\ncorpus {len(CORPUS)} items x 3 passes; RSS {before / MB:.0f} -> {after / MB:.0f} MB, "
          f"most held by one request {held / MB:.0f} MB")
    # The client shares this process: a 65 MB body is held by the sender and (up to the cap) by the reader.
    assert held < 3 * 64 * MB, "one refused request held more than three upload caps"
    assert growth < max(32 * MB, 0.10 * before), f"RSS grew {growth / MB:.1f} MB over two passes"


def test_invalid_character_names_sequence_position_and_character(client: TestClient) -> None:
    for kind, seq in INVALID_CHARACTERS.items():
        body = client.post("/predict_dna", json={"sequences": ["ACGT", {"id": "q7", "sequence": seq}]}).json()
        bad = next(i for i, ch in enumerate(seq) if ch.upper() not in "ACGTN")
        assert "q7" in body["detail"] and str(bad) in body["detail"], (kind, body)


def test_huge_header_is_refused_before_decoding() -> None:
    """60,000^2 8-bit pixels would be 3.6 GB: the refusal must come from the header, allocating almost nothing."""
    from biomed.errors import TooLarge
    from biomed.preprocess.image import ImageSpec, Limits, load_image

    for data in (_dicom(60000, 60000), _dicom(60000, 60000, frames=1000), _png_header(60000, 60000)):
        tracemalloc.start()
        try:
            with pytest.raises(TooLarge):
                load_image(data, ImageSpec(), Limits())
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 8 * MB, f"refusing a 60000x60000 header peaked at {peak / MB:.1f} MB"


def test_deflate_bomb_is_capped_by_the_upload_limit() -> None:
    from biomed.errors import TooLarge
    from biomed.preprocess.image import ImageSpec, Limits, load_image

    bomb = _deflate_bomb(16 * MB)
    assert len(bomb) < 64 * 1024
    with pytest.raises(TooLarge, match="inflates"):
        load_image(bomb, ImageSpec(), Limits(max_bytes=4 * MB))
