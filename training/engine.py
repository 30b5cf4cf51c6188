"""One epoch of training, and prediction (each kind's augmentation is its own: ``training.kinds``)."""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader



def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """Mixed precision on CUDA (bf16 by default, fp16 on request); off on the CPU."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast("cuda", dtype=dtype)


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    augment: Callable[[torch.Tensor], torch.Tensor],
    device: torch.device,
    amp: str = "off",
    scaler: torch.amp.GradScaler | None = None,
    on_step: Callable[[float], None] | None = None,
) -> float:
    """Train for one pass over ``loader``; returns the mean loss of this process."""
    model.train()
    total, count = 0.0, 0
    for x, y in loader:
        x, y = augment(x).to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            loss = loss_fn(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.item() * len(x)
        count += len(x)
        if on_step is not None:
            on_step(total / count)
    return total / max(count, 1)


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, multilabel: bool, device: torch.device, batch_size: int = 256) -> np.ndarray:
    """Probabilities (N, T): sigmoid per task for multi-label, softmax over classes otherwise."""
    model.eval()
    out = []
    for start in range(0, len(x), batch_size):
        logits = model(torch.from_numpy(x[start : start + batch_size]).to(device)).float()
        out.append((torch.sigmoid(logits) if multilabel else torch.softmax(logits, 1)).cpu().numpy())
    return np.concatenate(out)
