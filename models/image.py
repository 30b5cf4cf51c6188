"""Image classifiers: a plain CNN and a ResNet-style residual network.

Input: (N, C, H, W) float32 presented pixels in [0, 1]; output: (N, classes) logits.
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import Normalize


def _conv_block(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    # (N, c_in, H, W) -> (N, c_out, H/2, W/2): weights shared across positions, then pooled
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Dropout2d(dropout),
    )


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ImageClassifier(nn.Module):
    """A feature extractor, global average pooling and a linear head."""

    def __init__(self, features: nn.Module, width: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))  # (N, width, h, w)
        return self.head(self.pool(x))  # (N, classes)


def _plain(in_channels: int, num_classes: int, widths: tuple[int, ...], dropout: float) -> ImageClassifier:
    layers, c = [], in_channels
    for w in widths:
        layers.append(_conv_block(c, w, dropout / 2))
        c = w
    return ImageClassifier(nn.Sequential(*layers), c, num_classes, dropout)


def _residual(in_channels: int, num_classes: int, widths: tuple[int, ...], dropout: float) -> ImageClassifier:
    stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
    blocks, c = [], widths[0]
    for i, w in enumerate(widths):
        blocks.append(_BasicBlock(c, w, stride=1 if i == 0 else 2))
        c = w
    return ImageClassifier(nn.Sequential(stem, *blocks), c, num_classes, dropout)


def cnn(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.2) -> ImageClassifier:
    """Plain CNN: four conv/BN/ReLU/max-pool/dropout blocks (16-32-64-64 channels)."""
    return _plain(in_channels, num_classes, (16, 32, 64, 64), dropout)


def resnet(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.2) -> ImageClassifier:
    """ResNet-style: a stem and four basic residual blocks (16-32-64-128), stride 2 after the first."""
    return _residual(in_channels, num_classes, (16, 32, 64, 128), dropout)


def resnet18(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.2) -> ImageClassifier:
    """ResNet-18's topology and widths (64-128-256-512, two basic blocks a stage, 7x7 stride-2 stem and max-pool):
    the size of model a GPU has work to do with at 224x224 (``scripts/gpu``), 11 M parameters."""
    stem = nn.Sequential(nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                         nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
    blocks, c = [], 64
    for i, w in enumerate((64, 128, 256, 512)):
        blocks += [_BasicBlock(c, w, stride=1 if i == 0 else 2), _BasicBlock(w, w, stride=1)]
        c = w
    return ImageClassifier(nn.Sequential(stem, *blocks), c, num_classes, dropout)


# The family's entry in the registry of models/__init__.py: its kind, output argument and builders (the first, default).
KIND = "image"
OUTPUT_ARG = "num_classes"
ARCHS = {"cnn": cnn, "resnet": resnet, "resnet18": resnet18}
