"""The model description of ``biomed import`` (YAML or JSON, ``biomed/data/import.schema.json``): read and checked.

The schema says each field; the checks here are those a schema cannot say (a part for the kind,
one value mapping, as many units as labels, a mean and std per channel).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema

from biomed.importing.errors import ImportRefused

SCHEMA_ID = "biomed-import/1"


@functools.lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files("biomed").joinpath("data/import.schema.json").read_text()


def schema() -> dict:
    """The description schema, its ``kind`` enum the kinds that can be imported (``biomed.importing.names``)."""
    from biomed.importing import names

    doc = json.loads(_schema_text())
    doc["properties"]["kind"]["enum"] = list(names())
    return doc


def read(path: str | Path) -> dict[str, Any]:
    """The description in ``path`` (``.json``, else YAML), checked.

    Raises:
        ImportRefused: the file cannot be read or parsed, or the description is not valid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ImportRefused(f"the description {path.name} cannot be read ({type(err).__name__})") from None
    try:
        if path.suffix.lower() == ".json":
            doc = json.loads(text)
        else:
            import yaml

            doc = yaml.safe_load(text)
    except ValueError as err:  # json.JSONDecodeError
        raise ImportRefused(f"the description {path.name} is not valid JSON: {str(err).splitlines()[0]}") from None
    except Exception as err:  # noqa: BLE001 - yaml.YAMLError and its subclasses
        raise ImportRefused(f"the description {path.name} is not valid YAML: {str(err).splitlines()[0]}") from None
    return check(doc)


def check(doc: Any) -> dict[str, Any]:
    """``doc`` checked against the schema and for what the schema cannot say; returned unchanged.

    Raises:
        ImportRefused: naming the first field that is wrong and what it accepts.
    """
    if not isinstance(doc, dict):
        raise ImportRefused("the description must be a mapping of fields (kind, labels, output, ...); "
                            f"got {type(doc).__name__}")
    try:
        jsonschema.validate(doc, schema())
    except jsonschema.ValidationError as err:
        where = "/".join(str(p) for p in err.absolute_path) or "(top level)"
        raise ImportRefused(f"the description does not match {SCHEMA_ID} at {where}: {err.message}") from None
    output, labels = doc["output"], doc["labels"]
    if output["type"] != "regression" and "activation" not in output:
        raise ImportRefused(f"output.activation is missing; {output['type']} need one: softmax or sigmoid")
    if output["type"] == "regression" and "activation" in output:
        raise ImportRefused("output.activation applies to probabilities and logits; regression values take none")
    units = output.get("units")
    if units is not None and (output["type"] != "regression" or len(units) != len(labels)):
        raise ImportRefused(f"output.units gives {len(units)} unit(s); accepted: one per label ({len(labels)}), "
                            "for regression only")
    if doc["kind"] not in doc:
        raise ImportRefused(f"a {doc['kind']} model's description needs its '{doc['kind']}' part")
    from biomed.importing import names

    others = [k for k in names() if k in doc and k != doc["kind"]]
    if others:
        raise ImportRefused(f"the description of a {doc['kind']} model has a '{others[0]}' part; remove it")
    return doc


def activation(doc: dict[str, Any]) -> str:
    """The metadata's output activation of a described model: softmax, sigmoid, or none (regression)."""
    return doc["output"].get("activation", "none")


def units(doc: dict[str, Any]) -> list[str]:
    """Each regression value's UCUM unit (``1`` where none is given); empty for probabilities."""
    if doc["output"]["type"] != "regression":
        return []
    return list(doc["output"].get("units") or ["1"] * len(doc["labels"]))
