"""``biomed score-variants``: a whole VCF scored against a reference, streamed, resumable, local or remote.

The VCF is read as a stream (plain, gzip or bgzip; one shard of a tabix-indexed file with
``--shard I/N``) and cut into chunks of ``--chunk-size`` records. For each chunk the SNV
alleles' reference contexts are read (``biomed/variant_stream.py``), their model windows
built (ref and alt, each placement, both strands) and scored in one call of
``biomed.dna_ops.variant_effects`` — the computation behind ``/score_variants`` — run by
onnxruntime here in ``--batch-rows`` windows per session call, or by a biomed-serve with
``--server URL``. Scoring runs in a worker thread while the next chunk is read. Finished
chunks go to ``OUT.parts/`` (``cli/parts.py``), so an interrupted run resumes; at the
end they become ``OUT``: an annotated VCF (``biomed/outputs/vcf.py``; bgzip + tabix for
``.vcf.gz``) or the TSV.

Contig names of the other convention than the FASTA's (``1`` / ``chr1``, ``MT`` / ``chrM``) are
matched and the match reported; records on contigs the FASTA lacks pass through unscored, are
counted, and are listed in ``OUT.missing_contigs.tsv`` (line, chrom, pos, id, ref, alt).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import Counter, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from biomed.outputs import Producer
from biomed.outputs.semantics import Semantics
from biomed.outputs.vcf import Effects, TsvWriter, VcfAnnotator
from biomed.settings import env

CHUNK_RECORDS = 2048  # VCF records per chunk: the unit of scoring, writing and resuming
REQUEST_VARIANTS = 512  # variants per /score_variants request with --server (4,096 model rows, ~100 KB)
FORMATS = ("vcf", "tsv")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("score-variants", help="score the SNVs of a VCF against a reference: annotated VCF or TSV",
                       description="Ref and alt probabilities of every SNV of a VCF (as /score_variants) in model-"
                                   "length windows of the reference centred on it, written as the input VCF with "
                                   "kipoi-veff-style INFO tags (bgzip + tabix for .vcf.gz) or as a TSV. Multi-allelic "
                                   "records are annotated per ALT; indels, MNVs and symbolic alleles are skipped and "
                                   "counted; a REF that disagrees with the reference is flagged, never dropped. "
                                   "Streams any size in chunks and resumes an interrupted run.")
    p.add_argument("--model", default="demo-dna", help="DNA model name[:version] (default demo-dna)")
    p.add_argument("--vcf", required=True, help="VCF, plain, gzip or bgzip (bgzip + .tbi for --shard)")
    p.add_argument("--fasta", required=True, metavar="REF.fa", help="reference FASTA (plain or bgzip)")
    p.add_argument("--out", required=True, metavar="OUT", help="OUT.vcf.gz (bgzip + tabix), OUT.vcf or OUT.tsv")
    p.add_argument("--format", choices=FORMATS, help="vcf or tsv (default: from --out's suffix)")
    p.add_argument("--reverse-complement", dest="rc", action="store_true", default=None,
                   help="average both strands (default: what the model's preprocess.reverse_complement says)")
    p.add_argument("--no-reverse-complement", dest="rc", action="store_false", help="forward strand only")
    p.add_argument("--chunk-size", type=_positive, default=CHUNK_RECORDS, metavar="N",
                   help=f"records per chunk, the unit of resuming (default {CHUNK_RECORDS})")
    p.add_argument("--batch-rows", type=_positive, default=None, metavar="N",
                   help="model windows per onnxruntime call (default 1024)")
    p.add_argument("--shard", metavar="I/N", help="score only shard I of N (0-based; equal spans of the reference, "
                                                  "read by tabix region): one pod of an Indexed Job")
    p.add_argument("--server", metavar="URL", help="score on a running biomed-serve (or a Service in front of many)")
    p.add_argument("--token", default=os.environ.get(env("api_token")),
                   help=f"bearer token for --server (default: ${env('api_token')})")
    p.add_argument("--in-flight", type=_positive, default=4, metavar="N", help="--server: requests at a time (4)")
    p.add_argument("--request-variants", type=_positive, default=REQUEST_VARIANTS, metavar="N",
                   help=f"--server: variants per request (default {REQUEST_VARIANTS}; halved on a 413)")
    p.add_argument("--restart", action="store_true", help="ignore the finished chunks of an earlier run")
    p.add_argument("--keep-parts", action="store_true", help="keep OUT.parts/ after writing OUT")
    p.set_defaults(func=cmd_score_variants)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1; got {value}")
    return value


def output_format(out: str, given: str | None) -> str:
    if given:
        return given
    name = out.lower()
    if name.endswith((".vcf", ".vcf.gz", ".vcf.bgz")):
        return "vcf"
    if name.endswith((".tsv", ".txt", ".tsv.gz", ".tsv.bgz")):
        return "tsv"
    raise ValueError(f"cannot tell the output format from {Path(out).name!r}; name it .vcf.gz, .vcf or .tsv, "
                     "or pass --format vcf|tsv")


def parse_shard(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r} is not I/N, e.g. 0/16") from None
    if not 0 <= i < n:
        raise ValueError(f"--shard {text!r}: I must be in 0..N-1 (Kubernetes' JOB_COMPLETION_INDEX is 0-based)")
    return i, n


# ---------------------------------------------------------------- input


@dataclass
class Source:
    """The VCF as header lines and a stream of data lines, with how far the stream has come (for the bar)."""

    header: list[str]
    lines: Iterator[str]
    total: int
    done: Callable[[], int]
    close: Callable[[], None]
    name: str
    keep: Callable | None = None


def open_whole(path: Path) -> Source:
    """Every line of a plain, gzip or bgzip VCF, in order; progress in (compressed) bytes read."""
    import gzip
    import io

    raw = path.open("rb")
    gz = raw.read(2) == b"\x1f\x8b"
    raw.seek(0)
    text = io.TextIOWrapper(gzip.GzipFile(fileobj=raw) if gz else raw, encoding="utf-8", newline=None)
    header: list[str] = []
    first = None
    for line in text:
        if line.startswith("#"):
            header.append(line.rstrip("\n"))
            continue
        first = line
        break

    def lines() -> Iterator[str]:
        if first is not None:
            yield first
            yield from text

    return Source(header, lines(), max(path.stat().st_size, 1), raw.tell, text.close, path.name)


def shard_regions(lengths: dict[str, int], index: int, count: int) -> list[tuple[str, int, int]]:
    """Shard ``index`` of ``count``: equal spans of the reference (contigs in its order), as (contig, start, end)."""
    total = sum(lengths.values())
    lo, hi = total * index // count, total * (index + 1) // count
    regions, offset = [], 0
    for name, size in lengths.items():
        start, end = max(lo - offset, 0), min(hi - offset, size)
        if start < end:
            regions.append((name, start, end))
        offset += size
    return regions


def open_shard(path: Path, genome, index: int, count: int) -> Source:
    """The records of shard ``index`` of ``count`` from a tabix-indexed VCF (those whose POS lies in its spans);
    shard 0 also takes every record on a contig the reference lacks (to be counted and listed, not lost)."""
    import pysam

    if not (Path(f"{path}.tbi").is_file() or Path(f"{path}.csi").is_file()):
        raise ValueError(f"--shard reads {path.name} by region and needs it bgzip-compressed with a tabix index "
                         f"({path.name}.tbi): bgzip it and run `tabix -p vcf {path.name}`")
    tbx = pysam.TabixFile(str(path))
    named = {genome.name(c): c for c in tbx.contigs if genome.name(c) is not None}  # the reference's name -> VCF's
    lacking = [c for c in tbx.contigs if genome.name(c) is None]
    regions = [(named[c], s, e) for c, s, e in shard_regions(genome.lengths, index, count) if c in named]
    total = sum(e - s for _, s, e in regions)
    if index == 0:
        regions += [(c, 0, 2**31 - 1) for c in lacking]
    spans = {c: (s, e) for c, s, e in regions}
    state = {"at": 0}

    def lines() -> Iterator[str]:
        for contig, start, end in regions:
            yield from tbx.fetch(contig, start, end)
            state["at"] += 0 if contig in lacking else end - start

    def keep(record) -> bool:  # tabix returns records overlapping a span; a shard owns those that start in it
        span = spans.get(record.chrom)
        return span is not None and span[0] <= record.pos - 1 < span[1]

    return Source(list(tbx.header), lines(), max(total, 1), lambda: state["at"], tbx.close, path.name, keep)


# ---------------------------------------------------------------- scoring


def local_scorer(ref: str, rc: bool | None, batch_rows: int | None) -> tuple[Producer, Callable, bool]:
    """onnxruntime on this machine: the model's windows in ``batch_rows``-row session calls."""
    from biomed import dna_ops, runtime
    from cli.local import load_local
    from cli.dna import CHUNK_ROWS, KIND, strands

    model = load_local(ref, KIND)
    length = int(model.doc["preprocess"]["length"])
    predict = runtime.predictor(model, batch_rows or CHUNK_ROWS)
    placements = len(dna_ops.variant_offsets(length))
    info = Producer(model.name, model.version, model.sha256, tuple(model.labels), length, Semantics.of(model.doc))
    rc = strands(model.doc, rc)

    def score(contexts: np.ndarray, alts: np.ndarray) -> Effects:
        ref_rows, alt_rows = dna_ops.context_windows(contexts, alts, length)
        return Effects(*asyncio.run(dna_ops.variant_effects(predict, ref_rows, alt_rows, placements, rc, info.output)))

    return info, score, rc


