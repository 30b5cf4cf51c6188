"""DanQ-style DNA model: convolution for motifs, a bidirectional LSTM for their grammar.

Input: (N, L) uint8 base codes; output: (N, tasks) logits.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import OneHot


class DanQ(nn.Module):
    """Conv + ReLU + max-pool, then a BiLSTM over the pooled positions, then dense."""

    def __init__(self, num_tasks: int, filters: int, filter_width: int, pool: int, hidden: int, dropout: float) -> None:
        super().__init__()
        self.onehot = OneHot()
        self.conv = nn.Conv1d(4, filters, filter_width, padding=filter_width // 2)
        self.pool = nn.MaxPool1d(pool)
        self.drop = nn.Dropout(dropout)
        self.lstm = nn.LSTM(filters, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * hidden, num_tasks))

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.conv(self.onehot(codes))))  # (N, filters, L / pool)
        x, _ = self.lstm(self.drop(x).transpose(1, 2))  # (N, L / pool, 2 * hidden)
        pooled = torch.cat([x.amax(dim=1), x.mean(dim=1)], dim=1)  # (N, 4 * hidden)
        return self.head(pooled)  # (N, tasks)


def danq(num_tasks: int = 1, filters: int = 32, filter_width: int = 19, pool: int = 4, hidden: int = 32, dropout: float = 0.2) -> DanQ:
    """DanQ-style CNN + BiLSTM, scaled down for CPU training."""
    return DanQ(num_tasks, filters, filter_width, pool, hidden, dropout)


# The family's entry in the registry of models/__init__.py.
KIND = "dna"
OUTPUT_ARG = "num_tasks"
ARCHS = {"danq": danq}
