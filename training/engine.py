"""One epoch of training, prediction, and the augmentations."""

from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from biomed.preprocess import dna

_COMPLEMENT = torch.from_numpy(dna.COMPLEMENT)  # the serving side's table (biomed.preprocess.dna)


def augment_images(x: torch.Tensor, max_shift: int = 4, jitter: float = 0.05) -> torch.Tensor:
    """Random flips, small shifts and intensity jitter on a (N, C, H, W) batch in [0, 1]."""
    n = x.shape[0]
    flip_h = torch.rand(n) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    flip_v = torch.rand(n) < 0.5
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,)))
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    scale = 1 + jitter * (2 * torch.rand(n, 1, 1, 1) - 1)
    offset = jitter * (2 * torch.rand(n, 1, 1, 1) - 1)
    return (x * scale + offset).clamp(0, 1)


def augment_dna(codes: torch.Tensor) -> torch.Tensor:
    """Reverse-complement half of a (N, L) uint8 batch: binding does not depend on the strand read."""
    flip = torch.rand(codes.shape[0]) < 0.5
    rc = _COMPLEMENT[codes.flip(1).long()]
    return torch.where(flip[:, None], rc, codes)


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
