"""The Open Inference Protocol v2 over gRPC (service/doors/grpc.py): the codec in-process, then one real server
started as a user starts it (``biomed serve --grpc-port P``, two workers sharing the port, a token) driven by the
real ``tritonclient[grpc]`` and by hand-made messages.

Every call of ``inference.GRPCInferenceService`` and the health check; every kind, as raw tensors, typed contents
and whole files / sequences, equal to the native endpoints; the token where REST asks for it; hostile calls, each
answered with its status code and the REST door's message while the server lives on and serves a small call.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc  # serving dependencies (pyproject.toml): a missing one is a broken install, never a skip
import numpy as np
import pydicom
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb, service_pb2_grpc

ROOT = Path(__file__).resolve().parents[1]
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
CT_SMALL = TEST_FILES / "CT_small.dcm"
MULTI_FRAME = TEST_FILES / "SC_rgb_rle_2frame.dcm"
SEQUENCES = ["ACGTTTCCGCGCCCCCTGGTGGCCAGCAATT", "GGGACATGCCCGGGCATGTCCC" * 30, "acgtn" * 41, "T"]
TOKEN = "grpc-test-token"
AUTH = (("authorization", f"Bearer {TOKEN}"),)
UPLOAD_MB = 8
STREAMS = 4
TOL = 1e-6
C = grpc.StatusCode


def bytes_blob(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(b)) + b for b in items)


def request(model: str, name: str, datatype: str, shape: list[int], raw: bytes | None = None, version: str = "",
            contents: dict | None = None, outputs: tuple[str, ...] = (), **params: object) -> pb.ModelInferRequest:
    """A ModelInferRequest by hand: one input, its bytes raw or its values typed (``contents``)."""
    msg = pb.ModelInferRequest(model_name=model, model_version=version)
    given = msg.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None:
        msg.raw_input_contents.append(raw)
    for field, values in (contents or {}).items():
        getattr(given.contents, field).extend(values)
    for out in outputs:
        msg.outputs.add(name=out)
    for key, value in params.items():
        kind = {bool: "bool_param", int: "int64_param", str: "string_param", float: "double_param"}[type(value)]
        setattr(msg.parameters[key], kind, value)
    return msg


def outputs(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"FP32": "<f4", "INT32": "<i4", "INT64": "<i8"}
    return {o.name: np.frombuffer(raw, dtype=dtypes[o.datatype]).reshape(list(o.shape))
            for o, raw in zip(response.outputs, response.raw_output_contents)}


# ---------------------------------------------------------------- the codec, in-process


def signature():  # type: ignore[no-untyped-def]
    """A DNA-like model's v2 signature: UINT8 [-1, 8] codes or up to 3 BYTES sequences."""
    from service.protocol.v2 import InputSpec, Signature

    return Signature(InputSpec("input", "UINT8", (-1, 8), 4 * 8, "4 rows (BIOMED_MAX_REQUEST_ROWS)"),
                     InputSpec("sequence", "BYTES", None, 3, "3 sequences (BIOMED_MAX_SEQUENCES)"),
                     {"probabilities": ("FP32", (-1, 2))}, parameters={"reverse_complement": True})


CODEC_CASES = [  # (what, message, the parsed array or items | (error class name, words))
    ("raw codes", request("m", "input", "UINT8", [2, 8], bytes(range(16))), np.arange(16, dtype=np.uint8).reshape(2, 8)),
    ("typed codes", request("m", "input", "UINT8", [1, 8], contents={"uint_contents": range(8)}),
     np.arange(8, dtype=np.uint8).reshape(1, 8)),
    ("raw sequences", request("m", "sequence", "BYTES", [2], bytes_blob([b"AC", b"GTN"])), [b"AC", b"GTN"]),
    ("typed sequences", request("m", "sequence", "BYTES", [2], contents={"bytes_contents": [b"AC", b""]}),
     [b"AC", b""]),
    ("short raw", request("m", "input", "UINT8", [2, 8], bytes(15)), ("MalformedInput", "is 16 bytes", "is 15")),
    ("a lying length", request("m", "sequence", "BYTES", [1], struct.pack("<I", 9) + b"AC"),
     ("MalformedInput", "claims 9 bytes")),
    ("over the rows", request("m", "input", "UINT8", [5, 8], bytes(40)), ("TooLarge", "4 rows")),
    ("typed out of range", request("m", "input", "UINT8", [1, 8], contents={"uint_contents": [300] * 8}),
     ("MalformedInput", "out of range for UINT8")),
    ("the wrong typed field", request("m", "input", "UINT8", [1, 8], contents={"int_contents": range(8)}),
     ("MalformedInput", "contents.uint_contents", "contents.int_contents")),
    ("both", request("m", "input", "UINT8", [1, 8], bytes(8), contents={"uint_contents": range(8)}),
     ("MalformedInput", "both contents and raw_input_contents")),
    ("no data", request("m", "input", "UINT8", [1, 8]), ("MalformedInput", "no data")),
]


