"""Streaming variant scoring, torch-free: VCF lines in chunks, reference contexts read block by block.

A VCF of any size is read as a stream of data lines and cut into chunks of records; each
chunk's SNV alleles get their reference *context* (the ``2 * (L // 2) + 1`` bases centred on
the variant, which hold every placement ``/score_variants`` scores, see
``biomed.dna_ops.variant_offsets``) from a :class:`ContextReader` that reads the reference
in large blocks along each contig, so a sorted VCF reads each reference base about once.
The model windows are then cut from the contexts with ``biomed.dna_ops.context_windows``:
the same windows, in the same order, as ``/score_variants`` builds from
``{sequence: context, position: L // 2}``, so the two give the same numbers.

Memory is bounded by the chunk size, never by the number of variants.

Contig names of either convention match the reference's (``1`` or ``chr1``: ``biomed.genome``);
a record on a contig the reference lacks is kept in its chunk with status ``no_contig`` for each
ALT (passed through unscored, and listed by the command), never dropped.

Shared by ``biomed score-variants`` (local onnxruntime or a remote biomed-serve) and the
benchmarks; VCF and TSV writing stays in the command line (``cli/``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from biomed.genome import ACGT, GenomeError, Reference
from biomed.preprocess import dna

BLOCK = 1 << 20  # reference bases read at a time (plus the context margins)
_CODE = {base: code for code, base in enumerate(dna.ALPHABET)}


def context_half(length: int) -> int:
    """Bases on each side of the variant in its context: ``L // 2`` (every placement of an ``L`` window fits)."""
    return length // 2


class VcfRecord(NamedTuple):
    """One VCF data line, parsed as far as scoring needs (a tuple: millions are made)."""

    line: str  # the line as read, without the line end
    number: int  # line number in the file (or in a tabix region's stream), 1-based
    chrom: str
    pos: int  # 1-based
    id: str
    ref: str  # upper case
    alts: tuple[str, ...]  # upper case; ('.',) when the record has no ALT

    @property
    def name(self) -> str:
        """The ID column, or ``chrom:pos`` when it is missing."""
        return self.id if self.id not in ("", ".") else f"{self.chrom}:{self.pos}"


def parse_record(line: str, number: int, source: str = "the VCF") -> VcfRecord:
    """The fields of a VCF data line that scoring needs.

    Raises:
        GenomeError: fewer than five tab-separated fields, or a POS that is not a positive integer.
    """
    line = line.rstrip("\r\n")
    fields = line.split("\t", 5)
    if len(fields) < 5:
        raise GenomeError(f"{source}: line {number} has {len(fields)} tab-separated fields; a VCF line needs "
                          "CHROM POS ID REF ALT ...")
    chrom, pos, vid, ref, alts = fields[:5]
    try:
        position = int(pos)
    except ValueError:
        raise GenomeError(f"{source}: line {number}: POS {pos!r} is not an integer") from None
    if position < 1:
        raise GenomeError(f"{source}: line {number}: POS {position} is not 1-based (must be at least 1)")
    return VcfRecord(line, number, chrom, position, vid, ref.upper(), tuple(alts.upper().split(",")))


def allele_status(ref: str, alt: str) -> str:
    """``snv`` when the allele is scored, otherwise why not: ``not_snv`` or ``not_acgt`` (as ``read_vcf`` counts)."""
    if len(ref) != 1 or len(alt) != 1:
        return "not_snv"  # indels, MNVs, symbolic (<DEL>), breakends, missing '.'
    if ref not in ACGT or alt not in ACGT or alt == ref:
        return "not_acgt"  # N, IUPAC codes, '*', or ALT equal to REF
    return "snv"


class ContextReader:
    """Reference contexts around variants, read in blocks of ``block`` bases along each contig.

    A sorted VCF walks each contig forwards, so each block is read once; an unsorted one still
    gets the right bases, only with more reads. Past a contig end the context is N.
    """

    def __init__(self, reference: Reference, half: int, block: int = BLOCK) -> None:
        self.reference, self.half, self.block = reference, half, max(block, 1)
        self.width = 2 * half + 1
        self._chrom: str | None = None
        self._start = self._end = 0
        self._codes = np.empty(0, dtype=np.uint8)
        self.reads = 0  # blocks read so far

    def _load(self, chrom: str, start: int) -> None:
        end = start + self.block + self.width
        self._codes = dna.encode(self.reference.fetch(chrom, start, end), name=f"{chrom}:{start + 1}-{end}")
        self._chrom, self._start, self._end = chrom, start, end
        self.reads += 1

    def contexts(self, chrom: str, positions: np.ndarray) -> np.ndarray:
        """(n, 2 * half + 1) uint8 codes centred on the 0-based ``positions`` of ``chrom``."""
        self.reference.check(chrom)
        lo = np.asarray(positions, dtype=np.int64) - self.half
        out = np.empty((len(lo), self.width), dtype=np.uint8)
        todo = np.arange(len(lo))
        offsets = np.arange(self.width)
        while todo.size:
            inside = (lo[todo] >= self._start) & (lo[todo] + self.width <= self._end) if chrom == self._chrom else \
                np.zeros(len(todo), dtype=bool)
            if not inside.any():
                self._load(chrom, int(lo[todo].min()))
                continue
            take = todo[inside]
            out[take] = self._codes[(lo[take] - self._start)[:, None] + offsets[None, :]]
            todo = todo[~inside]
        return out


