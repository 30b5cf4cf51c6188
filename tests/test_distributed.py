"""Training beyond one process: torchrun/DDP on the CPU (gloo), and resuming an interrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

BIOMED = [sys.executable, "-m", "biomed.cli"]
TRAIN = ["--epochs", "12", "--batch-size", "64", "--seed", "4", "--patience", "20"]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from biomed.demo.dna_demo import generate_dna

    return generate_dna(tmp_path_factory.mktemp("ddp"), motifs=("CTCF", "REST"), n=1500, length=120, seed=4)


def _env() -> dict[str, str]:
    return {**os.environ, "BIOMED_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def _train(table: Path, out: Path, *extra: str) -> dict:
    subprocess.run([*BIOMED, "train", "dna", "--data", str(table), "--out", str(out), *TRAIN, *extra],
                   env=_env(), check=True, capture_output=True, text=True, timeout=900)
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(table: Path, tmp_path: Path) -> None:
    single = _train(table, tmp_path / "one")
    double = _train(table, tmp_path / "two", "--nproc", "2")
    a, b = single["test"]["auroc_macro"], double["test"]["auroc_macro"]
    print(f"held-out AUROC: 1 process {a:.4f}, 2 processes {b:.4f}")
    assert a > 0.8 and abs(a - b) <= 0.02
    assert single["split"] == double["split"]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_same_weights(table: Path, tmp_path: Path) -> None:
    _train(table, tmp_path / "straight")
    run = tmp_path / "killed"
    cmd = [*BIOMED, "train", "dna", "--data", str(table), "--out", str(run), *TRAIN]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (run / "checkpoint_last.pt").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    stopped_at = torch.load(run / "checkpoint_last.pt", map_location="cpu", weights_only=False)["epoch"]
    assert stopped_at < 8, "the kill came too late to test anything"
    subprocess.run([*BIOMED, "train", "--resume", str(run)], env=_env(), check=True, capture_output=True, text=True,
                   timeout=900)
    for name in ("checkpoint_last.pt", "best.pt"):
        ours, theirs = _weights(run / name), _weights(tmp_path / "straight" / name)
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (name, key, stopped_at)
    resumed = json.loads((run / "metrics.json").read_text())
    straight = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    assert resumed["test"] == straight["test"]
