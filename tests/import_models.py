"""Models no code of this project built, for tests/test_import.py: their files, descriptions and original
preprocessing (a NumPy one-hot; MONAI's own transforms; torchvision's Normalize in ``.venv-vision``).

- ``keras_dna``: a torch DNA model on (N, L, 4) float (the Keras layout), softmax over 2 classes, saved as
  TorchScript;
- ``signal_dna``: a regression DNA model on (N, 4, L), one output of width 2 (``signal``, ``coverage``),
  exported to ONNX with a fixed batch size of 4;
- ``monai_bundle``: a MONAI bundle around a MONAI DenseNet121 (2D), ScaleIntensityRange + Resize;
- the ResNet-18 comes from ``tests/vision_model.py``, run in ``.venv-vision``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

KERAS_LENGTH, SIGNAL_LENGTH, SIGNAL_BATCH = 40, 32, 4
KERAS = {"kind": "dna", "labels": ["bound", "unbound"], "output": {"type": "probabilities", "activation": "softmax"},
         "dna": {"layout": "NL4", "length": KERAS_LENGTH, "stride": 16, "alphabet": "ACGT", "n_value": 0.25}}
SIGNAL = {"kind": "dna", "labels": ["signal", "coverage"], "description": "a regression model of two tracks",
          "output": {"type": "regression", "units": ["1", "{count}"]},
          "dna": {"layout": "N4L", "length": SIGNAL_LENGTH, "stride": 10, "alphabet": "TGCA", "n_value": 0,
                  "reverse_complement": False}}
RESNET = {"kind": "image", "labels": ["benign", "malignant", "normal"], "output": {"type": "logits", "activation": "softmax"},
          "image": {"layout": "NCHW", "channels": 3, "size": [64, 64], "mean": [0.485, 0.456, 0.406],
                    "std": [0.229, 0.224, 0.225]}}
HU_RANGE = {"a_min": -200.0, "a_max": 300.0, "b_min": 0.0, "b_max": 1.0}
MONAI_LABELS = ["cyst", "mass", "clear"]


def keras_dna(out: Path) -> Path:
    """The Keras-layout model as TorchScript (``model.ts``)."""
    import torch
    from torch import nn

    class KerasLayout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 8, 7)
            self.head = nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, L, 4) one-hot, alphabet ACGT
            h = torch.relu(self.conv(x.transpose(1, 2))).amax(dim=2)  # (N, 8)
            return torch.softmax(self.head(h), dim=1)  # (N, 2)

    torch.manual_seed(1)
    path = out / "keras.ts"
    torch.jit.save(torch.jit.script(KerasLayout().eval()), str(path))
    return path


def signal_dna(out: Path) -> tuple[Path, object]:
    """The regression model as ONNX with a fixed batch size (``signal.onnx``), and the torch module itself."""
    import torch
    from torch import nn

    class Signal(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(4, 6, 5)
            self.head = nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 4, L) one-hot, alphabet TGCA
            return self.head(torch.tanh(self.conv(x)).mean(dim=2)) + torch.tensor([0.05, 0.2])  # (N, 2) values

    torch.manual_seed(2)
    model = Signal().eval()
    path = out / "signal.onnx"
    torch.onnx.export(model, (torch.zeros(SIGNAL_BATCH, 4, SIGNAL_LENGTH),), str(path), dynamo=False,
                      input_names=["onehot"], output_names=["tracks"], opset_version=15)
    return path, model


def monai_bundle(out: Path) -> Path:
    """A 2D classification bundle: DenseNet121 (1 channel, 3 classes) as ``models/model.pt`` with ``network_def``."""
    import torch
    from monai.networks.nets import DenseNet121

    folder = out / "ct_bundle"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.manual_seed(3)
    net = DenseNet121(spatial_dims=2, in_channels=1, out_channels=3)
    torch.save(net.state_dict(), folder / "models" / "model.pt")
    meta = {"name": "CT finding classification (test)", "version": "0.1.0", "description": "a test bundle",
            "network_data_format": {
                "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                     "spatial_shape": [64, 64], "dtype": "float32", "value_range": [-1024, 3071]}},
                "outputs": {"pred": {"type": "probabilities", "format": "classes", "num_channels": 3,
                                     "spatial_shape": [1], "dtype": "float32", "value_range": [0, 1],
                                     "channel_def": {str(i): label for i, label in enumerate(MONAI_LABELS)}}}}}
    inference = {
        "network_def": {"_target_": "DenseNet121", "spatial_dims": 2, "in_channels": 1, "out_channels": 3},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image", "reader": "PydicomReader"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", **HU_RANGE, "clip": True},
            {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64], "mode": "area"},
            {"_target_": "EnsureTyped", "keys": "image"}]},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]},
    }
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta, indent=2))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=2))
    return folder


def monai_reference(folder: Path, dicom: Path) -> np.ndarray:
    """The bundle's own answer for a file: MONAI's transforms from its inference.json, the network, softmax."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    x = parser.get_parsed_content("preprocessing")({"image": str(dicom)})["image"]  # (1, 64, 64) as MONAI reads it
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(folder / "models" / "model.pt", weights_only=True))
    with torch.no_grad():
        return torch.softmax(net.eval()(torch.as_tensor(x)[None].float()), dim=1).double().numpy()[0]


def onehot(sequence: str, alphabet: str, n_value: float) -> np.ndarray:
    """(L, 4) float: each base's column in ``alphabet`` order, N as ``n_value`` in every column."""
    out = np.full((len(sequence), 4), 0.0)
    for i, base in enumerate(sequence.upper()):
        if base == "N":
            out[i] = n_value
        else:
            out[i, alphabet.index(base)] = 1.0
    return out


def revcomp(sequence: str) -> str:
    return sequence.upper()[::-1].translate(str.maketrans("ACGTN", "TGCAN"))


def dicom(pixels: np.ndarray, photometric: str, rescale: tuple[float, float] | None = None) -> bytes:
    """A Part-10 DICOM of ``pixels`` (rows, columns[, 3]): uint8 RGB, or int16 MONOCHROME2 with a Modality LUT."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = "1.2.840.10008.5.1.4.1.1.2" if rescale else "1.2.840.10008.5.1.4.1.1.7"
    ds.file_meta.MediaStorageSOPClassUID, ds.SOPClassUID = sop_class, sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = ("CT" if rescale else "OT"), "TEST", "Test^Import"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 3 if photometric == "RGB" else 1
    if photometric == "RGB":
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = ds.BitsStored = 8 * pixels.dtype.itemsize
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    import io

    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()
