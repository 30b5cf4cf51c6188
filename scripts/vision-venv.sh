#!/usr/bin/env bash
# Create .venv-vision/: torch and torchvision for making the test's torchvision model "elsewhere".
#
# torchvision is not a dependency of the project: PyPI's torchvision wheels are built against a CUDA torch
# of their own release, and beside the project's torch (CPU, pinned) they fail to import ("operator
# torchvision::nms does not exist"). tests/test_import.py runs tests/vision_model.py here, then imports
# the ONNX file it writes with `biomed import` in the project's venv. Override the location with
# BIOMED_VISION_VENV.
#
# Usage: scripts/vision-venv.sh            (idempotent; reinstalls only when the pins change)
set -euo pipefail

VENV="${BIOMED_VISION_VENV:-.venv-vision}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.14.1}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.29.1}"
STAMP="$VENV/.biomed-vision-$TORCH_VERSION-$TORCHVISION_VERSION"

if [[ -f "$STAMP" && -x "$VENV/bin/python" ]]; then
    echo "vision venv up to date: $VENV (torch $TORCH_VERSION, torchvision $TORCHVISION_VERSION)"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION" onnx onnxscript numpy
"$VENV/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
touch "$STAMP"
echo "vision venv ready: $VENV"
