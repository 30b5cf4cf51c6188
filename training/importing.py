"""``biomed import`` of what needs torch: TorchScript files and MONAI bundles, turned into ONNX here
(``training/torchscript.py``, ``training/bundle.py``), then composed, verified and stored by the core
(``biomed.importing``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from biomed.importing.build import import_graph, import_onnx, source_of
from biomed.importing.description import read as read_description
from biomed.importing.errors import ImportRefused
from training.bundle import import_bundle
from training.torchscript import to_onnx

ONNX_SUFFIXES = (".onnx",)
TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth", ".torchscript", ".jit")


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