@dataclass
class Chunk:
    """A run of consecutive VCF records and the SNV alleles among them that are to be scored.

    Allele arrays (one entry per scored allele, in record then ALT order): ``record`` (index into
    ``records``), ``alt_index`` (index into the record's ALTs), ``contexts`` (n, 2 * half + 1) and
    ``alt_codes``. ``mismatch`` marks records whose REF disagrees with the reference (their
    alleles are not scored); ``status[r][a]`` says, per record and ALT, ``snv``, ``ref_mismatch``
    or why it was skipped (``no_contig``: the reference lacks the record's contig).
    """

    index: int
    records: list[VcfRecord]
    record: np.ndarray
    alt_index: np.ndarray
    contexts: np.ndarray
    alt_codes: np.ndarray
    mismatch: np.ndarray
    status: list[tuple[str, ...]]
    counts: Counter = field(default_factory=Counter)  # snv, ref_mismatch, not_snv, not_acgt: per allele

    def __len__(self) -> int:
        return len(self.records)

    @property
    def missing(self) -> list[VcfRecord]:
        """The records on contigs the reference lacks."""
        return [r for r, s in zip(self.records, self.status) if s and s[0] == "no_contig"]


def build_chunk(index: int, records: list[VcfRecord], reader: ContextReader) -> Chunk:
    """Classify each ALT, read the contexts of the SNVs (one vectorised gather per contig run), check REF."""
    known: dict[str, bool] = {}
    statuses = [tuple(allele_status(r.ref, a) for a in r.alts)
                if known.setdefault(r.chrom, reader.reference.name(r.chrom) is not None) else ("no_contig",) * len(r.alts)
                for r in records]
    rec_idx = [i for i, s in enumerate(statuses) for st in s if st == "snv"]
    alt_idx = [j for s in statuses for j, st in enumerate(s) if st == "snv"]
    n = len(rec_idx)
    contexts = np.empty((n, reader.width), dtype=np.uint8)
    start = 0
    while start < n:  # runs of one contig: one gather each
        chrom = records[rec_idx[start]].chrom
        stop = start
        while stop < n and records[rec_idx[stop]].chrom == chrom:
            stop += 1
        positions = np.fromiter((records[rec_idx[i]].pos - 1 for i in range(start, stop)), dtype=np.int64,
                                count=stop - start)
        contexts[start:stop] = reader.contexts(chrom, positions)
        start = stop
    record = np.asarray(rec_idx, dtype=np.int64)
    ref_codes = np.fromiter((_CODE[records[i].ref] for i in rec_idx), dtype=np.uint8, count=n)
    alt_codes = np.fromiter((_CODE[records[i].alts[j]] for i, j in zip(rec_idx, alt_idx)), dtype=np.uint8, count=n)
    mismatch = np.zeros(len(records), dtype=bool)
    if n:
        mismatch[record[contexts[:, reader.half] != ref_codes]] = True
    keep = ~mismatch[record] if n else np.zeros(0, dtype=bool)
    status = [tuple("ref_mismatch" if mismatch[i] and st == "snv" else st for st in s) for i, s in enumerate(statuses)]
    counts = Counter(st for s in status for st in s)
    return Chunk(index, records, record[keep], np.asarray(alt_idx, dtype=np.int64)[keep], contexts[keep],
                 alt_codes[keep], mismatch, status, counts)


def read_chunks(lines: Iterable[str], reference: Reference, size: int, source: str = "the VCF",
                first_line: int = 1, keep: Callable[[VcfRecord], bool] | None = None) -> Iterator[list[VcfRecord]]:
    """Data lines (header lines and blank lines skipped) parsed into lists of ``size`` records.

    ``keep`` filters records (a shard keeps those whose POS lies in its regions). Each contig's name is
    matched with the reference's on first sight (``Reference.name``: the match is recorded there).
    """
    batch: list[VcfRecord] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=first_line):
        if not line or line[0] == "#" or not line.strip():
            continue
        record = parse_record(line, number, source)
        if record.chrom not in seen:
            reference.name(record.chrom)
            seen.add(record.chrom)
        if keep is not None and not keep(record):
            continue
        batch.append(record)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch

