"""A kind is declared once: a toy third kind, registered inside this test, is served through v2 with no project edit.

The toy kind takes a vector of 3 numbers; a person sends it as text ("1,2,3"). Its model is a tiny
ONNX graph made here (softmax of x @ W), stored in a store of the test's own. Nothing of the
project knows "toy": the core's registry learns the kind, the serving registry its handler, and
the metadata schema, the v2 signature, the routing and the batcher follow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import inprocess_client

W = np.array([[1.0, -1.0], [0.5, 0.25], [-2.0, 2.0]], dtype=np.float32)


@dataclass(frozen=True)
class ToySpec:
    """The toy kind's preprocessing: text "a,b,c" scaled by ``scale``."""

    scale: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ToySpec":
        return cls(float(d["scale"]))

    def to_dict(self) -> dict[str, Any]:
        return {"type": "toy", "scale": self.scale}


def _toy_model(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from biomed import metadata

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"]), helper.make_node("Softmax", ["logits"], ["probabilities"],
                                                                                   axis=1)],
        "toy", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(W, "W")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    proto.ir_version = 9
    doc = {"schema": metadata.SCHEMA_VERSION, "name": "toy-model", "version": "v1", "kind": "toy", "labels": ["no", "yes"],
           "multilabel": False, "input": {"name": "input", "shape": ["batch", 3], "dtype": "float32"},
           "output": {"name": "probabilities", "activation": "softmax"}, "preprocess": ToySpec(2.0).to_dict(),
           "training": {"data": "none", "epochs": 0, "seed": 0, "metrics": {}}, "intended_use": metadata.INTENDED_USE}
    entry = proto.metadata_props.add()
    entry.key, entry.value = metadata.METADATA_KEY, json.dumps(doc)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


@pytest.fixture()
def toy_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    from biomed import kinds, store
    from biomed.errors import MalformedInput
    from service import handlers
    from service.handlers import Handler

    kinds.all_kinds()  # the project's own kinds found first; the toy goes into a copy of the registry
    handlers.served_kinds()
    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds._REGISTRY))
    monkeypatch.setattr(handlers, "_REGISTRY", dict(handlers._REGISTRY))

    toy = kinds.register(kinds.Kind(
        name="toy", summary="three numbers", spec=ToySpec,
        person=kinds.PersonInput(name="text", items="vectors", base64_in_json=False, cap="max_sequences"),
        preprocess_schema={"type": "object", "required": ["type", "scale"],
                           "properties": {"type": {"const": "toy"}, "scale": {"type": "number"}}},
        row="vector"))

    class ToyHandler(Handler):
        kind = toy.name
        operations = frozenset({"predict_vector"})

        async def predict_items(self, items, parameters, door="native"):  # type: ignore[no-untyped-def]
            scale = toy.spec_of(self.model.doc).scale
            try:
                x = np.array([[float(v) for v in item.decode().split(",")] for item in items], dtype=np.float32)
            except ValueError:
                raise MalformedInput("a toy vector is three numbers, comma-separated") from None
            return await self.predict_rows(x * scale, door), {}

        def row_labels(self, probs):  # type: ignore[no-untyped-def]
            return [self.labels[i] for i in probs.argmax(axis=1)]

    handlers.register(ToyHandler)
    _toy_model(tmp_path / "toy.onnx")
    models = tmp_path / "store"
    store.import_onnx(tmp_path / "toy.onnx", "toy-model", models)
    yield from inprocess_client({"BIOMED_MODELS": "toy-model", "BIOMED_MODEL_STORE": str(models),
                                 "BIOMED_MODEL_POLL_S": "0"})


def test_a_toy_kind_is_served_through_v2(toy_client) -> None:  # type: ignore[no-untyped-def]
    meta = toy_client.get("/v2/models/toy-model").json()
    assert meta["kind"] == "toy" and meta["labels"] == ["no", "yes"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3]}]
    assert meta["alternative_inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]

    x = np.array([[1, 2, 3], [0, -1, 0.5]], dtype=np.float32)
    expected = np.exp(x @ W) / np.exp(x @ W).sum(axis=1, keepdims=True)
    raw = toy_client.post("/v2/models/toy-model/infer", json={"inputs": [
        {"name": "input", "datatype": "FP32", "shape": [2, 3], "data": x.ravel().tolist()}]})
    assert raw.status_code == 200, raw.text
    np.testing.assert_allclose(np.array(raw.json()["outputs"][0]["data"]).reshape(2, 2), expected, atol=1e-6)

    text = toy_client.post("/v2/models/toy-model/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [2], "data": ["0.5,1,1.5", "0,-0.5,0.25"]}]})
    assert text.status_code == 200, text.text
    np.testing.assert_allclose(np.array(text.json()["outputs"][0]["data"]).reshape(2, 2), expected, atol=1e-6)

    bad = toy_client.post("/v2/models/toy-model/infer", json={"inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["one,two,three"]}]})
    assert bad.status_code == 400 and "three numbers" in bad.json()["error"]
    other = toy_client.post("/v2/models/toy-model/infer", json={"parameters": {"reverse_complement": False}, "inputs": [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["1,2,3"]}]})
    assert other.status_code == 400 and "reverse_complement" in other.json()["error"]
    listed = toy_client.get("/models").json()["models"]
    assert [(m["name"], m["kind"]) for m in listed] == [("toy-model", "toy")]
    wrong = toy_client.post("/predict_dna", json={"sequences": ["ACGT"]})
    assert wrong.status_code == 404 and wrong.json()["error"] == "unknown_model"