_BASES = np.frombuffer(b"ACGTN", dtype=np.uint8)


def _number(value: float | None) -> float:
    return float("nan") if value is None else value  # null: a fold change that does not exist


def remote_scorer(remote, ref: str, rc: bool | None, request_variants: int) -> tuple[Producer, Callable, bool]:
    """``/score_variants`` on a biomed-serve: each context as the sequence, the variant at its centre."""
    from cli.dna import strands

    described = remote.model(ref)
    length = int(described["preprocess"]["length"])
    info = Producer(described["name"], described["version"], described["sha256"], tuple(described["labels"]), length,
                    Semantics.of_output(described["output"], len(described["labels"])))
    pinned, half, labels = f"{info.name}:{info.version}", length // 2, info.labels
    rc = strands(described, rc)

    def score(contexts: np.ndarray, alts: np.ndarray) -> Effects:
        n, width = contexts.shape
        text = _BASES[contexts].tobytes().decode("ascii")
        items = [{"id": str(i), "sequence": text[i * width : (i + 1) * width], "position": half,
                  "ref": text[i * width + half], "alt": "ACGT"[a]} for i, a in enumerate(alts.tolist())]
        answers = remote.batched("/score_variants", items, request_variants,
                                 lambda batch: {"variants": list(batch), "model": pinned, "reverse_complement": rc},
                                 lambda body: body["variants"])
        arrays = [np.array([[_number(v[key][t]) for t in labels] for v in answers], dtype=np.float64)
                  .reshape(n, len(labels)) for key in ("ref", "alt", *info.output.effect_names)]
        return Effects(*arrays)

    return info, score, rc


