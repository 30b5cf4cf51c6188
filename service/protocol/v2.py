"""The Open Inference Protocol v2 (KServe's and Triton's) as data and codecs, free of any transport.

The REST door (``service/doors/v2.py``) and, over gRPC, any other door share these types:

- ``Signature`` (``InputSpec`` each): what a model takes, built from its kind's declaration
  (``biomed.kinds``) and its metadata by ``service/inference.py``. A model is called with exactly
  one input: its ONNX tensor (``raw``: FP32 ``[-1, C, H, W]`` presented pixels, UINT8 ``[-1, L]``
  base codes...) or the BYTES input of what a person has (``person``: whole files, DNA text).
- ``InferRequest`` (one ``Tensor``, the requested outputs, the parameters) and ``parse_rest``: the
  JSON form and the binary tensor extension (``Inference-Header-Content-Length``: the JSON header,
  then each input's ``binary_data_size`` bytes; BYTES elements each with a 4-byte little-endian
  length). Everything is counted from the declared shapes, with Python integers, and checked
  against the caps and the body before any array is built.
- ``InferResponse`` (``OutputTensor`` each) and ``encode_rest``.
- ``error_body``: ``{"error": "<code>: <message>"}``.

Nothing here imports a web framework: errors are ``biomed.errors`` exceptions, which each door
turns into its own status (HTTP codes, gRPC status codes).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from biomed.errors import MalformedInput, TooLarge
from service.protocol.json_bounds import json_values

PLATFORM = "onnx_onnxv1"
EXTENSIONS = ("binary_tensor_data",)
HEADER_LENGTH = "inference-header-content-length"
MAX_HEADER_DIGITS = 19  # an Inference-Header-Content-Length longer than this is no body's size
MAX_JSON_VALUES = 1 << 18  # values in a JSON body (tensor data included); larger tensors go binary
MAX_RANK = 8
OUTPUT = "probabilities"
ITEMSIZE = {"BOOL": 1, "UINT8": 1, "UINT16": 2, "UINT32": 4, "UINT64": 8, "INT8": 1, "INT16": 2, "INT32": 4,
            "INT64": 8, "FP16": 2, "FP32": 4, "FP64": 8, "BYTES": 0}
NUMPY = {"BOOL": "?", "UINT8": "<u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "INT8": "<i1",
         "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}
V2_TYPE = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8"}


def error_body(code: str, detail: str) -> dict:
    """The v2 error form: one ``error`` string carrying the whole message (clients show only that field)."""
    return {"error": f"{code}: {detail}"}


# ---------------------------------------------------------------- what a model takes


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
    """What a model takes (exactly one input per request: ``raw`` or ``person``) and what each way gives."""

    raw: InputSpec  # the model's own tensor, run as given
    person: InputSpec  # what a person has (BYTES), preprocessed as the native endpoints do
    outputs: Mapping[str, tuple[str, tuple[int, ...]]]  # every output: name -> (datatype, shape)
    person_outputs: tuple[str, ...] = ()  # the outputs only the person input produces (where each row came from)
    parameters: Mapping[str, Any] = field(default_factory=dict)  # the person input's request parameters: defaults
    output: str = OUTPUT  # the model's output: probabilities, or a regression model's values

    @property
    def inputs(self) -> dict[str, InputSpec]:
        return {self.raw.name: self.raw, self.person.name: self.person}

    def outputs_for(self, input_name: str) -> tuple[str, ...]:
        return (self.output, *self.person_outputs) if input_name == self.person.name else (self.output,)


# ---------------------------------------------------------------- requests


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


def header_bytes(text: str) -> int:
    """An ``Inference-Header-Content-Length`` as a byte count (400 for anything else, however long)."""
    value = text.strip()
    if not value.isascii() or not value.isdigit() or len(value) > MAX_HEADER_DIGITS:
        raise MalformedInput(f"Inference-Header-Content-Length {text[:40]!r} is not a byte count")
    return int(value)


def _bad(detail: str) -> MalformedInput:
    return MalformedInput(detail)


def _int(value: Any) -> bool:
    return type(value) is int  # noqa: E721 - bool is an int subclass and is not a size


def split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part after it (``Inference-Header-Content-Length``)."""
    if header_length is None:
        return body, memoryview(b"")
    n = header_bytes(header_length)
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


def values_array(name: str, datatype: str, values: list, shape: tuple[int, ...]) -> np.ndarray:
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


