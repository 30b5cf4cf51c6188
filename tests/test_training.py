"""Training: data loading, splits, errors as one-line messages, a tiny end-to-end run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def test_tiny_dna_run_writes_metrics_plots_and_checkpoints(dna_table: Path, tmp_path: Path) -> None:
    config = TrainConfig(kind="dna", data=str(dna_table), out=str(tmp_path / "run"), arch="deepbind", epochs=2, seed=1)
    summary = fit(config)
    run = Path(config.out)
    for name in ("config.json", "best.pt", "checkpoint_last.pt", "metrics.json", "heldout.npz", "split.json",
                 "curves.png", "roc.png"):
        assert (run / name).exists(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test"]["auroc"].keys() == {"CTCF", "REST", "TP53"}
    assert 0.0 <= saved["baseline"]["auroc_macro"] <= 1.0
    assert summary["split"]["test"] == len(np.load(run / "heldout.npz")["y"])
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
