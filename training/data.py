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

    ``x`` is (N, C, H, W) float32 for images, (N, 1, D, H, W) float32 for volumes and (N, L) uint8 codes for DNA;
    ``y`` is (N,) int64 class indices for images and (N, T) float32 0/1 for DNA.
    """

    x: np.ndarray
    y: np.ndarray
    labels: list[str]
    multilabel: bool
    sources: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    modalities: list[str] = field(default_factory=list)  # DICOM modalities seen (volumes), for the model's metadata

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


FASTA_SUFFIXES = (".fa", ".fasta", ".fna", ".fa.gz", ".fasta.gz", ".fna.gz")
BED_SUFFIXES = (".bed", ".bed.gz")


def load_dna(path: str | Path, reference: str | Path | None = None) -> Dataset:
    """A DNA data set by file suffix: FASTA with labels, BED (needs ``reference``) or a CSV table."""
    name = str(path).lower()
    if name.endswith(FASTA_SUFFIXES):
        return load_fasta_labels(path)
    if name.endswith(BED_SUFFIXES):
        if reference is None:
            raise DataError(f"{Path(path).name}: BED intervals need a reference genome; add --reference REF.fa")
        return load_bed(path, reference)
    return load_dna_table(path)


def _stack(codes: list[np.ndarray], labels: list[list[float]], tasks: list[str], sources: list[str]) -> Dataset:
    length = max(len(c) for c in codes)
    x = np.stack([dna.pad_centre(c, length) for c in codes])
    return Dataset(x, np.asarray(labels, dtype=np.float32), tasks, True, sources)


def _label(value: str, task: str, where: str) -> float:
    if value not in ("0", "1", "0.0", "1.0"):
        raise DataError(f"{where}: label {task}={value!r} must be 0 or 1")
    return float(value)


def load_fasta_labels(path: str | Path) -> Dataset:
    """Load a FASTA whose headers carry 0/1 labels as ``TASK=value`` words (plain or gzip).

    Example::

        >seq1 CTCF=1 REST=0
        ACGTTGCA...

    The first word is the record's id; other words without ``=`` are ignored. The
    tasks are the union of the keys, in order of first appearance, and every record
    must label every task. Sequences are N-padded, centred, to the longest.
    """
    from biomed.genome import GenomeError, read_fasta

    try:
        records = read_fasta(path)
    except GenomeError as err:
        raise DataError(str(err)) from None
    parsed = []
    for r in records:
        pairs = [w.split("=", 1) for w in r.header.split()[1:] if "=" in w]
        parsed.append({k: v for k, v in pairs})
    tasks = list(dict.fromkeys(k for p in parsed for k in p))
    if not tasks:
        raise DataError(f"{Path(path).name}: no labels in the headers; write them as '>id TASK1=0 TASK2=1'")
    codes, labels = [], []
    for r, p in zip(records, parsed):
        where = f"{Path(path).name}: record {r.id!r} (line {r.line})"
        missing = [t for t in tasks if t not in p]
        if missing:
            raise DataError(f"{where} has no label for {', '.join(missing)}; every record needs TASK=0/1 for every "
                            f"task ({', '.join(tasks)})")
        labels.append([_label(p[t], t, where) for t in tasks])
        codes.append(dna.encode(r.sequence, name=r.id))
    return _stack(codes, labels, tasks, [r.id for r in records])


def _bed_rows(path: Path) -> tuple[list[str], bool, list[tuple[int, list[str]]]]:
    """Task names, whether a name column is present, and (line, fields) of every interval."""
    from biomed.genome import open_text

    header, rows = None, []
    with open_text(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip() or line.startswith(("track", "browser")):
                continue
            if line.startswith("#"):
                if header is None and rows == []:
                    header = line[1:].split()
                continue
            rows.append((number, line.split()))
    if not header or [h.lower() for h in header[:3]] != ["chrom", "start", "end"]:
        raise DataError(f"{path.name}: the first line must be a header '#chrom start end [name] TASK1 TASK2...'")
    named = len(header) > 3 and header[3].lower() == "name"
    tasks = header[4:] if named else header[3:]
    if not tasks:
        raise DataError(f"{path.name}: the header names no task columns after chrom start end [name]")
    if not rows:
        raise DataError(f"{path.name}: no intervals")
    return tasks, named, rows


def load_bed(bed: str | Path, reference_fasta: str | Path, length: int | None = None) -> Dataset:
    """Load BED intervals with 0/1 label columns, their sequences read from a reference FASTA.

    The file starts with a header ``#chrom start end name TASK1 TASK2...`` (``name``
    optional; whitespace-separated; 0-based half-open coordinates). Each interval is
    centred and resized to ``length`` bases (default: the longest interval), N-padded
    where it runs past a contig end.
    """
    from biomed.genome import GenomeError, Reference

    path = Path(bed)
    tasks, named, rows = _bed_rows(path)
    first = 4 if named else 3
    try:
        genome = Reference(reference_fasta)
    except GenomeError as err:
        raise DataError(str(err)) from None
    spans, labels, sources = [], [], []
    for number, fields in rows:
        where = f"{path.name}: line {number}"
        if len(fields) != first + len(tasks):
            raise DataError(f"{where} has {len(fields)} columns; the header has {first + len(tasks)}")
        try:
            start, end = int(fields[1]), int(fields[2])
        except ValueError:
            raise DataError(f"{where}: start and end must be integers") from None
        if start < 0 or end <= start:
            raise DataError(f"{where}: interval {start}-{end} must have 0 <= start < end")
        try:
            genome.check(fields[0], where=f" ({where})")
        except GenomeError as err:
            raise DataError(str(err)) from None
        spans.append((fields[0], start, end))
        labels.append([_label(v, t, where) for t, v in zip(tasks, fields[first:])])
        sources.append(fields[3] if named else f"{fields[0]}:{start}-{end}")
    size = length or max(end - start for _, start, end in spans)
    codes = [dna.encode(genome.window(chrom, (start + end) // 2, size), name=src)
             for (chrom, start, end), src in zip(spans, sources)]
    return _stack(codes, labels, tasks, sources)


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


MIN_PER_CLASS = 3  # one example each for the test, validation and training splits


def check_trainable(data: Dataset, split: dict[str, np.ndarray], source: str) -> None:
    """Refuse, before anything is trained or written, data too small to train and measure on (DataError, one line).

    Single-label: every class needs ``MIN_PER_CLASS`` examples (a test, a validation and a training one). Multi-label:
    every task needs a positive and a negative example among the training split (the baseline fits one per task).
    """
    what = "images" if data.x.ndim == 4 else "examples"
    if not data.multilabel:
        counts = np.bincount(data.y, minlength=len(data.labels))
        few = [f"{label!r}: {n}" for label, n in zip(data.labels, counts) if n < MIN_PER_CLASS]
        if few:
            raise DataError(f"data {source!r} has too few {what} per class ({', '.join(few)}; {len(data.y)} in all); "
                            f"training needs at least {MIN_PER_CLASS} per class (test, validation, training)")
        return
    train = data.y[split["train"]]
    for t, label in enumerate(data.labels):
        if train[:, t].min() == train[:, t].max():
            raise DataError(f"data {source!r} has too few {what} ({len(data.y)}): task {label!r} has only "
                            f"{'positive' if train[:, t].min() else 'negative'} examples in the training split; "
                            "training needs both for every task")

