"""A torch module (a TorchScript file's, a MONAI bundle's network) to ONNX for ``biomed import``, checked as
``biomed export`` checks its own.

Exported with torch's TorchScript exporter (``dynamo=False``: a scripted module has no Python source
for ``torch.export``), a dynamic batch axis and this project's opset, then compared with PyTorch on
onnxruntime at batch sizes 1 and 7 under ``RTOL``/``ATOL`` (``training/export.py``).
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np
import onnx
import torch

from biomed.importing import adapters
from biomed.importing.errors import ImportRefused
from biomed.importing.graph import Graph
from training.export import ATOL, OPSET, PARITY_BATCHES, RTOL


def example_input(description: dict[str, Any], batch: int, seed: int = 0) -> torch.Tensor:
    """A random input of the graph's own layout for ``batch`` rows: the kind's random standard input through the
    description's reference adapter (``biomed.importing``)."""
    part = description[description["kind"]]
    adapter = adapters.get(description["kind"])(description, Graph.unknown(part.get("dtype", "float32")))
    x = adapter.reference(adapter.samples(np.random.default_rng(seed), batch)["random"])
    return torch.from_numpy(np.ascontiguousarray(x))


def to_onnx(module: torch.nn.Module, description: dict[str, Any]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """``module`` exported with the TorchScript exporter (a dynamic batch axis) and its parity with PyTorch.

    Raises:
        ImportRefused: the export fails, or onnxruntime differs from PyTorch beyond ``RTOL``/``ATOL``.
    """
    example = example_input(description, 2)
    buffer = io.BytesIO()
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (example,), buffer, dynamo=False, opset_version=OPSET, input_names=["input"],
                              output_names=["output"], dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}})
    except Exception as err:  # noqa: BLE001 - the exporter raises many types
        raise ImportRefused(f"the module cannot be exported to ONNX on the described input "
                            f"({type(err).__name__}: {str(err).splitlines()[0][:300]})") from None
    proto = onnx.load_from_string(buffer.getvalue())
    return proto, parity(proto, module, description)


def parity(proto: onnx.ModelProto, module: torch.nn.Module, description: dict[str, Any]) -> dict[str, Any]:
    """Max |onnxruntime - torch| on random inputs at batch sizes 1 and 7; refused when over tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for size in PARITY_BATCHES:
        x = example_input(description, size, seed=size)
        with torch.no_grad():
            theirs = module(x).float().numpy()
        ours = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0].astype(np.float32)
        if ours.shape != theirs.shape:
            raise ImportRefused(f"the exported graph gives shape {ours.shape}, PyTorch {theirs.shape}, at batch {size}")
        worst = max(worst, float(np.abs(ours - theirs).max()))
        if not np.allclose(ours, theirs, rtol=RTOL, atol=ATOL):
            raise ImportRefused(f"the exported graph differs from PyTorch by {worst:.2e} at batch {size} "
                                f"(rtol={RTOL}, atol={ATOL})")
    return {"export_parity_max_abs_diff": worst, "export_parity_batches": list(PARITY_BATCHES),
            "exported_with": f"torch {torch.__version__}, TorchScript exporter (dynamo=False), opset {OPSET}"}
