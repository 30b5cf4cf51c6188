"""``biomed explain`` and ``biomed score-variants``: DNA analytics from the command line.

Both run an exported DNA model from the store with onnxruntime on the CPU, through
the very functions behind ``/explain_dna`` and ``/score_variants`` (``biomed/dna_ops.py``),
with a synchronous predictor in place of the server's batcher. No torch.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from biomed.genome import Reference, Variant
    from service.runtime import LoadedModel

CHUNK_ROWS = 1024  # windows per session.run, as the server's BIOMED_MAX_DNA_BATCH_SIZE
VARIANT_CHUNK = 256  # variants per scoring call (ref + alt, both strands: 1024 windows)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="in-silico mutagenesis of a DNA sequence, plotted",
                       description="Score every single-base substitution (as /explain_dna) and plot the importance "
                                   "track, a logo of the reference bases and the substitution heatmap.")
    p.add_argument("--model", default="demo-dna", help="DNA model name[:version] in the store (default demo-dna)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--sequence", help="bases A, C, G, T, N (any case)")
    source.add_argument("--fasta", metavar="FILE", help="FASTA file; the first record unless --record")
    p.add_argument("--record", metavar="ID", help="with --fasta: the record to explain")
    p.add_argument("--task", help="task to explain (default: the one the model scores highest)")
    p.add_argument("--out", required=True, metavar="PNG", help="figure to write")
    p.add_argument("--no-reverse-complement", dest="rc", action="store_false", help="forward strand only")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("score-variants", help="score the SNVs of a VCF against a reference genome",
                       description="Ref and alt probabilities of every SNV (as /score_variants) in a model-length "
                                   "window of the reference centred on the variant; multi-allelic sites are split, "
                                   "other alleles skipped and counted.")
    p.add_argument("--model", default="demo-dna", help="DNA model name[:version] in the store (default demo-dna)")
    p.add_argument("--vcf", required=True, help="VCF, plain or gzip")
    p.add_argument("--fasta", required=True, metavar="REF.fa", help="reference FASTA (plain or bgzip)")
    p.add_argument("--out", required=True, metavar="TSV", help="table to write")
    p.add_argument("--no-reverse-complement", dest="rc", action="store_false", help="forward strand only")
    p.set_defaults(func=cmd_score_variants)


def load_dna_model(ref: str) -> "LoadedModel":
    """A DNA model from the store on onnxruntime's CPU provider."""
    from service.config import ServiceConfig
    from service.runtime import load_model

    model = load_model(ref, ServiceConfig(models=(ref,), providers=("cpu",)))
    if model.kind != "dna":
        raise ValueError(f"model {ref!r} is a {model.kind} model; these commands need a DNA model")
    return model


def predictor(model: "LoadedModel"):  # -> biomed.dna_ops.Predict
    """The ``predict`` callable of ``biomed/dna_ops.py``: synchronous session runs of at most CHUNK_ROWS windows."""

    async def predict(rows: np.ndarray) -> np.ndarray:
        return np.concatenate([model.run(rows[i : i + CHUNK_ROWS]) for i in range(0, len(rows), CHUNK_ROWS)])

    return predict


def _explain_input(args: argparse.Namespace) -> tuple[str, str]:
    if args.sequence is not None:
        return "sequence", args.sequence
    from biomed.genome import read_fasta

    records = read_fasta(args.fasta)
    if args.record is None:
        if len(records) > 1:
            print(f"explaining the first of {len(records)} records ({records[0].id}); pick one with --record ID",
                  file=sys.stderr)
        return records[0].id, records[0].sequence
    for r in records:
        if r.id == args.record:
            return r.id, r.sequence
    raise ValueError(f"record {args.record!r} is not in {Path(args.fasta).name}; it has: "
                     f"{', '.join(r.id for r in records[:10])}")


def cmd_explain(args: argparse.Namespace) -> int:
    from biomed import dna_ops
    from biomed.preprocess.dna import DnaSpec

    name, sequence = _explain_input(args)
    model = load_dna_model(args.model)
    result = asyncio.run(dna_ops.explain(predictor(model), model.labels, DnaSpec.from_dict(model.doc["preprocess"]), sequence,
                                         args.task, args.rc))
    plot_explain(sequence.upper(), result, f"{name} — {model.name}:{model.version}", Path(args.out))
    importance = np.asarray(result["importance"])
    top = int(importance.argmax())
    print(f"{name}: {result['task']} p={result['probability']:.4f}; most important base {top} "
          f"({sequence[top].upper()}, mean |Δp| {importance[top]:.4f}) -> {args.out}")
    return 0


