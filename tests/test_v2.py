"""The Open Inference Protocol v2 door (service/doors/v2.py): in-process pieces, then a real ``bentoml serve``
driven by the real ``tritonclient[http]`` and by a plain-HTTP client written from the spec (JSON only).

Every way of calling (the model's tensor; whole files / sequences as BYTES), JSON and binary tensors, results
equal to the native endpoints on the same inputs, every error case of docs/api.md in the v2 error form, the
bearer token, the metrics, and the docs' tritonclient example run as written.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest

from conftest import inprocess_client, metrics_text

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"
MULTI_FRAME = TEST_FILES / "SC_rgb_rle_2frame.dcm"
TOKEN = "v2-test-token"
SEQUENCES = ["ACGTTTCCGCGCCCCCTGGTGGCCAGCAATT", "GGGACATGCCCGGGCATGTCCC" * 30, "acgtn" * 41, "T"]
TOL = 1e-6


# ---------------------------------------------------------------- helpers


def bytes_blob(items: list[bytes]) -> bytes:
    """BYTES elements as the binary extension carries them: a 4-byte little-endian length before each."""
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def binary_request(inputs: list[tuple[dict, bytes]], **top: object) -> tuple[bytes, dict[str, str]]:
    """A binary-extension body: the JSON header (each input with binary_data_size), then the inputs' bytes."""
    specs = [{**spec, "parameters": {**spec.get("parameters", {}), "binary_data_size": len(blob)}}
             for spec, blob in inputs]
    header = json.dumps({"inputs": specs, **top}).encode()
    return header + b"".join(blob for _, blob in inputs), {"Inference-Header-Content-Length": str(len(header))}


def read_binary_response(response) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Outputs of a v2 response, JSON or binary (by the spec: the JSON header, then each output's bytes in order)."""
    dtypes = {"FP32": "<f4", "INT32": "<i4"}
    length = response.headers.get("inference-header-content-length")
    content = response.content
    header = json.loads(content if length is None else content[: int(length)])
    offset, out = int(length or 0), {}
    for o in header["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            out[o["name"]] = np.array(o["data"], dtype=dtypes[o["datatype"]]).reshape(o["shape"])
        else:
            out[o["name"]] = np.frombuffer(content[offset : offset + size], dtype=dtypes[o["datatype"]]).reshape(o["shape"])
            offset += size
    assert offset == len(content) or length is None
    return out


def assert_v2_error(response, status: int, code: str, *words: str) -> str:  # type: ignore[no-untyped-def]
    """A 4xx in the v2 form: exactly ``{"error": "<code>: <whole message>"}``."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str), body
    assert body["error"].startswith(f"{code}: ") and len(body["error"]) > len(code) + 12, body
    for word in words:
        assert word in body["error"], (word, body)
    return body["error"]


def native_dna(client, sequences: list[str], rc: bool = True) -> np.ndarray:  # type: ignore[no-untyped-def]
    r = client.post("/predict_dna", json={"sequences": sequences, "reverse_complement": rc})
    assert r.status_code == 200, r.text
    return np.array([list(p["probabilities"].values()) for p in r.json()["predictions"]], dtype=np.float32)


def native_image(client, data: bytes) -> np.ndarray:  # type: ignore[no-untyped-def]
    r = client.post("/predict_image", files={"file": ("x.dcm", data, "application/octet-stream")})
    assert r.status_code == 200, r.text
    return np.array([list(p["probabilities"].values()) for p in r.json()["predictions"]], dtype=np.float32)


def image_rows(data: bytes, doc: dict) -> np.ndarray:
    """The presented rows of a file, as the service makes them (the core's preprocessing)."""
    from biomed.preprocess.image import ImageSpec, load_image

    x, _ = load_image(data, ImageSpec.from_dict(doc["preprocess"]))
    return np.ascontiguousarray(x, dtype=np.float32)


# ---------------------------------------------------------------- in-process


@pytest.fixture(scope="module")
def client(demo_models: dict[str, str]) -> Iterator["TestClient"]:  # noqa: F821
    yield from inprocess_client()


@pytest.fixture(scope="module")
def models(client) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    from service.engine import current

    return {h.kind: h.model.doc | {"name": h.model.name, "version": h.model.version}
            for h in current().handlers.values()}


def test_server_metadata_health_and_model_metadata(client, models) -> None:  # type: ignore[no-untyped-def]
    r = client.get("/v2")
    assert r.status_code == 200 and r.json()["name"] == "biomed-serve"
    assert "binary_tensor_data" in r.json()["extensions"]
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    for kind, raw, dtype, person in (("image", [-1, 1, 64, 64], "FP32", "file"), ("dna", [-1, 200], "UINT8", "sequence")):
        m = models[kind]
        for path in (f"/v2/models/{m['name']}", f"/v2/models/{m['name']}/versions/{m['version']}"):
            meta = client.get(path).json()
            assert meta["name"] == m["name"] and meta["versions"] == [m["version"]] and meta["platform"] == "onnx_onnxv1"
            assert meta["inputs"] == [{"name": "input", "datatype": dtype, "shape": raw}]
            assert meta["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(m["labels"])]}]
            assert meta["labels"] == m["labels"] and meta["kind"] == kind
            assert meta["alternative_inputs"] == [{"name": person, "datatype": "BYTES", "shape": [-1]}]
            ready = client.get(path + "/ready")
            assert ready.status_code == 200 and ready.json() == {"name": m["name"], "ready": True}
        assert {"name": m["name"], "labels": m["labels"]}.items() <= next(
            d for d in client.get("/models").json()["models"] if d["name"] == m["name"]).items()
    images = client.get(f"/v2/models/{models['image']['name']}").json()
    assert images["alternative_outputs"] == [{"name": "element", "datatype": "INT32", "shape": [-1]},
                                             {"name": "frame", "datatype": "INT32", "shape": [-1]}]


def test_unknown_models_versions_and_paths_are_404_in_the_v2_form(client, models) -> None:  # type: ignore[no-untyped-def]
    name = models["dna"]["name"]
    assert_v2_error(client.get("/v2/models/nope"), 404, "unknown_model", "nope")
    assert_v2_error(client.get("/v2/models/nope/ready"), 404, "unknown_model")
    assert_v2_error(client.get(f"/v2/models/{name}/versions/999"), 404, "unknown_model", "999")
    assert_v2_error(client.get(f"/v2/models/{name}/versions/999/ready"), 404, "unknown_model")
    assert_v2_error(client.post(f"/v2/models/{name}/versions/999/infer", json={"inputs": []}), 404, "unknown_model")
    assert_v2_error(client.post(f"/v2/models/{name}:x/infer", json={"inputs": []}), 404, "unknown_model")
    assert_v2_error(client.post("/v2/models/nope/infer", content=b"junk"), 404, "unknown_model")
    assert_v2_error(client.get(f"/v2/models/{name}/config"), 404, "not_found")
    assert_v2_error(client.get("/v2/repository/index"), 404, "not_found")
    assert_v2_error(client.get(f"/v2/models/{name}/infer"), 405, "method_not_allowed", "POST")


def test_tensor_input_json_and_binary_equal_the_native_endpoints(client, models) -> None:  # type: ignore[no-untyped-def]
    img, dna = models["image"], models["dna"]
    data = CT_SMALL.read_bytes()
    x = image_rows(data, img)
    expected = native_image(client, data)
    request = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
               "id": "req-7"}
    r = client.post(f"/v2/models/{img['name']}/infer", json=request)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    assert r.json()["id"] == "req-7" and r.json()["model_name"] == img["name"]
    assert r.json()["model_version"] == img["version"]
    np.testing.assert_allclose(read_binary_response(r)["probabilities"], expected, atol=TOL)
    body, headers = binary_request([({"name": "input", "shape": list(x.shape), "datatype": "FP32"}, x.tobytes())],
                                   parameters={"binary_data_output": True})
    r = client.post(f"/v2/models/{img['name']}/versions/{img['version']}/infer", content=body, headers=headers)
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream", r.text
    out = read_binary_response(r)
    assert out["probabilities"].shape == (1, len(img["labels"]))
    np.testing.assert_allclose(out["probabilities"], expected, atol=TOL)

    from biomed.preprocess import dna as dna_pre

    seqs = ["ACGT" * 50, "GATTACA" * 28 + "GGGG"]  # exactly the model's length: one window, one row each
    codes = np.stack([dna_pre.encode(s) for s in seqs])
    expected = native_dna(client, seqs, rc=False)
    for binary in (False, True):
        spec = {"name": "input", "shape": list(codes.shape), "datatype": "UINT8"}
        if binary:
            body, headers = binary_request([(spec, codes.tobytes())])
            r = client.post(f"/v2/models/{dna['name']}/infer", content=body, headers=headers)
        else:
            r = client.post(f"/v2/models/{dna['name']}/infer", json={"inputs": [{**spec, "data": codes.tolist()}]})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(read_binary_response(r)["probabilities"], expected, atol=TOL)


def test_whole_files_as_bytes_equal_predict_image(client, models) -> None:  # type: ignore[no-untyped-def]
    img = models["image"]
    files = [CT_SMALL.read_bytes(), MULTI_FRAME.read_bytes()]
    expected = np.concatenate([native_image(client, f) for f in files])
    body, headers = binary_request([({"name": "file", "shape": [2], "datatype": "BYTES"}, bytes_blob(files))],
                                   outputs=[{"name": "probabilities", "parameters": {"binary_data": True}},
                                            {"name": "element"}, {"name": "frame", "parameters": {"binary_data": True}}])
    r = client.post(f"/v2/models/{img['name']}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = read_binary_response(r)
    assert list(json.loads(r.content[: int(r.headers["inference-header-content-length"])])["outputs"][1]) == [
        "name", "datatype", "shape", "data"]  # element: JSON (not asked for binary)
    np.testing.assert_allclose(out["probabilities"], expected, atol=TOL)
    assert out["element"].tolist() == [0, 1, 1] and out["frame"].tolist() == [0, 0, 1]
    # JSON: a file is base64 text
    text = [base64.b64encode(f).decode() for f in files]
    r = client.post(f"/v2/models/{img['name']}/infer",
                    json={"inputs": [{"name": "file", "shape": [2, 1], "datatype": "BYTES", "data": text}],
                          "outputs": [{"name": "probabilities"}]})
    assert r.status_code == 200, r.text
    assert [o["name"] for o in r.json()["outputs"]] == ["probabilities"]
    np.testing.assert_allclose(read_binary_response(r)["probabilities"], expected, atol=TOL)


@pytest.mark.parametrize("rc", [True, False])
def test_sequences_as_bytes_equal_predict_dna(client, models, rc: bool) -> None:  # type: ignore[no-untyped-def]
    name = models["dna"]["name"]
    expected = native_dna(client, SEQUENCES, rc)
    params = {} if rc else {"parameters": {"reverse_complement": False}}
    r = client.post(f"/v2/models/{name}/infer",
                    json={"inputs": [{"name": "sequence", "shape": [len(SEQUENCES)], "datatype": "BYTES",
                                      "data": SEQUENCES}], **params})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(read_binary_response(r)["probabilities"], expected, atol=TOL)
    body, headers = binary_request([({"name": "sequence", "shape": [len(SEQUENCES)], "datatype": "BYTES"},
                                     bytes_blob([s.encode() for s in SEQUENCES]))],
                                   parameters={"binary_data_output": True, **params.get("parameters", {})})
    r = client.post(f"/v2/models/{name}/infer", content=body, headers=headers)
    assert r.status_code == 200, r.text
    out = read_binary_response(r)["probabilities"]
    assert out.shape == (len(SEQUENCES), len(models["dna"]["labels"]))
    np.testing.assert_allclose(out, expected, atol=TOL)


def _error_cases(img: str, dna: str) -> list[tuple[str, str, dict, int, str, tuple[str, ...]]]:
    """(id, path, request kwargs, status, code, words the message must hold)."""
    image, seq, raw = f"/v2/models/{img}/infer", f"/v2/models/{dna}/infer", {"name": "input", "datatype": "UINT8"}

    def binary(spec: dict, blob: bytes, claimed: int | None = None, header_extra: int = 0, **top: object) -> dict:
        spec = {**spec, "parameters": {"binary_data_size": len(blob) if claimed is None else claimed}}
        header = json.dumps({"inputs": [spec], **top}).encode()
        return {"content": header + blob, "headers": {"Inference-Header-Content-Length": str(len(header) + header_extra)}}

    seq_spec = {"name": "sequence", "datatype": "BYTES", "shape": [2]}
    return [
        ("not json", seq, {"content": b"{nope"}, 400, "malformed", ("not valid JSON",)),
        ("not an object", seq, {"json": [1, 2]}, 400, "malformed", ("JSON object",)),
        ("no inputs", seq, {"json": {"inputs": []}}, 400, "malformed", ("inputs",)),
        ("two inputs", seq, {"json": {"inputs": [{**raw, "shape": [1, 200], "data": [0] * 200}] * 2}}, 400, "malformed",
         ("exactly one input",)),
        ("unknown input", seq, {"json": {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [1], "data": [1]}]}},
         400, "malformed", ("'x'", "'input'", "'sequence'")),
        ("wrong datatype", seq, {"json": {"inputs": [{**raw, "datatype": "FP32", "shape": [1, 200], "data": [0.0] * 200}]}},
         400, "malformed", ("UINT8", "FP32")),
        ("wrong datatype for bytes", image, {"json": {"inputs": [{"name": "file", "datatype": "UINT8", "shape": [1],
                                                                  "data": [1]}]}}, 400, "malformed", ("BYTES",)),
        ("shape against the model", seq, {"json": {"inputs": [{**raw, "shape": [1, 100], "data": [0] * 100}]}}, 400,
         "malformed", ("[1, 100]", "[-1, 200]")),
        ("shape against the data", seq, {"json": {"inputs": [{**raw, "shape": [2, 200], "data": [0] * 200}]}}, 400,
         "malformed", ("400 elements", "200")),
        ("data beyond the shape", seq, {"json": {"inputs": [{**raw, "shape": [1, 200], "data": [[0] * 200] * 2}]}},
         400, "malformed", ("more than the 200",)),
        ("bad shape", seq, {"json": {"inputs": [{**raw, "shape": [1, -200], "data": [0]}]}}, 400, "malformed", ("shape",)),
        ("bool in shape", seq, {"json": {"inputs": [{**raw, "shape": [True, 200], "data": [0] * 200}]}}, 400, "malformed",
         ("shape",)),
        ("huge shape", seq, {"json": {"inputs": [{**raw, "shape": [2**62, 2**62, 200], "data": [0]}]}}, 413,
         "too_large", ("BIOMED_MAX_REQUEST_ROWS",)),
        ("huge bytes shape", seq, {"json": {"inputs": [{**seq_spec, "shape": [10**12], "data": ["A"]}]}}, 413,
         "too_large", ("BIOMED_MAX_SEQUENCES",)),
        ("huge file count", image, {"json": {"inputs": [{"name": "file", "datatype": "BYTES", "shape": [10**9],
                                                         "data": ["A"]}]}}, 413, "too_large", ("BIOMED_MAX_FRAMES",)),
        ("zero rows", seq, {"json": {"inputs": [{**raw, "shape": [0, 200], "data": []}]}}, 400, "malformed", ("no elements",)),
        ("string in numbers", seq, {"json": {"inputs": [{**raw, "shape": [1, 200], "data": ["A"] * 200}]}}, 400,
         "malformed", ("integers",)),
        ("out of range", seq, {"json": {"inputs": [{**raw, "shape": [1, 200], "data": [300] * 200}]}}, 400,
         "malformed", ("out of range",)),
        ("bad base codes", seq, {"json": {"inputs": [{**raw, "shape": [1, 200], "data": [7] * 200}]}}, 422,
         "invalid_codes", ("0 to 4",)),
        ("non-finite pixels", image, {"content": json.dumps({"inputs": [{"name": "input", "datatype": "FP32",
                                                                         "shape": [1, 1, 64, 64],
                                                                         "data": [float("nan")] * 4096}]}).encode()},
         422, "invalid_pixels", ("finite",)),
        ("invalid bases", seq, {"json": {"inputs": [{**seq_spec, "shape": [1], "data": ["ACGX"]}]}}, 422,
         "invalid_sequence", ("'X'",)),
        ("empty sequence", seq, {"json": {"inputs": [{**seq_spec, "shape": [1], "data": [""]}]}}, 422, "empty_sequence",
         ("empty",)),
        ("not base64", image, {"json": {"inputs": [{"name": "file", "datatype": "BYTES", "shape": [1],
                                                    "data": ["***"]}]}}, 400, "malformed", ("base64",)),
        ("not an image", image, {"json": {"inputs": [{"name": "file", "datatype": "BYTES", "shape": [1],
                                                      "data": [base64.b64encode(b"hello").decode()]}]}}, 415, None,
         ("file element 0",)),
        ("data and binary", seq, {**binary({**seq_spec, "shape": [1], "data": ["A"]}, bytes_blob([b"A"]))}, 400,
         "malformed", ("both data and binary_data_size",)),
        ("binary_data_size beyond the body", seq, binary({**seq_spec, "shape": [1]}, bytes_blob([b"ACGT"]), claimed=999),
         400, "malformed", ("binary_data_size 999 is beyond",)),
        ("header length beyond the body", seq, binary({**seq_spec, "shape": [1]}, bytes_blob([b"A"]), header_extra=10**6),
         400, "malformed", ("Inference-Header-Content-Length", "beyond the body")),
        ("header length not a number", seq, {"content": b"{}", "headers": {"Inference-Header-Content-Length": "-1"}},
         400, "malformed", ("Inference-Header-Content-Length",)),
        ("header length not ascii", seq, {"content": b"{}", "headers": {"Inference-Header-Content-Length": "\u00b2"
                                                                         .encode("latin-1")}},
         400, "malformed", ("Inference-Header-Content-Length",)),
        ("unclaimed bytes", seq, {"content": json.dumps({"inputs": [{**seq_spec, "shape": [1], "data": ["A"]}]}).encode()
                                  + b"extra", "headers": {"Inference-Header-Content-Length": str(len(json.dumps(
                                      {"inputs": [{**seq_spec, "shape": [1], "data": ["A"]}]})))}}, 400, "malformed",
         ("no input has parameters.binary_data_size",)),
        ("bytes prefix overruns", seq, binary(seq_spec, struct.pack("<I", 10**6) + b"ACGT" * 3), 400, "malformed",
         ("element 0 of 2 claims 1000000 bytes",)),
        ("bytes prefix cut", seq, binary(seq_spec, bytes_blob([b"ACGT"]) + b"\x01\x00"), 400, "malformed",
         ("element 1 of 2", "length prefix")),
        ("bytes left over", seq, binary({**seq_spec, "shape": [1]}, bytes_blob([b"ACGT"]) + b"AAAA"), 400, "malformed",
         ("4 bytes follow",)),
        ("fewer bytes than elements", seq, binary({**seq_spec, "shape": [100]}, bytes_blob([b"A"])), 400, "malformed",
         ("100 BYTES elements",)),
        ("binary size against shape", seq, binary({**raw, "shape": [1, 200]}, b"\x00" * 199), 400, "malformed",
         ("200 bytes", "199")),
        ("unknown output", seq, {"json": {"inputs": [{**seq_spec, "shape": [1], "data": ["A"]}],
                                          "outputs": [{"name": "logits"}]}}, 400, "malformed", ("'logits'",)),
        ("element output for sequences", seq, {"json": {"inputs": [{**seq_spec, "shape": [1], "data": ["A"]}],
                                                        "outputs": [{"name": "element"}]}}, 400, "malformed", ("'element'",)),
        ("classification", seq, {"json": {"inputs": [{**seq_spec, "shape": [1], "data": ["A"]}],
                                          "outputs": [{"name": "probabilities", "parameters": {"classification": 2}}]}},
         400, "malformed", ("classification",)),
        ("reverse_complement not a flag", seq, {"json": {"inputs": [{**seq_spec, "shape": [1], "data": ["A"]}],
                                                         "parameters": {"reverse_complement": "yes"}}}, 400, "malformed",
         ("reverse_complement",)),
        ("reverse_complement on rows", seq, {"json": {"inputs": [{**raw, "shape": [1, 200], "data": [0] * 200}],
                                                      "parameters": {"reverse_complement": False}}}, 400, "malformed",
         ("'sequence'",)),
        ("binary_data_output not a flag", seq, {"json": {"inputs": [{**seq_spec, "shape": [1], "data": ["A"]}],
                                                         "parameters": {"binary_data_output": 1}}}, 400, "malformed",
         ("binary_data_output",)),
        ("id not a string", seq, {"json": {"id": 5, "inputs": [{**seq_spec, "shape": [1], "data": ["A"]}]}}, 400,
         "malformed", ("id",)),
        ("too many JSON values", seq, {"content": b'{"inputs": [' + b"0," * (1 << 18) + b"0]}"}, 413, "too_large",
         ("binary",)),
        ("deep nesting", seq, {"content": b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"}, 400, "malformed",
         ("nested",)),
        ("compressed", seq, {"content": b"\x1f\x8b", "headers": {"Content-Encoding": "gzip"}}, 415,
         "unsupported_media_type", ("Content-Encoding",)),
        ("too many sequences", seq, {"json": {"inputs": [{**seq_spec, "shape": [10_001], "data": ["A"] * 10_001}]}}, 413,
         "too_large", ("BIOMED_MAX_SEQUENCES",)),
        ("too many rows", seq, binary({**raw, "shape": [131_073, 200]}, b"\x00" * (131_073 * 200)), 413, "too_large",
         ("BIOMED_MAX_REQUEST_ROWS",)),
    ]


def test_every_error_is_a_4xx_in_the_v2_form_and_the_worker_lives_on(client, models) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    cases = _error_cases(models["image"]["name"], models["dna"]["name"])
    assert len({c[0] for c in cases}) == len(cases)
    for case_id, path, kwargs, status, code, words in cases:
        response = client.post(path, **kwargs)
        if code is None:  # the decoder's own code (not_dicom, unsupported_format, ...): any, in the v2 form
            code = response.json().get("error", "").split(":")[0]
        try:
            assert_v2_error(response, status, code, *words)
        except AssertionError as err:
            raise AssertionError(f"case {case_id!r}: {err}") from None
    ok = client.post(f"/v2/models/{models['dna']['name']}/infer",
                     json={"inputs": [{"name": "sequence", "shape": [1], "datatype": "BYTES", "data": ["ACGT"]}]})
    assert ok.status_code == 200
    text = metrics_text(client)
    rejected = {(s.labels["endpoint"], s.labels["reason"]) for f in text_string_to_metric_families(text)
                if f.name == "biomed_rejected_requests" for s in f.samples if s.value > 0}
    assert {("v2_infer", "malformed"), ("v2_infer", "too_large"), ("v2_infer", "unknown_model"),
            ("v2_version_infer", "unknown_model")} <= rejected


def test_a_huge_declared_shape_is_refused_before_anything_is_allocated(client, models) -> None:  # type: ignore[no-untyped-def]
    from biomed.errors import TooLarge
    from service import inference
    from service.engine import current
    from service.protocol import v2

    engine = current()
    for model, spec in (("demo-image", {"name": "input", "datatype": "FP32", "shape": [2**40, 1, 64, 64]}),
                        ("demo-dna", {"name": "sequence", "datatype": "BYTES", "shape": [2**33]}),
                        ("demo-image", {"name": "file", "datatype": "BYTES", "shape": [2**20, 2**20]})):
        sig = inference.signature(engine.pick(model))
        body, headers = binary_request([(spec, b"\x00" * 64)])
        tracemalloc.start()
        try:
            with pytest.raises(TooLarge):
                v2.parse_rest(body, headers["Inference-Header-Content-Length"], sig)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 256 * 1024, peak


def test_both_doors_share_the_batchers_and_the_metrics(client, models) -> None:  # type: ignore[no-untyped-def]
    from prometheus_client.parser import text_string_to_metric_families

    def scrape() -> dict:
        families = {f.name: f for f in text_string_to_metric_families(metrics_text(client))}
        calls: dict = {}
        for s in families["biomed_batch_size"].samples:  # summed over the model's versions
            if s.name.endswith("_count"):
                calls[s.labels["model"]] = calls.get(s.labels["model"], 0) + s.value
        doors: dict = {}
        for s in families["biomed_predictions"].samples:
            if s.name.endswith("_total"):
                doors[(s.labels["model"], s.labels["door"])] = doors.get((s.labels["model"], s.labels["door"]), 0) + s.value
        return {"calls": calls, "doors": doors}

    name = models["dna"]["name"]
    before = scrape()
    r = client.post(f"/v2/models/{name}/infer",
                    json={"inputs": [{"name": "sequence", "shape": [1], "datatype": "BYTES", "data": ["ACGT"]}]})
    assert r.status_code == 200
    native_dna(client, ["ACGT"])
    after = scrape()
    assert after["calls"][name] >= before["calls"][name] + 2  # one model, one batcher, one histogram
    for door in ("native", "v2"):
        assert after["doors"][(name, door)] >= before["doors"].get((name, door), 0) + 1, door


def test_the_bearer_token_guards_every_v2_route_but_the_health_probes(demo_models) -> None:  # type: ignore[no-untyped-def]
    from service import engine
    from service.routes import ROUTES

    first = engine._current  # the module's own app; this second app replaces the process's engine while it runs
    try:
        _check_token_routes(ROUTES)
    finally:
        engine._current = first


def _check_token_routes(routes) -> None:  # type: ignore[no-untyped-def]
    for c in inprocess_client({"BIOMED_API_TOKEN": TOKEN}):
        assert c.get("/v2/health/live").status_code == 200 and c.get("/v2/health/ready").status_code == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for route in routes:
            if route.door != "v2" or route.open:
                continue
            path = route.path.replace("{name}", "demo-dna").replace("{version}", "1")
            response = c.request(route.method, path, json={"inputs": []})
            assert_v2_error(response, 401, "unauthorized", "Bearer")
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert c.request(route.method, path, json={"inputs": []}, headers=auth).status_code != 401
        assert c.get("/v2", headers=auth).status_code == 200


# ---------------------------------------------------------------- a real server: tritonclient and a spec client


@pytest.fixture(scope="module")
def server(shared_server):  # type: ignore[no-untyped-def]
    """The session's server (``biomed serve``, demo-image and demo-dna, no token): the v2 door as users run it."""
    return shared_server


@pytest.fixture(scope="module")
def triton(server):  # type: ignore[no-untyped-def]
    from tools import require_module

    httpclient = require_module("tritonclient.http", "pip install 'tritonclient[http]' (the test extra)")
    client = httpclient.InferenceServerClient(server.url.removeprefix("http://"))
    yield client
    client.close()


def _native_http(server, path: str, **kwargs):  # type: ignore[no-untyped-def]
    import httpx

    return httpx.post(server.url + path, timeout=30, **kwargs)


@pytest.mark.slow
def test_tritonclient_health_and_metadata(server, triton) -> None:  # type: ignore[no-untyped-def]
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "biomed-serve" and "binary_tensor_data" in meta["extensions"]
    for name in ("demo-image", "demo-dna"):
        model = triton.get_model_metadata(name)
        assert model["platform"] == "onnx_onnxv1" and model["inputs"][0]["shape"][0] == -1 and model["labels"]
        assert triton.is_model_ready(name) and triton.is_model_ready(name, model["versions"][0])
        assert triton.get_model_metadata(name, model["versions"][0])["name"] == name
    assert not triton.is_model_ready("nope")


@pytest.mark.slow
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_tritonclient_infer_equals_the_native_endpoints(server, triton, binary: bool) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as httpclient

    def infer(model: str, name: str, array: np.ndarray, datatype: str, outputs=("probabilities",), **kw):  # type: ignore[no-untyped-def]
        inp = httpclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array, binary_data=binary)
        wanted = [httpclient.InferRequestedOutput(o, binary_data=binary) for o in outputs]
        return triton.infer(model, [inp], outputs=wanted, **kw)

    # images: whole files (binary: raw bytes; JSON: base64 text) and the presented rows
    files = [CT_SMALL.read_bytes(), MULTI_FRAME.read_bytes()]
    expected = np.concatenate([np.array([list(p["probabilities"].values()) for p in _native_http(
        server, "/predict_image", files={"file": ("x", f, "application/octet-stream")}).json()["predictions"]],
        dtype=np.float32) for f in files])
    elements = np.array(files if binary else [base64.b64encode(f) for f in files], dtype=object)
    result = infer("demo-image", "file", elements, "BYTES", ("probabilities", "element", "frame"))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=TOL)
    assert result.as_numpy("element").tolist() == [0, 1, 1] and result.as_numpy("frame").tolist() == [0, 0, 1]
    doc = triton.get_model_metadata("demo-image")
    from biomed.store import onnx_path, resolve
    from biomed import metadata

    rows = np.concatenate([image_rows(f, metadata.read(onnx_path(resolve("demo-image")))) for f in files])
    assert list(rows.shape[1:]) == doc["inputs"][0]["shape"][1:]
    np.testing.assert_allclose(infer("demo-image", "input", rows, "FP32").as_numpy("probabilities"), expected, atol=TOL)

    # DNA: sequences of any length, with and without reverse-complement averaging, and the model's codes
    for rc in (True, False):
        native = _native_http(server, "/predict_dna", json={"sequences": SEQUENCES, "reverse_complement": rc}).json()
        expected = np.array([list(p["probabilities"].values()) for p in native["predictions"]], dtype=np.float32)
        seqs = np.array([s.encode() for s in SEQUENCES], dtype=object)
        out = infer("demo-dna", "sequence", seqs, "BYTES", parameters={"reverse_complement": rc})
        np.testing.assert_allclose(out.as_numpy("probabilities"), expected, atol=TOL)
    from biomed.preprocess import dna as dna_pre

    exact = ["ACGT" * 50, "TTGCA" * 40]
    codes = np.stack([dna_pre.encode(s) for s in exact])
    native = _native_http(server, "/predict_dna", json={"sequences": exact, "reverse_complement": False}).json()
    expected = np.array([list(p["probabilities"].values()) for p in native["predictions"]], dtype=np.float32)
    np.testing.assert_allclose(infer("demo-dna", "input", codes, "UINT8").as_numpy("probabilities"), expected, atol=TOL)
    # the default request (no outputs listed): tritonclient asks for every output in binary
    inp = httpclient.InferInput("sequence", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"ACGT"], dtype=object), binary_data=binary)
    assert triton.infer("demo-dna", [inp]).as_numpy("probabilities").shape == (1, 3)