# ---------------------------------------------------------------- the command


def cmd_score_variants(args: argparse.Namespace) -> int:
    from biomed.genome import GenomeError, Reference
    from biomed.progress import make_progress
    from biomed.variant_stream import ContextReader, build_chunk, context_half, read_chunks
    from cli.parts import Parts, file_identity

    vcf, out = Path(args.vcf), Path(args.out)
    if not vcf.is_file():
        raise GenomeError(f"{str(vcf)!r} is not a file")
    fmt = output_format(args.out, args.format)
    shard = parse_shard(args.shard)
    genome = Reference(args.fasta)
    source = open_shard(vcf, genome, *shard) if shard else open_whole(vcf)
    remote = None
    try:
        if args.server:
            from cli.remote import Remote

            remote = Remote(args.server, args.token, args.in_flight)
            info, score, rc = remote_scorer(remote, args.model, args.rc, args.request_variants)
        else:
            info, score, rc = local_scorer(args.model, args.rc, args.batch_rows)
        writer = (VcfAnnotator(info, genome.path.name, genome.lengths, rc) if fmt == "vcf"
                  else TsvWriter(info.labels, info.output))
        header = writer.header(source.header)
        identity = {"command": "score-variants", "format": fmt, "input": file_identity(vcf),
                    "reference": file_identity(genome.path), "chunk_size": args.chunk_size, "reverse_complement": rc,
                    "shard": args.shard, "model": {"name": info.name, "version": info.version, "sha256": info.sha256}}
        out.parent.mkdir(parents=True, exist_ok=True)
        parts = Parts(out, identity, restart=args.restart)
        if parts.changed:
            print(f"{parts.dir.name} held a run with other inputs or settings; starting afresh", file=sys.stderr)
        reader = ContextReader(genome, context_half(info.length))
        chunks = read_chunks(source.lines, genome, args.chunk_size, source.name, keep=source.keep)
        totals: Counter = Counter()
        missing: list[list] = []  # each record on a contig the reference lacks: line, chrom, pos, id, ref, alt
        with make_progress() as progress:
            bar = progress.add_task("scoring variants", total=source.total, status="")

            def advance(counts: dict) -> None:
                missing.extend(counts.pop("missing", []))
                totals.update(counts)
                progress.update(bar, completed=min(source.done(), source.total),
                                status=f"{totals['records']:,} records, {totals['ref_mismatch']} ref mismatches")

            count = _pipeline(chunks, reader, build_chunk, score, writer, parts, advance,
                              workers=2 if remote else 1)
            progress.update(bar, completed=source.total)
        if fmt == "vcf":  # the contigs as the records name them, now that every record was read
            writer.contigs, writer.missing = genome.lengths_as_given(), sorted({row[1] for row in missing})
            header = writer.header(source.header)
        warning = parts.finish(header, count, index_vcf=fmt == "vcf", keep=args.keep_parts)
        _list_missing(out, missing)
    finally:
        source.close()
        if remote is not None:
            remote.close()
    _summary(args, info, totals, fmt, parts, count, remote, warning)
    _report_names(genome, missing, out, vcf.name)
    return 0