def plot_explain(sequence: str, result: dict, title: str, out: Path) -> None:
    """Three panels: importance over positions, reference bases scaled by -mean Δp, the 4×L Δp heatmap."""
    import matplotlib

    matplotlib.use("Agg")
    import logomaker
    import matplotlib.pyplot as plt
    import pandas as pd

    deltas = np.asarray(result["scores"])  # (L, 4), 0 in the reference base's column
    n = len(sequence)
    contribution = pd.DataFrame(0.0, index=range(n), columns=list("ACGT"))
    effect = -deltas.sum(axis=1) / 3  # mean drop when the reference base is substituted
    for i, base in enumerate(sequence):
        if base in "ACGT":
            contribution.loc[i, base] = effect[i]
    fig, axes = plt.subplots(3, 1, figsize=(min(max(8.0, n * 0.09), 40.0), 6.5), sharex=True,
                             gridspec_kw={"height_ratios": [1, 1.4, 1]})
    axes[0].fill_between(range(n), result["importance"], step="mid", color="#4c72b0")
    axes[0].set_ylabel("importance\nmean |Δp|")
    axes[0].set_title(f"{title}: in-silico mutagenesis of {result['task']} (p = {result['probability']:.3f})")
    logomaker.Logo(contribution, ax=axes[1], color_scheme="classic")
    axes[1].axhline(0, color="grey", lw=0.5)
    axes[1].set_ylabel("reference base\n−mean Δp")
    limit = float(np.abs(deltas).max()) or 1.0
    image = axes[2].imshow(deltas.T, aspect="auto", cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest",
                           extent=(-0.5, n - 0.5, 3.5, -0.5))
    axes[2].set_yticks(range(4), list("ACGT"))
    axes[2].set_ylabel("substituted\nbase")
    axes[2].set_xlabel("position (0-based)")
    fig.colorbar(image, ax=axes, location="right", fraction=0.02, pad=0.01, label="Δp")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def cmd_score_variants(args: argparse.Namespace) -> int:
    from biomed.genome import Reference, read_vcf

    variants, skipped = read_vcf(args.vcf)
    genome = Reference(args.fasta)
    for v in variants:  # before loading anything: a naming mismatch is one clear line
        genome.check(v.chrom, where=f" (variant {v.id} in {Path(args.vcf).name})")
    model = load_dna_model(args.model)
    rows = asyncio.run(_score(model, genome, variants, args.rc))
    write_variants_tsv(Path(args.out), model.labels, variants, rows)
    mismatched = sum(r is None for r in rows)
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
    print(f"scored {len(variants) - mismatched} SNVs with {model.name}:{model.version}; {mismatched} ref_mismatch; "
          f"skipped {sum(skipped.values())} other alleles{f' ({reasons})' if reasons else ''} -> {args.out}")
    return 0


async def _score(model: "LoadedModel", genome: "Reference", variants: list["Variant"], rc: bool) -> list[dict | None]:
    """One result per variant (None where REF does not match the reference), in chunks under a progress bar."""
    from biomed.genome import window_for
    from biomed.progress import make_progress
    from biomed import dna_ops
    from biomed.preprocess.dna import DnaSpec

    params, predict = DnaSpec.from_dict(model.doc["preprocess"]), predictor(model)
    results: list[dict | None] = []
    with make_progress() as progress:
        bar = progress.add_task("scoring variants", total=len(variants), status="")
        for first in range(0, len(variants), VARIANT_CHUNK):
            chunk = variants[first : first + VARIANT_CHUNK]
            items, slots = [], []
            for v in chunk:
                window, at = window_for(genome, v, params.length)
                slots.append(window[at] == v.ref)
                if slots[-1]:
                    items.append({"id": v.id, "sequence": window, "position": at, "ref": v.ref, "alt": v.alt})
            scored = iter(await dna_ops.score_variants(predict, model.labels, params, items, rc) if items else [])
            results.extend(next(scored) if ok else None for ok in slots)
            progress.update(bar, advance=len(chunk), status=f"{results.count(None)} ref mismatches")
    return results


def variant_columns(labels: list[str]) -> list[str]:
    per_task = [f"{t}_{c}" for t in labels for c in ("p_ref", "p_alt", "diff", "log_odds_diff")]
    return ["chrom", "pos", "id", "ref", "alt", *per_task, "status"]


def write_variants_tsv(out: Path, labels: list[str], variants: list["Variant"], rows: list[dict | None]) -> None:
    """chrom, pos (1-based), id, ref, alt, per task p_ref/p_alt/diff/log_odds_diff, status (ok | ref_mismatch)."""
    lines = ["\t".join(variant_columns(labels))]
    for v, r in zip(variants, rows):
        if r is None:
            values = ["NA"] * (4 * len(labels)) + ["ref_mismatch"]
        else:
            values = [f"{r[key][t]:.6g}" for t in labels for key in ("ref", "alt", "diff", "log_odds_diff")] + ["ok"]
        lines.append("\t".join([v.chrom, str(v.pos), v.id, v.ref, v.alt, *values]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
