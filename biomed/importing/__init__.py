"""Serving a model made elsewhere: ``biomed import`` of an ONNX graph with a description of what it takes and gives.

The import composes adapter graphs in ONNX in front of and behind the user's graph, so the stored
model takes this service's standard input for its kind (presented pixels; base codes) and gives
its standard output (probabilities or regression values), verifies the composition against the
user's graph fed by a NumPy reference adapter, and stores one self-describing ONNX file with its
provenance. Torch-free: TorchScript and MONAI bundles are turned into ONNX in ``training/importing.py``.

- ``description``: the description (``biomed/data/import.schema.json``), read and checked;
- ``graph``: the user's graph as an import sees it, and ONNX pieces at its opset;
- ``adapters``: one adapter per kind of model (``adapters/<kind>.py``);
- ``build``: compose, verify, describe and store.
"""

from __future__ import annotations

from biomed.importing.adapters import get, names
from biomed.importing.errors import ImportRefused

__all__ = ["ImportRefused", "get", "names"]
