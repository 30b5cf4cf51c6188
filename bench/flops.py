"""FLOPs of an ONNX model from its graph, and GPU peaks to turn them into a throughput ceiling.

Counted: Conv, ConvTranspose, Gemm, MatMul, LSTM, GRU and RNN, as 2 x multiply-accumulates,
from shapes that ``onnx.shape_inference`` fills in at a fixed batch size. Element-wise ops,
pooling and normalisation are left out (bandwidth-bound, not FLOP-bound): the figure is the
tensor-core work a FLOP-bound ceiling should be computed from.
"""

from __future__ import annotations

import math
from pathlib import Path

import onnx
from onnx import shape_inference

# Dense peaks in TFLOP/s (NVIDIA data sheets; no structured sparsity): FP32 on CUDA cores,
# TF32 and FP16 on tensor cores. The first name fragment found in nvidia-smi's name wins.
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"fp32": 67.0, "tf32": 495.0, "fp16": 990.0}),
    ("H100 NVL", {"fp32": 60.0, "tf32": 418.0, "fp16": 835.0}),
    ("H100 PCIe", {"fp32": 51.0, "tf32": 378.0, "fp16": 756.0}),
    ("H100", {"fp32": 67.0, "tf32": 495.0, "fp16": 990.0}),  # SXM
    ("A100", {"fp32": 19.5, "tf32": 156.0, "fp16": 312.0}),
    ("L40S", {"fp32": 91.6, "tf32": 183.0, "fp16": 362.0}),
    ("L4", {"fp32": 30.3, "tf32": 60.0, "fp16": 121.0}),
    ("A10", {"fp32": 31.2, "tf32": 62.5, "fp16": 125.0}),
    ("T4", {"fp32": 8.1, "tf32": 8.1, "fp16": 65.0}),
    ("V100", {"fp32": 15.7, "tf32": 15.7, "fp16": 125.0}),
]


# HBM bandwidth in TB/s (data sheets), for the memory-bandwidth side of a roofline.
GPU_BANDWIDTH: list[tuple[str, float]] = [
    ("H200", 4.8), ("H100 NVL", 3.9), ("H100 PCIe", 2.0), ("H100", 3.35), ("A100", 2.0), ("L40S", 0.864),
    ("L4", 0.3), ("A10", 0.6), ("T4", 0.32), ("V100", 0.9),
]


def bandwidth_for(gpu_name: str) -> float | None:
    """HBM TB/s of the first table entry whose fragment appears in ``gpu_name``, or None."""
    upper = gpu_name.upper()
    return next((bw for fragment, bw in GPU_BANDWIDTH if fragment.upper() in upper), None)


def peak_for(gpu_name: str) -> tuple[str, dict[str, float]] | None:
    """The table entry whose name fragment appears in ``gpu_name`` (case-insensitive), or None."""
    upper = gpu_name.upper()
    for fragment, peaks in GPU_PEAKS:
        if fragment.upper() in upper:
            return fragment, peaks
    return None


def _fixed_batch(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    fixed = onnx.ModelProto()
    fixed.CopyFrom(proto)
    del fixed.graph.value_info[:]
    for value in [*fixed.graph.input, *fixed.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return shape_inference.infer_shapes(fixed, data_prop=True)


def _shapes(proto: onnx.ModelProto) -> dict[str, list[int]]:
    shapes = {}
    for value in [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = [d.dim_value for d in dims]
    for init in proto.graph.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(onnx.helper.get_attribute_value(a)) for a in node.attribute if a.name == name), default)


def _node_flops(node: onnx.NodeProto, shapes: dict[str, list[int]]) -> int:
    s = lambda i: shapes.get(node.input[i]) if len(node.input) > i else None  # noqa: E731
    out = shapes.get(node.output[0]) if node.output else None
    if node.op_type in ("Conv", "ConvTranspose") and s(1) and out:
        w, n = s(1), math.prod(out)
        # Conv: each output element sums over (Cin/group) x kernel; ConvTranspose: each input element.
        per = math.prod(w[1:]) if node.op_type == "Conv" else w[1] * math.prod(w[2:])
        return 2 * (n * per if node.op_type == "Conv" else math.prod(s(0) or [0]) * per)
    if node.op_type == "Gemm" and s(0) and out:
        k = s(0)[0] if _attr(node, "transA", 0) else s(0)[-1]
        return 2 * math.prod(out) * k
    if node.op_type == "MatMul" and s(0) and out:
        return 2 * math.prod(out) * s(0)[-1]
    if node.op_type in ("LSTM", "GRU", "RNN") and s(0) and s(1) and s(2):
        seq, batch = (s(0)[0], s(0)[1]) if not _attr(node, "layout", 0) else (s(0)[1], s(0)[0])
        dirs, gates_h, inp = s(1)
        return 2 * seq * batch * dirs * gates_h * (inp + s(2)[-1])
    return 0


def count_flops(model: str | Path | onnx.ModelProto, batch: int = 1) -> int:
    """FLOPs of one forward pass at ``batch`` (2 per multiply-accumulate; see the module docstring)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    inferred = _fixed_batch(proto, batch)
    shapes = _shapes(inferred)
    return sum(_node_flops(node, shapes) for node in inferred.graph.node)


_COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN")


def layers(model: str | Path | onnx.ModelProto, batch: int = 1, value_bytes: int = 4) -> list[tuple[str, int, int]]:
    """(op, FLOPs, bytes moved) of every compute layer at ``batch``: its inputs, weights and output read or
    written once at ``value_bytes`` a value (4 for fp32, 2 for fp16)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    if proto.functions:
        proto = onnx.inliner.inline_local_functions(proto)
    inferred = _fixed_batch(proto, batch)
    shapes = _shapes(inferred)
    out = []
    for node in inferred.graph.node:
        if node.op_type not in _COMPUTE_OPS:
            continue
        values = sum(math.prod(shapes[n]) for n in [*node.input, *node.output[:1]] if n and n in shapes)
        out.append((node.op_type, _node_flops(node, shapes), values * value_bytes))
    return out


def roofline(model: str | Path | onnx.ModelProto, batch: int, peak_tflops: float, bandwidth_tbs: float,
             value_bytes: int = 2) -> dict[str, float]:
    """The roofline bound of a forward pass: per layer the slower of its FLOP time and its memory time, summed.

    Returns samples/s at that bound, and the FLOP-only and bandwidth-only bounds beside it.
    """
    rows = layers(model, batch, value_bytes)
    flop_s = sum(f for _, f, _ in rows) / (peak_tflops * 1e12)
    mem_s = sum(b for _, _, b in rows) / (bandwidth_tbs * 1e12)
    bound_s = sum(max(f / (peak_tflops * 1e12), b / (bandwidth_tbs * 1e12)) for _, f, b in rows)
    return {"samples_per_s": batch / bound_s if bound_s else float("nan"),
            "flop_bound_samples_per_s": batch / flop_s if flop_s else float("nan"),
            "memory_bound_samples_per_s": batch / mem_s if mem_s else float("nan")}
