"""One DICOM object of each storage SOP class the project writes (``biomed.outputs.DICOM_STORAGE``), over a source.

For the tests of the forwarder: a Comprehensive 3D SR (``sr.py``), and a Parametric Map and a
Secondary Capture (``dicom_maps.py``; the latter over the same source without its patient
geometry), built the way the service builds them.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from biomed.outputs import Producer, dicom_maps, sr

PRODUCER = Producer("demo-image", "20250101-000000-abcdef01", "ab" * 32, ("cavity", "nodule", "normal"))


def source(study: str | None = None, patient: str | None = None) -> pydicom.Dataset:
    """pydicom's CT_small (it has a frame of reference, position, orientation and spacing), optionally re-stamped."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if study is not None:
        ds.StudyInstanceUID = study
    if patient is not None:
        ds.PatientName = patient
    return ds


def identity_of(data: bytes | pydicom.Dataset) -> str:
    """The content identity the service gives a DICOM file (``biomed.preprocess.identity``), from its own decode."""
    from biomed.preprocess.image import ImageSpec, load_image
    from biomed.preprocess.upload import Upload

    if isinstance(data, pydicom.Dataset):
        buffer = io.BytesIO()
        data.save_as(buffer, enforce_file_format=True)
        data = buffer.getvalue()
    upload = Upload(data, identify=True)
    load_image(upload, ImageSpec())
    assert upload.identity is not None
    return upload.identity


def objects(ds: pydicom.Dataset) -> dict[str, bytes]:
    """``sr``, ``parametric_map`` and ``secondary_capture`` over ``ds``, as Part-10 bytes."""
    identity = identity_of(ds)
    header = ds.copy()
    del header.PixelData
    rng = np.random.default_rng(0)
    values = rng.normal(0, 0.1, (ds.Rows, ds.Columns)).astype(np.float32)
    rgb = rng.integers(0, 255, (ds.Rows, ds.Columns, 3), dtype=np.uint8)
    out = {"sr": sr.sr_bytes(sr.build_sr(header, np.array([[0.2, 0.3, 0.5]]), PRODUCER, identity))}
    data, kind = dicom_maps.explanation_dicom(header, values, rgb, "nodule", PRODUCER.name, PRODUCER.version, 0, 1)
    out[kind] = data
    flat = header.copy()
    del flat.FrameOfReferenceUID
    data, kind = dicom_maps.explanation_dicom(flat, values, rgb, "nodule", PRODUCER.name, PRODUCER.version, 0, 1)
    out[kind] = data
    return out


def sop_of(data: bytes) -> tuple[str, str]:
    """(SOP Class UID, SOP Instance UID) of Part-10 bytes."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID)
