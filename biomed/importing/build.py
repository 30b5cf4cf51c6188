"""Compose, verify, describe and store an imported model: one self-describing ONNX file like the project's own.

``build`` puts the kind's adapter in front of the user's graph and the output adapter (dtype,
activation) behind it, checks the result with ``onnx.checker``, and compares it on random and demo
inputs with the user's own graph fed by the NumPy reference adapter (``rtol``/``atol`` below; the
largest difference is kept in the metadata). Nothing is written until every check has passed.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from biomed import metadata
from biomed.importing import adapters
from biomed.importing.description import activation, units
from biomed.importing.errors import ImportRefused
from biomed.importing.graph import Graph, compose, elem, inspect, model
from biomed.outputs.semantics import Semantics

RTOL, ATOL = 1e-4, 1e-4
SAMPLE_ROWS = 8  # rows of each sample set (random, demo); a fixed batch size B runs them in calls of B
SEED = 0


@dataclass(frozen=True)
class Built:
    """An imported model ready to store: the ONNX bytes (metadata embedded) and its ``biomed`` document."""

    onnx_bytes: bytes
    doc: dict[str, Any]


def post(graph: Graph, description: dict[str, Any]) -> onnx.ModelProto:
    """The output adapter: the user's output (N, T) to float32 probabilities (applying a logits' activation) or
    values, named as the output means (``probabilities``, ``values``)."""
    out = Semantics.of_output({"activation": activation(description)}, len(description["labels"])).name
    width = len(description["labels"])
    shape = graph.output_shape
    if len(shape) != 2 or shape[1] not in (None, width):
        raise ImportRefused(f"the graph's output {graph.output!r} has shape {_dims(shape)}; accepted: (N, {width}), "
                            f"one column per label")
    nodes = [helper.make_node("Cast", ["raw"], ["post.float" if description["output"]["type"] == "logits" else out],
                              to=TensorProto.FLOAT)]
    if description["output"]["type"] == "logits":
        op = "Softmax" if description["output"]["activation"] == "softmax" else "Sigmoid"
        nodes.append(helper.make_node(op, ["post.float"], [out], **({"axis": 1} if op == "Softmax" else {})))
    batch = graph.batch if graph.batch is not None else "batch"
    return model(graph, "biomed_output_adapter", nodes, [],
                 [helper.make_tensor_value_info("raw", elem(graph.output_dtype), [batch, width])],
                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, [batch, width])])


def reference_post(y: np.ndarray, description: dict[str, Any]) -> np.ndarray:
    """The output adapter in NumPy."""
    y = y.astype(np.float64)
    if description["output"]["type"] != "logits":
        return y
    if description["output"]["activation"] == "sigmoid":
        return 1.0 / (1.0 + np.exp(-y))
    e = np.exp(y - y.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def run(proto: onnx.ModelProto, x: np.ndarray, batch: int | None) -> np.ndarray:
    """The model's output for ``x`` on onnxruntime's CPU provider, in calls of ``batch`` rows (zero-padded) when the
    graph's batch size is fixed."""
    import onnxruntime as ort

    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if batch is None:
        return session.run(None, {name: x})[0]
    parts = []
    for i in range(0, len(x), batch):
        part = x[i : i + batch]
        pad = np.zeros((batch - len(part), *x.shape[1:]), dtype=x.dtype)
        parts.append(session.run(None, {name: np.concatenate([part, pad])})[0][: len(part)])
    return np.concatenate(parts)


def verify(composed: onnx.ModelProto, graph: Graph, adapter: adapters.Adapter, description: dict[str, Any]
           ) -> dict[str, Any]:
    """Checker, then the composed graph against the user's graph fed by the reference adapter on each sample set.

    Raises:
        ImportRefused: the checker fails, the graph cannot run, its output has the wrong width, or the two differ by
            more than the tolerance.
    """
    try:
        onnx.checker.check_model(composed, full_check=True)
    except Exception as err:  # onnx raises ValidationError and InferenceError
        raise ImportRefused(f"the composed graph fails onnx.checker: {str(err).splitlines()[0]}") from None
    worst, counts = 0.0, {}
    for name, x in adapter.samples(np.random.default_rng(SEED), SAMPLE_ROWS).items():
        try:
            ours = run(composed, x, graph.batch)
            theirs = reference_post(run(graph.proto, adapter.reference(x), graph.batch), description)
        except Exception as err:  # noqa: BLE001 - onnxruntime's own Fail/InvalidArgument types
            raise ImportRefused(f"the graph does not run on the described input ({type(err).__name__}: "
                                f"{str(err).splitlines()[0][:300]})") from None
        width = len(description["labels"])
        if theirs.shape != (len(x), width):
            raise ImportRefused(f"the graph's output has shape {theirs.shape} for {len(x)} rows; accepted: "
                                f"({len(x)}, {width}), one column per label")
        diff = float(np.abs(ours - theirs).max())
        worst = max(worst, diff)
        if not np.allclose(ours, theirs, rtol=RTOL, atol=ATOL):
            raise ImportRefused(f"the composed graph differs from the original by {diff:.2e} on the {name} inputs "
                                f"(rtol={RTOL}, atol={ATOL})")
        counts[name] = len(x)
    return {"checker": "passed", "inputs": counts, "max_abs_diff": worst, "rtol": RTOL, "atol": ATOL,
            "batch": graph.batch if graph.batch is not None else "any", "opset": graph.opset,
            "ir_version": graph.ir_version}