@pytest.mark.parametrize("what, msg, expected", CODEC_CASES, ids=[c[0] for c in CODEC_CASES])
def test_the_codec_reads_raw_and_typed_tensors_with_the_rest_checks(what: str, msg, expected) -> None:  # type: ignore[no-untyped-def]
    from biomed import errors
    from service.protocol.v2_grpc import parse_grpc

    if isinstance(expected, tuple):
        with pytest.raises(getattr(errors, expected[0])) as caught:
            parse_grpc(msg, signature())
        assert all(w in str(caught.value) for w in expected[1:]), str(caught.value)
        return
    req = parse_grpc(msg, signature())
    if isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(req.input.array, expected)
    else:
        assert req.input.items == expected and not req.input.from_json
    assert req.outputs == [("probabilities", True)]


def test_the_codec_answers_raw_outputs() -> None:
    from service.protocol.v2 import InferResponse, OutputTensor
    from service.protocol.v2_grpc import encode_grpc

    probs = np.array([[0.25, 0.5]], dtype=np.float32)
    msg = encode_grpc(InferResponse("m", "1", [OutputTensor("probabilities", "FP32", probs),
                                               OutputTensor("element", "INT32", np.array([0], dtype=np.int64))], "r1"))
    decoded = outputs(pb.ModelInferResponse.FromString(msg.SerializeToString()))
    assert msg.id == "r1" and msg.model_version == "1" and decoded["element"].dtype == np.int32
    np.testing.assert_array_equal(decoded["probabilities"], probs)


def test_the_codec_answers_a_groups_parameters() -> None:
    from service.protocol.v2 import InferResponse, OutputTensor
    from service.protocol.v2_grpc import encode_grpc

    msg = encode_grpc(InferResponse("m", "1", [OutputTensor("probabilities", "FP32", np.ones((1, 2), np.float32))],
                                    parameters={"group": "series", "instances": 3, "flag": True}))
    back = pb.ModelInferResponse.FromString(msg.SerializeToString()).parameters
    assert (back["group"].string_param, back["instances"].int64_param, back["flag"].bool_param) == ("series", 3, True)


# ---------------------------------------------------------------- a real server


@pytest.fixture(scope="module")
def server(demo_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    import live_server

    port = live_server.free_port()
    log = tmp_path_factory.mktemp("grpc") / "server.log"
    with live_server.running(log, workers=2, through_cli=True, args=("--grpc-port", str(port)),
                             BIOMED_API_TOKEN=TOKEN, BIOMED_MAX_UPLOAD_MB=str(UPLOAD_MB),
                             BIOMED_GRPC_MAX_STREAMS=str(STREAMS), BIOMED_MAX_CONCURRENCY="512") as srv:
        srv.grpc = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
        yield srv


@pytest.fixture(scope="module")
def triton(server) -> Iterator[object]:  # type: ignore[no-untyped-def]
    client = grpcclient.InferenceServerClient(server.grpc)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(server) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.grpc, options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def native(server, path: str, **kwargs) -> np.ndarray:  # type: ignore[no-untyped-def]
    import httpx

    r = httpx.post(server.url + path, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60, **kwargs)
    assert r.status_code == 200, r.text
    return np.array([list(p["probabilities"].values()) for p in r.json()["predictions"]], dtype=np.float32)


def fails(call, *args, **kwargs) -> grpc.RpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as caught:
        call(*args, **kwargs)
    return caught.value


def small_call_served(triton) -> None:  # type: ignore[no-untyped-def]
    inp = grpcclient.InferInput("sequence", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"ACGT"], dtype=object))
    assert triton.infer("demo-dna", [inp], headers=dict(AUTH)).as_numpy("probabilities").shape == (1, 3)