def missing_path(out: Path) -> Path:
    return out.with_name(out.name + ".missing_contigs.tsv")


def _list_missing(out: Path, missing: list[list]) -> None:
    """``OUT.missing_contigs.tsv``: the records on contigs the reference lacks (none: an earlier run's is removed)."""
    side = missing_path(out)
    if not missing:
        side.unlink(missing_ok=True)
        return
    rows = ["\t".join(str(x) for x in row) for row in missing]
    side.write_text("#line\tchrom\tpos\tid\tref\talt\n" + "".join(f"{r}\n" for r in rows))


def _report_names(genome, missing: list[list], out: Path, vcf: str) -> None:
    if genome.renamed:
        print(f"contig names of {vcf} matched to {genome.path.name}'s: {genome.mapping()}")
    if missing:
        per = Counter(row[1] for row in missing)
        shown = ", ".join(f"{c}: {n}" for c, n in sorted(per.items())[:5]) + (" ..." if len(per) > 5 else "")
        print(f"{len(missing)} records on contigs {genome.path.name} lacks ({shown}) were passed through unscored "
              f"-> {missing_path(out)}")


def _pipeline(chunks, reader, build, score, writer, parts, advance, workers: int) -> int:
    """Score chunk k in a worker while chunk k+1 is read; write each as it finishes; skip finished ones."""
    pending: deque[tuple[object, Future | None]] = deque()

    def finish(chunk, future: Future | None) -> None:
        effects = future.result() if future is not None else None
        lines = writer.lines(chunk, effects)
        counts = Counter(chunk.counts)
        counts.update(records=len(chunk.records), flagged=int(chunk.mismatch.sum()))
        saved = {**counts, "missing": [[r.number, r.chrom, r.pos, r.id, r.ref, ",".join(r.alts)] for r in chunk.missing]}
        parts.write(chunk.index, lines, saved)
        advance(saved)

    index = 0
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="biomed-score") as pool:
        for records in chunks:
            finished = parts.done(index)
            if finished is not None:
                advance(finished)
            else:
                chunk = build(index, records, reader)
                future = pool.submit(score, chunk.contexts, chunk.alt_codes) if len(chunk.record) else None
                pending.append((chunk, future))
                while len(pending) > workers:
                    finish(*pending.popleft())
            index += 1
        while pending:
            finish(*pending.popleft())
    return index


def _summary(args, info: Producer, totals: Counter, fmt: str, parts, chunks: int, remote, warning: str | None) -> None:
    skipped = {k: totals[k] for k in ("not_snv", "not_acgt", "no_contig") if totals[k]}
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items()))
    line = (f"scored {totals['snv']} SNVs with {info.name}:{info.version}; {totals['ref_mismatch']} ref_mismatch; "
            f"skipped {sum(skipped.values())} other alleles{f' ({reasons})' if reasons else ''} -> {args.out}")
    print(line)
    extra = [f"{totals['records']:,} records in {chunks} chunks"]
    if fmt == "vcf":
        extra.append(f"{totals['flagged']} flagged KV_biomed_..._REF_MISMATCH")
    if parts.resumed:
        extra.append(f"resumed: {parts.resumed} chunks were already done")
    if args.shard:
        extra.append(f"shard {args.shard}")
    if remote is not None:
        extra.append(f"{remote.url}: {remote.stats.describe()}")
    print("; ".join(extra))
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
