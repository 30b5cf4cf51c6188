"""Hostile and heavy DICOM inputs built in memory, small: the test suite's reproductions (tests/test_hostile_decode.py)
and the refusal timings of ``python -m bench.refusals`` use the same bytes.

Builders only (pydicom, numpy, struct): a secondary-capture dataset and its Part-10 bytes, encapsulated frames,
RLE frames, raw elements, element-count bombs hidden in every place a parser walks, and an Enhanced-MR-like
multi-frame file with scanner-like per-frame functional groups.
"""

from __future__ import annotations

import io
import struct

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

MB = 2**20


def dataset(rows: int, columns: int, *, frames: int | None = None, samples: int = 1, bits: int = 8,
        ts: str = ExplicitVRLittleEndian, pixels: bytes | None = None, **attrs: object) -> Dataset:
    """A secondary-capture dataset; native pixel data of the header's size unless `pixels` is given."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality, ds.SamplesPerPixel = "OT", samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = rows, columns
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    for key, value in attrs.items():
        setattr(ds, key, value)
    if pixels is None:
        pixels = bytes(rows * columns * samples * (bits // 8) * (frames or 1))
    ds.PixelData = pixels
    return ds


def to_file(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encapsulated(ts: str, frames: list[bytes], rows: int, columns: int, **kw: object) -> bytes:
    ds = dataset(rows, columns, ts=ts, frames=len(frames) if len(frames) > 1 else None, pixels=b"", **kw)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR, ds["PixelData"].is_undefined_length = "OB", True
    return to_file(ds)


def rle_frame(segments: list[bytes], count: int | None = None, offsets: list[int] | None = None) -> bytes:
    """One RLE frame: the 64-byte header (count and offsets may lie) and its segments."""
    if offsets is None:
        offsets, pos = [], 64
        for segment in segments:
            offsets.append(pos)
            pos += len(segment)
    header = struct.pack("<I", len(segments) if count is None else count)
    header += struct.pack(f"<{len(offsets)}I", *offsets) + b"\0" * 4 * (15 - len(offsets))
    return header + b"".join(segments)


def part10(body: bytes, ts: str = ExplicitVRLittleEndian) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ts
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    out.write(body)
    return out.getvalue()


def element(group: int, number: int, vr: bytes, value: bytes = b"") -> bytes:
    """An explicit-VR little-endian element with a short (16-bit) length."""
    return struct.pack("<HH2sH", group, number, vr, len(value)) + value


def implicit_element(group: int, number: int, value: bytes = b"") -> bytes:
    """An implicit-VR little-endian element."""
    return struct.pack("<HHI", group, number, len(value)) + value


def image_group(implicit: bool = False, pixel_data: bool = True) -> bytes:
    """The (0028) group of a 4x4 8-bit grey image and its pixel data."""
    us = [(0x0002, 1), (0x0010, 4), (0x0011, 4), (0x0100, 8), (0x0101, 8), (0x0102, 7), (0x0103, 0)]
    if implicit:
        out = b"".join(implicit_element(0x0028, e, struct.pack("<H", v)) for e, v in us)
        out += implicit_element(0x0028, 0x0004, b"MONOCHROME2 ")
        return out + (implicit_element(0x7FE0, 0x0010, bytes(16)) if pixel_data else b"")
    out = b"".join(element(0x0028, e, b"US", struct.pack("<H", v)) for e, v in us)
    out += element(0x0028, 0x0004, b"CS", b"MONOCHROME2 ")
    return out + (struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 16) + bytes(16) if pixel_data else b"")


EMPTY = element(0x0009, 0x1010, b"LO")  # an empty private element: 8 bytes
ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQ_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def bomb(kind: str, n: int = 1_000_000) -> bytes:
    """An element-count bomb of `n` tiny elements, hidden in the place `kind` names."""
    if kind == "flat":
        return part10(EMPTY * n + image_group())
    if kind == "64MB":
        return part10(EMPTY * (8 * MB - 200) + image_group())
    if kind == "undefined_sq":
        sq = struct.pack("<HH2sHI", 0x0009, 0x1020, b"SQ", 0, 0xFFFFFFFF)
        return part10(sq + ITEM + EMPTY * n + ITEM_END + SEQ_END + image_group())
    if kind == "defined_sq":  # parsed by pydicom only when accessed: load_image accesses this one
        inner = EMPTY * n
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        return part10(element(0x0028, 0x0008, b"IS", b"1 ") + struct.pack("<HH2sHI", 0x5200, 0x9230, b"SQ", 0, len(item))
                       + item + image_group())
    if kind == "implicit_defined_sq":
        inner = implicit_element(0x0009, 0x1010) * n
        item = struct.pack("<HHI", 0xFFFE, 0xE000, len(inner)) + inner
        return part10(struct.pack("<HHI", 0x5200, 0x9230, len(item)) + item + image_group(implicit=True),
                      ImplicitVRLittleEndian)
    if kind == "items":
        items = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * (n // 4)
        return part10(element(0x0028, 0x0008, b"IS", b"1 ")
                      + struct.pack("<HH2sHI", 0x5200, 0x9230, b"SQ", 0, len(items)) + items + image_group())
    if kind == "fragments":
        fragments = struct.pack("<HHI", 0xFFFE, 0xE000, 0) * n
        pixel = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF) + fragments + SEQ_END
        return part10(image_group(pixel_data=False) + pixel, RLELossless)
    if kind == "meta":
        meta_bomb = element(0x0002, 0x0100, b"UI") * n  # inside the file meta group
        data = part10(image_group())
        end = data.index(b"\x28\x00\x02\x00")
        return data[:end] + meta_bomb + data[end:]
    if kind == "no_preamble":
        return implicit_element(0x0009, 0x1010) * n + image_group(implicit=True)
    raise ValueError(kind)


def enhanced(frames: int) -> bytes:
    """An Enhanced-MR-like file: per-frame functional groups as scanners write them, `frames` frames."""
    stored = (np.arange(frames * 32 * 32) % 4000).astype(np.uint16)
    ds = dataset(32, 32, frames=frames, bits=16, pixels=stored.tobytes())
    groups = []
    for i in range(frames):
        group, content, position, orientation, measures, pvt, voi = (Dataset() for _ in range(7))
        content.FrameAcquisitionNumber, content.InStackPositionNumber, content.DimensionIndexValues = i, i + 1, [1, i + 1]
        content.StackID, content.TemporalPositionIndex = "1", 1
        position.ImagePositionPatient = [0.0, 0.0, float(i)]
        orientation.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        measures.PixelSpacing, measures.SliceThickness = [0.5, 0.5], 1.0
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = 1.0, float(-i), "US"
        voi.WindowCenter, voi.WindowWidth = 2000.0, 4000.0
        group.FrameContentSequence, group.PlanePositionSequence = [content], [position]
        group.PlaneOrientationSequence, group.PixelMeasuresSequence = [orientation], [measures]
        group.PixelValueTransformationSequence, group.FrameVOILUTSequence = [pvt], [voi]
        groups.append(group)
    ds.PerFrameFunctionalGroupsSequence = groups
    return to_file(ds)
