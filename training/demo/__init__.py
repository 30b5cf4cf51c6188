"""Synthetic demo data sets: real DICOM files (images, and CT series as volumes), DNA with planted JASPAR motifs, and a
genome with planted motifs and variants."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

DEFAULT_MOTIFS = ("CTCF", "REST", "TP53")


def _image(out: Path, n: int | None, seed: int, **_: object) -> Path:
    from training.demo.dicom_demo import generate_images

    return generate_images(out, n=n or 600, seed=seed)


def _volume(out: Path, n: int | None, seed: int, **_: object) -> Path:
    from training.demo.volume_demo import generate_volumes

    return generate_volumes(out, n=n or 440, seed=seed)


def _dna(out: Path, n: int | None, seed: int, motifs: tuple[str, ...], length: int | None, **_: object) -> Path:
    from training.demo.dna_demo import generate_dna

    return generate_dna(out, motifs=motifs, length=length or 200, n=n or 3000, seed=seed)


def _genome(out: Path, seed: int, motifs: tuple[str, ...], length: int | None, contigs: int, variants: int | None,
            **_: object) -> Path:
    from training.demo.genome_demo import generate_genome

    return generate_genome(out, motifs=motifs, contigs=contigs, length=length or 20_000, variants=variants, seed=seed)


# ``biomed demo-data WHAT``: each data set's generator, taking the options it uses.
DATASETS: dict[str, Callable[..., Path]] = {"image": _image, "volume": _volume, "dna": _dna, "genome": _genome}


def generate(what: str, out: Path, *, n: int | None = None, seed: int = 0, motifs: tuple[str, ...] = DEFAULT_MOTIFS,
             length: int | None = None, contigs: int = 2, variants: int | None = None) -> Path:
    """Write the demo data set ``what`` (a key of ``DATASETS``) into ``out``; returns what the trainer reads."""
    if what not in DATASETS:
        raise ValueError(f"demo data {what!r} is unknown; choose one of: {', '.join(DATASETS)}")
    return DATASETS[what](out, n=n, seed=seed, motifs=motifs, length=length, contigs=contigs, variants=variants)
