"""Training volume models: series through the serving side's assembly, flips, shifts and intensity jitter in 3D."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from biomed.errors import InputError
from biomed.kinds.volume import KIND as VOLUME
from biomed.preprocess.volume import VolumeSpec, load_volume, series_files
from biomed.progress import progress_bar
from training.config import TrainConfig
from training.data import DataError, Dataset
from training.kinds.base import TrainingKind

log = logging.getLogger(__name__)


def volume_spec(config: TrainConfig) -> VolumeSpec:
    """The assembly a run's series go through: its size, spacing, window and what it resamples."""
    return VolumeSpec(size=tuple(config.volume_size), spacing=tuple(config.spacing),  # type: ignore[arg-type]
                      window=config.window, resample=tuple(config.resample))


def series_items(data: Path) -> list[tuple[Path, str]]:
    """(series folder, label) pairs: a folder with a sub-folder per class holding a folder per series, or a CSV
    ``path,label`` of series folders (relative to the CSV)."""
    if not data.exists():
        raise DataError(f"data {str(data)!r} does not exist; give a folder with one sub-folder per class, each holding "
                        "one folder per series, or a CSV path,label of series folders")
    if data.is_file():
        with data.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"path", "label"} <= set(rows[0]):
            raise DataError(f"{data.name}: a CSV needs the columns path,label (path: a series folder)")
        return [((data.parent / r["path"]).resolve(), r["label"]) for r in rows]
    classes = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{data}: found {len(classes)} class sub-folders; need at least 2")
    return [(series, label) for label in classes for series in sorted((data / label).iterdir())
            if series.is_dir() and not series.name.startswith(".")]


def load(config: TrainConfig) -> Dataset:
    """Every series through ``load_volume``; a series that is refused (a gap, a tilt, a mix) is skipped and counted
    under its code, as unreadable images are."""
    spec = volume_spec(config)
    items = series_items(Path(config.data))
    labels = sorted({label for _, label in items})
    xs, ys, sources, skipped, modalities = [], [], [], {}, set()
    for path, label in progress_bar(items, "loading series"):
        try:
            x, info, _ = load_volume(series_files(path), spec)
        except (InputError, OSError) as err:
            code = getattr(err, "code", "unreadable")
            skipped[code] = skipped.get(code, 0) + 1
            log.debug("skipped %s: %s", path.name, code)
            continue
        xs.append(x[0])
        ys.append(labels.index(label))
        sources.append(str(path))
        modalities.add(info["modality"] or "")
    if skipped:
        log.warning("skipped %d of %d series (%s): refused as a server would refuse them", sum(skipped.values()),
                    len(items), ", ".join(f"{code} {n}" for code, n in sorted(skipped.items())))
    if len(set(ys)) < 2:
        raise DataError(f"{config.data}: fewer than 2 classes have usable series ({sum(skipped.values())} skipped)")
    return Dataset(np.stack(xs), np.asarray(ys, dtype=np.int64), labels, False, sources, skipped,
                   sorted(m for m in modalities if m))


def augment(x: torch.Tensor, max_shift: int = 2, jitter: float = 0.05) -> torch.Tensor:
    """Random flips (left-right, head-feet), small shifts and intensity jitter on a (N, 1, D, H, W) batch in [0, 1]."""
    n = x.shape[0]
    for axis in (4, 2):
        flip = torch.rand(n) < 0.5
        x = torch.where(flip[:, None, None, None, None], x.flip(axis), x)
    shifts = tuple(int(v) for v in torch.randint(-max_shift, max_shift + 1, (3,)))
    x = torch.roll(x, shifts=shifts, dims=(2, 3, 4))
    scale = 1 + jitter * (2 * torch.rand(n, 1, 1, 1, 1) - 1)
    offset = jitter * (2 * torch.rand(n, 1, 1, 1, 1) - 1)
    return (x * scale + offset).clamp(0, 1)


def block_means(x: np.ndarray, block: int = 4) -> np.ndarray:
    """The baselines' view of (N, C, D, H, W) volumes: means of block x block x block voxels, flattened."""
    n, c, *dims = x.shape
    d, h, w = (max(1, v // block) for v in dims)
    bd, bh, bw = (max(1, v // k) for v, k in zip(dims, (d, h, w)))
    cropped = x[:, :, : d * bd, : h * bh, : w * bw]
    return cropped.reshape(n, c, d, bd, h, bh, w, bw).mean(axis=(3, 5, 7)).reshape(n, -1)


def preprocess(config: TrainConfig, x: np.ndarray) -> dict[str, Any]:
    """The run's spec, its size as the held-out (N, 1, D, H, W) inputs have it."""
    spec = volume_spec(config)
    return VolumeSpec(tuple(int(v) for v in x.shape[2:]), spec.spacing, spec.window,  # type: ignore[arg-type]
                      spec.resample).to_dict()


KIND = TrainingKind(VOLUME.name, load, augment, block_means, preprocess,
                    "a folder with one sub-folder per class, each holding one folder per series (its DICOM files), "
                    "or a CSV path,label of series folders")
