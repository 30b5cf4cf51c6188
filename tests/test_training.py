"""Training: data loading, splits, errors as one-line messages, a tiny end-to-end run."""

from __future__ import annotations

import csv
import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cli import main as cli
from training.config import TrainConfig
from training.data import load_dna_table, load_images, split_indices
from training.train import fit
from biomed.preprocess.image import ImageSpec

BIOMED = [sys.executable, "-m", "cli"]


@pytest.fixture(scope="module")
def dna_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.demo.dna_demo import generate_dna

    return generate_dna(tmp_path_factory.mktemp("dna"), n=400, seed=3, length=120)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.demo.dicom_demo import generate_images

    return generate_images(tmp_path_factory.mktemp("img"), n=60, seed=3)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*BIOMED, *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "image", "--data", "nowhere", "--out", "x", "--arch", "vgg"], "arch 'vgg' is unknown for image; choose one of: cnn, resnet"),
        (["train", "dna", "--data", "nowhere", "--out", "x", "--arch", "cnn"], "arch 'cnn' is unknown for dna; choose one of: deepbind, danq"),
        (["train", "image", "--data", "/no/such/folder", "--out", "x"], "does not exist"),
        (["train", "dna", "--data", "/no/such/table.csv", "--out", "x"], "is not a file"),
        (["train", "image", "--data", "x", "--out", "y", "--window", "wide"], "must be CENTER,WIDTH"),
        (["export", "/no/such/run", "--name", "x"], "has no best.pt"),
    ],
)
def test_bad_arguments_exit_nonzero_with_one_line(args: list[str], message: str) -> None:
    result = run_cli(*args)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert message in lines[0]


