"""Genome inputs: FASTA with header labels, BED + reference FASTA, VCF SNVs, and `biomed train dna` on a BED."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from cli import main
from biomed.genome import GenomeError, Reference, alias
from biomed.preprocess import dna
from training.data import DataError, load_bed, load_dna, load_fasta_labels

CHR1 = "ACGTACGTAA" * 3  # 30 bases
CHR2 = "GGGGCCCCTT"  # 10 bases


@pytest.fixture
def reference(tmp_path: Path) -> Path:
    path = tmp_path / "ref.fa"
    path.write_text(f">chr1 first\n{CHR1[:15]}\n{CHR1[15:]}\n>chr2\n{CHR2.lower()}\n")
    return path


def write_bed(path: Path, rows: list[str], header: str = "#chrom\tstart\tend\tname\tA\tB") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_fasta_labels(tmp_path: Path) -> None:
    path = tmp_path / "seqs.fa.gz"
    with gzip.open(path, "wt") as f:
        f.write(">s1 CTCF=1 REST=0 some description\nACGT\nAC\n>s2 REST=1 CTCF=0\nGGGG\n")
    data = load_dna(path)
    assert data.labels == ["CTCF", "REST"] and data.multilabel
    assert data.sources == ["s1", "s2"]
    np.testing.assert_array_equal(data.y, [[1, 0], [0, 1]])
    assert data.x.shape == (2, 6) and dna.decode(data.x[1]) == "NGGGGN"


@pytest.mark.parametrize(("text", "message"), [
    (">s1 A=1 B=0\nACGT\n>s2 A=1\nACGT\n", r"record 's2' \(line 3\) has no label for B"),
    (">s1 A=1 B=yes\nACGT\n", "label B='yes' must be 0 or 1"),
    (">s1\nACGT\n", "no labels in the headers"),
    ("ACGT\n", "sequence before any '>' header"),
])
def test_fasta_label_errors(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.fasta"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as err:
        load_fasta_labels(path)
    assert "\n" not in str(err.value)


def test_bed_centres_and_pads_at_contig_ends(tmp_path: Path, reference: Path) -> None:
    bed = write_bed(tmp_path / "x.bed", ["chr1\t10\t14\tmid\t1\t0", "chr1\t0\t2\tleft\t0\t1",
                                         "chr2\t8\t10\tright\t1\t1"])
    data = load_bed(bed, reference, length=6)
    assert data.labels == ["A", "B"] and data.sources == ["mid", "left", "right"]
    seqs = [dna.decode(row) for row in data.x]
    assert seqs[0] == CHR1[9:15]  # centre 12: [9, 15)
    assert seqs[1] == "NN" + CHR1[:4]  # centre 1: [-2, 4)
    assert seqs[2] == CHR2[6:] + "NN"  # centre 9: [6, 12), chr2 has 10 bases
    np.testing.assert_array_equal(data.y, [[1, 0], [0, 1], [1, 1]])
    default = load_bed(bed, reference)  # the longest interval (4 bases)
    assert default.x.shape == (3, 4) and dna.decode(default.x[0]) == CHR1[10:14]


def test_bed_without_name_column(tmp_path: Path, reference: Path) -> None:
    bed = write_bed(tmp_path / "x.bed", ["chr2\t0\t4\t1"], header="#chrom start end BOUND")
    data = load_bed(bed, reference)
    assert data.labels == ["BOUND"] and data.sources == ["chr2:0-4"] and dna.decode(data.x[0]) == "GGGG"


@pytest.mark.parametrize(("rows", "header", "message"), [
    (["chr1\t0\t4\tn\t1\tmaybe"], None, "line 2: label B='maybe' must be 0 or 1"),
    (["chrX\t0\t4\tn\t1\t0"], None, "chromosome 'chrX' .* is not in ref.fa"),
    (["chr1\t5\t4\tn\t1\t0"], None, "must have 0 <= start < end"),
    (["chr1\t0\t4\tn\t1"], None, "has 5 columns; the header has 6"),
    (["chr1\t0\t4\t1"], "chr1 0 4 A", "first line must be a header"),
])
def test_bed_errors(tmp_path: Path, reference: Path, rows: list[str], header: str | None, message: str) -> None:
    bed = write_bed(tmp_path / "bad.bed", rows, **({"header": header} if header else {}))
    with pytest.raises(DataError, match=message) as err:
        load_bed(bed, reference)
    assert "\n" not in str(err.value)


def test_bed_needs_reference(tmp_path: Path) -> None:
    bed = write_bed(tmp_path / "x.bed", ["chr1\t0\t4\tn\t1\t0"])
    with pytest.raises(DataError, match="--reference"):
        load_dna(bed)


@pytest.mark.parametrize(("given", "other"), [
    ("1", "chr1"), ("chr22", "22"), ("X", "chrX"), ("chrY", "Y"), ("MT", "chrM"), ("chrM", "MT"), ("M", "chrM"),
    ("chrMT", "MT"), ("chrUn_KI270302v1", None), ("GL000192.1", None), ("chr", None),
])
def test_contig_names_of_the_other_convention(given: str, other: str | None) -> None:
    assert alias(given) == other


def test_a_reference_of_ensembl_names_answers_ucsc_ones(tmp_path: Path) -> None:
    """The other direction: a FASTA of ``1``, ``MT`` read through ``chr1``, ``chrM``; a contig it lacks is None."""
    (tmp_path / "e.fa").write_text(">1\nACGTACGT\n>MT\nGGCC\n")
    genome = Reference(tmp_path / "e.fa")
    assert genome.name("chr1") == "1" and genome.name("chrM") == "MT" and genome.fetch("chrM", 0, 4) == "GGCC"
    assert genome.name("chr2") is None and genome.renamed == {"chr1": "1", "chrM": "MT"}
    assert genome.lengths_as_given() == {"chr1": 8, "chrM": 4} and genome.mapping() == "chr1=1, chrM=MT"


def test_reference_fetch_and_names(reference: Path) -> None:
    genome = Reference(reference)
    assert genome.lengths == {"chr1": 30, "chr2": 10}
    assert genome.fetch("chr2", -3, 2) == "NNNGG" and genome.fetch("chr2", 8, 12) == "TTNN"
    assert genome.window("chr1", 0, 4) == "NNAC"
    assert genome.check("2") == "chr2" and genome.fetch("2", 8, 12) == "TTNN"  # the other convention's name
    assert genome.renamed == {"2": "chr2"} and genome.lengths_as_given() == {"1": 30, "2": 10}
    with pytest.raises(GenomeError, match="chromosome 'chrZ' is not in"):
        genome.check("chrZ")


def test_train_dna_on_bed(tmp_path: Path) -> None:
    """`biomed train dna --data x.bed --reference ref.fa`: one epoch end to end."""
    rng = np.random.default_rng(0)
    contigs = {f"chr{i}": rng.choice(list("ACGT"), size=2000) for i in (1, 2)}
    for seq in contigs.values():
        seq[1000:1010] = list("GGGACTTTCC")  # one site per contig; intervals over it are labelled SITE
    (tmp_path / "ref.fa").write_text("".join(f">{c}\n{''.join(s)}\n" for c, s in contigs.items()))
    rows = []
    for i in range(80):
        chrom = f"chr{1 + i % 2}"
        away = int(rng.choice([rng.integers(0, 900), rng.integers(1020, 1950)]))
        start = int(rng.integers(960, 1001)) if i % 4 < 2 else away
        bound = int(start <= 1000 and start + 50 >= 1010)
        rows.append(f"{chrom}\t{start}\t{start + 50}\tr{i}\t{bound}\t{1 - bound}")
    write_bed(tmp_path / "x.bed", rows, header="#chrom\tstart\tend\tname\tSITE\tOTHER")
    run = tmp_path / "run"
    rc = main(["train", "dna", "--data", str(tmp_path / "x.bed"), "--reference", str(tmp_path / "ref.fa"),
               "--out", str(run), "--epochs", "1"])
    assert rc == 0
    config = json.loads((run / "config.json").read_text())
    assert config["reference"] == str(tmp_path / "ref.fa") and (run / "best.pt").exists()
    assert json.loads((run / "metrics.json").read_text())["labels"] == ["SITE", "OTHER"]


def test_train_bed_without_reference_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_bed(tmp_path / "x.bed", ["chr1\t0\t4\tn\t1\t0"])
    rc = main(["train", "dna", "--data", str(tmp_path / "x.bed"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and "add --reference REF.fa" in err and err.count("\n") == 1


@pytest.mark.parametrize(("args", "message"), [
    (["explain", "--out", "x.png"], "one of the arguments --sequence --fasta is required"),
    (["explain", "--sequence", "ACGT", "--fasta", "x.fa", "--out", "x.png"], "not allowed with argument"),
    (["score-variants", "--vcf", "v.vcf", "--out", "x.tsv"], "the following arguments are required: --fasta"),
])
def test_dna_commands_bad_arguments_are_one_line(args: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("command", ["explain", "score-variants"])
def test_dna_commands_have_help(command: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and "--model" in capsys.readouterr().out


def test_score_variants_missing_vcf_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rc = main(["score-variants", "--vcf", str(tmp_path / "none.vcf"), "--fasta", "ref.fa", "--out", "x.tsv"])
    err = capsys.readouterr().err
    assert rc == 1 and "none.vcf' is not a file" in err and err.count("\n") == 1
