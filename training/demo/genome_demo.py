"""A synthetic genome for the genome-scale commands: a reference with planted JASPAR motifs, a VCF, regions.

``biomed demo-data genome --out DIR`` writes:

- ``genome.fa``: contigs ``chr1``, ``chr2``, ... of iid background (G+C ``gc``) with one
  JASPAR motif instance (sampled from its PPM, either strand) every ``spacing`` bases, the
  tasks taking turns, so a model window centred on one site holds no other;
- ``sites.bed``: the planted sites (BED6: chrom, start, end, ``TASK:MATRIX_ID``, 0, strand);
- ``variants.vcf.gz`` (+ ``.tbi``, bgzip + tabix): one *breaking* SNV per site (its most
  informative column set to the PPM's least likely base, so the site's task should drop),
  ``variants`` *neutral* SNVs outside every site, and one each of: a REF that disagrees with
  the reference, a multi-allelic record at a site, an insertion. ``INFO/DEMO`` says which,
  ``INFO/TASK`` the task a breaking variant hits;
- ``variants.truth.tsv``: the same as a table (id, chrom, pos, ref, alt, kind, task);
- ``regions.bed``: every contig whole (``biomed predict-regions`` over the genome).

Everything follows from ``seed``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biomed.jaspar import Motif
from biomed.preprocess.dna import decode, reverse_complement
from training.demo.dna_demo import _check, background, sample_instance

WINDOW = 200  # the demo DNA model's window: sites are spaced so that one centred window holds one site
COMP = str.maketrans("ACGT", "TGCA")


@dataclass(frozen=True)
class Site:
    chrom: str
    start: int  # 0-based
    end: int  # exclusive
    task: str
    motif_id: str
    strand: str
    breaking: tuple[int, str, str]  # (0-based position, ref, alt) of the breaking SNV


@dataclass(frozen=True)
class DemoVariant:
    chrom: str
    pos: int  # 1-based
    id: str
    ref: str
    alt: str
    kind: str  # break | neutral | ref_mismatch | multiallelic | indel
    task: str = "."


def generate_genome(out: Path, motifs: Sequence[str] = ("CTCF", "REST", "TP53"), contigs: int = 2,
                    length: int = 20_000, variants: int | None = None, seed: int = 0, gc: float = 0.42,
                    spacing: int | None = None) -> Path:
    """Write the demo genome, VCF and BEDs into ``out``; returns ``out``.

    Args:
        out: the folder.
        motifs: JASPAR names or matrix IDs; the tasks are the names as JASPAR spells them.
        contigs: number of contigs.
        length: bases per contig.
        variants: neutral SNVs in all (default: one per 100 bases).
        seed: seed of ``np.random.default_rng``.
        gc: G+C fraction of the background.
        spacing: bases between site starts (default: the window plus twice the widest motif, plus 40).

    Raises:
        ValueError: an argument is out of range or a motif is unknown.
    """
    resolved = _check(motifs, WINDOW, 1, gc, 0.5)
    widest = max(m.width for m in resolved)
    spacing = spacing or WINDOW + 2 * widest + 40
    if contigs < 1:
        raise ValueError(f"contigs must be at least 1; got {contigs}")
    if length < 2 * spacing:
        raise ValueError(f"length {length} is too short for two sites {spacing} bases apart; give at least {2 * spacing}")
    rng = np.random.default_rng(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    genome: dict[str, np.ndarray] = {}
    sites: list[Site] = []
    turn = 0
    for c in range(1, contigs + 1):
        chrom = f"chr{c}"
        codes = background(rng, 1, length, gc)[0]
        for start in range(spacing // 2, length - spacing // 2 - widest, spacing):
            motif = resolved[turn % len(resolved)]
            turn += 1
            sites.append(_plant(rng, codes, chrom, start + int(rng.integers(0, 11)), motif))
        genome[chrom] = codes
    total = contigs * length
    records = _variants(rng, genome, sites, variants if variants is not None else total // 100)
    _write_fasta(out / "genome.fa", genome)
    _write_vcf(out / "variants.vcf.gz", genome, records, seed)
    (out / "variants.truth.tsv").write_text("id\tchrom\tpos\tref\talt\tkind\ttask\n" + "".join(
        f"{v.id}\t{v.chrom}\t{v.pos}\t{v.ref}\t{v.alt}\t{v.kind}\t{v.task}\n" for v in records))
    (out / "sites.bed").write_text("".join(f"{s.chrom}\t{s.start}\t{s.end}\t{s.task}:{s.motif_id}\t0\t{s.strand}\n"
                                           for s in sites))
    (out / "regions.bed").write_text("".join(f"{chrom}\t0\t{len(codes)}\t{chrom}\n" for chrom, codes in genome.items()))
    return out


def _plant(rng: np.random.Generator, codes: np.ndarray, chrom: str, start: int, motif: Motif) -> Site:
    """One sampled instance at ``start`` on a random strand, and the SNV that breaks it."""
    instance = sample_instance(rng, motif.ppm)
    strand = "-" if rng.random() < 0.5 else "+"
    codes[start : start + motif.width] = reverse_complement(instance) if strand == "-" else instance
    ppm = motif.ppm
    information = 2 + (ppm * np.log2(ppm)).sum(axis=0)
    for column in np.argsort(-information):  # the most informative column whose base is not already the least likely
        pos = start + int(column) if strand == "+" else start + motif.width - 1 - int(column)
        worst = "ACGT"[int(ppm[:, column].argmin())]
        alt = worst if strand == "+" else worst.translate(COMP)
        ref = "ACGT"[int(codes[pos])]
        if ref != alt:
            return Site(chrom, start, start + motif.width, motif.name, motif.id, strand, (pos, ref, alt))
    raise AssertionError("every column holds its least likely base")  # impossible for a sampled instance


def _variants(rng: np.random.Generator, genome: dict[str, np.ndarray], sites: list[Site], neutral: int) -> list[DemoVariant]:
    """Breaking SNVs, neutral ones outside every site, and the special records; sorted by position."""
    out: list[DemoVariant] = []
    used: dict[str, set[int]] = {chrom: set() for chrom in genome}
    for n, s in enumerate(sites, start=1):
        pos, ref, alt = s.breaking
        out.append(DemoVariant(s.chrom, pos + 1, f"break{n}", ref, alt, "break", s.task))
        used[s.chrom].add(pos)
    free = {chrom: np.ones(len(codes), dtype=bool) for chrom, codes in genome.items()}
    for s in sites:
        free[s.chrom][max(s.start - 2, 0) : s.end + 2] = False
    for chrom in genome:
        free[chrom][:5] = free[chrom][-5:] = False
    candidates = [(chrom, int(p)) for chrom in genome for p in np.flatnonzero(free[chrom])]
    specials = 2  # the mismatch and the indel take free positions too
    if neutral + specials > len(candidates):
        raise ValueError(f"{neutral} neutral variants do not fit in {len(candidates)} free positions; give fewer")
    picks = rng.choice(len(candidates), size=neutral + specials, replace=False)
    chosen = [candidates[i] for i in picks]
    order = {chrom: i for i, chrom in enumerate(genome)}
    for n, (chrom, pos) in enumerate(sorted(chosen[:neutral], key=lambda cp: (order[cp[0]], cp[1])), start=1):
        ref = "ACGT"[int(genome[chrom][pos])]
        alt = "ACGT".replace(ref, "")[int(rng.integers(0, 3))]
        out.append(DemoVariant(chrom, pos + 1, f"neutral{n}", ref, alt, "neutral"))
    (c1, p1), (c2, p2) = chosen[neutral:]
    actual = "ACGT"[int(genome[c1][p1])]
    wrong = "ACGT".replace(actual, "")[0]
    out.append(DemoVariant(c1, p1 + 1, "mismatch1", wrong, "ACGT".replace(wrong, "")[0], "ref_mismatch"))
    base = "ACGT"[int(genome[c2][p2])]
    out.append(DemoVariant(c2, p2 + 1, "indel1", base, base + "T", "indel"))
    site = sites[0]  # multi-allelic: the site's breaking position, both other non-reference bases
    pos, ref, alt = site.breaking
    other = [b for b in "ACGT" if b not in (ref, alt)][0]
    out = [v for v in out if v.id != "break1"]
    out.append(DemoVariant(site.chrom, pos + 1, "multi1", ref, f"{alt},{other}", "multiallelic", site.task))
    return sorted(out, key=lambda v: (order[v.chrom], v.pos))


def _write_fasta(path: Path, genome: dict[str, np.ndarray], width: int = 60) -> None:
    with path.open("w", encoding="ascii") as f:
        for chrom, codes in genome.items():
            seq = decode(codes)
            f.write(f">{chrom}\n")
            f.writelines(seq[i : i + width] + "\n" for i in range(0, len(seq), width))


def _write_vcf(path: Path, genome: dict[str, np.ndarray], records: list[DemoVariant], seed: int) -> None:
    """bgzip-compressed and tabix-indexed (pysam)."""
    import pysam

    header = ["##fileformat=VCFv4.2", f"##source=biomed demo-data genome (seed {seed})", "##reference=genome.fa",
              *[f"##contig=<ID={chrom},length={len(codes)}>" for chrom, codes in genome.items()],
              '##INFO=<ID=DEMO,Number=1,Type=String,Description="What the demo planted: break (breaks a planted '
              'motif), neutral (outside every site), ref_mismatch (REF deliberately wrong), multiallelic, indel">',
              '##INFO=<ID=TASK,Number=1,Type=String,Description="The task whose planted motif the variant breaks">',
              "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"]
    lines = [f"{v.chrom}\t{v.pos}\t{v.id}\t{v.ref}\t{v.alt}\t.\tPASS\tDEMO={v.kind}" + (f";TASK={v.task}" if v.task != "." else "")
             for v in records]
    plain = path.with_suffix("")  # variants.vcf
    plain.write_text("\n".join(header + lines) + "\n", encoding="ascii")
    pysam.tabix_compress(str(plain), str(path), force=True)
    pysam.tabix_index(str(path), preset="vcf", force=True)
    plain.unlink()
