"""Shared by tests/test_vcf.py and tests/test_regions.py: a small DNA model that has learned the demo motifs,
the synthetic demo genome, and the CLI run in process."""

from __future__ import annotations

import csv
import io
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

MOTIFS = ("CTCF", "REST", "TP53")


def train_small_dna(work: Path, name: str) -> str:
    """Demo DNA data (2,000 sequences), DeepBind for 12 epochs (seconds on two cores), exported as ``name``; its tag.

    Enough to learn the planted motifs (held-out AUROC ~0.9-0.99), which is what the sign checks need.
    """
    from training.config import TrainConfig
    from training.demo.dna_demo import generate_dna
    from training.export import export_run
    from training.train import fit

    table = generate_dna(work / "data", motifs=MOTIFS, n=2000, seed=4)
    fit(TrainConfig(kind="dna", data=str(table), out=str(work / "run"), arch="deepbind", epochs=12, seed=4))
    return str(export_run(work / "run", name, force=True).tag)


def demo_genome(out: Path, length: int = 3000, variants: int = 150, seed: int = 3) -> Path:
    """``biomed demo-data genome``: two contigs of ``length`` bases, about ``variants`` neutral SNVs."""
    from training.demo.genome_demo import generate_genome

    return generate_genome(out, motifs=MOTIFS, contigs=2, length=length, variants=variants, seed=seed)


def truth(genome: Path) -> list[dict]:
    return list(csv.DictReader((genome / "variants.truth.tsv").open(), delimiter="\t"))


def run_cli(*args: str) -> tuple[int, str, str]:
    """``biomed ARGS`` in process: (exit status, stdout, stderr)."""
    from cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as exit_:  # argparse
            rc = int(exit_.code or 0)
    return rc, out.getvalue(), err.getvalue()
