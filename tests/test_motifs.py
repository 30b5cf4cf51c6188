"""First-layer filters as motifs: a model trained on one planted motif gives it back."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from cli import main
from training.demo.dna_demo import generate_dna
from biomed.jaspar import compare, find_motif

PLANTED = "CTCF"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deepbind run on sequences with CTCF planted in 30% of them (a few seconds on two cores)."""
    from training.config import TrainConfig
    from training.train import fit

    root = tmp_path_factory.mktemp("motifs")
    table = generate_dna(root / "data", motifs=(PLANTED,), length=100, n=1500, seed=1)
    config = TrainConfig(kind="dna", data=str(table), out=str(root / "run"), arch="deepbind", epochs=12, patience=12,
                         seed=0, model_kwargs={"filters": 16})
    summary = fit(config)
    assert summary["test"]["auroc_macro"] > 0.9
    return root / "run"


def test_best_filter_is_the_planted_motif(run: Path) -> None:
    from training.export import load_run_model
    from training.motifs import filter_pwms, training_codes

    model, _ = load_run_model(run)
    motifs = filter_pwms(model, training_codes(run))
    assert [m.index for m in motifs] == list(range(16))
    assert all(m.ppm.shape[0] == 4 and np.allclose(m.ppm.sum(0), 1) for m in motifs)
    planted = find_motif(PLANTED).ppm
    scores = [compare(m.ppm, planted)[0] for m in motifs if m.n_sites]
    assert max(scores) >= 0.7, f"best filter r={max(scores):.2f}"


def test_filter_pwms_rejects_bad_codes(run: Path) -> None:
    from training.export import load_run_model
    from training.motifs import filter_pwms

    model, _ = load_run_model(run)
    with pytest.raises(ValueError, match="uint8"):
        filter_pwms(model, np.zeros((3, 50), dtype=np.int64))


def test_cli_writes_table_and_logos(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["motifs", str(run)]) == 0
    printed = capsys.readouterr().out
    with (run / "motifs.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    expected = find_motif(PLANTED).id
    assert rows and rows[0].keys() >= {"filter", "n_sites", "information", "match_id", "match_name", "score", "strand", "offset"}
    assert expected in {r["match_id"] for r in rows}
    assert expected in printed
    png = (run / "motifs.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_cli_top_limits_rows_and_bad_run_is_one_line(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["motifs", str(run), "--top", "1"]) == 0
    with (run / "motifs.tsv").open() as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) == 1
    capsys.readouterr()
    assert main(["motifs", str(tmp_path / "missing")]) == 1
    assert "not a folder" in capsys.readouterr().err


def _as_fasta(table: Path, out: Path) -> Path:
    """The table's rows as a FASTA with the labels in the headers ('>r0 CTCF=1')."""
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    tasks = [k for k in rows[0] if k != "sequence"]
    out.write_text("".join(f">r{i} {' '.join(f'{t}={r[t]}' for t in tasks)}\n{r['sequence']}\n" for i, r in enumerate(rows)))
    return out


def _as_bed(table: Path, out: Path, reference: Path) -> Path:
    """The table's rows laid end to end on one contig of ``reference``, one labelled BED interval each."""
    with table.open(newline="") as f:
        rows = list(csv.DictReader(f))
    tasks = [k for k in rows[0] if k != "sequence"]
    length = len(rows[0]["sequence"])  # even, so the interval's centred window is the interval itself
    reference.write_text(">chr1\n" + "".join(r["sequence"] for r in rows) + "\n")
    lines = [f"chr1\t{i * length}\t{(i + 1) * length}\tr{i}\t" + "\t".join(r[t] for t in tasks) for i, r in enumerate(rows)]
    out.write_text("\n".join(["#chrom\tstart\tend\tname\t" + "\t".join(tasks), *lines]) + "\n")
    return out


@pytest.fixture(scope="module")
def format_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny deepbind runs (2 epochs, 300 sequences) on the same sequences given as CSV, labelled FASTA and BED."""
    from training.config import TrainConfig
    from training.train import fit

    root = tmp_path_factory.mktemp("motif-formats")
    table = generate_dna(root / "data", motifs=(PLANTED,), length=80, n=300, seed=2)
    reference = root / "ref.fa"
    inputs = {"csv": (table, None), "fasta": (_as_fasta(table, root / "seqs.fa"), None),
              "bed": (_as_bed(table, root / "peaks.bed", reference), str(reference))}
    runs = {}
    for fmt, (data, ref) in inputs.items():
        config = TrainConfig(kind="dna", data=str(data), out=str(root / f"run-{fmt}"), arch="deepbind", epochs=2,
                             seed=0, reference=ref, model_kwargs={"filters": 8})
        fit(config)
        runs[fmt] = root / f"run-{fmt}"
    return runs


@pytest.mark.parametrize("fmt", ["fasta", "bed"])
def test_training_codes_read_every_data_format(fmt: str, format_runs: dict[str, Path]) -> None:
    from training.data import DataError, load_dna_table
    from training.motifs import training_codes

    ours, table = training_codes(format_runs[fmt]), training_codes(format_runs["csv"])
    assert ours.dtype == np.uint8 and ours.shape == table.shape
    np.testing.assert_array_equal(ours, table)  # the same sequences, the same seeded split
    config = json.loads((format_runs[fmt] / "config.json").read_text())
    with pytest.raises(DataError):
        load_dna_table(config["data"])  # what motifs used to read them with


@pytest.mark.parametrize("fmt", ["csv", "fasta", "bed"])
def test_motif_report_and_cli_on_every_data_format(fmt: str, format_runs: dict[str, Path],
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from training.motifs import TSV_FIELDS, motif_report

    run = format_runs[fmt]
    rows = motif_report(run, min_information=0.0)
    assert 1 <= len(rows) <= 8 and {r.filter for r in rows} <= set(range(8))  # one row per filter that fired
    with (run / "motifs.tsv").open() as f:
        assert len(list(csv.DictReader(f, delimiter="\t"))) == len(rows)
    assert main(["motifs", str(run), "--top", "2"]) == 0
    printed = capsys.readouterr().out
    with (run / "motifs.tsv").open() as f:
        reader = csv.DictReader(f, delimiter="\t")
        table = list(reader)
    assert reader.fieldnames == list(TSV_FIELDS) and len(table) <= 2
    assert "motifs.tsv" in printed and (run / "motifs.png").read_bytes().startswith(b"\x89PNG")
