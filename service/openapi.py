"""The OpenAPI 3.1 document of the HTTP API (served at ``/openapi.json``; schemathesis fuzzes it)."""

from __future__ import annotations

import functools

from pydantic import BaseModel

import biomed
from service import schemas

_REF = "#/components/schemas/{model}"


def _schema(model: type[BaseModel], components: dict, mode: str = "validation") -> dict:
    doc = model.model_json_schema(ref_template=_REF, mode=mode)
    components.update(doc.pop("$defs", {}))
    components[model.__name__] = doc
    return {"$ref": _REF.format(model=model.__name__)}


def _errors(*codes: int) -> dict:
    text = {400: "malformed body", 401: "missing or wrong bearer token", 404: "unknown model", 413: "over a size limit",
            415: "unsupported media type", 422: "well-formed but invalid input"}
    return {str(c): {"description": text[c], "content": {"application/json": {"schema": {"$ref": _REF.format(model="ErrorBody")}}}}
            for c in codes}


def _json_post(summary: str, request: type[BaseModel], response: type[BaseModel], components: dict) -> dict:
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _schema(request, components)}}},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _schema(response, components, "serialization")}}},
                      **_errors(400, 401, 404, 413, 415, 422)},
    }}


def _upload_post(summary: str, response: type[BaseModel], components: dict, extra: dict) -> dict:
    form = {"type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"}, **extra}}
    return {"post": {
        "summary": summary,
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": _schema(response, components, "serialization")}}},
                      **_errors(400, 401, 404, 413, 415, 422)},
    }}


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict:
    components: dict = {}
    _schema(schemas.ErrorBody, components)
    paths = {
        "/predict_image": _upload_post("Classify a DICOM, PNG or JPEG image; one prediction per frame",
                                       schemas.ImageResponse, components, {}),
        "/predict_dna": _json_post("Predict tasks for DNA sequences (tiled, reverse-complement averaged)",
                                   schemas.DnaRequest, schemas.DnaResponse, components),
        "/predict_fasta": _upload_post("Predict tasks for the records of a FASTA file", schemas.DnaResponse, components,
                                       {"reverse_complement": {"type": "string", "enum": ["true", "false"]}}),
        "/score_variants": _json_post("Score SNVs: ref/alt probabilities, difference, log-odds difference",
                                      schemas.VariantsRequest, schemas.VariantsResponse, components),
        "/explain_dna": _json_post("In-silico mutagenesis of one sequence", schemas.ExplainRequest,
                                   schemas.ExplainResponse, components),
        "/models": {"get": {"summary": "Loaded models: metadata, provider, sha256, metrics",
                            "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {
                                "type": "object", "required": ["models"],
                                "properties": {"models": {"type": "array", "items": {"type": "object"}}}}}}},
                                **_errors(401)}}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "biomed-serve", "version": biomed.__version__,
                 "description": "Biomedical image (DICOM) and DNA sequence models over HTTP. Research use only."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
    }
