"""Genome inputs, torch-free: FASTA records, a reference genome (pyfaidx) and VCF variants.

Coordinates: ``Reference.fetch`` takes 0-based half-open intervals (BED style);
``Variant.pos`` is 1-based (VCF style). Anything outside a contig reads as N,
and IUPAC ambiguity codes in a reference read as N too.

Contig names: genomics data names chromosomes two ways, ``1``..``22``, ``X``, ``Y``, ``MT`` (Ensembl,
NCBI, 1000 Genomes) and ``chr1``..``chr22``, ``chrX``, ``chrY``, ``chrM`` (UCSC, GENCODE). A
``Reference`` answers either for its own contigs (``Reference.name``) and records which names it
matched that way (``Reference.renamed``), so a VCF or BED of the other convention is read against
it, and the outputs keep the input's names (``Reference.lengths_as_given``).
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

from biomed.errors import MalformedInput, TooLarge

ACGT = frozenset("ACGT")
_TO_N = str.maketrans({c: "N" for c in "RYSWKMBDHVU"})


class GenomeError(ValueError):
    """A genome input cannot be used; the message says why in one line."""


_MITO = {"MT": "chrM", "M": "chrM", "chrMT": "MT", "chrM": "MT"}


def alias(name: str) -> str | None:
    """The other convention's name of a contig (``1`` <-> ``chr1``, ``X`` <-> ``chrX``, ``MT`` <-> ``chrM``), or None
    for a name that has no other (``chrUn_KI270302v1``, ``GL000192.1``: their spellings differ more than that)."""
    if name in _MITO:
        return _MITO[name]
    if name.startswith("chr"):
        rest = name[3:]
        return rest if rest and "_" not in rest else None
    return f"chr{name}" if name and "_" not in name and "." not in name else None


def open_text(path: str | Path) -> IO[str]:
    """A text handle on a plain or gzip (including bgzip) file."""
    path = Path(path)
    if not path.is_file():
        raise GenomeError(f"{str(path)!r} is not a file")
    with path.open("rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return io.TextIOWrapper(gzip.open(path), encoding="utf-8") if gz else path.open(encoding="utf-8")


@dataclass(frozen=True)
class FastaRecord:
    header: str  # the whole header line without '>'
    sequence: str  # without whitespace, case kept
    line: int  # line number of the header (1-based)
    number: int = 1  # position of the record in its file (1-based)

    @property
    def id(self) -> str:
        """The header's first word; ``record<N>`` when the header is empty."""
        return (self.header.split() or [f"record{self.number}"])[0]


class FastaError(GenomeError, MalformedInput):
    """A FASTA text that cannot be parsed (a 400 in the service)."""


def parse_fasta(lines: Iterable[str], source: str = "the FASTA file", max_records: int | None = None,
                max_header: int | None = None) -> Iterator[FastaRecord]:
    """The records of FASTA text, one at a time: the one FASTA reader of training, the CLI and the service.

    Blank lines and ``;`` comments are skipped; sequence lines are joined without whitespace.
    Counts are checked while parsing, before the next record is built.

    Args:
        lines: the text's lines (a file handle or ``io.StringIO``: read lazily).
        source: how to name the text in an error.
        max_records: refuse (``TooLarge``) a text with more records.
        max_header: refuse (``TooLarge``) a header line longer than this many characters.

    Raises:
        FastaError: sequence before the first header, or no record at all.
        TooLarge: over ``max_records`` or ``max_header``.
    """
    header: str | None = None
    parts: list[str] = []
    start = count = 0
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if header is not None:
                yield FastaRecord(header, "".join(parts), start, count)
            count += 1
            if max_records is not None and count > max_records:
                raise TooLarge(f"{source} has more than {max_records} records; accepted: at most {max_records}")
            if max_header is not None and len(line) - 1 > max_header:
                raise TooLarge(f"{source}: the header on line {number} has {len(line) - 1} characters; accepted: at "
                               f"most {max_header}")
            header, parts, start = line[1:].strip(), [], number
        elif header is None:
            raise FastaError(f"{source}: line {number} has sequence before any '>' header")
        else:
            parts.append(line)
    if header is None:
        raise FastaError(f"{source} has no records ('>' header lines)")
    yield FastaRecord(header, "".join(parts), start, count)