@pytest.mark.slow
def test_every_call_and_the_health_check(server, triton, stub) -> None:  # type: ignore[no-untyped-def]
    import httpx

    auth = dict(AUTH)
    assert triton.is_server_live() and triton.is_server_ready()  # open, as /v2/health/*
    assert triton.get_server_metadata(headers=auth).name == "biomed-serve"
    for name in ("demo-image", "demo-dna"):
        rest = httpx.get(f"{server.url}/v2/models/{name}", headers={"Authorization": f"Bearer {TOKEN}"}).json()
        meta = triton.get_model_metadata(name, headers=auth, as_json=True)
        assert meta["name"] == name and meta["platform"] == rest["platform"] == "onnx_onnxv1"
        assert meta["versions"] == rest["versions"]
        for key in ("inputs", "outputs"):
            assert [{**t, "shape": [int(d) for d in t["shape"]]} for t in meta[key]] == rest[key]
        version = meta["versions"][0]
        assert triton.get_model_metadata(name, version, headers=auth).name == name
        assert triton.is_model_ready(name, headers=auth) and triton.is_model_ready(name, version, headers=auth)
    with grpc.insecure_channel(server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            assert health.Check(health_pb2.HealthCheckRequest(service=service)).status == \
                health_pb2.HealthCheckResponse.SERVING
        assert fails(health.Check, health_pb2.HealthCheckRequest(service="nope")).code() == C.NOT_FOUND
        assert fails(lambda: next(health.Watch(health_pb2.HealthCheckRequest()))).code() == C.UNIMPLEMENTED


@pytest.mark.slow
def test_every_kind_equals_the_native_endpoints(server, triton, stub) -> None:  # type: ignore[no-untyped-def]
    from biomed import metadata
    from biomed.preprocess import dna as dna_pre
    from biomed.preprocess.image import ImageSpec, load_image
    from biomed.store import onnx_path, resolve

    def infer(model: str, name: str, array: np.ndarray, datatype: str, outputs=("probabilities",), **kw):  # type: ignore[no-untyped-def]
        inp = grpcclient.InferInput(name, list(array.shape), datatype)
        inp.set_data_from_numpy(array)
        return triton.infer(model, [inp], outputs=[grpcclient.InferRequestedOutput(o) for o in outputs],
                            headers=dict(AUTH), **kw)

    # images: whole files as BYTES, the presented rows raw, and the rows as typed contents
    files = [CT_SMALL.read_bytes(), MULTI_FRAME.read_bytes()]
    expected = np.concatenate([native(server, "/predict_image", files={"file": ("x", f, "application/octet-stream")})
                               for f in files])
    result = infer("demo-image", "file", np.array(files, dtype=object), "BYTES", ("probabilities", "element", "frame"))
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=TOL)
    assert result.as_numpy("element").tolist() == [0, 1, 1] and result.as_numpy("frame").tolist() == [0, 0, 1]
    spec = ImageSpec.from_dict(metadata.read(onnx_path(resolve("demo-image")))["preprocess"])
    rows = np.concatenate([np.ascontiguousarray(load_image(f, spec)[0], dtype=np.float32) for f in files])
    np.testing.assert_allclose(infer("demo-image", "input", rows, "FP32").as_numpy("probabilities"), expected, atol=TOL)
    typed = request("demo-image", "input", "FP32", list(rows[:1].shape), contents={"fp32_contents": rows[:1].ravel()})
    np.testing.assert_allclose(outputs(stub.ModelInfer(typed, metadata=AUTH))["probabilities"], expected[:1], atol=TOL)

    # DNA: sequences of any length with and without reverse-complement averaging, the codes raw and typed
    for rc in (True, False):
        want = native(server, "/predict_dna", json={"sequences": SEQUENCES, "reverse_complement": rc})
        seqs = np.array([s.encode() for s in SEQUENCES], dtype=object)
        got = infer("demo-dna", "sequence", seqs, "BYTES", parameters={"reverse_complement": rc})
        np.testing.assert_allclose(got.as_numpy("probabilities"), want, atol=TOL)
    typed = request("demo-dna", "sequence", "BYTES", [len(SEQUENCES)], contents={
        "bytes_contents": [s.encode() for s in SEQUENCES]})
    np.testing.assert_allclose(outputs(stub.ModelInfer(typed, metadata=AUTH))["probabilities"],
                               native(server, "/predict_dna", json={"sequences": SEQUENCES}), atol=TOL)
    exact = ["ACGT" * 50, "TTGCA" * 40]
    codes = np.stack([dna_pre.encode(s) for s in exact])
    want = native(server, "/predict_dna", json={"sequences": exact, "reverse_complement": False})
    np.testing.assert_allclose(infer("demo-dna", "input", codes, "UINT8").as_numpy("probabilities"), want, atol=TOL)
    typed = request("demo-dna", "input", "UINT8", list(codes.shape), contents={"uint_contents": codes.ravel().tolist()},
                    version=triton.get_model_metadata("demo-dna", headers=dict(AUTH)).versions[0])
    answer = stub.ModelInfer(typed, metadata=AUTH)
    np.testing.assert_allclose(outputs(answer)["probabilities"], want, atol=TOL)
    assert answer.model_name == "demo-dna" and answer.model_version == typed.model_version
    assert infer("demo-dna", "sequence", np.array([b"ACGT"], dtype=object), "BYTES",
                 request_id="id-7").get_response().id == "id-7"


