"""A 3D MONAI bundle imported as a volume model (training/bundle_volume.py, biomed/importing/adapters/volume.py):
its configs read as a volume description, the adapter's axes and flips exact against NumPy, the served answer the
network's on the service's volume, that volume MONAI's own (Orientation, Spacing, ScaleIntensityRange,
ResizeWithPadOrCrop) within resampling, and unsupported transforms refused with their names."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from biomed.importing.errors import ImportRefused
from biomed.preprocess.volume import VolumeSpec, load_volume, series_files

LABELS = ["normal", "lesion"]
PIXDIM, SHAPE = 7.5, [32, 32, 16]  # MONAI's (x, y, z) after Orientation RAS
HU = {"a_min": -1350.0, "a_max": 150.0, "b_min": 0.0, "b_max": 1.0}


def _bundle(out: Path, extra: list[dict] | None = None, skip: str = "") -> Path:
    """A 3D classification bundle: a small 3D CNN (random weights) as TorchScript, RAS, 7.5 mm, a lung range."""
    import torch

    from models.volume import cnn3d

    folder = out / f"vol_bundle{'-' + skip if skip else ''}{len(extra or [])}"
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    torch.manual_seed(4)
    net = cnn3d(num_classes=2).eval()
    torch.jit.trace(net, torch.rand(1, 1, *SHAPE)).save(str(folder / "models" / "model.ts"))
    meta = {"name": "CT lesion (test)", "description": "a 3D test bundle", "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1, "spatial_shape": SHAPE}},
        "outputs": {"pred": {"type": "probabilities", "num_channels": 2, "channel_def": dict(enumerate(LABELS))}}}}
    steps = [{"_target_": "LoadImaged", "keys": "image", "reader": "PydicomReader"},
             {"_target_": "EnsureChannelFirstd", "keys": "image"},
             {"_target_": "Orientationd", "keys": "image", "axcodes": "RAS"},
             {"_target_": "Spacingd", "keys": "image", "pixdim": [PIXDIM] * 3, "mode": "bilinear"},
             {"_target_": "ScaleIntensityRanged", "keys": "image", **HU, "clip": True},
             {"_target_": "ResizeWithPadOrCropd", "keys": "image", "spatial_size": SHAPE},
             *(extra or []), {"_target_": "EnsureTyped", "keys": "image"}]
    steps = [s for s in steps if not s["_target_"].startswith(skip or "-")]
    inference = {"preprocessing": {"_target_": "Compose", "transforms": steps},
                 "postprocessing": {"_target_": "Compose", "transforms": [
                     {"_target_": "Activationsd", "keys": "pred", "softmax": True}]}}
    (folder / "configs" / "metadata.json").write_text(json.dumps(meta))
    (folder / "configs" / "inference.json").write_text(json.dumps(inference))
    return folder


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.demo.volume_demo import generate_volumes

    return generate_volumes(tmp_path_factory.mktemp("vol-series"), n=2, seed=5) / "lesion" / "series_0001"


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, demo_models: dict[str, str]) -> tuple[Path, str]:
    from training.bundle import import_bundle

    folder = _bundle(tmp_path_factory.mktemp("vol-bundle"))
    return folder, import_bundle(folder, "imp-volume")


def test_a_3d_bundle_is_read_as_a_volume_model(imported: tuple[Path, str]) -> None:
    from biomed import metadata
    from biomed.store import onnx_path, resolve
    from training.bundle import describe

    folder, tag = imported
    found = describe(folder)
    assert found["kind"] == "volume" and found["labels"] == LABELS
    assert found["volume"] == {"size": SHAPE, "axes": "RAS", "spacing": [PIXDIM] * 3, "intensity_range": HU}
    doc = metadata.read(onnx_path(resolve(tag)))
    assert doc["kind"] == "volume" and doc["input"]["shape"] == ["batch", 1, 16, 32, 32]
    assert doc["preprocess"]["window"] == [-600.0, 1500.0] and doc["preprocess"]["spacing"] == [PIXDIM] * 3


def test_the_served_answer_is_the_network_s_on_the_service_volume_in_monai_axes(imported, series: Path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from biomed.runtime import RuntimeOptions, load_model

    folder, tag = imported
    model = load_model(tag, RuntimeOptions())
    x, _, _ = load_volume(series_files(series), VolumeSpec.from_dict(model.doc["preprocess"]))
    ras = np.ascontiguousarray(x.transpose(0, 1, 4, 3, 2)[:, :, ::-1, ::-1, :])  # (x to the right, y to the front, z)
    net = torch.jit.load(str(folder / "models" / "model.ts")).eval()
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(ras)), dim=1).numpy()
    assert np.abs(model.run(x) - expected).max() <= 1e-4


def test_the_service_volume_is_monai_s_within_resampling(imported, series: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """MONAI's own transforms on the series, and the service's assembly put in MONAI's axes: the same volume but
    for the two resamplers' differences (an asymmetric bright block lands in the same corner)."""
    import pydicom
    from monai.bundle import ConfigParser

    folder, _ = imported
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    pre = parser.get_parsed_content("preprocessing")
    block = tmp_path / "block"
    block.mkdir()
    top = max(float(pydicom.dcmread(p).ImagePositionPatient[2]) for p in series.iterdir())
    for path in sorted(series.iterdir()):  # a block near the head, at the front, on the patient's right
        ds = pydicom.dcmread(path)
        pixels = np.zeros((ds.Rows, ds.Columns), np.uint16)
        if float(ds.ImagePositionPatient[2]) > top - 30:
            pixels[:15, :15] = 3000
        ds.PixelData = pixels.tobytes()
        ds.save_as(block / path.name)
    spec = VolumeSpec((16, 32, 32), (PIXDIM,) * 3, (-600.0, 1500.0))
    for folder_of in (series, block):
        theirs = np.asarray(pre({"image": str(folder_of)})["image"])[0]
        x, _, _ = load_volume(series_files(folder_of), spec)
        ours = x[0, 0].transpose(2, 1, 0)[::-1, ::-1, :]
        assert np.corrcoef(ours.ravel(), theirs.ravel())[0, 1] > 0.85
    assert np.abs(np.argwhere(ours > 0.9).mean(axis=0) - np.argwhere(theirs > 0.9).mean(axis=0)).max() <= 1.0


@pytest.mark.parametrize(("extra", "skip", "reason"), [
    ([{"_target_": "Resized", "keys": "image", "spatial_size": SHAPE}], "", "Resize"),
    ([], "Orientation", "Orientation"),
    ([{"_target_": "RandFlipd", "keys": "image"}], "", "RandFlip"),
])
def test_unsupported_3d_preprocessing_is_refused_by_name(tmp_path: Path, extra: list, skip: str, reason: str) -> None:
    from training.bundle import describe

    with pytest.raises(ImportRefused, match=reason):
        describe(_bundle(tmp_path, extra, skip))
    shutil.rmtree(tmp_path, ignore_errors=True)
