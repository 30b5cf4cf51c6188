"""The in-process cases: runtime (onnxruntime vs PyTorch eager), preprocessing, the plain-loop pipeline.

torch is imported inside ``runtime`` only; everything else here is serving code. What differs by kind
(random rows, one request in-process, preprocessing rows) is a function here that ``bench.kinds`` names
for its kind; the cases take it as an argument.
"""

from __future__ import annotations

import json
import statistics
import time
from io import BytesIO
from typing import Any, Callable

import numpy as np

from bench.inputs import Model, random_sequence
from biomed.preprocess import dna
from biomed.preprocess.image import Limits, load_image


ROUNDS = 5  # the runtime case alternates engines this many times per batch size


def timed(fn: Callable[[], Any], min_time_s: float, min_reps: int = 3, warmup: int = 2) -> list[float]:
    """Seconds per call of ``fn``: at least ``min_reps`` calls and ``min_time_s`` in total, after a warm-up."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_time_s:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _session(model: Model, providers: tuple[str, ...] | None = None) -> tuple[Any, str]:
    """A session made exactly as the service makes it (its options; providers from the env unless given)."""
    from dataclasses import replace

    from biomed.runtime import make_session
    from service.config import ServiceConfig

    options = ServiceConfig.from_env().runtime_options()
    if providers is not None:
        options = replace(options, providers=providers)
    return make_session(model.path, options)


Rows = Callable[[np.random.Generator, list[int]], np.ndarray]  # random model input of a shape (a kind's, bench.kinds)
OneRequest = Callable[[Model, bytes, Any, str], Callable[[], None]]  # (model, request, session, input) -> one request


def pixel_rows(rng: np.random.Generator, shape: list[int]) -> np.ndarray:
    """Random image rows: float32 in [0, 1)."""
    return rng.random(shape, dtype=np.float32)


def base_rows(rng: np.random.Generator, shape: list[int]) -> np.ndarray:
    """Random DNA rows: base codes 0-3 (ACGT), uint8."""
    return rng.integers(0, 4, size=shape).astype(np.uint8)


def _example(model: Model, batch: int, rows: Rows, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = [batch if isinstance(s, str) else int(s) for s in model.doc["input"]["shape"]]
    return rows(rng, shape)


def runtime(model: Model, batches: tuple[int, ...], min_time_s: float, rows: Rows,
            tensorrt: bool = False) -> list[dict]:
    """Samples/s of onnxruntime and PyTorch eager on the same weights (rebuilt from the ONNX file), on ``rows``."""
    import torch

    from training.export import WithActivation, rebuild_from_onnx

    net = WithActivation(rebuild_from_onnx(model.path), model.doc["multilabel"]).eval()
    engines: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    sessions = [("onnxruntime-cpu", ("cpu",))]
    sessions += [("onnxruntime-cuda", ("cuda",))] + ([("onnxruntime-tensorrt-fp16", ("tensorrt",))] if tensorrt else [])
    for label, providers in sessions:
        try:
            session, provider = _session(model, providers)
        except Exception:  # noqa: BLE001 - provider not usable on this host
            continue
        if label != "onnxruntime-cpu" and provider == "CPUExecutionProvider":
            continue
        name = session.get_inputs()[0].name
        engines[label] = lambda x, s=session, n=name: s.run(None, {n: x})[0]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        module = net.to(device)

        def eager(x: np.ndarray, m: torch.nn.Module = module, d: str = device) -> np.ndarray:
            with torch.inference_mode():
                return m(torch.from_numpy(x).to(d)).cpu().numpy()

        engines[f"torch-eager-{device}"] = eager
    out = []
    for batch in batches:
        x = _example(model, batch, rows)
        reference = engines["torch-eager-cpu"](x)
        times: dict[str, list[float]] = {label: [] for label in engines}
        for _ in range(ROUNDS):  # engines take turns, so each sees the same background load
            for label, fn in engines.items():
                times[label] += timed(lambda f=fn: f(x), min_time_s / ROUNDS, min_reps=2, warmup=1)
        for label, fn in engines.items():
            median = statistics.median(times[label])
            out.append({"model": model.name, "engine": label, "batch": batch, "ms_per_batch": median * 1e3,
                        "samples_per_s": batch / median, "max_abs_diff": float(np.abs(fn(x) - reference).max())})
    for row in out:
        base = next(r for r in out if r["batch"] == row["batch"] and r["engine"] == "torch-eager-cpu")
        row["vs_torch_cpu"] = row["samples_per_s"] / base["samples_per_s"]
        if row["engine"].startswith("torch"):
            row["threads"] = torch.get_num_threads()
    return out


def naive_dicom(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """pydicom's defaults: dcmread, pixel_array, Modality LUT, the file's VOI LUT, min-max to [0, 1], PIL resize."""
    import pydicom
    from PIL import Image
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(BytesIO(data))
    arr = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    arr = (arr - lo) / (hi - lo or 1.0)
    if ds.PhotometricInterpretation == "MONOCHROME1":
        arr = 1.0 - arr
    return np.asarray(Image.fromarray(arr).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def python_encode(sequence: str) -> np.ndarray:
    """The pure-Python reference: one dict lookup per character."""
    table = {b: i for i, b in enumerate("ACGTN")} | {b.lower(): i for i, b in enumerate("ACGTN")}
    return np.frombuffer(bytes([table[c] for c in sequence]), dtype=np.uint8)


def dicom_preprocess(image: Model, dicom_bytes: bytes, min_time_s: float) -> list[dict]:
    """Per-image DICOM pipeline: ours against pydicom's defaults, on ``dicom_bytes``."""
    spec = image.image_spec
    ours = statistics.median(timed(lambda: load_image(dicom_bytes, spec, Limits()), min_time_s))
    naive = statistics.median(timed(lambda: naive_dicom(dicom_bytes, spec.size), min_time_s))
    return [{"case": "dicom", "impl": name, "ms": s * 1e3, "per_s": 1 / s, "unit": "images/s", "vs_naive": naive / s}
            for name, s in (("biomed load_image", ours), ("naive pydicom", naive))]


