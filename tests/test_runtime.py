"""The one model runtime (biomed/runtime.py): its options, the kind check and the chunked predictor."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from biomed.runtime import (RuntimeOptions, chunked, default_chunk_rows, load_model, locate, predictor)
from service.config import ServiceConfig


@pytest.mark.parametrize(("env", "expected"), [
    ({}, RuntimeOptions(providers=("cuda", "cpu"))),
    ({"BIOMED_PROVIDERS": "tensorrt,cpu", "BIOMED_REQUIRE_GPU": "1", "BIOMED_GPU_MEM_LIMIT_MB": "512",
      "BIOMED_TRT_CACHE_DIR": "/tmp/trt", "BIOMED_INTRA_OP_THREADS": "2"},
     RuntimeOptions(("tensorrt", "cpu"), True, 512, "/tmp/trt", 2)),
])
def test_the_service_builds_its_options_from_its_settings(env: dict[str, str], expected: RuntimeOptions) -> None:
    assert ServiceConfig.from_env(env).runtime_options() == expected
    assert RuntimeOptions().providers == ("cpu",)  # the tools' default


@pytest.mark.parametrize(("ref", "kind", "refused"), [
    ("demo-dna", "dna", False),
    ("demo-image", "image", False),
    ("demo-dna", "image", True),
    ("demo-image", "dna", True),
])
def test_a_model_of_another_kind_is_refused(demo_models: dict[str, str], ref: str, kind: str, refused: bool) -> None:
    if not refused:
        assert load_model(ref, RuntimeOptions(), kind=kind).kind == kind
        assert locate(ref, kind=kind).ref == demo_models[kind]
        return
    with pytest.raises(ValueError, match=rf"is of kind '\w+'; a model of kind '{kind}' is needed") as err:
        load_model(ref, RuntimeOptions(), kind=kind)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("kind", "chunk_rows", "n"), [("dna", None, 2500), ("dna", 7, 50), ("image", None, 300),
                                                       ("image", 1, 3)])
def test_the_chunked_predictor_equals_one_call(demo_models: dict[str, str], kind: str, chunk_rows: int | None,
                                                n: int) -> None:
    model = load_model(demo_models[kind], RuntimeOptions())
    shape = [n, *(int(s) for s in model.doc["input"]["shape"][1:])]
    rng = np.random.default_rng(0)
    rows = rng.integers(0, 4, shape).astype(np.uint8) if model.doc["input"]["dtype"] == "uint8" \
        else rng.random(shape, dtype=np.float32)
    expected = model.run(rows)
    assert np.allclose(asyncio.run(predictor(model, chunk_rows)(rows)), expected, rtol=0, atol=1e-6)
    assert default_chunk_rows(model) == {"dna": 1024, "image": 256}[kind]  # the demo models: 200 bases, 64 x 64
    with pytest.raises(ValueError, match="at least 1"):
        chunked(model, rows, 0)