def read_fasta(path: str | Path) -> list[FastaRecord]:
    """Every record of a FASTA file (plain or gzip)."""
    with open_text(path) as f:
        return list(parse_fasta(f, Path(path).name))


class Reference:
    """A reference genome read with pyfaidx (an ``.fai`` index is written beside it on first use).

    Plain FASTA or bgzip-compressed FASTA work; plain gzip does not (pyfaidx needs random access).
    """

    def __init__(self, path: str | Path) -> None:
        import pyfaidx

        self.path = Path(path)
        if not self.path.is_file():
            raise GenomeError(f"reference {str(self.path)!r} is not a file; give a FASTA (plain or bgzip)")
        try:
            self._fasta = pyfaidx.Fasta(str(self.path), as_raw=True, sequence_always_upper=True)
        except Exception as err:  # pyfaidx raises its own FastaIndexingError, UnsupportedCompressionFormat...
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise GenomeError(f"reference {self.path.name} cannot be indexed: {first}") from None
        self.lengths = {name: len(self._fasta[name]) for name in self._fasta.keys()}
        self.renamed: dict[str, str] = {}  # a name an input gave -> this reference's name of that contig

    def name(self, chrom: str) -> str | None:
        """This reference's name of ``chrom``: itself, or its other convention's (``alias``) when only that is here
        (the match is recorded in ``renamed``); None when the reference lacks the contig."""
        if chrom in self.lengths:
            return chrom
        other = self.renamed.get(chrom) or alias(chrom)
        if other is not None and other in self.lengths:
            self.renamed[chrom] = other
            return other
        return None

    def check(self, chrom: str, where: str = "") -> str:
        """This reference's name of ``chrom`` (see ``name``); a one-line error when it lacks the contig."""
        found = self.name(chrom)
        if found is not None:
            return found
        names = list(self.lengths)
        shown = ", ".join(names[:5]) + (f" ... ({len(names)} contigs)" if len(names) > 5 else "")
        raise GenomeError(f"chromosome {chrom!r}{where} is not in {self.path.name} (contigs: {shown})")

    def lengths_as_given(self) -> dict[str, int]:
        """Every contig's length, in the reference's order, under the names the inputs used: the name given for a
        contig matched through ``renamed``, the other convention's for the rest once any was (so a VCF of ``1``,
        ``2`` against ``chr1``..``chrM`` declares ``MT``), else the reference's own."""
        back = {ref: given for given, ref in self.renamed.items()}
        return {back.get(name) or (alias(name) if back and alias(name) else name): size
                for name, size in self.lengths.items()}

    def mapping(self) -> str:
        """The contig names matched across conventions, for a summary line (empty when none were)."""
        pairs = [f"{given}={ref}" for given, ref in self.renamed.items()]
        return ", ".join(pairs[:6]) + (f" ... ({len(pairs)} contigs)" if len(pairs) > 6 else "")

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Bases [start, end) 0-based, upper case; N where the interval runs past a contig end."""
        chrom = self.check(chrom)
        size = self.lengths[chrom]
        lo, hi = max(start, 0), min(end, size)
        core = self._fasta[chrom][lo:hi] if hi > lo else ""
        return ("N" * (lo - start) + core.translate(_TO_N) + "N" * (end - hi)) if end > start else ""

    def window(self, chrom: str, centre: int, length: int) -> str:
        """``length`` bases with 0-based ``centre`` at index ``length // 2``."""
        start = centre - length // 2
        return self.fetch(chrom, start, start + length)
