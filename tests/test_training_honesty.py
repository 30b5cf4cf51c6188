"""Training honesty, for every kind: a held-out set too small to mean much is called so, the baseline to beat is the
better of logistic regression and k nearest neighbours, and ``biomed export`` refuses a model below it unless forced."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training import metrics
from training.args import print_summary
from training.config import TrainConfig
from training.export import BelowBaseline, check_baseline
from training.train import fit


@pytest.fixture(scope="module")
def volume_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny volume run (16 series, 1 epoch): its gapped series skipped and counted, its held-out set too small."""
    from training.demo.volume_demo import generate_volumes

    root = tmp_path_factory.mktemp("honesty")
    data = generate_volumes(root / "data", n=16, seed=2)
    config = TrainConfig(kind="volume", data=str(data), out=str(root / "run"), arch="cnn3d", epochs=1, batch_size=4,
                         volume_size=(12, 24, 24), spacing=(10.0, 10.0, 10.0), window=(-600.0, 1500.0),
                         resample=("tilt",), test_fraction=0.25)
    fit(config)
    return Path(config.out)


def test_knn_and_logistic_baselines_for_classes_and_tasks() -> None:
    rng = np.random.default_rng(0)
    f_train, f_test = rng.normal(size=(60, 5)), rng.normal(size=(20, 5))
    classes = rng.integers(0, 3, 60)
    probs = metrics.baselines(f_train, classes, f_test, False, 0)
    assert set(probs) == {"logistic regression", "k-nearest neighbours"}
    assert all(p.shape == (20, 3) and np.allclose(p.sum(axis=1), 1) for p in probs.values())
    tasks = rng.integers(0, 2, (60, 4)).astype(np.float32)
    tasks[:, 3] = 0  # a task with no positive in training
    knn = metrics.knn_baseline(f_train, tasks, f_test, True)
    assert knn.shape == (20, 4) and (knn[:, 3] == 0).all()


def test_the_baseline_to_beat_is_the_better_one_and_small_sets_are_named() -> None:
    scores = {"logistic regression": {"auroc_macro": 0.61}, "k-nearest neighbours": {"auroc_macro": 0.79}}
    assert metrics.best_baseline(scores) == "k-nearest neighbours"
    assert metrics.best_baseline({"a": {"auroc_macro": float("nan")}, "b": {"auroc_macro": 0.5}}) == "b"
    y = np.array([0] * 40 + [1] * 12)
    assert metrics.small_classes(y, ["normal", "lesion"], False) == {"lesion": 12}
    assert metrics.small_classes(np.repeat([0, 1], 30), ["a", "b"], False) == {}
    tasks = np.zeros((100, 2), dtype=np.float32)
    tasks[:95, 0] = 1  # 95 positives but 5 negatives: too few of one side to trust
    tasks[:50, 1] = 1
    assert metrics.small_classes(tasks, ["A", "B"], True) == {"A": 5}


def test_a_run_calls_its_small_held_out_set_too_small(volume_run: Path, capsys: pytest.CaptureFixture) -> None:
    summary = json.loads((volume_run / "metrics.json").read_text())
    assert summary["test"]["too_small"] is True and summary["test"]["min_per_class"] == 30
    assert set(summary["test"]["small_classes"]) == {"lesion", "normal"}
    names = [b["model"] for b in summary["baselines"]]
    assert names == ["logistic regression", "k-nearest neighbours"]
    best = max(summary["baselines"], key=lambda b: np.nan_to_num(b["auroc_macro"], nan=-1))
    assert summary["baseline"] == best and summary["modalities"] == ["CT"]
    print_summary(str(volume_run), summary)
    out = capsys.readouterr().out
    assert "TOO SMALL" in out and "k-nearest neighbours baseline" in out and "the baseline to beat" in out


def test_export_refuses_a_model_below_its_baseline_unless_forced(volume_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(volume_run, run)
    summary = json.loads((run / "metrics.json").read_text())
    summary["test"]["auroc_macro"], summary["baseline"]["auroc_macro"] = 0.515, 0.79
    (run / "metrics.json").write_text(json.dumps(summary))
    with pytest.raises(BelowBaseline, match="0.515 is below its baseline's 0.790"):
        check_baseline(summary, force=False)
    check_baseline(summary, force=True)
    refused = subprocess.run([sys.executable, "-m", "cli", "export", str(run), "--name", "below-baseline"],
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0 and "--force" in refused.stderr.strip().splitlines()[-1]
    forced = subprocess.run([sys.executable, "-m", "cli", "export", str(run), "--name", "below-baseline", "--force"],
                            capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0, forced.stderr[-2000:]
    from biomed import metadata
    from biomed.store import onnx_path, resolve

    doc = metadata.read(onnx_path(resolve(forced.stdout.strip().splitlines()[-1])))
    assert doc["kind"] == "volume" and doc["modalities"] == ["CT"] and doc["preprocess"]["size"] == [12, 24, 24]
    assert [b["model"] for b in doc["training"]["baselines"]] == ["logistic regression", "k-nearest neighbours"]


def test_a_volume_run_counts_its_refused_series(volume_run: Path) -> None:
    summary = json.loads((volume_run / "metrics.json").read_text())
    held = np.load(volume_run / "heldout.npz")
    assert held["x"].shape[1:] == (1, 12, 24, 24) and len(held["sources"]) == len(held["y"])
    assert sum(summary["split"].values()) + sum(summary["skipped"].values()) == 16
    assert set(summary["skipped"]) <= {"series_gap"}