def split_bytes(name: str, chunk: memoryview, count: int, where: str = "binary_data_size") -> list[bytes]:
    """BYTES elements of the binary extension: each a 4-byte little-endian length, then that many bytes.

    ``where`` names the field that holds ``chunk`` in messages (REST: the input's ``binary_data_size``).
    """
    if 4 * count > len(chunk):
        raise _bad(f"input {name!r}: {count} BYTES elements need at least {4 * count} bytes; {where} is {len(chunk)}")
    items, offset, end = [], 0, len(chunk)
    for i in range(count):
        if offset + 4 > end:
            raise _bad(f"input {name!r}: element {i} of {count}: its 4-byte length prefix runs past the "
                       f"input's {end} bytes")
        (size,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if size > end - offset:
            raise _bad(f"input {name!r}: element {i} of {count} claims {size} bytes; only {end - offset} "
                       f"remain in the input's {where}")
        items.append(bytes(chunk[offset : offset + size]))
        offset += size
    if offset != end:
        raise _bad(f"input {name!r}: {end - offset} bytes follow its {count} element(s) within {where}")
    return items


def fixed_array(name: str, datatype: str, shape: tuple[int, ...], chunk: memoryview | bytes,
                where: str = "binary_data_size") -> np.ndarray:
    """A numeric tensor as a view of ``chunk``, whose size must be exactly the shape's (``where``: for messages)."""
    want = math.prod(shape) * ITEMSIZE[datatype]
    if len(chunk) != want:
        raise _bad(f"input {name!r}: shape {list(shape)} of {datatype} is {want} bytes; {where} is {len(chunk)}")
    return np.frombuffer(chunk, dtype=NUMPY[datatype]).reshape(shape)


def input_spec(name: Any, datatype: Any, signature: Signature) -> InputSpec:
    """The model's input called ``name``, which must be given as its own datatype (400 naming both ways)."""
    names = " or ".join(f"{s.name!r} ({s.datatype})" for s in signature.inputs.values())
    spec = signature.inputs.get(name) if isinstance(name, str) else None
    if spec is None:
        raise _bad(f"input {str(name)[:80]!r} is not an input of this model; send {names}")
    if datatype != spec.datatype:
        other = signature.person if spec is signature.raw else signature.raw
        raise _bad(f"input {name!r} must be {spec.datatype}, not {str(datatype)[:20]} (or send {other.name!r} "
                   f"as {other.datatype})")
    return spec


def one_input(count: int, signature: Signature) -> None:
    """A request carries exactly one input (400 naming the model's two)."""
    if count != 1:
        names = " or ".join(f"{s.name!r} ({s.datatype})" for s in signature.inputs.values())
        raise _bad(f"send exactly one input, {names}; got {count}")


def input_shape(name: str, raw: Any, spec: InputSpec) -> tuple[tuple[int, ...], int]:
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


def requested_outputs(doc: dict, signature: Signature, input_name: str) -> tuple[list[tuple[str, bool]], bool]:
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
    if len(listed) > len(produced):
        raise _bad(f"{len(listed)} outputs requested; input {input_name!r} produces {len(produced)}: "
                   f"{', '.join(produced)} (each at most once)")
    chosen: list[tuple[str, bool]] = []
    for out in listed:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise _bad("each requested output must be an object with a name")
        name, oparams = out["name"], out.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise _bad(f"output {name[:80]!r}: parameters must be an object")
        if any(name == seen for seen, _ in chosen):
            raise _bad(f"output {name!r} is requested twice; ask for each output at most once")
        if name not in produced:
            raise _bad(f"output {name[:80]!r} is not produced for input {input_name!r}; outputs: {', '.join(produced)}")
        if oparams.get("classification"):
            raise _bad("the classification extension is not supported; read the labels from the model metadata")
        flag = oparams.get("binary_data", binary)
        if not isinstance(flag, bool):
            raise _bad(f"output {name!r}: parameters.binary_data must be true or false")
        chosen.append((name, flag))
    return chosen, binary


def parse_rest(body: bytes, header_length: str | None, signature: Signature) -> InferRequest:
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
    one_input(len(inputs), signature)
    given = inputs[0]
    name, datatype = given.get("name"), given.get("datatype")
    spec = input_spec(name, datatype, signature)
    shape, count = input_shape(name, given.get("shape"), spec)
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
            tensor.items = split_bytes(name, binary, count)
        else:
            tensor.array = fixed_array(name, datatype, shape, binary)
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
            tensor.array = values_array(name, datatype, values, shape)
        del values
    outputs, binary_default = requested_outputs(doc, signature, name)
    return InferRequest(request_id, params, tensor, outputs, binary_default)


# ---------------------------------------------------------------- responses


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray
    binary: bool = False


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    id: str | None = None
    parameters: dict[str, Any] | None = None  # what the answer says beside its tensors (a group's description)


def encode_rest(response: InferResponse) -> tuple[bytes, int | None]:
    """The REST body: JSON, or the JSON header then the binary outputs; with the header's length when binary."""
    outputs, blobs = [], []
    for out in response.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": list(out.array.shape)}
        if out.binary:
            blob = np.ascontiguousarray(out.array, dtype=NUMPY[out.datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = out.array.ravel().tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        answer["id"] = response.id
    if response.parameters:
        answer["parameters"] = response.parameters
    answer["outputs"] = outputs
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return header, None
    return b"".join([header, *blobs]), len(header)
