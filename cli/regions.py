"""``biomed predict-regions``: model tracks over the regions of a BED, one bigWig per task (pyBigWig).

Each region is cut into bins of ``--step`` bases (``biomed/regions.py``); a bin's value is the
probability of the model-length window centred on it (both strands averaged unless
``--no-reverse-complement``), exactly what ``/predict_dna`` answers for that window. Windows
go to onnxruntime in ``--batch-rows`` tiles (or to a biomed-serve with ``--server``) while
the next tile is read; values are spooled to the tracks as they come, so memory stays flat
in the size of the regions. The tracks open in IGV or the UCSC browser. Contigs named in the
other convention than the FASTA's (``1`` / ``chr1``) are matched and the match reported; regions
on contigs the FASTA lacks are counted and listed in ``DIR/missing_contigs.bed``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from biomed.settings import env

REQUEST_WINDOWS = 1024  # windows per /predict_dna request with --server (~200 KB of JSON for the demo model)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict-regions", help="model tracks over BED regions: one bigWig per task",
                       description="Tile each BED region with the model's windows, one every --step bases, and write "
                                   "the per-task probabilities as bigWig tracks (DIR/<task>.bw, viewable in IGV) and a "
                                   "summary (DIR/summary.json).")
    p.add_argument("--model", default="demo-dna", help="DNA model name[:version] (default demo-dna)")
    p.add_argument("--bed", required=True, metavar="REGIONS", help="BED: chrom start end (0-based, half-open)")
    p.add_argument("--fasta", required=True, metavar="REF.fa", help="reference FASTA (plain or bgzip)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the tracks")
    p.add_argument("--step", type=_positive, help="bases per bin, one window each (default: a quarter of the window)")
    p.add_argument("--reverse-complement", dest="rc", action="store_true", default=None,
                   help="average both strands (default: what the model's preprocess.reverse_complement says)")
    p.add_argument("--no-reverse-complement", dest="rc", action="store_false", help="forward strand only")
    p.add_argument("--batch-rows", type=_positive, default=None, metavar="N",
                   help="windows per onnxruntime call (default 1024)")
    p.add_argument("--server", metavar="URL", help="predict on a running biomed-serve (or a Service in front of many)")
    p.add_argument("--token", default=os.environ.get(env("api_token")),
                   help=f"bearer token for --server (default: ${env('api_token')})")
    p.add_argument("--in-flight", type=_positive, default=4, metavar="N", help="--server: requests at a time (4)")
    p.add_argument("--request-windows", type=_positive, default=REQUEST_WINDOWS, metavar="N",
                   help=f"--server: windows per request (default {REQUEST_WINDOWS}; halved on a 413)")
    p.set_defaults(func=cmd_predict_regions)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def local_predictor(ref: str, rc: bool | None, batch_rows: int | None) -> tuple[dict, Callable[[np.ndarray], np.ndarray]]:
    from biomed import dna_ops, runtime
    from cli.local import load_local
    from cli.dna import CHUNK_ROWS, KIND, strands

    model = load_local(ref, KIND)
    predict = runtime.predictor(model, batch_rows or CHUNK_ROWS)
    info = {"name": model.name, "version": model.version, "sha256": model.sha256, "labels": list(model.labels),
            "length": int(model.doc["preprocess"]["length"]), "reverse_complement": strands(model.doc, rc)}
    rc = info["reverse_complement"]
    return info, lambda windows: asyncio.run(dna_ops.score_windows(predict, windows, rc))


_BASES = np.frombuffer(b"ACGTN", dtype=np.uint8)


def remote_predictor(remote, ref: str, rc: bool | None, request_windows: int) -> tuple[dict, Callable]:
    """``/predict_dna`` on a biomed-serve: each window as one sequence of the model's length (one window, as here)."""
    from cli.dna import strands

    m = remote.model(ref)
    info = {"name": m["name"], "version": m["version"], "sha256": m["sha256"], "labels": list(m["labels"]),
            "length": int(m["preprocess"]["length"]), "reverse_complement": strands(m, rc)}
    rc = info["reverse_complement"]
    pinned, labels = f"{m['name']}:{m['version']}", info["labels"]

    def predict(windows: np.ndarray) -> np.ndarray:
        n, width = windows.shape
        text = _BASES[windows].tobytes().decode("ascii")
        items = [text[i * width : (i + 1) * width] for i in range(n)]
        answers = remote.batched("/predict_dna", items, request_windows,
                                 lambda batch: {"sequences": list(batch), "model": pinned, "reverse_complement": rc},
                                 lambda body: body["predictions"])
        return np.array([[a["probabilities"][t] for t in labels] for a in answers], dtype=np.float64).reshape(n, len(labels))

    return info, predict