@pytest.mark.slow
def test_tritonclient_shows_the_whole_error_message(server, triton) -> None:  # type: ignore[no-untyped-def]
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    inp = httpclient.InferInput("sequence", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"ACGX"], dtype=object))
    with pytest.raises(InferenceServerException) as caught:
        triton.infer("demo-dna", [inp])
    assert caught.value.status() == "422" and "invalid_sequence" in caught.value.message()
    assert "'X'" in caught.value.message() and "position 3" in caught.value.message()
    inp = httpclient.InferInput("input", [1, 100], "UINT8")
    inp.set_data_from_numpy(np.zeros((1, 100), dtype=np.uint8))
    with pytest.raises(InferenceServerException, match=r"does not match the model's \[-1, 200\]"):
        triton.infer("demo-dna", [inp])
    with pytest.raises(InferenceServerException, match="not loaded"):
        triton.infer("nope", [inp])
    assert triton.is_server_live()  # the worker is alive


@pytest.mark.slow
def test_a_client_written_from_the_spec_agrees(server, triton) -> None:  # type: ignore[no-untyped-def]
    """Plain HTTP and JSON only, from the protocol's text: metadata, then inference with the declared input."""
    import httpx
    import tritonclient.http as httpclient

    base = server.url + "/v2"
    assert httpx.get(base + "/health/live").status_code == 200 and httpx.get(base + "/health/ready").status_code == 200
    assert httpx.get(base).json()["extensions"]
    for model, name, datatype, data, raw, shape in (
            ("demo-dna", "sequence", "BYTES", SEQUENCES, [s.encode() for s in SEQUENCES], [len(SEQUENCES)]),
            ("demo-image", "file", "BYTES", [base64.b64encode(CT_SMALL.read_bytes()).decode()], [CT_SMALL.read_bytes()],
             [1])):
        meta = httpx.get(f"{base}/models/{model}").json()
        assert httpx.get(f"{base}/models/{model}/versions/{meta['versions'][0]}/ready").json()["ready"] is True
        request = {"id": "spec-1", "inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}],
                   "outputs": [{"name": meta["outputs"][0]["name"]}]}
        response = httpx.post(f"{base}/models/{model}/versions/{meta['versions'][0]}/infer", json=request, timeout=30)
        assert response.status_code == 200 and response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["id"] == "spec-1" and body["model_name"] == model
        [out] = body["outputs"]
        assert out["datatype"] == "FP32" and out["shape"] == [len(data), len(meta["labels"])]
        inp = httpclient.InferInput(name, shape, datatype)
        inp.set_data_from_numpy(np.array(raw, dtype=object))  # binary: the raw elements
        np.testing.assert_allclose(np.array(out["data"], dtype=np.float32).reshape(out["shape"]),
                                   triton.infer(model, [inp]).as_numpy("probabilities"), atol=TOL)


@pytest.mark.slow
def test_the_docs_tritonclient_example_works_as_written(server, capsys) -> None:  # type: ignore[no-untyped-def]
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "tritonclient.http" in b]
    assert blocks, "docs/api.md has no tritonclient example"
    readme = [b for b in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
              if "tritonclient.http" in b]
    assert readme, "the README has no tritonclient example"
    for code in blocks + readme:
        assert "localhost:3000" in code
        exec(compile(code.replace("localhost:3000", server.url.removeprefix("http://")), "example", "exec"), {})
    assert capsys.readouterr().out.strip()
