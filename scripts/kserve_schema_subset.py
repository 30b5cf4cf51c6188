#!/usr/bin/env python3
"""Cut KServe's InferenceService schema down to the fields deploy/kserve/*.yaml use (tests/test_kserve.py).

KServe's CRD (config/crd/full/serving.kserve.io_inferenceservices.yaml in github.com/kserve/kserve) is
about 2 MB; its v1beta1 openAPIV3Schema is cut to every object property the manifests set, with each kept
node's own type, format, enum, required list, bounds and x-kubernetes-* markers (descriptions dropped).
The test validates the manifests against it and refuses any field it does not declare, so a new field
in a manifest means running this again against the CRD:

    python scripts/kserve_schema_subset.py PATH/TO/serving.kserve.io_inferenceservices.yaml \\
        --commit <kserve commit> > deploy/kserve/schema/inferenceservice-v1beta1.subset.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((REPO / "deploy" / "kserve").glob("*.yaml"))
KEEP = ("type", "format", "enum", "required", "minimum", "maximum", "minLength", "maxLength", "minItems",
        "maxItems", "pattern", "nullable", "default", "x-kubernetes-int-or-string",
        "x-kubernetes-preserve-unknown-fields", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
        "x-kubernetes-map-type")


def cut(schema: dict, values: list[Any]) -> dict:
    """``schema`` with only the properties that some of ``values`` (the manifests' values here) set."""
    out = {k: schema[k] for k in KEEP if k in schema}
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [cut(s, values) for s in schema[key]]
    dicts = [v for v in values if isinstance(v, dict)]
    if "properties" in schema:
        used = sorted({k for d in dicts for k in d if k in schema["properties"]})
        out["properties"] = {k: cut(schema["properties"][k], [d[k] for d in dicts if k in d]) for k in used}
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = cut(schema["additionalProperties"], [x for d in dicts for x in d.values()])
    elif "additionalProperties" in schema:
        out["additionalProperties"] = schema["additionalProperties"]
    if "items" in schema:
        out["items"] = cut(schema["items"], [x for v in values if isinstance(v, list) for x in v])
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("crd", type=Path, help="serving.kserve.io_inferenceservices.yaml from KServe")
    p.add_argument("--commit", default="unknown", help="the KServe commit the CRD comes from")
    args = p.parse_args()
    crd = yaml.safe_load(args.crd.read_text())
    [version] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    docs = [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]
    subset = cut(version["schema"]["openAPIV3Schema"], docs)
    json.dump({"source": {"repository": "https://github.com/kserve/kserve", "commit": args.commit,
                          "path": "config/crd/full/serving.kserve.io_inferenceservices.yaml",
                          "version": "v1beta1", "license": "Apache-2.0",
                          "note": "openAPIV3Schema cut to the fields of deploy/kserve/*.yaml by "
                                  "scripts/kserve_schema_subset.py"},
               "schema": subset}, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
