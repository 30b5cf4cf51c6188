"""The Open Inference Protocol v2 door (KServe's and Triton's REST protocol): parse and format it, call the handlers.

Routes (``service/routes.py``): ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``, model metadata
and readiness, and ``POST /v2/models/{name}[/versions/{version}]/infer``. A model is called in one of two ways:

- its ONNX input as a tensor (``input``: FP32 ``[-1, C, H, W]`` presented pixels, or UINT8 ``[-1, L]`` base
  codes), run as given, one output row per input row;
- a BYTES input of what a person has: ``file`` (whole DICOM, PNG or JPEG files, each decoded and presented as
  ``/predict_image`` does; a multi-frame file gives a row per frame, and the outputs ``element`` and ``frame``
  say where each row came from) or ``sequence`` (DNA of any length, tiled and reverse-complement averaged as
  ``/predict_dna``; one row per sequence).

Tensors come as JSON ``data`` or in the binary tensor extension (``Inference-Header-Content-Length``: the
JSON header, then each input's ``binary_data_size`` bytes in order; BYTES elements each with a 4-byte
little-endian length). Everything is counted from the declared shapes, with Python integers, and checked
against the caps and the body before any array is built. Errors are ``{"error": "<code>: <message>"}``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import json
import logging
import math
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

import biomed
from biomed.errors import MalformedInput, TooLarge, UnsupportedMedia
from service.doors.endpoint import wrapper
from service.doors.http_io import BIG_JSON, json_values, read_body
from service import lifecycle
from service.engine import Engine, UnknownModel
from service.handlers import DnaHandler, Handler, ImageHandler

log = logging.getLogger("biomed.service")

PLATFORM = "onnx_onnxv1"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "inference-header-content-length"
MAX_JSON_VALUES = 1 << 18  # values in a JSON body (tensor data included); larger tensors go binary
MAX_RANK = 8
OUTPUT = "probabilities"
FILE_INPUT, SEQUENCE_INPUT = "file", "sequence"
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
            "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BYTES": 0}
NUMPY = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
         "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
V2_TYPE = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}

Endpoint = Callable[[Request, Engine], Awaitable[Any]]
_parser: ThreadPoolExecutor | None = None


# ---------------------------------------------------------------- errors


def error_body(code: str, detail: str) -> dict:
    """The v2 error form: one ``error`` string carrying the whole message (clients show only that field)."""
    return {"error": f"{code}: {detail}"}


wrap = wrapper(error_body)


# ---------------------------------------------------------------- what each model takes


@dataclass(frozen=True)
class InputSpec:
    """One input a model accepts: its datatype, its shape (-1: any size) or None (any shape), and an element cap."""

    name: str
    datatype: str
    shape: tuple[int, ...] | None
    max_elements: int
    cap_name: str  # what the cap is called, for the 413


@dataclass(frozen=True)
class Signature:
    """The inputs a model accepts (exactly one per request) and the outputs each way of calling produces."""

    inputs: dict[str, InputSpec]
    outputs: dict[str, tuple[str, tuple[int, ...]]]  # name -> (datatype, shape) of every output it may produce

    def outputs_for(self, input_name: str) -> tuple[str, ...]:
        return (OUTPUT, "element", "frame") if input_name == FILE_INPUT else (OUTPUT,)


@functools.lru_cache(maxsize=64)
def signature(handler: Handler) -> Signature:
    """The v2 view of a model, from its ``biomed`` document and the service's caps (made once per handler)."""
    doc, c = handler.model.doc, handler.config
    dims = tuple(int(d) for d in doc["input"]["shape"][1:])
    rows = c.max_request_rows or max(1, c.max_upload_bytes // handler.row_bytes)  # 0: no row cap, the body's then
    raw = InputSpec(doc["input"]["name"], V2_TYPE[doc["input"]["dtype"]], (-1, *dims), rows * math.prod(dims),
                    f"{rows} rows (BIOMED_MAX_REQUEST_ROWS)")
    labels = len(handler.labels)
    outputs: dict[str, tuple[str, tuple[int, ...]]] = {OUTPUT: ("FP32", (-1, labels))}
    if isinstance(handler, ImageHandler):
        person = InputSpec(FILE_INPUT, "BYTES", None, c.max_frames, f"{c.max_frames} files (BIOMED_MAX_FRAMES)")
        outputs.update(element=("INT32", (-1,)), frame=("INT32", (-1,)))
    else:
        person = InputSpec(SEQUENCE_INPUT, "BYTES", None, c.max_sequences,
                           f"{c.max_sequences} sequences (BIOMED_MAX_SEQUENCES)")
    return Signature({raw.name: raw, person.name: person}, outputs)


lifecycle.UNLOAD_HOOKS.append(signature.cache_clear)  # an unloaded version's handler must not stay cached


def _tensor(name: str, datatype: str, shape: tuple[int, ...]) -> dict:
    return {"name": name, "datatype": datatype, "shape": list(shape)}


# ---------------------------------------------------------------- parsing


@dataclass
class Tensor:
    """A parsed input: a numeric array, or the elements of a BYTES tensor (``from_json``: given as JSON strings)."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: np.ndarray | None = None
    items: list[bytes] | None = None
    from_json: bool = False


@dataclass
class InferRequest:
    id: str | None
    parameters: dict
    input: Tensor
    outputs: list[tuple[str, bool]]  # requested outputs, in order, each with whether it goes binary
    binary: bool  # request-level binary_data_output (the default for outputs not listed)


def _bad(detail: str) -> MalformedInput:
    return MalformedInput(detail)


def _int(value: Any) -> bool:
    return type(value) is int  # noqa: E721 - bool is an int subclass and is not a size


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part after it (``Inference-Header-Content-Length``)."""
    if header_length is None:
        return body, memoryview(b"")
    text = header_length.strip()
    if not text.isdigit() or not text.isascii():
        raise _bad(f"Inference-Header-Content-Length {header_length[:40]!r} is not a byte count")
    n = int(text)
    if n > len(body):
        raise _bad(f"Inference-Header-Content-Length {n} is beyond the body of {len(body)} bytes")
    view = memoryview(body)
    return bytes(view[:n]), view[n:]


def _load_json(header: bytes) -> Any:
    if json_values(header) > MAX_JSON_VALUES:
        raise TooLarge(f"the JSON holds more than {MAX_JSON_VALUES} values; send large tensors in binary "
                       "(the binary tensor extension: parameters.binary_data_size and Inference-Header-Content-Length)")
    try:
        return json.loads(header or b"{}")
    except RecursionError:
        raise _bad("the JSON is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise _bad(f"the body is not valid JSON ({str(err).splitlines()[0][:120]}); a binary body needs "
                   "Inference-Header-Content-Length") from None


def _flatten(data: list, expected: int) -> list:
    """The elements of (possibly nested) JSON ``data`` in row-major order; refused past ``expected``."""
    out: list = []
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if isinstance(value, list):
                stack.append(iter(value))
                break
            out.append(value)
            if len(out) > expected:
                raise _bad(f"data holds more than the {expected} elements its shape declares")
        else:
            stack.pop()
    return out


def _json_array(name: str, datatype: str, values: list, shape: tuple[int, ...]) -> np.ndarray:
    dtype = np.dtype(NUMPY[datatype])
    if datatype == "BOOL":
        if not all(type(v) is bool for v in values):  # noqa: E721
            raise _bad(f"input {name!r}: BOOL data must be true or false")
        return np.array(values, dtype=dtype).reshape(shape)
    if datatype.startswith("FP"):
        if not all(type(v) is float or type(v) is int for v in values):  # noqa: E721
            raise _bad(f"input {name!r}: {datatype} data must be numbers")
        with np.errstate(over="ignore"):
            try:
                return np.array(values, dtype=np.float64).astype(dtype).reshape(shape)
            except OverflowError:
                raise _bad(f"input {name!r}: a number is out of range for {datatype}") from None
    if not all(type(v) is int for v in values):  # noqa: E721
        raise _bad(f"input {name!r}: {datatype} data must be integers")
    info = np.iinfo(dtype)
    if values and (min(values) < info.min or max(values) > info.max):
        raise _bad(f"input {name!r}: a value is out of range for {datatype} ({info.min} to {info.max})")
    return np.array(values, dtype=dtype).reshape(shape)


def _split_bytes(name: str, chunk: memoryview, count: int) -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then that many bytes."""
    items, offset, end = [], 0, len(chunk)
    for i in range(count):
        if offset + 4 > end:
            raise _bad(f"input {name!r}: element {i} of {count}: its 4-byte length prefix runs past the "
                       f"input's {end} bytes")
        (size,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if size > end - offset:
            raise _bad(f"input {name!r}: element {i} of {count} claims {size} bytes; only {end - offset} "
                       "remain in the input's binary_data_size")
        items.append(bytes(chunk[offset : offset + size]))
        offset += size
    if offset != end:
        raise _bad(f"input {name!r}: {end - offset} bytes follow its {count} element(s) within binary_data_size")
    return items


def _shape(name: str, raw: Any, spec: InputSpec) -> tuple[tuple[int, ...], int]:
    """The declared shape and its element count (Python integers: no overflow), checked against the spec and caps."""
    if not isinstance(raw, list) or not all(_int(d) and d >= 0 for d in raw) or not raw or len(raw) > MAX_RANK:
        raise _bad(f"input {name!r}: shape must be a list of 1 to {MAX_RANK} non-negative integers")
    shape = tuple(raw)
    count = math.prod(shape)
    if count > spec.max_elements:
        raise TooLarge(f"input {name!r}: shape {list(shape)} declares {count} elements; one request takes at most "
                       f"{spec.max_elements} ({spec.cap_name})")
    if spec.shape is not None and (len(shape) != len(spec.shape) or any(
            want != -1 and got != want for got, want in zip(shape, spec.shape))):
        raise _bad(f"input {name!r}: shape {list(shape)} does not match the model's {list(spec.shape)} "
                   "(-1: any size)")
    if count == 0:
        raise _bad(f"input {name!r}: shape {list(shape)} holds no elements")
    return shape, count


def _outputs(doc: dict, signature: Signature, input_name: str) -> tuple[list[tuple[str, bool]], bool]:
    params = doc.get("parameters") or {}
    binary = params.get("binary_data_output", False)
    if not isinstance(binary, bool):
        raise _bad("parameters.binary_data_output must be true or false")
    produced = signature.outputs_for(input_name)
    listed = doc.get("outputs")
    if listed is None:
        return [(n, binary) for n in produced], binary
    if not isinstance(listed, list) or not listed:
        raise _bad("outputs must be a non-empty list of {name, parameters?}")
    chosen = []
    for out in listed:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise _bad("each requested output must be an object with a name")
        name, oparams = out["name"], out.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise _bad(f"output {name!r}: parameters must be an object")
        if name not in produced:
            raise _bad(f"output {name!r} is not produced for input {input_name!r}; outputs: {', '.join(produced)}")
        if oparams.get("classification"):
            raise _bad("the classification extension is not supported; read the labels from the model metadata")
        flag = oparams.get("binary_data", binary)
        if not isinstance(flag, bool):
            raise _bad(f"output {name!r}: parameters.binary_data must be true or false")
        chosen.append((name, flag))
    return chosen, binary


def parse_infer(body: bytes, header_length: str | None, signature: Signature) -> InferRequest:
    """An inference request, checked against what the model takes (see the module docstring).

    Raises:
        MalformedInput (400) for anything that does not follow the protocol or the model's signature;
        TooLarge (413) for a declared shape over the caps (before any allocation).
    """
    header, binary = split_body(body, header_length)
    doc = _load_json(header)
    if not isinstance(doc, dict):
        raise _bad("the inference request must be a JSON object with 'inputs'")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _bad("id must be a string")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise _bad("parameters must be an object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise _bad("inputs must be a non-empty list of {name, shape, datatype, data | parameters.binary_data_size}")
    names = " or ".join(f"{s.name!r} ({s.datatype})" for s in signature.inputs.values())
    if len(inputs) != 1:
        raise _bad(f"send exactly one input, {names}; got {len(inputs)}")
    given = inputs[0]
    name, datatype = given.get("name"), given.get("datatype")
    spec = signature.inputs.get(name) if isinstance(name, str) else None
    if spec is None:
        raise _bad(f"input {str(name)[:80]!r} is not an input of this model; send {names}")
    if datatype != spec.datatype:
        other = next(s for s in signature.inputs.values() if s is not spec)
        raise _bad(f"input {name!r} must be {spec.datatype}, not {str(datatype)[:20]} (or send {other.name!r} "
                   f"as {other.datatype})")
    shape, count = _shape(name, given.get("shape"), spec)
    iparams = given.get("parameters") or {}
    if not isinstance(iparams, dict):
        raise _bad(f"input {name!r}: parameters must be an object")
    size = iparams.get("binary_data_size")
    tensor = Tensor(name, datatype, shape)
    if size is not None:
        if not _int(size) or size < 0:
            raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
        if "data" in given:
            raise _bad(f"input {name!r} has both data and binary_data_size; send one")
        if size > len(binary):
            raise _bad(f"input {name!r}: binary_data_size {size} is beyond the {len(binary)} bytes after the JSON "
                       "header (Inference-Header-Content-Length)")
        if size != len(binary):
            raise _bad(f"{len(binary) - size} bytes after the JSON header are not claimed by the input's "
                       "binary_data_size")
        if datatype == "BYTES":
            if 4 * count > size:
                raise _bad(f"input {name!r}: {count} BYTES elements need at least {4 * count} bytes; "
                           f"binary_data_size is {size}")
            tensor.items = _split_bytes(name, binary, count)
        else:
            want = count * ITEMSIZE[datatype]
            if size != want:
                raise _bad(f"input {name!r}: shape {list(shape)} of {datatype} is {want} bytes; binary_data_size "
                           f"is {size}")
            tensor.array = np.frombuffer(binary, dtype=NUMPY[datatype]).reshape(shape)
    else:
        if len(binary):
            raise _bad(f"{len(binary)} bytes follow the JSON header but no input has parameters.binary_data_size")
        data = given.get("data")
        if not isinstance(data, list):
            raise _bad(f"input {name!r} needs data (a JSON array) or parameters.binary_data_size")
        values = _flatten(data, count)
        if len(values) != count:
            raise _bad(f"input {name!r}: shape {list(shape)} declares {count} elements; data holds {len(values)}")
        if datatype == "BYTES":
            if not all(type(v) is str for v in values):  # noqa: E721
                raise _bad(f"input {name!r}: BYTES data must be strings")
            tensor.items = [v.encode("utf-8", "surrogatepass") for v in values]
            tensor.from_json = True
        else:
            tensor.array = _json_array(name, datatype, values, shape)
        del values
    outputs, binary_default = _outputs(doc, signature, name)
    return InferRequest(request_id, params, tensor, outputs, binary_default)


def _parse_pool() -> ThreadPoolExecutor:
    """One thread for large JSON bodies: off the event loop, one at a time (their Python objects are transient)."""
    global _parser
    if _parser is None:
        _parser = ThreadPoolExecutor(1, thread_name_prefix="v2-parse")
    return _parser


async def _parse(request: Request, body: bytes, sig: Signature) -> InferRequest:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMedia(f"Content-Encoding {encoding[:40]!r} is not accepted; send the body uncompressed")
    header_length = request.headers.get(HEADER_LENGTH)
    declared = (header_length or "").strip()
    numeric = declared.isascii() and declared.isdigit()
    json_part = len(body) if header_length is None else min(len(body), int(declared) if numeric else 0)
    if json_part > BIG_JSON:  # a large JSON header (tensor data as JSON): parsed off the event loop
        return await asyncio.get_running_loop().run_in_executor(_parse_pool(), parse_infer, body, header_length, sig)
    return parse_infer(body, header_length, sig)


# ---------------------------------------------------------------- formatting


def infer_response(handler: Handler, req: InferRequest, produced: dict[str, tuple[str, np.ndarray]]) -> Response:
    """The inference response: JSON, or the JSON header then the binary outputs (``Inference-Header-Content-Length``)."""
    outputs, blobs = [], []
    for name, binary in req.outputs:
        datatype, array = produced[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if binary:
            blob = np.ascontiguousarray(array, dtype=NUMPY[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.ravel().tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": handler.model.name, "model_version": handler.model.version}
    if req.id is not None:
        answer["id"] = req.id
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *blobs]), media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})


# ---------------------------------------------------------------- endpoints


def _handler(request: Request, engine: Engine) -> Handler:
    """The model the path names (``/v2/models/{name}[/versions/{version}]``); 404 for an unknown name or version."""
    name = request.path_params["name"]
    version = request.path_params.get("version")
    if ":" in name or (version is not None and (not version or ":" in version)):
        raise UnknownModel(f"model {name[:200]!r} (version {str(version)[:80]!r}) is not loaded; see GET /models")
    return engine.pick(name if version is None else f"{name}:{version}", Handler)


async def server_metadata(request: Request, engine: Engine) -> dict:
    return {"name": "biomed-serve", "version": biomed.__version__, "extensions": list(EXTENSIONS)}


async def live(request: Request, engine: Engine) -> dict:
    return {"live": True}


async def ready(request: Request, engine: Engine) -> Response:
    return JSONResponse({"ready": engine.ready}, status_code=200 if engine.ready else 503)


async def model_metadata(request: Request, engine: Engine) -> dict:
    handler = _handler(request, engine)
    sig = signature(handler)
    raw = next(s for s in sig.inputs.values() if s.datatype != "BYTES")
    person = next(s for s in sig.inputs.values() if s.datatype == "BYTES")
    return {
        "name": handler.model.name, "versions": engine.loaded_versions(handler.model.name), "platform": PLATFORM,
        "inputs": [_tensor(raw.name, raw.datatype, raw.shape or (-1,))],
        "outputs": [_tensor(OUTPUT, *sig.outputs[OUTPUT])],
        "labels": list(handler.labels), "kind": handler.kind,
        "alternative_inputs": [_tensor(person.name, "BYTES", (-1,))],
        "alternative_outputs": [_tensor(n, *sig.outputs[n]) for n in sig.outputs_for(person.name) if n != OUTPUT],
    }


async def model_ready(request: Request, engine: Engine) -> dict:
    handler = _handler(request, engine)
    return {"name": handler.model.name, "ready": engine.ready}


def _reverse_complement(req: InferRequest, handler: Handler) -> bool:
    value = req.parameters.get("reverse_complement")
    if value is None:
        return True
    if not isinstance(handler, DnaHandler) or req.input.name != SEQUENCE_INPUT:
        raise _bad("parameters.reverse_complement applies to the BYTES input 'sequence' of a DNA model only")
    if not isinstance(value, bool):
        raise _bad("parameters.reverse_complement must be true or false")
    return value


def _files(tensor: Tensor) -> list[bytes]:
    """Whole files: raw bytes in binary, base64 text in JSON (a file is not UTF-8 text)."""
    if not tensor.from_json:
        return tensor.items or []
    files = []
    for i, text in enumerate(tensor.items or []):
        try:
            files.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise _bad(f"input 'file': element {i} is not base64; in JSON a file is sent base64-encoded") from None
    return files


async def infer(request: Request, engine: Engine) -> Response:
    started = time.perf_counter()
    handler = _handler(request, engine)
    sig = signature(handler)
    body = await read_body(request, engine.config.max_upload_bytes)
    req = await _parse(request, body, sig)
    del body
    rc = _reverse_complement(req, handler)
    tensor = req.input
    produced: dict[str, tuple[str, np.ndarray]] = {}
    if tensor.array is not None:
        probs = await handler.predict_rows(tensor.array, door="v2")
    elif isinstance(handler, ImageHandler):
        probs, element, frame = await handler.predict_files(_files(tensor), door="v2")
        produced.update(element=("INT32", element), frame=("INT32", frame))
    else:
        assert isinstance(handler, DnaHandler)
        sequences = [s.decode("latin-1") for s in tensor.items or []]
        probs = await handler.predict_sequence_rows(sequences, rc, started, door="v2")
    produced[OUTPUT] = ("FP32", probs)
    return infer_response(handler, req, produced)
