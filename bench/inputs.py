"""What the benchmark sends: the models under test, a 512x512 CT slice, DNA request bodies."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomed.preprocess.image import ImageSpec


@dataclass(frozen=True)
class Model:
    """A stored model under test: its reference, ONNX file and metadata document."""

    kind: str  # image | dna
    ref: str  # name:version
    path: Path
    doc: dict

    @property
    def name(self) -> str:
        return self.ref.split(":")[0]

    @property
    def image_spec(self) -> ImageSpec:
        return ImageSpec.from_dict(self.doc["preprocess"])

    @property
    def length(self) -> int:
        return int(self.doc["preprocess"]["length"])


def load_model(ref: str, kind: str) -> Model:
    """Resolve a store reference and check it is a ``kind`` model (``biomed.runtime.locate``: no session yet)."""
    from biomed.runtime import locate

    found = locate(ref, kind=kind)
    return Model(found.kind, found.ref, found.path, found.doc)


def ct_slice(out: Path, size: int = 512) -> Path:
    """A synthetic CT slice at clinical size: a demo phantom resampled to ``size`` x ``size``, 16-bit, rescaled HU.

    Explicit VR little endian, about 0.5 MB for 512 x 512: the common case for a CT upload.
    """
    import pydicom
    from PIL import Image

    from training.demo.dicom_demo import generate_images

    with tempfile.TemporaryDirectory() as tmp:
        generate_images(Path(tmp), n=2, seed=7, classes=("nodule",))
        ds = pydicom.dcmread(next(Path(tmp).rglob("*.dcm")))
    stored = ds.pixel_array.astype(np.float32)
    big = np.asarray(Image.fromarray(stored).resize((size, size), Image.Resampling.BILINEAR))
    ds.Rows = ds.Columns = size
    ds.PixelData = np.clip(np.rint(big), 0, 65535).astype(np.uint16).tobytes()
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return out


def ct_small(out: Path) -> Path:
    """pydicom's CT_small.dcm (128 x 128, 16-bit, 39 KB): a small upload, where the per-request cost shows most."""
    from pydicom.data import get_testdata_file

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    return out


def random_sequence(length: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return np.frombuffer(b"ACGT", dtype=np.uint8)[rng.integers(0, 4, length)].tobytes().decode()


def dna_body(out: Path, length: int) -> Path:
    """``{"sequences": [one random sequence of the model's length]}``: one window, two strands."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sequences": [random_sequence(length, seed=1)]}))
    return out
