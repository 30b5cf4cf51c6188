"""What training needs to know of a kind: how its data loads, augments and is summed up for the baseline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from training.config import TrainConfig
from training.data import Dataset


@dataclass(frozen=True)
class TrainingKind:
    """A kind's training part (``training.kinds``).

    Attributes:
        name: the kind's name (``biomed.kinds``).
        load: the run's data set from its configuration (``--data`` and the kind's own flags).
        augment: a random augmentation of a training batch (torch, on the CPU).
        baseline_features: what the logistic-regression baseline sees of each input (N, features).
        preprocess: the metadata's ``preprocess`` block of an export, from the run's configuration and its
            held-out inputs (the spec the server rebuilds its preprocessing from).
        data_help: what ``--data`` may be, for the command line's help.
    """

    name: str
    load: Callable[[TrainConfig], Dataset]
    augment: Callable[[torch.Tensor], torch.Tensor]
    baseline_features: Callable[[np.ndarray], np.ndarray]
    preprocess: Callable[[TrainConfig, np.ndarray], dict[str, Any]]
    data_help: str
