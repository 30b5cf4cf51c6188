"""The service under load on the GPU beside the in-process pipeline (run by scripts/gpu/kit.py in its venv).

Every kit model is imported into a model store of the kit's own and served by one real
``bentoml serve`` (CUDA first); each model gets load at concurrency 1 and 16 (wrk when installed,
else ``bench/loadgen.py``): a DICOM CT slice as a raw upload for image models, one model-length
sequence for DNA models, a synthetic CT series (the volume demo's) to ``/predict_series`` for volume
models. The pipeline is the same work in-process on the same provider (decode,
preprocess, one inference per request), one request after another.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from biomed.runtime import LoadedModel

LUA = """local f = io.open(os.getenv("BENCH_BODY_FILE"), "rb")
wrk.method = "POST"
wrk.body = f:read("*all")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
"""


def _ct_slice() -> bytes:
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _ct_series() -> list[bytes]:
    from training.demo.volume_demo import series_datasets

    out = []
    for ds in series_datasets(0, 0, "lesion", "")[0]:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(buffer.getvalue())
    return out


def _series_form(files: list[bytes], boundary: str = "kit-series") -> tuple[bytes, str]:
    parts = [f'Content-Disposition: form-data; name="file"; filename="{i}.dcm"\r\nContent-Type: application/dicom'
             f"\r\n\r\n".encode() + f for i, f in enumerate(files)]
    body = b"".join(b"--" + boundary.encode() + b"\r\n" + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def _request(doc: dict, name: str) -> tuple[str, bytes, str]:
    """(path, body, content type) of one request for the model."""
    if doc["kind"] == "image":
        return f"/predict_image?model={name}", _ct_slice(), "application/dicom"
    if doc["kind"] == "volume":
        return (f"/predict_series?model={name}", *_series_form(_ct_series()))
    length = int(doc["preprocess"]["length"])
    sequence = "ACGT" * (length // 4) + "A" * (length % 4)
    return "/predict_dna", json.dumps({"sequences": [sequence], "model": name}).encode(), "application/json"


def _load(url: str, body: bytes, content_type: str, concurrency: int, seconds: float) -> dict:
    wrk = shutil.which("wrk")
    if wrk is None:
        from bench.loadgen import load

        r = load(url, concurrency, seconds, body, headers={"Content-Type": content_type})
        return {"tool": "loadgen", "rps": r.rps, "p99_ms": r.p99_ms, "non_2xx": r.non_2xx + r.errors}
    from bench.wrk import parse

    with tempfile.TemporaryDirectory() as tmp:
        script, payload = Path(tmp) / "raw.lua", Path(tmp) / "body"
        script.write_text(LUA)
        payload.write_bytes(body)
        env = {**os.environ, "BENCH_BODY_FILE": str(payload), "BENCH_CONTENT_TYPE": content_type}
        out = subprocess.run([wrk, f"-t{min(concurrency, 4)}", f"-c{concurrency}", f"-d{seconds:g}s", "--latency",
                              "-s", str(script), url], capture_output=True, text=True, env=env, check=True).stdout
    r = parse(out)
    return {"tool": "wrk", "rps": r.rps, "p99_ms": r.p99_ms, "non_2xx": r.non_2xx + r.socket_errors}


def _pipeline(model: "LoadedModel", body: bytes, seconds: float) -> float:
    """Requests/s of decode + preprocess + one inference, in-process, one after another."""
    import numpy as np

    from biomed import dna_ops, runtime
    from biomed.preprocess.dna import DnaSpec
    from biomed.preprocess.image import ImageSpec, load_image

    doc = model.doc
    if doc["kind"] == "volume":
        from biomed.preprocess.volume import VolumeSpec, load_volume

        spec_volume, files = VolumeSpec.from_dict(doc["preprocess"]), _ct_series()

        def once() -> None:
            x, _, _ = load_volume(files, spec_volume)
            model.run(np.ascontiguousarray(x, dtype=np.float32))
    elif doc["kind"] == "image":
        spec = ImageSpec.from_dict(doc["preprocess"])

        def once() -> None:
            x, _ = load_image(body, spec)
            model.run(np.ascontiguousarray(x, dtype=np.float32))
    else:
        spec_dna = DnaSpec.from_dict(doc["preprocess"])
        sequence = json.loads(body)["sequences"][0]
        predict = runtime.predictor(model)

        def once() -> None:
            import asyncio

            asyncio.run(dna_ops.predict_sequences(predict, doc["labels"], spec_dna, [("s", sequence)], True))
    for _ in range(5):
        once()
    n, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        once()
        n += 1
    return n / (time.perf_counter() - started)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--kit", required=True)
    p.add_argument("--state", required=True)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--out", required=True)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args()
    kit, state = Path(args.kit), Path(args.state)
    os.environ["BENTOML_HOME"] = str(state / "bentoml")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    from biomed.runtime import RuntimeOptions, load_model
    from biomed.store import biomed_models, import_onnx

    names = json.loads((kit / "kit.json").read_text())["models"]
    have = {m.tag.name for m in biomed_models()}
    for name in names:
        if name not in have:
            import_onnx(kit / "models" / f"{name}.onnx", name)
    # The pipeline's sessions are made as the server's: the same runtime, providers and GPU requirement.
    options = RuntimeOptions(providers=("cpu",) if args.dry_run else ("cuda", "cpu"), require_gpu=not args.dry_run)
    from bench.server import Server

    rows = []
    env = {"BIOMED_MODELS": ",".join(names), "BIOMED_PROVIDERS": "cpu" if args.dry_run else "cuda,cpu",
           "BIOMED_REQUIRE_GPU": "0" if args.dry_run else "1", "BIOMED_PROGRESS": "0"}
    with Server("service.service:Biomed", env, state / "service.log") as server:
        for name in names:
            model = load_model(name, options)
            route, body, content_type = _request(model.doc, name)
            pipeline = _pipeline(model, body, min(args.seconds, 4.0))
            del model  # its session (GPU memory included) goes before the service's load test
            for concurrency in (1, 16):
                r = _load(server.url + route, body, content_type, concurrency, args.seconds)
                rows.append({"model": name, "concurrency": concurrency, **r, "pipeline_rps": pipeline,
                             "ratio": r["rps"] / pipeline if pipeline else float("nan")})
                Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
