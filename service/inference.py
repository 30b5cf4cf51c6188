"""The v2 data plane: a parsed ``InferRequest`` through a model's handler to an ``InferResponse``, for every door.

A person input whose kind declares the ``group`` parameter (images: ``series``) runs its elements as
one group (``Handler.predict_group``): one output row, and the group's description as the answer's
parameters.

What a model takes over v2 comes from its kind's declaration (``biomed.kinds``: the BYTES input of
what a person has, its extra outputs and parameters) and its metadata (the ONNX input), with the
service's caps; nothing here knows one kind from another. The REST door parses and encodes HTTP
(``service/doors/v2.py``); the protocol's types and codecs are ``service/protocol/v2.py``.
"""

from __future__ import annotations

import base64
import binascii
import functools
import math
from typing import Any

import numpy as np

from biomed import kinds
from biomed.errors import MalformedInput
from biomed.settings import env
from service import lifecycle
from service.engine import Engine, UnknownModel
from service.handlers import Handler
from service.protocol.v2 import (
    PLATFORM, V2_TYPE, InferRequest, InferResponse, InputSpec, OutputTensor, Signature,
)


@functools.lru_cache(maxsize=64)
def signature(handler: Handler) -> Signature:
    """The v2 view of a model, from its kind, its ``biomed`` document and the service's caps (made once per handler)."""
    doc, c = handler.model.doc, handler.config
    person = kinds.get(handler.kind).person
    dims = tuple(int(d) for d in doc["input"]["shape"][1:])
    rows = c.max_request_rows or max(1, c.max_upload_bytes // handler.row_bytes)  # 0: no row cap, the body's then
    cap_name = env("max_request_rows") if c.max_request_rows else env("max_upload_bytes")
    raw = InputSpec(doc["input"]["name"], V2_TYPE[doc["input"]["dtype"]], (-1, *dims), rows * math.prod(dims),
                    f"{rows} rows ({cap_name})")
    items = int(getattr(c, person.cap))
    bytes_input = InputSpec(person.name, "BYTES", None, items, f"{items} {person.items} ({env(person.cap)})")
    outputs = {handler.semantics.name: ("FP32", (-1, len(handler.labels))),
               **{name: (datatype, (-1,)) for name, datatype in person.outputs}}
    return Signature(raw, bytes_input, outputs, tuple(name for name, _ in person.outputs),
                     handler.parameters(dict(person.parameters)), handler.semantics.name)


lifecycle.UNLOAD_HOOKS.append(signature.cache_clear)  # an unloaded version's handler must not stay cached


def pick(engine: Engine, name: str, version: str | None) -> Handler:
    """The model a v2 call names (``name``, and ``version`` unless None: the name's default); 404 when not loaded.

    A ``:`` in either is refused rather than read as ``name:version`` (the engine's own notation).
    """
    if ":" in name or (version is not None and (not version or ":" in version)):
        raise UnknownModel(f"model {name[:200]!r} (version {str(version)[:80]!r}) is not loaded; see GET /models")
    return engine.pick(name if version is None else f"{name}:{version}")


def _tensor(name: str, datatype: str, shape: tuple[int, ...]) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


def model_metadata(engine: Engine, handler: Handler) -> dict:
    """The v2 model metadata: the ONNX tensor as the input, the person input as an alternative, and the labels."""
    sig = signature(handler)
    return {
        "name": handler.model.name, "versions": engine.loaded_versions(handler.model.name), "platform": PLATFORM,
        "inputs": [_tensor(sig.raw.name, sig.raw.datatype, sig.raw.shape or (-1,))],
        "outputs": [_tensor(handler.semantics.name, *sig.outputs[handler.semantics.name])],
        "labels": list(handler.labels), "kind": handler.kind,
        "alternative_inputs": [_tensor(sig.person.name, "BYTES", (-1,))],
        "alternative_outputs": [_tensor(n, *sig.outputs[n]) for n in sig.person_outputs],
    }


def _parameters(req: InferRequest, sig: Signature) -> dict[str, Any]:
    """The person input's parameters of the request, checked: each only with that input, of its default's type.

    A parameter that another kind's person input takes is refused here (400) rather than ignored.
    """
    chosen = dict(sig.parameters)
    for name in {p for k in kinds.all_kinds() for p in k.person.parameters} & set(req.parameters):
        value = req.parameters[name]
        if name not in sig.parameters or req.input.name != sig.person.name:
            takers = [f"{k.person.name!r} of {k.name} models" for k in kinds.all_kinds() if name in k.person.parameters]
            raise MalformedInput(f"parameters.{name} applies to the BYTES input {' or '.join(takers)} only")
        if type(value) is not type(sig.parameters[name]):
            raise MalformedInput(f"parameters.{name} must be {_typename(sig.parameters[name])}")
        chosen[name] = value
    return chosen


def _typename(value: Any) -> str:
    return "true or false" if isinstance(value, bool) else type(value).__name__


def _items(req: InferRequest, base64_in_json: bool) -> list[bytes]:
    """The BYTES elements: raw bytes in binary; in JSON, base64 text (a file is not text) or the text itself."""
    items = req.input.items or []
    if not (req.input.from_json and base64_in_json):
        return items
    out = []
    for i, text in enumerate(items):
        try:
            out.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise MalformedInput(f"input {req.input.name!r}: element {i} is not base64; in JSON its elements are "
                                 "sent base64-encoded") from None
    return out


async def infer(handler: Handler, req: InferRequest, door: str) -> InferResponse:
    """Run ``req`` (parsed against ``signature(handler)``) on the handler's model; its outputs in the order asked."""
    sig = signature(handler)
    parameters = _parameters(req, sig)
    produced: dict[str, np.ndarray] = {}
    answer: dict[str, Any] | None = None
    if req.input.array is not None:
        produced[handler.semantics.name] = await handler.predict_rows(req.input.array, door=door)
    else:
        person = kinds.get(handler.kind).person
        items = _items(req, person.base64_in_json)
        if parameters.get("group", "instance") != "instance":  # declared by the kind's person input (its default)
            probs, extra, answer = await handler.predict_group(items, parameters, door=door)
        else:
            probs, extra = await handler.predict_items(items, parameters, door=door)
        produced.update(extra)
        produced[handler.semantics.name] = probs
    outputs = [OutputTensor(name, sig.outputs[name][0], produced[name], binary) for name, binary in req.outputs]
    return InferResponse(handler.model.name, handler.model.version, outputs, req.id, answer)
