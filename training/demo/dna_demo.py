"""Synthetic DNA data: JASPAR motif instances planted in a random background.

Each sequence is an iid background with the requested GC content. For every
task (one motif) independently, with probability ``p_positive`` one instance
sampled from the motif's PPM is planted (reverse complemented half the time) at a
random position that overlaps no other planted instance; the task's label is 1
exactly when an instance was planted. Everything follows from ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomed.jaspar import Motif, find_motif
from biomed.preprocess.dna import decode, reverse_complement


@dataclass(frozen=True)
class Planted:
    """One planted instance; ``end`` is exclusive, ``strand`` '-' means reverse complemented."""

    row: int
    task: str
    motif_id: str
    start: int
    end: int
    strand: str


def generate_dna(
    out: Path,
    motifs: Sequence[str] = ("CTCF", "REST", "TP53"),
    length: int = 200,
    n: int = 3000,
    seed: int = 0,
    gc: float = 0.42,
    p_positive: float = 0.3,
) -> Path:
    """Write a table ``sequence,<task>...`` of sequences with planted motifs.

    Args:
        out: a directory (the table becomes ``out/sequences.csv``) or a ``.csv`` path.
        motifs: JASPAR names or matrix IDs; task columns are the names as JASPAR spells them.
        length: bases per sequence.
        n: number of sequences.
        seed: seed of ``np.random.default_rng``; equal seeds give identical files.
        gc: G+C fraction of the background.
        p_positive: chance that a given task's motif is planted in a given sequence.

    Returns:
        The table's path. A sidecar ``<stem>.planted.csv`` beside it lists every
        planted instance as ``row,task,motif_id,start,end,strand`` (``row`` is the
        0-based data row, ``end`` exclusive).

    Raises:
        ValueError: an argument is out of range or a motif is unknown.
    """
    resolved = _check(motifs, length, n, gc, p_positive)
    rng = np.random.default_rng(seed)
    codes = background(rng, n, length, gc)  # (n, L) uint8
    labels = rng.random((n, len(resolved))) < p_positive  # (n, T)
    planted = [p for row in range(n) for p in _plant_row(rng, codes, row, labels[row], resolved)]
    table = Path(out) if str(out).lower().endswith(".csv") else Path(out) / "sequences.csv"
    table.parent.mkdir(parents=True, exist_ok=True)
    _write_table(table, codes, labels, [m.name for m in resolved])
    _write_planted(table.with_name(f"{table.stem}.planted.csv"), planted)
    return table


def _check(
    motifs: Sequence[str], length: int, n: int, gc: float, p_positive: float
) -> list[Motif]:
    """Validate the arguments and resolve the motifs."""
    if isinstance(motifs, str) or not motifs:
        raise ValueError("motifs must be a non-empty list of JASPAR names or matrix IDs")
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    if not 0.0 < gc < 1.0:
        raise ValueError(f"gc must be strictly between 0 and 1; got {gc}")
    if not 0.0 <= p_positive <= 1.0:
        raise ValueError(f"p_positive must be between 0 and 1; got {p_positive}")
    resolved = [find_motif(key) for key in motifs]
    names = [m.name.upper() for m in resolved]
    if len(set(names)) != len(names):
        listed = ", ".join(f"{m.id} {m.name}" for m in resolved)
        raise ValueError(f"motifs must name distinct TFs; got {listed}")
    longest = max(resolved, key=lambda m: m.width)
    if length < longest.width:
        raise ValueError(
            f"length {length} is shorter than motif {longest.name} ({longest.width} bases)"
        )
    total = sum(m.width for m in resolved)
    if length < total:
        raise ValueError(f"length {length} cannot hold all motifs side by side ({total} bases)")
    return resolved


def background(rng: np.random.Generator, n: int, length: int, gc: float) -> np.ndarray:
    """(n, length) iid uint8 codes (A=0, C=1, G=2, T=3) with G+C probability ``gc``."""
    p = np.array([1.0 - gc, gc, gc, 1.0 - gc]) / 2.0
    return rng.choice(4, size=(n, length), p=p).astype(np.uint8)


def sample_instance(rng: np.random.Generator, ppm: np.ndarray) -> np.ndarray:
    """(W,) uint8 codes drawn column by column from a (4, W) PPM."""
    cumulative = np.cumsum(ppm / ppm.sum(axis=0, keepdims=True), axis=0)  # (4, W)
    draws = rng.random(ppm.shape[1])
    return np.minimum((draws[None, :] > cumulative).sum(axis=0), 3).astype(np.uint8)


def _plant_row(
    rng: np.random.Generator, codes: np.ndarray, row: int, positive: np.ndarray, motifs: list[Motif]
) -> list[Planted]:
    """Plant the positive tasks' motifs into ``codes[row]`` without overlaps.

    Placement is uniform over non-overlapping arrangements: shuffle the motifs, then
    spread the free bases over the gaps (stars and bars).
    """
    chosen = [motifs[t] for t in rng.permutation(np.flatnonzero(positive))]
    if not chosen:
        return []
    widths = np.array([m.width for m in chosen])
    free = codes.shape[1] - int(widths.sum())
    gaps = np.sort(rng.choice(free + len(chosen), size=len(chosen), replace=False))
    starts = gaps - np.arange(len(chosen)) + np.concatenate([[0], np.cumsum(widths)[:-1]])
    planted = []
    for motif, start in zip(chosen, starts.tolist()):
        instance = sample_instance(rng, motif.ppm)
        strand = "-" if rng.random() < 0.5 else "+"
        if strand == "-":
            instance = reverse_complement(instance)
        codes[row, start : start + motif.width] = instance
        planted.append(Planted(row, motif.name, motif.id, start, start + motif.width, strand))
    return sorted(planted, key=lambda p: p.start)


def _write_table(path: Path, codes: np.ndarray, labels: np.ndarray, tasks: list[str]) -> None:
    lines = [",".join(["sequence", *tasks])]
    flags = labels.astype(np.uint8).astype(str)
    lines += [f"{decode(seq)},{','.join(row)}" for seq, row in zip(codes, flags)]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def _write_planted(path: Path, planted: list[Planted]) -> None:
    lines = ["row,task,motif_id,start,end,strand"]
    lines += [f"{p.row},{p.task},{p.motif_id},{p.start},{p.end},{p.strand}" for p in planted]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")
