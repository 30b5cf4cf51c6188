"""The BentoML model store as biomed sees it: models exported by ``biomed export``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bentoml

DEMO_MODELS = ("demo-image", "demo-dna")


class ModelNotFound(LookupError):
    """No model in the store matches a reference."""


def biomed_models() -> list[bentoml.Model]:
    """Every model in the store exported by ``biomed export``, newest first."""
    models = [m for m in bentoml.models.list() if m.info.labels.get("biomed") == "1"]
    return sorted(models, key=lambda m: m.info.creation_time, reverse=True)


def resolve(ref: str) -> bentoml.Model:
    """A model by ``name`` (latest version) or ``name:version``."""
    try:
        return bentoml.models.get(ref)
    except Exception:  # BentoML raises NotFound or a tag validation error
        known = sorted({m.tag.name for m in biomed_models()})
        raise ModelNotFound(f"model {ref!r} is not in the model store; available: {', '.join(known) or 'none'}") from None


def onnx_path(model: bentoml.Model) -> Path:
    return Path(model.path_of("model.onnx"))


def has_models(names: tuple[str, ...] = DEMO_MODELS) -> bool:
    present = {m.tag.name for m in biomed_models()}
    return all(name in present for name in names)


@dataclass(frozen=True)
class Row:
    name: str
    version: str
    kind: str
    variant: str
    labels: list[str]
    auroc: float
    created: str

    @classmethod
    def of(cls, model: bentoml.Model) -> "Row":
        meta: dict[str, Any] = model.info.metadata
        return cls(model.tag.name, model.tag.version or "", str(meta.get("kind", "?")), str(meta.get("variant", "?")),
                   list(meta.get("labels", [])), float(meta.get("auroc_macro", float("nan"))),
                   model.info.creation_time.strftime("%Y-%m-%d %H:%M"))


def import_onnx(path: str | Path, name: str | None = None) -> str:
    """Put an exported ``model.onnx`` (with its ``biomed`` metadata) into the store; returns ``name:version``.

    For a file made elsewhere (another machine's ``biomed export``, a benchmark kit): the metadata is
    validated first, and the store entry carries the same labels ``biomed export`` writes.
    """
    from biomed import metadata

    doc = metadata.read(path)
    name = name or doc["name"]
    labels = {"biomed": "1", "kind": doc["kind"], "arch": str(doc.get("architecture", {}).get("arch", "?")),
              "variant": str(doc.get("export", {}).get("variant", "fp32"))}
    meta = {"biomed_schema": doc["schema"], "kind": doc["kind"], "labels": doc["labels"],
            "auroc_macro": float(doc["training"]["metrics"].get("auroc_macro", float("nan"))), "variant": labels["variant"]}
    with bentoml.models.create(f"{name}:{doc['version']}", labels=labels, metadata=meta) as stored:
        Path(stored.path_of("model.onnx")).write_bytes(Path(path).read_bytes())
        return str(stored.tag)
