"""DeepBind-style convolutional DNA model.

Input: (N, L) uint8 base codes; output: (N, tasks) logits, one sigmoid task per label.
The first layer's filters are motif detectors: read them back as PWMs.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import OneHot


class DeepBind(nn.Module):
    """Motif scanner (conv + ReLU), max and mean pooling over positions, a small dense head."""

    def __init__(self, num_tasks: int, filters: int, filter_width: int, hidden: int, dropout: float,
                 batch_norm: bool = True, pool: str = "maxmean") -> None:
        super().__init__()
        self.onehot = OneHot()
        self.conv = nn.Conv1d(4, filters, filter_width, padding=filter_width // 2, bias=not batch_norm)
        self.norm = nn.BatchNorm1d(filters) if batch_norm else nn.Identity()
        self.relu = nn.ReLU()
        self.pool = pool
        width = 2 * filters if pool == "maxmean" else filters
        if hidden > 0:
            self.head = nn.Sequential(
                nn.Dropout(dropout),
                nn.Linear(width, hidden),
                nn.ReLU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, num_tasks),
            )
        else:
            self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, num_tasks))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.norm(self.conv(self.onehot(codes))))  # (N, filters, L)
        if self.pool == "maxmean":
            pooled = torch.cat([x.amax(dim=2), x.mean(dim=2)], dim=1)  # (N, 2 * filters)
        else:
            pooled = x.amax(dim=2)
        return self.head(pooled)  # (N, tasks)


def deepbind(num_tasks: int = 1, filters: int = 32, filter_width: int = 19, hidden: int = 32, dropout: float = 0.2,
             batch_norm: bool = True, pool: str = "maxmean", **_: object) -> DeepBind:
    """DeepBind-style CNN; 19-bp filters cover CTCF-sized motifs."""
    return DeepBind(num_tasks, filters, filter_width, hidden, dropout, batch_norm, pool)
