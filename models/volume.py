"""Volume classifiers: a plain 3D CNN and a 3D residual network.

Input: (N, 1, D, H, W) float32 presented voxels in [0, 1] (``biomed.preprocess.volume``); output:
(N, classes) logits. The head pools the last features both by mean and by max: a small lesion
anywhere in the volume should move the answer as much as a large one (max), and the whole
volume's look still counts (mean).
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import Normalize

# Every Conv3d keeps its bias (before a BatchNorm it is redundant): torch 2.13's ONNX exporter gives a bias-free Conv3d
# a zero bias of the wrong shape, (out_channels, 2), which onnxruntime refuses.


def _conv_block(c_in: int, c_out: int, dropout: float) -> nn.Sequential:
    # (N, c_in, D, H, W) -> (N, c_out, D/2, H/2, W/2)
    return nn.Sequential(
        nn.Conv3d(c_in, c_out, 3, padding=1, bias=True),
        nn.BatchNorm3d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(2),
        nn.Dropout3d(dropout),
    )


class _BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with an identity (or 1x1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=True)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=True), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class VolumeClassifier(nn.Module):
    """A 3D feature extractor, mean and max pooling side by side, and a linear head."""

    def __init__(self, features: nn.Module, width: int, num_classes: int, dropout: float) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.features = features
        self.mean = nn.AdaptiveAvgPool3d(1)
        self.max = nn.AdaptiveMaxPool3d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.normalize(x))  # (N, width, d, h, w)
        return self.head(torch.cat([self.mean(x), self.max(x)], dim=1))  # (N, classes)


def _stem(in_channels: int, width: int) -> nn.Sequential:
    # (N, C, D, H, W) -> (N, width, D/2, H/2, W/2): the full-resolution volume is seen once, by a strided convolution
    return nn.Sequential(nn.Conv3d(in_channels, width, 3, stride=2, padding=1, bias=True), nn.BatchNorm3d(width),
                         nn.ReLU(inplace=True))


def _channels_last(model: nn.Module) -> nn.Module:
    """Weights in the channels-last layout: PyTorch's CPU (oneDNN) and cuDNN 3D convolutions run it 3-4x faster
    (measured: a batch of 32 at 24x48x48 through ``cnn3d``, 2 CPU cores); the ONNX graph is the same."""
    return model.to(memory_format=torch.channels_last_3d)


def cnn3d(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.2) -> VolumeClassifier:
    """Plain 3D CNN: a strided stem (16 channels) and two conv/BN/ReLU/max-pool/dropout blocks (32-64 channels)."""
    layers, c = [_stem(in_channels, 16)], 16
    for w in (32, 64):
        layers.append(_conv_block(c, w, dropout / 2))
        c = w
    return _channels_last(VolumeClassifier(nn.Sequential(*layers), c, num_classes, dropout))


def resnet3d(in_channels: int = 1, num_classes: int = 2, dropout: float = 0.2) -> VolumeClassifier:
    """3D ResNet-style: a strided stem and four basic residual blocks (16-32-64-128), stride 2 from the second on."""
    blocks, c = [_stem(in_channels, 16)], 16
    for i, w in enumerate((16, 32, 64, 128)):
        blocks.append(_BasicBlock(c, w, stride=1 if i == 0 else 2))
        c = w
    return _channels_last(VolumeClassifier(nn.Sequential(*blocks), c, num_classes, dropout))


# The family's entry in the registry of models/__init__.py: its kind, output argument and builders (the first, default).
KIND = "volume"
OUTPUT_ARG = "num_classes"
ARCHS = {"cnn3d": cnn3d, "resnet3d": resnet3d}