def no_preprocess(model: Model, request: bytes, min_time_s: float) -> list[dict]:
    """No per-request preprocessing rows of its own (a kind whose encoding rows are ``encoding``)."""
    return []


def encoding(encode_mb: tuple[float, ...], python_mb: float, min_time_s: float) -> list[dict]:
    """DNA encoding throughput: numpy's lookup table against pure Python (no model needed: every run has them)."""
    rows = []
    longest = random_sequence(int(max(encode_mb) * 1e6), seed=3)
    short_seq = longest[: int(python_mb * 1e6)]
    slow = statistics.median(timed(lambda: python_encode(short_seq), min_time_s, min_reps=2, warmup=1))
    slow_mb = len(short_seq) / 1e6 / slow
    for mb in encode_mb:
        seq = longest[: int(mb * 1e6)]
        fast_mb = len(seq) / 1e6 / statistics.median(timed(lambda s=seq: dna.encode(s), min_time_s))
        rows.append({"case": "dna_encode", "impl": f"biomed dna.encode (numpy LUT), {mb:g} Mb", "per_s": fast_mb,
                     "unit": "MB/s", "bases": len(seq), "vs_naive": fast_mb / slow_mb})
    rows.append({"case": "dna_encode", "impl": f"pure Python dict lookup, {python_mb:g} Mb", "per_s": slow_mb,
                 "unit": "MB/s", "bases": len(short_seq), "vs_naive": 1.0})
    return rows


def image_request(model: Model, request: bytes, session: Any, name: str) -> Callable[[], None]:
    """One image request in-process: decode and preprocess the file, one onnxruntime call."""
    spec, limits = model.image_spec, Limits()

    def one() -> None:
        x, _ = load_image(request, spec, limits)
        session.run(None, {name: np.ascontiguousarray(x, dtype=np.float32)})

    return one


def dna_request(model: Model, request: bytes, session: Any, name: str) -> Callable[[], None]:
    """One DNA request in-process: parse the JSON body, encode and tile, both strands in one call, averaged."""
    length, stride = model.length, int(model.doc["preprocess"]["stride"])

    def one() -> None:
        body = json.loads(request)
        windows = np.concatenate([dna.tile(dna.encode(s), length, stride).codes for s in body["sequences"]])
        out = session.run(None, {name: np.concatenate([windows, dna.reverse_complement(windows)])})[0]
        _ = (out[: len(windows)] + out[len(windows):]) / 2

    return one


def pipeline_runner(model: Model, request: bytes, one_request: OneRequest) -> Callable[[float], dict]:
    """Decode + preprocess + onnxruntime in a plain loop, one request at a time, one process: ``run(seconds)``.

    ``one_request`` is the kind's (``bench.kinds``). The session is made once; each call measures
    anew (the bench calls it once per round).
    """
    session, provider = _session(model)
    one = one_request(model, request, session, session.get_inputs()[0].name)

    def run(seconds: float) -> dict:
        times = timed(one, seconds, min_reps=10, warmup=3)
        median = statistics.median(times)  # robust to other work on the machine: 1/median, a typical request's rate
        return {"model": model.name, "provider": provider, "requests": len(times), "rps": 1.0 / median,
                "mean_rps": len(times) / sum(times), "p50_ms": median * 1e3}

    return run


def pipeline(model: Model, request: bytes, seconds: float, one_request: OneRequest) -> dict:
    """Requests/s of decode + preprocess + onnxruntime in a plain loop (``pipeline_runner``), measured once."""
    return pipeline_runner(model, request, one_request)(seconds)
