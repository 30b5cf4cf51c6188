"""The OpenAPI 3.1 document of the HTTP API (``/openapi.json``), derived from the route table; schemathesis fuzzes it."""

from __future__ import annotations

import functools
import re

from pydantic import BaseModel

import biomed
from service import schemas
from service.routes import ROUTES, Route

_REF = "#/components/schemas/{model}"
_ERROR_TEXT = {400: "malformed body", 401: "missing or wrong bearer token", 404: "not found: an unknown model, path or asset", 413: "over a size limit",
               409: "conflict with the service's state", 415: "unsupported media type",
               422: "well-formed but invalid input"}


def _schema(model: type[BaseModel], components: dict, mode: str = "validation") -> dict:
    doc = model.model_json_schema(ref_template=_REF, mode=mode)
    components.update(doc.pop("$defs", {}))
    components[model.__name__] = doc
    return {"$ref": _REF.format(model=model.__name__)}


def _errors(codes: tuple[int, ...], model: str = "ErrorBody") -> dict:
    return {str(c): {"description": _ERROR_TEXT[c],
                     "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}}}
            for c in codes}


_STATUS_TEXT = {202: "accepted in part: some instances failed (Failed SOP Sequence)",
                409: "nothing stored: every instance failed (Failed SOP Sequence)"}
_ERROR_MODEL = {"native": "ErrorBody", "v2": "V2Error"}  # each door's error form


def _request_body(route: Route, components: dict) -> dict | None:
    if route.body == "json" and route.request is not None:
        return {"required": True, "content": {"application/json": {"schema": _schema(route.request, components)}}}
    if route.body == "upload":
        form = {"type": "object", "required": ["file"],
                "properties": {"file": {"type": "string", "format": "binary"}, "model": {"type": "string"},
                               **route.form_fields}}
        return {"required": True, "content": {"multipart/form-data": {"schema": form}}}
    if route.body == "series":  # /predict_series: the DICOM instances of one series, one 'file' field each
        form = {"type": "object", "required": ["file"],
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}},
                               "model": {"type": "string"}}}
        return {"required": True, "content": {"multipart/form-data": {"schema": form,
                                                                      "encoding": {"file": {"contentType": "application/dicom"}}}}}
    if route.body == "dicom":  # STOW-RS: DICOM Part-10 instances, one per part
        return {"required": True, "content": {'multipart/related; type="application/dicom"': {
            "schema": {"type": "string", "format": "binary"}}}}
    return None


def _operation(route: Route, components: dict) -> dict:
    if route.response is not None:
        schema = _schema(route.response, components, "serialization")
    else:
        schema = {"type": "object"} if route.response_media.endswith("json") else {"type": "string"}
    content = {route.response_media: {"schema": schema}}
    for media in route.response_alt_media:
        content[media] = {"schema": {"type": "string", "format": "binary"}}
    if route.door == "v2" and route.body is not None:  # the binary tensor extension (docs/api.md)
        content["application/octet-stream"] = {"schema": {"type": "string", "format": "binary"}}
    operation: dict = {"summary": route.summary, "operationId": route.name,
                       "responses": {"200": {"description": "OK", "content": content},
                                     **{str(c): {"description": _STATUS_TEXT[c], "content": {
                                         route.response_media: {"schema": schema}}} for c in route.statuses},
                                     **_errors(route.errors, _ERROR_MODEL[route.door])}}
    body = _request_body(route, components)
    if body is not None:
        operation["requestBody"] = body
    parameters = [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                  for name in re.findall(r"\{([^/}]+)\}", route.path)]
    if parameters:
        operation["parameters"] = parameters
    if route.open:
        operation["security"] = [{}]
    return operation


@functools.lru_cache(maxsize=1)
def openapi_document() -> dict:
    components: dict = {}
    _schema(schemas.ErrorBody, components)
    _schema(schemas.V2Error, components)
    paths: dict = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "biomed-serve", "version": biomed.__version__,
                 "description": "Biomedical image (DICOM) and DNA sequence models over HTTP. Research use only."},
        "paths": paths,
        "components": {"schemas": components,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}, {}],
    }
