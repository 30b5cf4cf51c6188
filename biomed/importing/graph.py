"""The user's ONNX graph as an import sees it, and the ONNX pieces adapters are built from.

Adapters are made at the user's opset and IR version, because ``onnx.compose`` joins only graphs
that agree on both; ops whose form changed across opsets (Unsqueeze's axes, ReduceMean's axes)
are written here in the form the user's opset takes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from biomed.importing.errors import ImportRefused

MIN_OPSET = 7  # broadcasting Mul/Add and Cast's ``to`` attribute as adapters use them
INPUT, PREFIX = "input", "user."
_DTYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}


@dataclass(frozen=True)
class Graph:
    """The user's graph: its one input and one output (name, shape with ``None`` for a named or unknown dim, dtype),
    its default-domain opset and IR version."""

    proto: onnx.ModelProto
    input: str
    input_shape: tuple[int | None, ...]
    input_dtype: np.dtype
    output: str
    output_shape: tuple[int | None, ...]
    output_dtype: np.dtype
    opset: int
    ir_version: int

    @classmethod
    def unknown(cls, dtype: str = "float32") -> "Graph":
        """A graph not yet seen (a TorchScript module before its export): any shape, input of ``dtype``."""
        return cls(onnx.ModelProto(), "input", (), np.dtype(dtype), "output", (), np.dtype("float32"), 0, 0)

    @property
    def batch(self) -> int | None:
        """The fixed batch size of the graph's input, or None when any batch size runs."""
        return self.input_shape[0] if self.input_shape else None


def _shape(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in dims)


def _dtype(value: onnx.ValueInfoProto, what: str) -> np.dtype:
    elem = value.type.tensor_type.elem_type
    if elem not in _DTYPES:
        raise ImportRefused(f"the graph's {what} {value.name!r} is of type {TensorProto.DataType.Name(elem)}; "
                            "accepted: float32, float16 or float64 tensors")
    return np.dtype(_DTYPES[elem])


def inspect(proto: onnx.ModelProto) -> Graph:
    """The user's graph, refused when it is not one float input to one float output at a usable opset.

    Raises:
        ImportRefused: naming what the graph has and what is accepted.
    """
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise ImportRefused(f"the graph has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); accepted: "
                            "exactly one input tensor")
    if len(proto.graph.output) != 1:
        raise ImportRefused(f"the graph has {len(proto.graph.output)} outputs "
                            f"({', '.join(o.name for o in proto.graph.output)}); accepted: exactly one output tensor")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ImportRefused(f"the graph's opset is {opset}; accepted: opset {MIN_OPSET} or later")
    inp, out = inputs[0], proto.graph.output[0]
    return Graph(proto, inp.name, _shape(inp), _dtype(inp, "input"), out.name, _shape(out), _dtype(out, "output"),
                 opset, proto.ir_version)


def const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ascontiguousarray(value), name)


def elem(dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


def unsqueeze(opset: int, x: str, out: str, axes: list[int], nodes: list, inits: list) -> None:
    """An Unsqueeze node in the form ``opset`` takes (axes an input from 13 on, an attribute before)."""
    if opset >= 13:
        inits.append(const(f"{out}_axes", np.asarray(axes, dtype=np.int64)))
        nodes.append(helper.make_node("Unsqueeze", [x, f"{out}_axes"], [out]))
    else:
        nodes.append(helper.make_node("Unsqueeze", [x], [out], axes=axes))


def model(graph: Graph, name: str, nodes: list, inits: list, inputs: list, outputs: list) -> onnx.ModelProto:
    """A small model at the user's opset and IR version (so ``onnx.compose`` joins it to theirs)."""
    g = helper.make_graph(nodes, name, inputs, outputs, initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", graph.opset)], producer_name="biomed-serve")
    m.ir_version = graph.ir_version
    return m


def compose(pre: onnx.ModelProto, graph: Graph, post: onnx.ModelProto) -> onnx.ModelProto:
    """``pre`` -> the user's graph (its names prefixed ``user.``) -> ``post``: one model whose input is ``pre``'s and
    output ``post``'s. ``pre`` ends in a tensor named as the user's input, ``post`` starts from one named as its
    output."""
    from onnx import compose as onnx_compose

    user = onnx_compose.add_prefix(graph.proto, PREFIX)
    first = onnx_compose.merge_models(pre, user, io_map=[(pre.graph.output[0].name, PREFIX + graph.input)])
    whole = onnx_compose.merge_models(first, post, io_map=[(PREFIX + graph.output, post.graph.input[0].name)])
    del whole.metadata_props[:]
    return whole
