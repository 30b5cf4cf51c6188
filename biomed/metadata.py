"""The ``biomed`` metadata document carried inside every exported ONNX file.

The server builds its preprocessing from this document alone. It is validated
against ``biomed/data/metadata.schema.json``.
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from biomed.kinds import all_kinds

METADATA_KEY = "biomed"
SCHEMA_VERSION = "biomed/1"
INTENDED_USE = "research use only, not for diagnostic use"
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")  # a model name, as the schema's ``name`` pattern


class MetadataError(ValueError):
    """The ONNX file has no usable ``biomed`` metadata."""


def schema() -> dict:
    """The metadata schema: ``biomed/data/metadata.schema.json`` with the kinds' part filled in from the registry
    (``kind`` is one of the declared kinds, ``preprocess`` one of their blocks), so a new kind needs no edit here."""
    doc = json.loads(_schema_text())
    kinds = all_kinds()
    doc["properties"]["kind"] = {"enum": [k.name for k in kinds]}
    doc["properties"]["preprocess"] = {"oneOf": [dict(k.preprocess_schema) for k in kinds]}
    return doc


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("biomed").joinpath("data/metadata.schema.json").read_text()


def validate(doc: dict[str, Any]) -> dict[str, Any]:
    """Check a metadata document against the schema; returns it unchanged.

    Raises:
        MetadataError: naming the first field that does not conform.
    """
    try:
        jsonschema.validate(doc, schema())
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise MetadataError(f"biomed metadata does not match schema {SCHEMA_VERSION} at {where}: {err.message}") from None
    return doc


def read(model_path: str | Path) -> dict[str, Any]:
    """Read and validate the ``biomed`` document from an ONNX file without loading weights."""
    import onnx

    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as err:  # onnx raises DecodeError and friends
        raise MetadataError(f"{Path(model_path).name} is not a readable ONNX file ({type(err).__name__})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise MetadataError(f"{Path(model_path).name} has no '{METADATA_KEY}' metadata; export it with `biomed export`")
    try:
        doc = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError:
        raise MetadataError(f"{Path(model_path).name}: the '{METADATA_KEY}' metadata is not JSON") from None
    return validate(doc)