@pytest.mark.slow
def test_a_series_over_grpc_equals_predict_series(server, triton) -> None:  # type: ignore[no-untyped-def]
    """v2's ``group: "series"`` through the gRPC door: one row, the driving file, the series' description."""
    import io

    import httpx
    import pydicom
    from pydicom.uid import generate_uid

    series, files = generate_uid(), []
    for i in range(3):
        ds = pydicom.dcmread(CT_SMALL)
        ds.SeriesInstanceUID, ds.InstanceNumber = series, i + 1
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = np.roll(ds.pixel_array, 20 * i, axis=0).astype(ds.pixel_array.dtype).tobytes()
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    want = httpx.post(server.url + "/predict_series", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60,
                      files=[("file", (f"{i}.dcm", f, "application/dicom")) for i, f in enumerate(files)]).json()
    inp = grpcclient.InferInput("file", [3], "BYTES")
    inp.set_data_from_numpy(np.array(files, dtype=object))
    got = triton.infer("demo-image", [inp], parameters={"group": "series"}, headers=dict(AUTH))
    np.testing.assert_allclose(got.as_numpy("probabilities")[0], list(want["series"]["probabilities"].values()),
                               atol=1e-6)
    source = [i["sop_instance_uid"] for i in want["instances"]].index(want["series"]["source_instance"])
    assert got.as_numpy("element").tolist() == [source] and got.as_numpy("frame").tolist() == [0]
    parameters = got.get_response().parameters
    assert parameters["source_instance"].string_param == want["series"]["source_instance"]
    assert parameters["instances"].int64_param == 3 and parameters["series_instance_uid"].string_param == series


@pytest.mark.slow
def test_the_token_is_asked_where_rest_asks_for_it(server, stub) -> None:  # type: ignore[no-untyped-def]
    import httpx

    assert httpx.get(server.url + "/v2").status_code == 401  # the REST door, for comparison
    small = request("demo-dna", "sequence", "BYTES", [1], bytes_blob([b"ACGT"]))
    closed = [(stub.ServerMetadata, pb.ServerMetadataRequest()), (stub.ModelMetadata, pb.ModelMetadataRequest(
        name="demo-dna")), (stub.ModelReady, pb.ModelReadyRequest(name="demo-dna")), (stub.ModelInfer, small)]
    for call, msg in closed:
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            err = fails(call, msg, metadata=metadata)
            assert err.code() == C.UNAUTHENTICATED and err.details().startswith("unauthorized: ")
            assert "BIOMED_API_TOKEN" in err.details()
        call(msg, metadata=AUTH)
    assert stub.ServerLive(pb.ServerLiveRequest()).live and stub.ServerReady(pb.ServerReadyRequest()).ready


