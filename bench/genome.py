"""Genome scale: ``biomed score-variants`` and ``biomed predict-regions`` against onnxruntime alone on the same windows.

A synthetic genome (``biomed demo-data genome``: planted motifs, motif-breaking and neutral
SNVs) is scored by the real command (a subprocess: reading the bgzipped VCF and the reference,
building windows, onnxruntime, writing the bgzipped, tabix-indexed VCF, start-up included) and,
in turns with it, the very same model windows (ref and alt, both placements, both strands)
are run through an onnxruntime session made as the command makes it, in the same 1,024-row
calls, with nothing else. ``ratio`` = command windows/s ÷ onnxruntime windows/s, the median over
the rounds of each back-to-back pair (the goal: >= 0.7 on two CPU cores for 100,000 variants). The tracks row does the same for
``predict-regions`` over the whole genome.
"""

from __future__ import annotations

import gzip
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.inputs import Model
from biomed import dna_ops
from biomed.genome import Reference
from biomed.preprocess import dna
from biomed.regions import read_regions, tiles
from biomed.variant_stream import ContextReader, build_chunk, context_half, read_chunks

ROWS = 1024  # rows per session.run: the command's default (--batch-rows)
TRACK_STEP = 10  # bases per bin of the tracks row


def _session(model: Model):  # noqa: ANN202
    """A CPU session made as ``biomed score-variants`` makes it (``biomed.runtime``, the tools' default options)."""
    from biomed.runtime import RuntimeOptions, make_session

    session, _ = make_session(model.path, RuntimeOptions())
    return session


def variant_windows(vcf: Path, fasta: Path, length: int) -> np.ndarray:
    """Every row the command sends to onnxruntime for this VCF: per chunk ref+alt windows, then their reverse strands."""
    genome = Reference(fasta)
    reader = ContextReader(genome, context_half(length))
    blocks = []
    with gzip.open(vcf, "rt") as lines:
        for i, records in enumerate(read_chunks(lines, genome, 2048)):
            chunk = build_chunk(i, records, reader)
            ref, alt = dna_ops.context_windows(chunk.contexts, chunk.alt_codes, length)
            rows = np.concatenate([ref, alt])
            blocks += [rows, dna.reverse_complement(rows)]
    return np.concatenate(blocks)


def track_windows(bed: Path, fasta: Path, length: int, step: int) -> np.ndarray:
    genome = Reference(fasta)
    reader = ContextReader(genome, context_half(length))
    blocks = []
    for tile in tiles(read_regions(bed, genome).regions, reader, length, step, ROWS):
        blocks += [tile.windows, dna.reverse_complement(tile.windows)]
    return np.concatenate(blocks)


def _run_session(session, rows: np.ndarray) -> float:  # noqa: ANN001
    name = session.get_inputs()[0].name
    started = time.perf_counter()
    for i in range(0, len(rows), ROWS):
        session.run(None, {name: rows[i : i + ROWS]})
    return time.perf_counter() - started


def _run_command(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"biomed {args[0]} failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return time.perf_counter() - started


def throughput(model: Model, variants: int, rounds: int, work: Path) -> list[dict]:
    """Rows for results['genome']: variants and tracks, command and onnxruntime alone taking turns ``rounds`` times."""
    import os

    from training.demo.genome_demo import generate_genome

    length = model.length
    contig = max(4_000, variants * 5)  # two contigs, one SNV per ~10 bases
    data = generate_genome(work / "genome", contigs=2, length=contig, variants=variants, seed=11)
    fasta, vcf, bed = data / "genome.fa", data / "variants.vcf.gz", data / "regions.bed"
    Reference(fasta)  # writes the .fai before anything is timed
    env = {**os.environ, "BIOMED_PROGRESS": "0"}
    common = ["--model", model.ref, "--fasta", str(fasta)]
    cases = {
        "score-variants": (variant_windows(vcf, fasta, length),
                           ["score-variants", *common, "--vcf", str(vcf), "--out", str(work / "scored.vcf.gz"), "--restart"]),
        "predict-regions": (track_windows(bed, fasta, length, TRACK_STEP),
                            ["predict-regions", *common, "--bed", str(bed), "--out", str(work / "tracks"),
                             "--step", str(TRACK_STEP)]),
    }
    session = _session(model)
    _run_session(session, cases["score-variants"][0][: 4 * ROWS])  # warm-up
    rows = []
    for case, (windows, args) in cases.items():
        times: dict[str, list[float]] = {"command": [], "onnxruntime": []}
        for _ in range(rounds):  # the arms take turns, so each sees the same background load
            times["command"].append(_run_command(args, env))
            times["onnxruntime"].append(_run_session(session, windows))
        command, alone = statistics.median(times["command"]), statistics.median(times["onnxruntime"])
        ratios = [a / c for c, a in zip(times["command"], times["onnxruntime"])]  # each round's pair ran back to back
        n = len(windows)
        per_item = 4 * len(dna_ops.variant_offsets(length)) if case == "score-variants" else 2  # rows per variant / bin
        rows.append({"case": case, "model": model.name, "items": n // per_item,
                     "unit": "variants" if case == "score-variants" else "bins", "windows": n,
                     "command_s": command, "onnxruntime_s": alone, "command_wps": n / command,
                     "onnxruntime_wps": n / alone, "ratio": statistics.median(ratios), "rounds": rounds,
                     "per_round": ", ".join(f"{r:.2f}" for r in ratios)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.genome``: this case alone (the figures ``biomed bench`` takes in its full run)."""
    import argparse
    import json
    import tempfile

    from bench.inputs import load_model

    p = argparse.ArgumentParser(prog="python -m bench.genome", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo-dna", help="DNA model in the store (default demo-dna)")
    p.add_argument("--variants", type=int, default=100_000, help="neutral SNVs of the synthetic genome (100,000)")
    p.add_argument("--rounds", type=int, default=3, help="turns of the command and onnxruntime alone (3)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="biomed-bench-genome-") as tmp:
        for row in throughput(load_model(args.model, "dna"), args.variants, args.rounds, Path(tmp)):
            print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