def test_bad_base_in_table_is_one_line(tmp_path: Path) -> None:
    table = tmp_path / "t.csv"
    table.write_text("sequence,A\nACGT,1\nACXT,0\n")
    result = run_cli("train", "dna", "--data", str(table), "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.strip() == "biomed: error: sequence 'row 3' has invalid character 'X' at position 2; accepted: A, C, G, T, N (any case)"


def test_unreadable_dicom_is_skipped_and_counted(image_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for cls in ("normal", "nodule"):
        (data / cls).mkdir(parents=True)
        for f in sorted((image_dir / cls).iterdir())[:6]:
            (data / cls / f.name).write_bytes(f.read_bytes())
    good = sorted((image_dir / "normal").iterdir())[0].read_bytes()
    (data / "normal" / "broken.dcm").write_bytes(good[: len(good) // 3])
    (data / "nodule" / "noise.dcm").write_bytes(b"not a dicom at all" * 10)
    loaded = load_images(data, ImageSpec(size=(32, 32)))
    assert len(loaded.y) == 12
    assert sum(loaded.skipped.values()) == 2


def test_dna_table_loads_codes_and_labels(dna_table: Path) -> None:
    data = load_dna_table(dna_table)
    assert data.x.dtype == np.uint8 and data.x.shape == (400, 120)
    assert data.labels == ["CTCF", "REST", "TP53"] and data.multilabel
    assert set(np.unique(data.y)) <= {0.0, 1.0}


@pytest.mark.parametrize("y", [np.repeat([0, 1, 2], 50), np.random.default_rng(0).integers(0, 2, (150, 3))])
def test_split_is_disjoint_complete_and_seeded(y: np.ndarray) -> None:
    split = split_indices(y, seed=7, val_fraction=0.15, test_fraction=0.15)
    joined = np.concatenate(list(split.values()))
    assert sorted(joined.tolist()) == list(range(len(y)))
    again = split_indices(y, seed=7, val_fraction=0.15, test_fraction=0.15)
    assert all((split[k] == again[k]).all() for k in split)
    other = split_indices(y, seed=8, val_fraction=0.15, test_fraction=0.15)
    assert not (split["test"] == other["test"]).all()
    if y.ndim == 1:  # stratified: every class in the test split
        assert set(y[split["test"]]) == {0, 1, 2}


def _kmer_counts(sequence: str, k: int = 5) -> np.ndarray:
    """Strand-symmetric k-mer counts of one sequence, written here from the definition (docs: the DNA baseline)."""
    index = {"".join(p): i for i, p in enumerate(itertools.product("ACGT", repeat=k))}
    rc = str.maketrans("ACGT", "TGCA")
    counts = np.zeros(4**k)
    for i in range(len(sequence) - k + 1):
        word = sequence[i : i + k].upper()
        if word in index:
            counts[index[word]] += 1
            counts[index[word.translate(rc)[::-1]]] += 1
    return counts


def test_tiny_dna_run_metrics_are_what_its_held_out_predictions_give(dna_table: Path, tmp_path: Path) -> None:
    """metrics.json recomputed with sklearn: the network's AUROC/AUPRC from best.pt on heldout.npz, the baseline's from
    a logistic regression on k-mer counts computed here, fitted on the run's own training split."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from training.engine import predict
    from training.export import load_run_model

    config = TrainConfig(kind="dna", data=str(dna_table), out=str(tmp_path / "run"), arch="deepbind", epochs=2, seed=1)
    summary = fit(config)
    run = Path(config.out)
    for name in ("config.json", "best.pt", "checkpoint_last.pt", "metrics.json", "heldout.npz", "split.json",
                 "curves.png", "roc.png"):
        assert (run / name).exists(), name
    saved = json.loads((run / "metrics.json").read_text())
    held = np.load(run / "heldout.npz")
    labels = [str(label) for label in held["labels"]]
    assert labels == ["CTCF", "REST", "TP53"] and saved["test"]["auroc"].keys() == set(labels)
    probs = predict(load_run_model(run)[0], held["x"], True, torch.device("cpu"))
    rows = list(csv.reader(dna_table.open()))[1:]
    split = json.loads((run / "split.json").read_text())
    y = np.array([[int(v) for v in row[1:]] for row in rows])
    np.testing.assert_array_equal(held["y"], y[split["test"]])
    features = np.array([_kmer_counts(row[0]) for row in rows])
    for t, label in enumerate(labels):
        assert saved["test"]["auroc"][label] == pytest.approx(roc_auc_score(held["y"][:, t], probs[:, t]), abs=1e-6)
        assert saved["test"]["auprc"][label] == pytest.approx(average_precision_score(held["y"][:, t], probs[:, t]),
                                                              abs=1e-6)
        baseline = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500, random_state=config.seed))
        p = baseline.fit(features[split["train"]], y[split["train"], t]).predict_proba(features[split["test"]])[:, 1]
        assert saved["baseline"]["auroc"][label] == pytest.approx(roc_auc_score(y[split["test"], t], p), abs=1e-3)
    assert saved["test"]["auroc_macro"] == pytest.approx(np.mean(list(saved["test"]["auroc"].values())))
    assert saved["baseline"]["auroc_macro"] > 0.6  # the planted motifs are visible to 5-mer counts: not chance
    assert summary["split"]["test"] == len(held["y"])
    assert TrainConfig.load(run) == config


def test_config_round_trips_through_json() -> None:
    config = TrainConfig(kind="image", data="d", out="o", arch="resnet", window=(40.0, 400.0), image_size=(48, 32))
    assert TrainConfig.from_dict(json.loads(config.to_json())) == config


def test_config_with_launch_block_round_trips() -> None:
    """config.json carries how the run was launched; loading it back (as --resume does) ignores that key."""
    config = TrainConfig(kind="dna", data="d.csv", out="o", arch="deepbind", stride=50)
    launch = {"world_size": 2, "backend": "gloo", "device": "cpu"}
    saved = json.loads(config.to_json(launch=launch))
    assert saved["launch"] == launch and "launch" not in json.loads(config.to_json())
    assert TrainConfig.from_dict(saved) == config


def test_cli_help_for_every_command() -> None:
    for command in ("demo-data", "train", "export", "models", "demo-models", "serve"):
        with pytest.raises(SystemExit) as exit_info:
            cli([command, "--help"])
        assert exit_info.value.code == 0


@pytest.mark.parametrize(("make", "says"), [
    (lambda out: __import__("training.demo.dicom_demo", fromlist=["x"]).generate_images(out, n=3, seed=1),
     "has too few images per class ('cavity': 1, 'nodule': 1, 'normal': 1; 3 in all); training needs at least 3 per"),
    (lambda out: __import__("training.demo.dna_demo", fromlist=["x"]).generate_dna(out, n=6, seed=1, length=60),
     "has too few examples (6): task"),
])
def test_data_too_small_to_train_on_is_refused_before_training(make, says: str, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = make(tmp_path / "data")
    kind = "image" if data.is_dir() else "dna"
    assert cli(["train", kind, "--data", str(data), "--out", str(tmp_path / "run")]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("biomed: error: data ") and says in line, line
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_a_run_records_absolute_paths_and_says_where_a_missing_one_came_from(  # type: ignore[no-untyped-def]
        dna_table: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Trained with relative paths, the run works from another directory (``motifs``, ``--resume``); once its data
    moves, both say which config.json named the path, and ``--data`` points them at it."""
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    (work / "seqs.csv").write_bytes(dna_table.read_bytes())
    monkeypatch.chdir(work)
    assert cli(["train", "dna", "--data", "seqs.csv", "--out", "run", "--epochs", "1"]) == 0
    run = work / "run"
    assert json.loads((run / "config.json").read_text())["data"] == str(work / "seqs.csv")
    monkeypatch.chdir(elsewhere)
    assert cli(["motifs", str(run), "--top", "2"]) == 0 and (run / "motifs.tsv").is_file()
    moved = tmp_path / "moved.csv"
    (work / "seqs.csv").rename(moved)
    capsys.readouterr()
    for args in (["motifs", str(run)], ["train", "--resume", str(run)]):
        assert cli(args) == 1
        error = capsys.readouterr().err
        assert f"recorded in {run / 'config.json'} is not there" in error and "--data PATH" in error, error
    assert cli(["motifs", str(run), "--top", "2", "--data", str(moved)]) == 0
    assert cli(["train", "--resume", str(run), "--data", str(moved)]) == 0
