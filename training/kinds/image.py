"""Training image models: images through the serving side's presentation, flips, shifts and intensity jitter."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biomed.kinds.image import KIND as IMAGE
from biomed.preprocess.image import ImageSpec
from training.config import TrainConfig
from training.data import Dataset, load_images
from training.kinds.base import TrainingKind


def image_spec(config: TrainConfig, channels: int = 1) -> ImageSpec:
    """The presentation a run's images go through: its size and window."""
    return ImageSpec(size=tuple(config.image_size), channels=channels, window=config.window)


def load(config: TrainConfig) -> Dataset:
    return load_images(config.data, image_spec(config))


def augment(x: torch.Tensor, max_shift: int = 4, jitter: float = 0.05) -> torch.Tensor:
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


def half_resolution(x: np.ndarray) -> np.ndarray:
    """The baseline's view of (N, C, H, W) images: pixels at half resolution, flattened."""
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5)).reshape(n, -1)


def preprocess(config: TrainConfig, x: np.ndarray) -> dict[str, Any]:
    """The run's size and window; channels from the held-out (N, C, H, W) inputs."""
    return image_spec(config, channels=int(x.shape[1])).to_dict()


KIND = TrainingKind(IMAGE.name, load, augment, half_resolution, preprocess,
                    "a folder with one sub-folder per class (DICOM, PNG, JPEG) or a CSV path,label")
