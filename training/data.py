"""Data sets held in memory: images through the shared presentation pipeline, DNA as codes.

Both go through ``biomed.preprocess`` — the same functions the server calls — so
training and serving cannot drift apart.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from biomed.errors import InputError
from biomed.preprocess import dna
from biomed.preprocess.image import ImageSpec, Limits, load_image_file
from biomed.progress import progress_bar

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".dcm", ".dicom", ".png", ".jpg", ".jpeg", ""}


class DataError(ValueError):
    """The training data cannot be used; the message says why in one line."""


@dataclass
class Dataset:
    """Inputs and targets in memory.

    ``x`` is (N, C, H, W) float32 for images and (N, L) uint8 codes for DNA;
    ``y`` is (N,) int64 class indices for images and (N, T) float32 0/1 for DNA.
    """

    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    multilabel: bool
    sources: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def subset(self, index: np.ndarray) -> "Dataset":
        return Dataset(self.x[index], self.y[index], self.labels, self.multilabel, [self.sources[i] for i in index])


def _image_items(data: Path) -> list[tuple[Path, str]]:
    """(path, label) pairs from a folder of class sub-folders or a ``path,label`` CSV."""
    if not data.exists():
        raise DataError(f"data {str(data)!r} does not exist; give a folder with one sub-folder per class or a CSV path,label")
    if data.is_file():
        with data.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not {"path", "label"} <= set(rows[0]):
            raise DataError(f"{data.name}: a CSV needs the columns path,label")
        return [((data.parent / r["path"]).resolve(), r["label"]) for r in rows]
    classes = sorted(p.name for p in data.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"{data}: found {len(classes)} class sub-folders; need at least 2")
    return [
        (path, label)
        for label in classes
        for path in sorted((data / label).rglob("*"))
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    ]


def load_images(data: str | Path, spec: ImageSpec) -> Dataset:
    """Load every image through the presentation pipeline; unreadable files are skipped and counted.

    Multi-frame files contribute their first frame.
    """
    items = _image_items(Path(data))
    labels = sorted({label for _, label in items})
    xs, ys, sources, skipped = [], [], [], {}
    for path, label in progress_bar(items, "loading images"):
        try:
            x, _ = load_image_file(path, spec, Limits())
        except (InputError, OSError) as err:
            code = getattr(err, "code", "unreadable")
            skipped[code] = skipped.get(code, 0) + 1
            log.warning("skipped %s: %s", path.name, code)
            continue
        xs.append(x[0])
        ys.append(labels.index(label))
        sources.append(str(path))
    if len(set(ys)) < 2:
        raise DataError(f"{data}: fewer than 2 classes have readable images ({sum(skipped.values())} files skipped)")
    return Dataset(np.stack(xs), np.asarray(ys, dtype=np.int64), labels, False, sources, skipped)


def load_dna_table(path: str | Path) -> Dataset:
    """Load a ``sequence,<task1>,<task2>...`` table of 0/1 labels.

    Sequences of different lengths are padded with N, centred, to the longest one.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data {str(path)!r} is not a file; give a table sequence,<task1>,<task2>...")
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0] != "sequence" or len(header) < 2:
            raise DataError(f"{path.name}: the header must be sequence,<task1>,<task2>...")
        rows = list(reader)
    if not rows:
        raise DataError(f"{path.name}: no rows")
    tasks = header[1:]
    codes = [dna.encode(row[0], name=f"row {i + 2}") for i, row in enumerate(rows)]
    length = max(len(c) for c in codes)
    x = np.stack([dna.pad_centre(c, length) for c in codes])
    try:
        y = np.asarray([[float(v) for v in row[1:]] for row in rows], dtype=np.float32)
    except ValueError as err:
        raise DataError(f"{path.name}: labels must be 0 or 1 ({err})") from None
    if y.shape[1] != len(tasks) or not np.isin(y, (0.0, 1.0)).all():
        raise DataError(f"{path.name}: every row needs one 0/1 label per task ({', '.join(tasks)})")
    return Dataset(x, y, tasks, True, [f"row {i + 2}" for i in range(len(rows))])


def split_indices(y: np.ndarray, seed: int, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
    """Train/validation/test indices held out by seed; stratified by class for single-label data."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)] if y.ndim == 1 else [np.arange(len(y))]
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for group in groups:
        group = rng.permutation(group)
        n_test = max(1, round(len(group) * test_fraction))
        n_val = max(1, round(len(group) * val_fraction))
        parts["test"].append(group[:n_test])
        parts["val"].append(group[n_test : n_test + n_val])
        parts["train"].append(group[n_test + n_val :])
    return {name: np.sort(np.concatenate(p)) for name, p in parts.items()}
