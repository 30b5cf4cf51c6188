"""The Open Inference Protocol v2 over gRPC: ``ModelInferRequest`` to ``InferRequest``, ``InferResponse`` to
``ModelInferResponse``, free of the transport (``service/doors/grpc.py`` is the door).

The messages are tritonclient's generated ones (``tritonclient.grpc.service_pb2``: package ``inference``,
service ``GRPCInferenceService``), not a copy generated here. Their field numbers are the KServe
specification's (``open_inference_grpc.proto``) for the six calls served; tritonclient's file adds
Triton's own calls, which the door does not serve. A copy generated from the KServe file would define
the same ``inference.*`` names in protobuf's default descriptor pool, which refuses a second file that
does (``duplicate symbol 'inference.ServerLiveRequest'``): the server, the tests, the benchmark and any
user's process could then not import it beside tritonclient. tritonclient is small (pure Python, about
1 MB) and is the client most v2 users already have; its ``grpc`` extra brings grpcio and protobuf, which
the door needs anyway. The one field of the KServe file that Triton's lacks, ``ModelMetadataResponse``'s
``properties``, is not sent: the labels and the BYTES inputs are in the REST metadata.

A request is checked exactly as the REST codec checks it (``service/protocol/v2.py``), with the same
messages: one input, its name and datatype against the model's signature, its shape against the caps
before anything is built. Its data is either ``raw_input_contents[0]`` (the tensor's bytes, little-endian;
BYTES elements each with a 4-byte length, as in the REST binary extension) or the typed ``contents`` field
of its datatype (at most ``MAX_JSON_VALUES`` values, as for a JSON body: larger tensors go raw). Outputs
always go back as ``raw_output_contents``, as Triton sends them; the answer's parameters (a group's
description) as the response's ``parameters``.
"""

from __future__ import annotations

from typing import Any

from tritonclient.grpc import service_pb2 as pb

from biomed.errors import MalformedInput, TooLarge
from service.protocol.v2 import (
    MAX_JSON_VALUES, NUMPY, InferRequest, InferResponse, Signature, Tensor, split_bytes, fixed_array, input_shape,
    input_spec, one_input, requested_outputs, values_array,
)

SERVICE = "inference.GRPCInferenceService"
RAW = "raw_input_contents[0]"
# The typed field of each datatype (FP16 has none: it goes raw).
CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
            "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
            "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents"}


def parameter(p: pb.InferParameter) -> Any:
    """An ``InferParameter`` as a Python value (bool, int, str or float; None when unset)."""
    choice = p.WhichOneof("parameter_choice")
    return None if choice is None else getattr(p, choice)


def parameters(entries: Any) -> dict[str, Any]:
    return {key: parameter(value) for key, value in entries.items()}


def _typed(name: str, datatype: str, shape: tuple[int, ...], count: int, contents: pb.InferTensorContents,
           tensor: Tensor) -> None:
    """The tensor from its typed ``contents`` field: only the datatype's field, holding exactly ``count`` values."""
    field = CONTENTS.get(datatype)
    given = [f.name for f, _ in contents.ListFields()]
    if field is None or given != [field]:
        where = f"contents.{field}" if field else RAW
        raise MalformedInput(f"input {name!r}: {datatype} data goes in {where}; got "
                             f"{', '.join('contents.' + g for g in given) or 'no data'}")
    values = getattr(contents, field)
    if len(values) > MAX_JSON_VALUES:
        raise TooLarge(f"input {name!r}: contents holds {len(values)} values, over {MAX_JSON_VALUES}; send large "
                       f"tensors in raw_input_contents")
    if len(values) != count:
        raise MalformedInput(f"input {name!r}: shape {list(shape)} declares {count} elements; contents.{field} holds "
                             f"{len(values)}")
    if datatype == "BYTES":
        tensor.items = list(values)
    else:
        tensor.array = values_array(name, datatype, list(values), shape)


def parse_grpc(msg: pb.ModelInferRequest, signature: Signature) -> InferRequest:
    """An inference request, checked against what the model takes (see the module docstring).

    Raises:
        MalformedInput (400) for anything that does not follow the protocol or the model's signature;
        TooLarge (413) for a declared shape or typed contents over the caps (before any array is built).
    """
    one_input(len(msg.inputs), signature)
    given = msg.inputs[0]
    spec = input_spec(given.name, given.datatype, signature)
    name, datatype = spec.name, spec.datatype
    shape, count = input_shape(name, list(given.shape), spec)
    tensor = Tensor(name, datatype, shape)
    if len(msg.raw_input_contents) > 1:
        raise MalformedInput(f"raw_input_contents holds {len(msg.raw_input_contents)} entries; the request has one "
                             "input")
    if msg.raw_input_contents:
        if given.HasField("contents"):
            raise MalformedInput(f"input {name!r} has both contents and raw_input_contents; send one")
        raw = msg.raw_input_contents[0]
        if datatype == "BYTES":
            tensor.items = split_bytes(name, memoryview(raw), count, RAW)
        else:
            tensor.array = fixed_array(name, datatype, shape, raw, RAW)
    else:
        _typed(name, datatype, shape, count, given.contents, tensor)
    outputs = [{"name": o.name, "parameters": parameters(o.parameters)} for o in msg.outputs]
    chosen, _ = requested_outputs({"outputs": outputs or None, "parameters": {"binary_data_output": True}}, signature,
                                  name)  # always raw_output_contents
    return InferRequest(msg.id or None, parameters(msg.parameters), tensor, chosen, True)


def encode_grpc(response: InferResponse) -> pb.ModelInferResponse:
    """The response message: each output's name, datatype and shape, its bytes in ``raw_output_contents``."""
    out = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version,
                                id=response.id or "")
    for key, value in (response.parameters or {}).items():
        slot = out.parameters[key]
        if isinstance(value, bool):
            slot.bool_param = value
        elif isinstance(value, int):
            slot.int64_param = value
        else:
            slot.string_param = str(value)
    for tensor in response.outputs:
        entry = out.outputs.add()
        entry.name, entry.datatype = tensor.name, tensor.datatype
        entry.shape.extend(tensor.array.shape)
        out.raw_output_contents.append(tensor.array.astype(NUMPY[tensor.datatype], copy=False).tobytes())
    return out
