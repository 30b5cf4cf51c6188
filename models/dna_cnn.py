"""DeepBind-style convolutional DNA model.

Input: (N, L) uint8 base codes; output: (N, tasks) logits, one sigmoid task per label.
The first layer's filters are motif detectors: read them back as PWMs (``training.motifs``).
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import OneHot


class DeepBind(nn.Module):
    """Motif scanner (conv + BatchNorm + ReLU), max and mean pooling over positions, a dense head.

    The head is linear by default: every task reads the pooled filters directly. A narrow
    ReLU hidden layer (``hidden`` > 0) can lock onto the easy motifs early and leave a task
    with no path to a filter of its own (a task stuck near AUROC 0.5 for some seeds).
    """

    def __init__(self, num_tasks: int, filters: int, filter_width: int, hidden: int, dropout: float,
                 batch_norm: bool, pool: str) -> None:
        super().__init__()
        if pool not in ("maxmean", "max"):
            raise ValueError(f"pool {pool!r} is unknown; choose one of: maxmean, max")
        self.onehot = OneHot()
        self.conv = nn.Conv1d(4, filters, filter_width, padding=filter_width // 2, bias=not batch_norm)
        self.norm = nn.BatchNorm1d(filters) if batch_norm else nn.Identity()
        self.relu = nn.ReLU()
        self.pool = pool
        width = 2 * filters if pool == "maxmean" else filters
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        if hidden > 0:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.head = nn.Sequential(*layers, nn.Linear(width, num_tasks))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(self.conv(self.onehot(codes))))  # (N, filters, L)
        pooled = x.amax(dim=2)  # (N, filters)
        if self.pool == "maxmean":
            pooled = torch.cat([pooled, x.mean(dim=2)], dim=1)  # (N, 2 * filters)
        return self.head(pooled)  # (N, tasks)


def deepbind(num_tasks: int = 1, filters: int = 64, filter_width: int = 19, hidden: int = 0, dropout: float = 0.2,
             batch_norm: bool = True, pool: str = "maxmean") -> DeepBind:
    """DeepBind-style CNN; 19-bp filters hold a whole CTCF/TP53-sized motif; linear head by default."""
    return DeepBind(num_tasks, filters, filter_width, hidden, dropout, batch_norm, pool)


# The family's entry in the registry of models/__init__.py (the DNA kind's default builder comes first).
KIND = "dna"
OUTPUT_ARG = "num_tasks"
ARCHS = {"deepbind": deepbind}
