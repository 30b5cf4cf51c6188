"""A CT series to one volume (``biomed/preprocess/volume.py``, ``slices.py``, ``resample.py``): order, geometry checks,
the same probabilities-to-be whichever way the series comes, caps from the headers, and highdicom's reading of it."""

from __future__ import annotations

import io
import random
import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless, generate_uid

from biomed.errors import InputError, TooLarge
from biomed.preprocess import dicom, resample
from biomed.preprocess.budget import DecodeBudget, Limits
from biomed.preprocess.volume import VolumeLimits, VolumeSpec, load_volume
from training.demo.volume_demo import WINDOW, series_datasets

SPEC = VolumeSpec(size=(24, 48, 48), spacing=(5.0, 5.0, 5.0), window=WINDOW)


def _bytes(ds: pydicom.Dataset) -> bytes:
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.fixture(scope="module")
def series() -> list[pydicom.Dataset]:
    return series_datasets(0, 3, "lesion", "")[0]


@pytest.fixture(scope="module")
def files(series: list[pydicom.Dataset]) -> list[bytes]:
    return [_bytes(ds) for ds in series]


def _enhanced(series: list[pydicom.Dataset]) -> bytes:
    import highdicom as hd

    return _bytes(hd.legacy.LegacyConvertedEnhancedCTImage(series, generate_uid(), 2, generate_uid(), 1))


def _rle(data: bytes) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.compress(RLELossless)
    return _bytes(ds)


def test_shuffled_enhanced_and_another_syntax_give_the_same_volume(series: list, files: list[bytes]) -> None:
    x, info, _ = load_volume(files, SPEC)
    assert x.shape == (1, 1, 24, 48, 48) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert info["slices"] == len(files) and info["resampled"] == [] and info["modality"] == "CT"
    shuffled = files[:]
    random.Random(4).shuffle(shuffled)
    ways = {"shuffled": shuffled, "enhanced": [_enhanced(series)], "rle": [_rle(f) for f in files[::-1]]}
    for way, sent in ways.items():
        y, other, _ = load_volume(sent, SPEC)
        assert np.abs(y - x).max() <= 1e-6, way
    assert load_volume(ways["enhanced"], SPEC)[1]["files"] == 1
    assert load_volume(ways["rle"], SPEC)[1]["transfer_syntax"] == ["RLE Lossless"]


def test_an_instance_sent_twice_counts_once(files: list[bytes]) -> None:
    x, info, _ = load_volume(files, SPEC)
    y, again, _ = load_volume(files + files[:3], SPEC)
    assert np.array_equal(x, y) and again["slices"] == info["slices"]


def test_the_volume_is_highdicom_s_on_the_series_own_grid(series: list, files: list[bytes]) -> None:
    """On the series' own grid (its size and spacing) the assembly is highdicom's volume, windowed: same order, same
    geometry, same values (highdicom after our caps, as the service would use it)."""
    import highdicom as hd

    first = series[0]
    rows, step = int(first.Rows), float(first.PixelSpacing[0])
    slice_step = float(np.diff(sorted(float(ds.ImagePositionPatient[2]) for ds in series)).mean())
    own = VolumeSpec(size=(len(series), rows, rows), spacing=(slice_step, step, step), window=WINDOW)
    x, _, grid = load_volume(files, own)
    theirs = hd.get_volume_from_series(series, apply_modality_transform=True)
    hu = theirs.array  # (slices, rows, columns), sorted along the normal as highdicom sorts them
    if theirs.affine[2, 0] < 0:
        hu = hu[::-1]
    expected = np.clip((hu - WINDOW[0]) / WINDOW[1] + 0.5, 0, 1)
    assert np.abs(x[0, 0] - expected).max() < 1e-4  # float32: within a fifteenth of a HU
    assert np.allclose(np.abs(grid.affine()[:3, :3]), np.abs(theirs.affine[:3, :3]), atol=1e-3)


@pytest.mark.parametrize(("irregular", "resampled", "code"), [
    ("tilt", ("tilt",), None), ("tilt", (), "series_tilt"), ("gap", ("gap",), None), ("gap", (), "series_gap"),
])
def test_tilted_and_gapped_series_are_refused_or_resampled(irregular: str, resampled: tuple, code: str | None) -> None:
    datasets, anatomy, _ = series_datasets(0, 3, "lesion", irregular)
    spec = VolumeSpec(SPEC.size, SPEC.spacing, SPEC.window, resampled)
    if code:
        with pytest.raises(InputError) as refused:
            load_volume([_bytes(ds) for ds in datasets], spec)
        assert refused.value.code == code and refused.value.status == 422
        return
    x, info, grid = load_volume([_bytes(ds) for ds in datasets], spec)
    assert info["resampled"] == [irregular]
    centre = np.linalg.inv(grid.affine()) @ np.array([*anatomy["lesion"][:3], 1.0])
    d, h, w = np.round(centre[:3]).astype(int)
    assert x[0, 0, d, h, w] > 0.85  # the lesion (~30 HU in a -600/1500 window) is where the headers put it


