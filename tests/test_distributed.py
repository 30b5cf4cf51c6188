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

BIOMED = [sys.executable, "-m", "cli"]
TRAIN = ["--epochs", "12", "--batch-size", "64", "--seed", "4", "--patience", "20"]


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.demo.dna_demo import generate_dna

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
    for run, summary, world in ((tmp_path / "one", single, 1), (tmp_path / "two", double, 2)):
        expected = _launch(world)
        assert summary["launch"] == expected, run.name
        assert json.loads((run / "config.json").read_text())["launch"] == expected, run.name


def _launch(world: int) -> dict:
    """What a run launched on this machine with ``world`` processes records under ``launch``."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backend = None if world == 1 else ("nccl" if device == "cuda" else "gloo")
    return {"world_size": world, "backend": backend, "device": device}


def test_context_describes_its_launch() -> None:
    from training.distributed import Context

    assert Context(0, 2, torch.device("cpu"), "gloo").launch() == {"world_size": 2, "backend": "gloo", "device": "cpu"}
    assert Context(0, 1, torch.device("cuda", 0)).launch() == {"world_size": 1, "backend": None, "device": "cuda"}


def test_single_process_run_records_its_launch_and_resumes_with_it(tmp_path: Path) -> None:
    """In-process, one epoch: world size 1 in config.json and metrics.json; neither the extra key nor a legacy
    best.pt stops --resume."""
    from training.config import TrainConfig
    from training.demo.dna_demo import generate_dna
    from training.train import fit

    table = generate_dna(tmp_path / "data", motifs=("CTCF",), n=200, length=60, seed=1)
    config = TrainConfig(kind="dna", data=str(table), out=str(tmp_path / "run"), arch="deepbind", epochs=1, seed=1,
                         model_kwargs={"filters": 8})
    summary = fit(config)
    run = tmp_path / "run"
    saved = json.loads((run / "config.json").read_text())
    assert summary["launch"] == saved["launch"] == _launch(1)
    assert json.loads((run / "metrics.json").read_text())["launch"] == _launch(1)
    assert TrainConfig.load(run) == config
    # A run from before: best.pt with both output names, config.json without launch. Resuming it after its
    # last epoch goes straight to the report, which rebuilds the legacy best.pt.
    best = torch.load(run / "best.pt", weights_only=False)
    torch.save(best | {"model_kwargs": {**best["model_kwargs"], "num_classes": 1, "num_tasks": 1}}, run / "best.pt")
    (run / "config.json").write_text(config.to_json())
    again = fit(TrainConfig.load(run), resume=True)
    assert again["test"] == summary["test"] and again["launch"] == _launch(1)
    resumed = fit(TrainConfig.load(run).with_(epochs=2), resume=True)  # continues after epoch 1
    assert resumed["epochs_run"] == 2 and resumed["launch"] == _launch(1)
    assert json.loads((run / "config.json").read_text())["launch"] == _launch(1)


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
    assert json.loads((run / "config.json").read_text())["launch"]["world_size"] == 1  # --resume reads past it
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
