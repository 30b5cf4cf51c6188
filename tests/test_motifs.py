"""First-layer filters as motifs: a model trained on one planted motif gives it back."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from biomed.cli import main
from biomed.demo.dna_demo import generate_dna
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