def _hostile() -> list[tuple[str, str, object, object, tuple[str, ...]]]:
    """(what, method, request message or raw bytes, expected status, words of the message)."""
    seq = lambda *items: bytes_blob(list(items))  # noqa: E731
    big = UPLOAD_MB * 2**20
    return [
        # lying shapes and byte counts
        ("shape says 2 elements, 1 given", "ModelInfer", request("demo-dna", "sequence", "BYTES", [2], seq(b"ACGT")),
         C.INVALID_ARGUMENT, ("malformed: ", "element 1 of 2")),
        ("a length prefix past the end", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1],
         struct.pack("<I", 10**6) + b"ACGT"), C.INVALID_ARGUMENT, ("claims 1000000 bytes",)),
        ("bytes after the elements", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1], seq(b"AC") + b"xx"),
         C.INVALID_ARGUMENT, ("2 bytes follow",)),
        ("too few tensor bytes", "ModelInfer", request("demo-dna", "input", "UINT8", [2, 200], bytes(399)),
         C.INVALID_ARGUMENT, ("is 400 bytes", "is 399")),
        ("too many tensor bytes", "ModelInfer", request("demo-dna", "input", "UINT8", [1, 200], bytes(201)),
         C.INVALID_ARGUMENT, ("is 200 bytes",)),
        ("the wrong row length", "ModelInfer", request("demo-dna", "input", "UINT8", [1, 100], bytes(100)),
         C.INVALID_ARGUMENT, ("does not match the model's [-1, 200]",)),
        ("a negative dimension", "ModelInfer", request("demo-dna", "input", "UINT8", [-1, 200], bytes(200)),
         C.INVALID_ARGUMENT, ("non-negative integers",)),
        ("no shape", "ModelInfer", request("demo-dna", "sequence", "BYTES", [], seq(b"A")), C.INVALID_ARGUMENT,
         ("shape must be",)),
        ("rank 9", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1] * 9, seq(b"A")), C.INVALID_ARGUMENT,
         ("1 to 8",)),
        ("no elements", "ModelInfer", request("demo-dna", "input", "UINT8", [0, 200], b""), C.INVALID_ARGUMENT,
         ("holds no elements",)),
        ("a billion rows declared", "ModelInfer", request("demo-dna", "input", "UINT8", [10**9, 200], bytes(200)),
         C.RESOURCE_EXHAUSTED, ("too_large: ", "BIOMED_MAX_REQUEST_ROWS")),
        ("too many sequences declared", "ModelInfer", request("demo-dna", "sequence", "BYTES", [20000], seq(b"A")),
         C.RESOURCE_EXHAUSTED, ("BIOMED_MAX_SEQUENCES",)),
        ("typed contents past the value cap", "ModelInfer", request("demo-dna", "input", "UINT8", [1311, 200],
         contents={"uint_contents": np.zeros(1311 * 200, np.uint32)}), C.RESOURCE_EXHAUSTED, ("raw_input_contents",)),
        ("typed count short", "ModelInfer", request("demo-dna", "input", "UINT8", [1, 200],
         contents={"uint_contents": [0] * 199}), C.INVALID_ARGUMENT, ("holds 199",)),
        ("typed value out of range", "ModelInfer", request("demo-dna", "input", "UINT8", [1, 200],
         contents={"uint_contents": [256] * 200}), C.INVALID_ARGUMENT, ("out of range for UINT8",)),
        ("typed in the wrong field", "ModelInfer", request("demo-dna", "input", "UINT8", [1, 200],
         contents={"fp32_contents": [0.0] * 200}), C.INVALID_ARGUMENT, ("contents.uint_contents",)),
        ("raw and typed both", "ModelInfer", request("demo-dna", "input", "UINT8", [1, 200], bytes(200),
         contents={"uint_contents": [0] * 200}), C.INVALID_ARGUMENT, ("send one",)),
        # wrong datatypes and inputs
        ("FP32 codes", "ModelInfer", request("demo-dna", "input", "FP32", [1, 200], bytes(800)), C.INVALID_ARGUMENT,
         ("must be UINT8, not FP32",)),
        ("FP32 sequences", "ModelInfer", request("demo-dna", "sequence", "FP32", [1], bytes(4)), C.INVALID_ARGUMENT,
         ("must be BYTES",)),
        ("an unknown datatype", "ModelInfer", request("demo-image", "input", "FP8", [1], bytes(1)),
         C.INVALID_ARGUMENT, ("must be FP32",)),
        ("an unknown input", "ModelInfer", request("demo-dna", "seq", "BYTES", [1], seq(b"A")), C.INVALID_ARGUMENT,
         ("not an input of this model",)),
        ("no input", "ModelInfer", pb.ModelInferRequest(model_name="demo-dna"), C.INVALID_ARGUMENT,
         ("send exactly one input",)),
        ("two raw contents", "ModelInfer", (lambda m: (m.raw_input_contents.append(b"x"), m)[1])(
            request("demo-dna", "sequence", "BYTES", [1], seq(b"A"))), C.INVALID_ARGUMENT, ("holds 2 entries",)),
        ("not DNA", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1], seq(b"ACGX")), C.INVALID_ARGUMENT,
         ("invalid_sequence: ", "'X'", "position 3")),
        ("not an image", "ModelInfer", request("demo-image", "file", "BYTES", [1], seq(b"not a file")),
         C.INVALID_ARGUMENT, ()),
        ("a parameter of the wrong type", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1], seq(b"A"),
         reverse_complement="yes"), C.INVALID_ARGUMENT, ("parameters.reverse_complement must be",)),
        ("a DNA parameter for an image", "ModelInfer", request("demo-image", "file", "BYTES", [1],
         seq(CT_SMALL.read_bytes()), reverse_complement=True), C.INVALID_ARGUMENT, ("applies to",)),
        ("an unknown output", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1], seq(b"A"),
         outputs=("logits",)), C.INVALID_ARGUMENT, ("is not produced",)),
        ("an output twice", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1], seq(b"A"),
         outputs=("probabilities", "probabilities")), C.INVALID_ARGUMENT, ("at most once",)),
        ("not a protobuf message", "ModelInfer", b"\xff\xff\xff\xff", C.INVALID_ARGUMENT,
         ("malformed: ", "not a inference.ModelInferRequest")),
        ("a message over the upload cap", "ModelInfer", request("demo-dna", "input", "UINT8", [big // 200 + 1, 200],
         bytes((big // 200 + 1) * 200)), C.RESOURCE_EXHAUSTED, ()),
        # unknown models and versions
        ("an unknown model", "ModelInfer", request("nope", "sequence", "BYTES", [1], seq(b"A")), C.NOT_FOUND,
         ("unknown_model: ", "'nope' is not loaded")),
        ("an unknown version", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1], seq(b"A"), version="9"),
         C.NOT_FOUND, ("'demo-dna:9' is not loaded",)),
        ("a version with a colon", "ModelInfer", request("demo-dna", "sequence", "BYTES", [1], seq(b"A"),
         version="a:b"), C.NOT_FOUND, ("not loaded",)),
        ("metadata of an unknown model", "ModelMetadata", pb.ModelMetadataRequest(name="nope"), C.NOT_FOUND,
         ("unknown_model: ",)),
        ("readiness of an unknown version", "ModelReady", pb.ModelReadyRequest(name="demo-dna", version="9"),
         C.NOT_FOUND, ("unknown_model: ",)),
        ("a Triton call this server does not have", "ModelConfig", pb.ModelConfigRequest(name="demo-dna"),
         C.UNIMPLEMENTED, ()),
    ]


HOSTILE = _hostile()


@pytest.mark.slow
@pytest.mark.parametrize("what, method, msg, code, words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_calls_get_their_status_and_the_server_serves_on(server, triton, what, method, msg, code,
                                                                 words) -> None:  # type: ignore[no-untyped-def]
    with grpc.insecure_channel(server.grpc, options=[("grpc.max_send_message_length", 64 * 2**20)]) as channel:
        call = channel.unary_unary(f"/inference.GRPCInferenceService/{method}",
                                   request_serializer=lambda m: m if isinstance(m, bytes) else m.SerializeToString())
        err = fails(call, msg, metadata=AUTH, timeout=30)
    assert err.code() == code, (what, err.code(), err.details())
    for word in words:
        assert word in err.details(), (what, err.details())
    small_call_served(triton)


@pytest.mark.slow
def test_the_messages_are_the_rest_doors(server, stub) -> None:  # type: ignore[no-untyped-def]
    """The same mistake over REST (binary extension) and gRPC: the same status family and the same message."""
    import httpx

    for name, datatype, shape, raw in (("input", "UINT8", [1, 100], bytes(100)), ("sequence", "BYTES", [1],
                                                                                   bytes_blob([b"ACGX"]))):
        header = ('{"inputs":[{"name":"%s","datatype":"%s","shape":%s,"parameters":{"binary_data_size":%d}}]}'
                  % (name, datatype, shape, len(raw))).encode()
        rest = httpx.post(f"{server.url}/v2/models/demo-dna/infer", content=header + raw, headers={
            "Inference-Header-Content-Length": str(len(header)), "Authorization": f"Bearer {TOKEN}"}).json()["error"]
        err = fails(stub.ModelInfer, request("demo-dna", name, datatype, shape, raw), metadata=AUTH)
        assert err.code() == C.INVALID_ARGUMENT and err.details() == rest


@pytest.mark.slow
def test_deadlines_and_cancelled_calls_stop_their_work(server, triton) -> None:  # type: ignore[no-untyped-def]
    import httpx

    def rejected(reason: str) -> float:
        text = httpx.get(server.url + "/metrics").text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(
            "biomed_rejected_requests_total{") and 'endpoint="grpc_ModelInfer"' in line and f'reason="{reason}"' in line)

    long = "ACGT" * 400_000  # 1.6 Mb: thousands of windows, seconds of work
    msg = request("demo-dna", "sequence", "BYTES", [1], bytes_blob([long.encode()]))
    before = rejected("deadline_exceeded"), rejected("client_closed_request")
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        assert fails(stub.ModelInfer, msg, metadata=AUTH, timeout=0.3).code() == C.DEADLINE_EXCEEDED
        future = stub.ModelInfer.future(msg, metadata=AUTH)
        time.sleep(0.3)
        future.cancel()
        assert future.cancelled()
    small_call_served(triton)
    deadline = time.monotonic() + 10
    while (rejected("deadline_exceeded"), rejected("client_closed_request")) < (before[0] + 1, before[1] + 1):
        assert time.monotonic() < deadline, "the server did not see the calls end"
        time.sleep(0.2)
    queued = [line for line in httpx.get(server.url + "/metrics").text.splitlines()
              if line.startswith("biomed_queue_rows{") and 'model="demo-dna"' in line]
    assert queued and all(float(line.rsplit(" ", 1)[1]) == 0 for line in queued)  # their rows left the queue


@pytest.mark.slow
def test_a_thousand_concurrent_calls_on_one_channel(server, triton) -> None:  # type: ignore[no-untyped-def]
    """More calls than the worker's slots (512 / 2 workers): each is served or refused as retryable."""
    msg = request("demo-dna", "sequence", "BYTES", [1], bytes_blob([b"ACGTACGTAC" * 2000]))  # 20 kb: ~200 windows
    with grpc.insecure_channel(server.grpc) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ModelInfer.future(msg, metadata=AUTH, timeout=60) for _ in range(1000)]
        served_meanwhile = False
        for _ in range(50):  # a small call on another channel while they run (retried, as UNAVAILABLE invites)
            try:
                small_call_served(triton)
                served_meanwhile = True
                break
            except Exception:  # noqa: BLE001 - tritonclient's InferenceServerException for UNAVAILABLE
                time.sleep(0.05)
        codes = {}
        for f in futures:
            code = f.code()
            codes[code] = codes.get(code, 0) + 1
            if code == C.UNAVAILABLE:
                assert f.details().startswith("too_many_requests: "), f.details()
    assert set(codes) <= {C.OK, C.UNAVAILABLE} and codes.get(C.OK, 0) >= 256, codes
    assert served_meanwhile
    small_call_served(triton)