def build(proto: onnx.ModelProto, description: dict[str, Any], name: str, source: dict[str, Any],
          checks: dict[str, Any] | None = None) -> Built:
    """The stored model of ``proto`` as ``description`` describes it, named ``name``.

    Args:
        source: where it came from (``format``, ``file``, ``sha256``, ...), kept in the metadata.
        checks: earlier checks to keep beside the import's (a TorchScript export's parity).

    Raises:
        ImportRefused: the graph, the description or the composition fails a check; nothing is written.
    """
    graph = inspect(proto)
    adapter = adapters.get(description["kind"])(description, graph)
    try:
        composed = compose(adapter.pre(), graph, post(graph, description))
    except ImportRefused:
        raise
    except Exception as err:  # onnx.compose raises ValueError naming the clash
        raise ImportRefused(f"the adapters cannot be joined to the graph: {str(err).splitlines()[0]}") from None
    found = verify(composed, graph, adapter, description)
    dims, dtype = adapter.input()
    semantics = Semantics.of_output({"activation": activation(description)}, len(description["labels"]))
    digest = hashlib.sha256(composed.SerializeToString() + json.dumps(description, sort_keys=True).encode()).hexdigest()[:8]
    doc = {
        "schema": metadata.SCHEMA_VERSION, "name": name,
        "version": time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{digest}", "kind": description["kind"],
        "labels": list(description["labels"]), "multilabel": activation(description) == "sigmoid",
        "input": {"name": "input", "shape": [graph.batch if graph.batch is not None else "batch", *dims],
                  "dtype": dtype},
        "output": {"name": semantics.name, "activation": activation(description),
                   **({"units": units(description)} if semantics.regression else {}),
                   **({"aggregate": description["output"]["aggregate"]} if "aggregate" in description["output"] else {})},
        "preprocess": adapter.preprocess(),
        "import": {"source": source, "description": description, "checks": {**(checks or {}), **found}},
        "intended_use": metadata.INTENDED_USE,
    }
    metadata.validate(doc)
    entry = composed.metadata_props.add()
    entry.key, entry.value = metadata.METADATA_KEY, json.dumps(doc, sort_keys=True)
    composed.producer_name = "biomed-serve"
    composed.doc_string = f"{name}:{doc['version']} ({doc['kind']}, imported from {source['file']}); {doc['intended_use']}"
    return Built(composed.SerializeToString(), doc)


def import_graph(proto: onnx.ModelProto, description: dict[str, Any], name: str, source: dict[str, Any],
                 store: str | None = None, checks: dict[str, Any] | None = None) -> str:
    """``build``, then write it into the store (BentoML's unless ``store``); returns ``name:version``."""
    from biomed.store import save

    if not metadata.NAME.match(name):
        raise ImportRefused(f"model name {name!r} is invalid; accepted: lower-case letters, digits, '.', '_' and "
                            "'-', starting with a letter or digit")
    built = build(proto, description, name, source, checks)
    return save(built.onnx_bytes, built.doc, name, store)


def _dims(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def source_of(path: "str | Path", fmt: str, **more: Any) -> dict[str, Any]:
    """The metadata's ``import.source`` of a file: its format, name and sha256 (a folder: its manifest's)."""
    from biomed.runtime import sha256_of

    return {"format": fmt, "file": Path(path).name, "sha256": sha256_of(Path(path)), **more}


def import_onnx(path: "str | Path", description: dict[str, Any], name: str, store: str | None = None) -> str:
    """An ONNX file made elsewhere, as ``description`` describes it, into the store; returns ``name:version``.

    Raises:
        ImportRefused: the file is not a readable ONNX model, or any check fails.
    """
    try:
        proto = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ImportRefused(f"{path} is not a readable ONNX file ({type(err).__name__})") from None
    return import_graph(proto, description, name, source_of(path, "onnx"), store)
