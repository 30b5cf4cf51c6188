"""Made "elsewhere" (``.venv-vision``, torch and torchvision of their own): a torchvision ResNet-18 with a 3-class
head, its ONNX file from torch's own exporter, and its outputs for given inputs.

Usage: python tests/vision_model.py OUT_DIR INPUTS.npy
Writes OUT_DIR/resnet18.onnx (input (N, 3, 64, 64) NCHW, ImageNet-normalised; output (N, 3) logits) and
OUT_DIR/reference.npy: softmax(model(normalize(INPUTS))) in float64, computed by torch here, where INPUTS are
(N, 3, 64, 64) RGB images in [0, 1] and ``normalize`` is torchvision's with ImageNet's mean and std: the model's
original preprocessing.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torchvision


def main(out: Path, inputs: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()  # random weights: no download
    normalize = torchvision.transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    x = normalize(torch.from_numpy(np.load(inputs)))
    warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
    torch.onnx.export(model, (x[:2],), str(out / "resnet18.onnx"), input_names=["image"], output_names=["logits"],
                      dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False)
    with torch.no_grad():
        np.save(out / "reference.npy", torch.softmax(model(x).double(), dim=1).numpy())


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
