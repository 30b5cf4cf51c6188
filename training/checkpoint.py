"""Checkpoints: the full state to resume a run, and the best model to export."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

LAST = "checkpoint_last.pt"
BEST = "best.pt"


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


def save_last(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int, loop: dict) -> None:
    """Everything needed to continue after ``epoch``: weights, optimiser, scheduler, RNG, early-stopping state."""
    _atomic_save(
        {
            "model": unwrap(model).state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": epoch,
            "rng": rng_state(),
            "loop": loop,
        },
        run / LAST,
    )


def save_best(run: Path, model: nn.Module, meta: dict) -> None:
    """The best weights so far with what is needed to rebuild the model."""
    _atomic_save({"model": unwrap(model).state_dict(), **meta}, run / BEST)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)