def cmd_predict_regions(args: argparse.Namespace) -> int:
    from biomed.genome import Reference
    from biomed.outputs.bigwig import Tracks
    from biomed.progress import make_progress
    from biomed.regions import bin_count, read_regions, tiles
    from biomed.variant_stream import ContextReader, context_half
    from cli.dna import CHUNK_ROWS

    genome = Reference(args.fasta)
    regions = read_regions(args.bed, genome)
    remote = None
    try:
        if args.server:
            from cli.remote import Remote

            remote = Remote(args.server, args.token, args.in_flight)
            info, predict = remote_predictor(remote, args.model, args.rc, args.request_windows)
        else:
            info, predict = local_predictor(args.model, args.rc, args.batch_rows)
        length = info["length"]
        step = args.step or max(1, length // 4)
        rows = max(args.batch_rows or CHUNK_ROWS, 4 * args.request_windows if remote else 0)
        total = bin_count(regions.regions, step)
        reader = ContextReader(genome, context_half(length))
        out = Path(args.out)
        tracks = Tracks(out, info["labels"], genome.lengths_as_given())
        ok = False
        try:
            with make_progress() as progress, ThreadPoolExecutor(max_workers=1, thread_name_prefix="biomed-tracks") as pool:
                bar = progress.add_task("predicting regions", total=total, status="")
                pending: deque[tuple[list, Future]] = deque()

                def finish() -> None:
                    segments, future = pending.popleft()
                    values = future.result()
                    tracks.add(segments, values)
                    progress.update(bar, advance=len(values), status=f"{tracks.bases:,} bases")

                for tile in tiles(regions.regions, reader, length, step, rows):
                    pending.append((tile.segments, pool.submit(predict, tile.windows)))
                    while len(pending) > 1:
                        finish()
                while pending:
                    finish()
            ok = True
        finally:
            tracks.close(ok)
    finally:
        if remote is not None:
            remote.close()
    summary = {"model": {k: info[k] for k in ("name", "version", "sha256")}, "reference": genome.path.name,
               "contig_names": dict(genome.renamed), "regions": len(regions.regions), "bed_lines": regions.given,
               "merged": regions.merged, "clipped": regions.clipped, "missing_contigs": len(regions.missing),
               "bases": regions.bases, "step": step, "windows": total, "reverse_complement": info["reverse_complement"],
               "tracks": tracks.summary()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _report_names(genome, regions, out, Path(args.bed).name)
    print(f"{regions.bases:,} bases in {len(regions.regions)} regions ({regions.merged} merged, {regions.clipped} clipped "
          f"at a contig end), {total:,} windows of {length} every {step} bases with {info['name']}:{info['version']}"
          + (f" on {remote.url} ({remote.stats.describe()})" if remote else ""))
    for t in tracks.summary():
        print(f"  {t['task']}: mean {t['mean']:.4f}, max {t['max']:.4f} at {t['max_at']} -> {out / t['track']}")
    return 0


def _report_names(genome, regions, out: Path, bed: str) -> None:
    """The contig names matched across conventions, and the regions on contigs the FASTA lacks (``DIR/
    missing_contigs.bed``: their BED lines as given; an earlier run's list is removed when there are none)."""
    side = out / "missing_contigs.bed"
    if genome.renamed:
        print(f"contig names of {bed} matched to {genome.path.name}'s: {genome.mapping()}")
    if not regions.missing:
        side.unlink(missing_ok=True)
        return
    side.write_text("".join(f"{line}\n" for _, line in regions.missing))
    contigs = sorted({line.split()[0] for _, line in regions.missing})
    print(f"{len(regions.missing)} regions of {bed} on contigs {genome.path.name} lacks ({', '.join(contigs[:5])}"
          f"{' ...' if len(contigs) > 5 else ''}) were not predicted -> {side}")