@pytest.mark.slow
def test_a_port_in_use_is_a_start_up_error(demo_models, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import live_server

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        server = live_server.start(tmp_path / "server.log", BIOMED_GRPC_PORT=str(port), BIOMED_GRPC_HOST="127.0.0.1")
        try:
            code = server.proc.wait(60)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            server.stop()
    assert code not in (0, None), server.output()[-2000:]
    assert f"the gRPC server cannot listen on 127.0.0.1:{port}" in server.output()


@pytest.mark.slow
def test_the_docs_grpc_examples_work_as_written(shared_server, capsys) -> None:  # type: ignore[no-untyped-def]
    """docs/api.md's and the README's ``tritonclient.grpc`` examples, against the session's server (no token)."""
    import re

    port = shared_server.env["BIOMED_GRPC_PORT"]
    blocks = [b for doc in ("README.md", "docs/api.md") for b in re.findall(r"```python\n(.*?)```",
                                                                             (ROOT / doc).read_text(), re.S)
              if "tritonclient.grpc" in b]
    assert len(blocks) >= 2, "README.md and docs/api.md each need a tritonclient.grpc example"
    for code in blocks:
        assert "localhost:8001" in code
        exec(compile(code.replace("localhost:8001", f"127.0.0.1:{port}"), "example", "exec"), {})
    assert capsys.readouterr().out.strip()
