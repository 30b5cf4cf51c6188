"""``biomed explain``: DNA analytics from the command line, and what the genome commands share (KIND, CHUNK_ROWS).

Runs an exported DNA model from the store with onnxruntime on the CPU (``biomed/runtime.py``),
through the very functions behind ``/explain_dna`` (``biomed/dna_ops.py``), with the runtime's
chunked synchronous predictor in place of the server's batcher. No torch. ``biomed
score-variants`` is in ``variants.py``, ``biomed predict-regions`` in ``regions.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

import numpy as np

KIND = "dna"  # the kind of model the DNA commands run (explain, score-variants, predict-regions)
CHUNK_ROWS = 1024  # windows per session.run, as the server's BIOMED_MAX_DNA_BATCH_SIZE


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
    p.add_argument("--reverse-complement", dest="rc", action="store_true", default=None,
                   help="average both strands (default: what the model's preprocess.reverse_complement says)")
    p.add_argument("--no-reverse-complement", dest="rc", action="store_false", help="forward strand only")
    p.set_defaults(func=cmd_explain)


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
    from biomed import dna_ops, runtime
    from cli.local import load_local
    from biomed.preprocess.dna import DnaSpec

    name, sequence = _explain_input(args)
    model = load_local(args.model, KIND)
    spec = DnaSpec.from_dict(model.doc["preprocess"])
    result = asyncio.run(dna_ops.explain(runtime.predictor(model, CHUNK_ROWS), model.labels, spec, sequence, args.task,
                                         strands(model.doc, args.rc)))
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


def strands(described: dict, rc: bool | None) -> bool:
    """Whether both strands are averaged: as asked (``rc``), else as the model's ``preprocess.reverse_complement``
    says, as the service decides when a request does not say."""
    return bool(described["preprocess"].get("reverse_complement", True)) if rc is None else rc
