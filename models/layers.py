"""Input layers shared by the model families: they make the ONNX graph self-contained."""

from __future__ import annotations

import torch
from torch import nn


class OneHot(nn.Module):
    """uint8 base codes (A=0, C=1, G=2, T=3, N=4) to a float one-hot; N is 0.25 everywhere.

    Exported as Cast + Gather, so the server sends one byte per base.
    """

    def __init__(self) -> None:
        super().__init__()
        table = torch.cat([torch.eye(4), torch.full((1, 4), 0.25)])  # (5, 4)
        self.register_buffer("table", table, persistent=False)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = nn.functional.embedding(codes.long(), self.table)  # (N, L, 4); one Gather (indexing exports as GatherND)
        return x.transpose(1, 2)  # (N, 4, L)


class Normalize(nn.Module):
    """(x - mean) / std inside the graph; the server feeds presented pixels in [0, 1]."""

    def __init__(self, mean: float = 0.5, std: float = 0.25) -> None:
        super().__init__()
        self.mean = mean
        self.std = std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
