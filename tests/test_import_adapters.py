"""The import's adapter graphs (biomed.importing), torch-free: every layout, at old and new opsets, equals the NumPy
reference; descriptions the schema or the graph rule out are refused, naming what is wrong."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from biomed.importing.build import build, run
from biomed.importing.description import check
from biomed.importing.errors import ImportRefused

OUTPUT = {"type": "logits", "activation": "softmax"}


def linear_graph(shape: list, opset: int, ir: int, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A user's graph: input of ``shape`` (first dim the batch) -> Flatten -> MatMul -> (N, 2)."""
    size = int(np.prod(shape[1:]))
    w = np.random.default_rng(0).normal(size=(size, 2)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["flat"], axis=1)]
    if dtype != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", ["flat"], ["flat32"], to=TensorProto.FLOAT))
    nodes.append(helper.make_node("MatMul", ["flat32" if dtype != TensorProto.FLOAT else "flat", "w"], ["y"]))
    g = helper.make_graph(nodes, "user", [helper.make_tensor_value_info("x", dtype, shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [shape[0], 2])],
                          initializer=[numpy_helper.from_array(w, "w")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


# (kind part, graph input shape, opset, IR version)
CASES = [
    ({"dna": {"layout": "N4L", "length": 12}}, ["n", 4, 12], 17, 8),
    ({"dna": {"layout": "NL4", "length": 12, "alphabet": "TGCA", "n_value": 0}}, ["n", 12, 4], 11, 6),
    ({"dna": {"layout": "N14L", "length": 12}}, [3, 1, 4, 12], 11, 6),  # Unsqueeze's attribute form, fixed batch
    ({"dna": {"layout": "N14L", "length": 12, "dtype": "float16"}}, ["n", 1, 4, 12], 13, 7),
    ({"image": {"layout": "NCHW", "channels": 3, "size": [8, 6], "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.3, 0.25]}},
     ["n", 3, 8, 6], 17, 8),
    ({"image": {"layout": "NHWC", "channels": 1, "size": [8, 6], "scale": "byte"}}, [2, 8, 6, 1], 9, 4),
    ({"image": {"layout": "NCHW", "channels": 1, "size": [8, 6], "transpose": True,
                "intensity_range": {"a_min": -100, "a_max": 300, "b_min": -1, "b_max": 1}}}, ["n", 1, 8, 6], 15, 8),
]


@pytest.mark.parametrize("part, shape, opset, ir", CASES)
def test_composed_graph_equals_the_reference_adapter(part: dict, shape: list, opset: int, ir: int) -> None:
    kind = next(iter(part))
    dtype = TensorProto.FLOAT16 if part[kind].get("dtype") == "float16" else TensorProto.FLOAT
    description = check({"kind": kind, "labels": ["a", "b"], "output": OUTPUT, **part})
    proto = linear_graph(shape, opset, ir, dtype)
    built = build(proto, description, "toy", {"format": "onnx", "file": "toy.onnx", "sha256": "0" * 64})
    composed = onnx.load_from_string(built.onnx_bytes)
    assert built.doc["import"]["checks"]["max_abs_diff"] < 1e-5
    assert (composed.ir_version, composed.opset_import[0].version) == (ir, opset)
    assert built.doc["input"]["shape"][0] == (shape[0] if isinstance(shape[0], int) else "batch")
    if kind == "image":
        transposed = part["image"].get("transpose")
        size = part["image"]["size"][::-1] if transposed else part["image"]["size"]
        assert built.doc["preprocess"]["size"] == size
        if "intensity_range" in part["image"]:
            assert built.doc["preprocess"]["window"] == [100.0, 400.0]  # LINEAR_EXACT over a_min..a_max
    x = np.random.default_rng(1).integers(0, 5, (5, 12)).astype(np.uint8) if kind == "dna" else \
        np.random.default_rng(1).random((5, *built.doc["input"]["shape"][1:]), dtype=np.float32)
    probs = run(composed, x, built.doc["input"]["shape"][0] if isinstance(shape[0], int) else None)
    assert probs.shape == (5, 2) and np.allclose(probs.sum(axis=1), 1, atol=1e-6)


@pytest.mark.parametrize("description, reason", [
    ({"kind": "dna", "labels": ["a"], "output": {"type": "logits"}, "dna": {"layout": "N4L", "length": 4}},
     "activation is missing"),
    ({"kind": "dna", "labels": ["a"], "output": {"type": "regression", "units": ["1", "1"]},
      "dna": {"layout": "N4L", "length": 4}}, "one per label"),
    ({"kind": "dna", "labels": ["a"], "output": OUTPUT}, "needs its 'dna' part"),
    ({"kind": "protein", "labels": ["a"], "output": OUTPUT}, "at kind"),
    ({"kind": "dna", "labels": ["a"], "output": OUTPUT, "dna": {"layout": "N4L", "length": 4, "alphabet": "ACGU"}},
     "at dna/alphabet"),
    ({"kind": "image", "labels": ["a"], "output": OUTPUT, "image": {"layout": "NCHW", "channels": 1, "size": [4, 4],
                                                                      "crop": 2}}, "Additional properties"),
])
def test_descriptions_the_schema_rules_out_are_refused(description: dict, reason: str) -> None:
    with pytest.raises(ImportRefused, match=reason):
        check(description)


def test_a_graph_that_does_not_fit_is_refused() -> None:
    description = check({"kind": "dna", "labels": ["a", "b", "c"], "output": OUTPUT, "dna": {"layout": "N4L", "length": 12}})
    with pytest.raises(ImportRefused, match="one column per label"):
        build(linear_graph(["n", 4, 12], 17, 8), description, "toy", {})
    description = check({"kind": "dna", "labels": ["a", "b"], "output": OUTPUT, "dna": {"layout": "N4L", "length": 10}})
    with pytest.raises(ImportRefused, match="says 10, but the graph's input 'x' has shape"):
        build(linear_graph(["n", 4, 12], 17, 8), description, "toy", {})
