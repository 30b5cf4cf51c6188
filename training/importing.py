"""``biomed import`` of what needs torch: TorchScript files and MONAI bundles, turned into ONNX here, then composed,
verified and stored by the core (``biomed.importing``).

A TorchScript module (or a bundle's network) is exported with torch's TorchScript exporter
(``dynamo=False``: a scripted module has no Python source for ``torch.export``), a dynamic batch
axis and this project's opset, then checked as ``biomed export`` checks its own: onnxruntime
against PyTorch at batch sizes 1 and 7 under ``RTOL``/``ATOL`` (``training/export.py``).
MONAI bundles are read in ``training/bundle.py``.
"""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from biomed.importing.build import import_graph, import_onnx, source_of
from biomed.importing.description import read as read_description
from biomed.importing.errors import ImportRefused
from training.export import ATOL, OPSET, PARITY_BATCHES, RTOL

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth", ".torchscript", ".jit")


def example_input(description: dict[str, Any], batch: int, seed: int = 0) -> torch.Tensor:
    """A random input of the graph's own layout for ``batch`` rows, as the description says it."""
    rng = np.random.default_rng(seed)
    if "dna" in description:
        p = description["dna"]
        length = int(p["length"])
        onehot = np.eye(4, dtype=np.float32)[rng.integers(0, 4, size=(batch, length))]  # (N, L, 4)
        layout = {"NL4": onehot, "N4L": onehot.transpose(0, 2, 1), "N14L": onehot.transpose(0, 2, 1)[:, None]}
        x = layout[p["layout"]]
        return torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, p.get("dtype", "float32")))
    p = description["image"]
    c, (h, w) = int(p["channels"]), p["size"]
    shape = (batch, c, h, w) if p["layout"] == "NCHW" else (batch, h, w, c)
    return torch.from_numpy(rng.random(shape, dtype=np.float32))


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


def import_torchscript(path: Path, description: dict[str, Any], name: str, store: str | None = None) -> str:
    """A TorchScript file, as ``description`` describes it: exported, checked, composed and stored."""
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError and friends
        raise ImportRefused(f"{path.name} is not a TorchScript file torch {torch.__version__} can load "
                            f"({type(err).__name__}); accepted: torch.jit.save output") from None
    proto, checks = to_onnx(module, description)
    return import_graph(proto, description, name, source_of(path, "torchscript"), store, checks)


def import_source(source: str | Path, name: str, description: str | Path | None = None,
                  store: str | None = None) -> str:
    """``biomed import SOURCE --name NAME [--description FILE]``: an ONNX or TorchScript file with its description,
    or a MONAI bundle folder (its description read from the bundle, ``--description`` overriding it); returns
    ``name:version``.

    Raises:
        ImportRefused: one line naming what is wrong; nothing is written to the store.
    """
    source = Path(source)
    if source.is_dir():
        from training.bundle import import_bundle

        return import_bundle(source, name, read_description(description) if description else None, store)
    if not source.is_file():
        raise ImportRefused(f"{source} does not exist; accepted: an ONNX or TorchScript file, or a MONAI bundle folder")
    if description is None:
        raise ImportRefused(f"{source.name} needs a description of what it takes and gives: --description FILE "
                            "(YAML or JSON; docs/import.md)")
    doc = read_description(description)
    if source.suffix.lower() in ONNX_SUFFIXES:
        return import_onnx(source, doc, name, store)
    if source.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return import_torchscript(source, doc, name, store)
    raise ImportRefused(f"{source.name}: the suffix {source.suffix or '(none)'} is not known; accepted: .onnx, "
                        f"{', '.join(TORCHSCRIPT_SUFFIXES)} (TorchScript), or a MONAI bundle folder")
