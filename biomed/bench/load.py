"""The served cases: wrk sweeps of our service and the framework's floor, batching on/off, ISM, start-up."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from biomed.bench import wrk
from biomed.bench.inputs import Model, random_sequence
from biomed.bench.server import Server, http, post_json

# Batching off: one request per inference call. An image request is one row; a DNA request
# of one sequence is two rows (forward and reverse strand), so 2 rows per call is one request.
UNBATCHED_ENV = {"BIOMED_MAX_BATCH_SIZE": "1", "BIOMED_MAX_DNA_BATCH_SIZE": "2", "BIOMED_MAX_LATENCY_MS": "0"}


@dataclass(frozen=True)
class Target:
    """What wrk sends for one model: the script, its BENCH_* env, and the endpoint on each server."""

    model: Model
    script: str
    env: dict[str, str]
    path: str  # our endpoint
    mounted: str  # the floor's Starlette route
    api: str  # the floor's @bentoml.api endpoint


def target(model: Model, request_file: Path) -> Target:
    if model.kind == "image":
        return Target(model, "image.lua", {"BENCH_FILE": str(request_file)}, "/predict_image",
                      "/mounted/predict_image", "/api_image")
    return Target(model, "dna.lua", {"BENCH_BODY": str(request_file)}, "/predict_dna", "/mounted/predict_dna", "/api_dna")


def ceiling(pipeline_rps: float, floor_rps: float) -> float:
    """Throughput when each request costs the pipeline's time plus the framework's: 1 / (1/pipeline + 1/floor)."""
    if pipeline_rps <= 0 or floor_rps <= 0:
        raise ValueError(f"throughputs must be positive; got pipeline={pipeline_rps}, floor={floor_rps}")
    return 1.0 / (1.0 / pipeline_rps + 1.0 / floor_rps)


def overhead_ms(service_rps: float, pipeline_rps: float, floor_rps: float) -> float:
    """Per-request time of the service beyond the pipeline and the floor: 1000/service - 1000/pipeline - 1000/floor."""
    return 1000.0 / service_rps - 1000.0 / pipeline_rps - 1000.0 / floor_rps


def sweep(server: Server, t: Target, path: str, concurrencies: tuple[int, ...], seconds: float) -> list[dict]:
    """wrk at each concurrency against ``path``; a short discarded run first warms the server up."""
    url = server.url + path
    wrk.run(url, t.script, max(concurrencies), min(seconds, 1.0), t.env)
    rows = []
    for c in concurrencies:
        result = wrk.run(url, t.script, c, seconds, t.env)
        rows.append({"model": t.model.name, "endpoint": path, "concurrency": c, **result.to_dict()})
    return rows


def batch_rows(server: Server, model: str) -> tuple[float, float]:
    """(inference calls, rows) so far for ``model``, from the service's biomed_batch_size histogram."""
    def sample(suffix: str) -> float:
        status, body = http("GET", server.url + "/metrics")
        total = 0.0
        for line in body.decode().splitlines():
            if line.startswith(f"biomed_batch_size_{suffix}{{") and f'model="{model}"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    return sample("count"), sample("sum")


def batching(server: Server, t: Target, concurrency: int, seconds: float, mode: str) -> dict:
    """Throughput at one concurrency, with the mean rows per inference call over the run."""
    url = server.url + t.path
    wrk.run(url, t.script, concurrency, min(seconds, 1.0), t.env)
    calls0, rows0 = batch_rows(server, t.model.name)
    result = wrk.run(url, t.script, concurrency, seconds, t.env)
    calls1, rows1 = batch_rows(server, t.model.name)
    calls = calls1 - calls0
    return {"model": t.model.name, "batching": mode, "concurrency": concurrency, **result.to_dict(),
            "inference_calls": calls, "rows_per_call": (rows1 - rows0) / calls if calls else float("nan")}


def ism(server: Server, model: Model, length: int, repeats: int) -> dict:
    """Seconds for ``/explain_dna`` on a ``length``-base sequence: the median of ``repeats`` (after one warm-up)."""
    payload = {"sequence": random_sequence(length, seed=5), "model": model.name}
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        status, body = post_json(server.url + "/explain_dna", payload)
        if status != 200:
            raise RuntimeError(f"/explain_dna answered {status}: {str(body)[:200]}")
        if i:
            times.append(time.perf_counter() - t0)
    rows = len(body["scores"])
    return {"model": model.name, "bases": length, "repeats": repeats, "median_s": statistics.median(times),
            "min_s": min(times), "scores_rows": rows}
