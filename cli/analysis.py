"""Analysis commands of ``biomed``: ``biomed motifs RUN``.

Registered by ``cli`` through :func:`register`; torch is imported inside the command only.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_motifs(args: argparse.Namespace) -> int:
    from training.motifs import motif_report

    run = Path(args.run)
    if not run.is_dir():
        raise NotADirectoryError(f"run {str(run)!r} is not a folder; give a `biomed train dna` run")
    rows = motif_report(run, top=args.top, data=args.data, reference=args.reference)
    print(f"{'FILTER':>6}  {'BITS':>5}  {'SITES':>6}  {'MATRIX ID':<10} {'NAME':<14} {'SCORE':>6}  STRAND")
    for r in rows:
        print(f"{r.filter:>6}  {r.information:5.1f}  {r.n_sites:>6}  {r.match_id:<10} {r.match_name:<14} {r.score:6.3f}  {r.strand}")
    print(f"wrote {run / 'motifs.tsv'} and {run / 'motifs.png'} ({len(rows)} informative filters)")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--top must be at least 1; got {value}")
    return value


def register(sub: argparse._SubParsersAction) -> None:
    """Add the analysis sub-commands to ``biomed``."""
    p = sub.add_parser("motifs", help="first-layer filters as motifs, matched against JASPAR",
                       description="Read a DNA run's first-layer filters as PWMs from its training sequences, "
                                   "match them to JASPAR CORE vertebrates, write motifs.tsv and motifs.png.")
    p.add_argument("run", help="a `biomed train dna` run folder")
    p.add_argument("--top", type=_positive, help="show only the N most informative filters")
    p.add_argument("--data", help="where the run's training data is now, when it is not where the run recorded it")
    p.add_argument("--reference", help="likewise for a BED run's reference FASTA")
    p.set_defaults(func=cmd_motifs)