def _moved(ds: pydicom.Dataset, **changes: object) -> bytes:
    copy = pydicom.dcmread(io.BytesIO(_bytes(ds)))
    copy.SOPInstanceUID = copy.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for key, value in changes.items():
        setattr(copy, key, value)
    return _bytes(copy)


@pytest.mark.parametrize(("change", "code"), [
    ({"ImageOrientationPatient": [1, 0, 0, 0, 0, -1]}, "series_mixed"),
    ({"PixelSpacing": [1.0, 1.0]}, "series_mixed"),
    ({"SeriesInstanceUID": "1.2.3.4"}, "series_mixed"),
    ({"FrameOfReferenceUID": "1.2.3.5"}, "series_mixed"),
    ({}, "series_duplicate"),  # another instance at a position already taken
    ({"ImagePositionPatient": None}, "series_geometry"),
])
def test_mixed_series_are_refused_with_a_reason(series: list, files: list[bytes], change: dict, code: str) -> None:
    changed = dict(change)
    odd = series[5]
    if "ImagePositionPatient" in changed:
        odd = pydicom.dcmread(io.BytesIO(files[5]))
        del odd.ImagePositionPatient
        changed = {}
    with pytest.raises(InputError) as refused:
        load_volume(files + [_moved(odd, **changed)], SPEC)
    assert refused.value.code == code and refused.value.status == 422
    assert "1.2.3" not in refused.value.detail and str(series[0].SOPInstanceUID) not in refused.value.detail


def test_a_series_over_the_caps_is_refused_from_its_headers(files: list[bytes], monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """Over the voxel cap (or the bytes cap) the series is refused before any pixel is decoded or budget held."""
    def no_decode(*args: object, **kwargs: object) -> None:
        raise AssertionError("a pixel was decoded")

    monkeypatch.setattr(dicom, "load_dicom", no_decode)
    budget = DecodeBudget(2**30)
    voxels = sum(int(pydicom.dcmread(io.BytesIO(f)).Rows) ** 2 for f in files)
    for limits in (VolumeLimits(max_voxels=voxels - 1, files=Limits(budget=budget)),
                   VolumeLimits(max_series_bytes=sum(map(len, files)) - 1, files=Limits(budget=budget))):
        tracemalloc.start()
        with pytest.raises(TooLarge):
            load_volume(files, SPEC, limits)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 2 * max(map(len, files)) + 2**20 and budget.held == 0


def test_resampling_weights_interpolate_and_bridge_a_gap() -> None:
    w, inside = resample.weights(np.array([0.0, 2.5, 5.0, 12.0]), np.array([0.0, 5.0, 15.0]), 1.0)
    assert inside.tolist() == [True, True, True, True] and np.allclose(w.sum(axis=1), 1)
    assert np.allclose(w[0], [1, 0, 0]) and np.allclose(w[1], [0.5, 0.5, 0]) and np.allclose(w[2], [0, 1, 0])
    assert np.allclose(w[3] @ np.array([0.0, 5.0, 15.0]), 12.0)  # linear across the 10 mm gap
    _, outside = resample.weights(np.array([-3.0, 18.0]), np.array([0.0, 5.0, 10.0]), 5.0)
    assert outside.tolist() == [False, False]


def test_the_spec_round_trips_and_refuses_what_it_cannot_be() -> None:
    spec = VolumeSpec((16, 32, 32), (2.0, 1.5, 1.5), None, ("gap", "tilt"))
    assert VolumeSpec.from_dict(spec.to_dict()) == spec
    for bad in ({"size": (0, 32, 32)}, {"spacing": (1, 0, 1)}, {"window": (40, 0)}, {"resample": ("warp",)}):
        with pytest.raises(ValueError):
            VolumeSpec(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("irregular", ["", "tilt", "gap"])
def test_the_demo_series_are_conformant_ct_images(irregular: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """dicom3tools' dciodvfy finds no error in the demo's CT images (a regular, a tilted and a gapped series)."""
    from sr_reader import dciodvfy_errors

    slices = series_datasets(1, 2, "lesion", irregular)[0]
    for ds in (slices[0], slices[-1]):
        assert dciodvfy_errors(_bytes(ds), tmp_path) == []
