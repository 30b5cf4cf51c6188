"""Model stores of a test's own, and new versions in them, made by copying store entries (no training, no export).

A test that adds versions works in a copy of the session's store (``own_store``), so the versions it
adds never reach the other modules' servers. ``add_version`` copies an entry under a new version the
way an export lands (files first, then BentoML's ``latest`` pointer); ``ballast`` makes a copy whose
ONNX graph holds an extra initializer it really reads, so the version costs a known amount of memory.
"""

from __future__ import annotations

import datetime
import re
import shutil
from pathlib import Path

import numpy as np

BALLAST_NAME = "biomed_test_ballast"


def own_store(root: Path, *tags: str) -> Path:
    """A store folder under ``root`` holding copies of ``tags`` (``name:version``) from BentoML's store."""
    from biomed.store import resolve

    models = root / "models"
    for tag in tags:
        stored = Path(resolve(tag).path)
        name_dir = models / stored.parent.name
        shutil.copytree(stored, name_dir / stored.name)
        (name_dir / "latest").write_text(stored.name)
    return models


def add_version(models: Path, name: str, source: str, version: str, onnx: bytes | None = None,
                latest: bool = True) -> Path:
    """``name:version``: a copy of ``name:source`` (with ``onnx`` as its model.onnx when given); BentoML's
    ``latest`` points to it afterwards unless ``latest`` is false."""
    src, dst = models / name / source, models / name / version
    staging = models / name / f".{version}.partial"
    shutil.copytree(src, staging)
    meta = (staging / "model.yaml").read_text()
    meta = re.sub(r"^version: .*$", f"version: {version}", meta, flags=re.M)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    meta = re.sub(r"^creation_time: .*$", f"creation_time: '{now}'", meta, flags=re.M)
    (staging / "model.yaml").write_text(meta)
    if onnx is not None:
        (staging / "model.onnx").write_bytes(onnx)
    staging.rename(dst)
    if latest:
        (models / name / "latest").write_text(version)
    return dst


def ballast(onnx_path: Path, megabytes: int) -> bytes:
    """The model of ``onnx_path`` plus a float32 initializer of ``megabytes`` MiB that every call reads (one element
    per input row, added times zero to the output), so onnxruntime keeps it: the outputs are unchanged."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(onnx_path))
    graph = model.graph
    out, inp = graph.output[0].name, graph.input[0].name
    for node in graph.node:
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = f"{out}_raw"
    graph.initializer.append(numpy_helper.from_array(np.zeros(megabytes * 2**20 // 4, np.float32), BALLAST_NAME))
    graph.node.extend([
        helper.make_node("Cast", [inp], ["ballast_index"], to=TensorProto.INT64),
        helper.make_node("Gather", [BALLAST_NAME, "ballast_index"], ["ballast_rows"]),
        helper.make_node("ReduceMax", ["ballast_rows"], ["ballast_max"], keepdims=1),
        helper.make_node("Add", [f"{out}_raw", "ballast_max"], [out]),
    ])
    return model.SerializeToString()
