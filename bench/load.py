"""The served cases: wrk sweeps of our service and the framework's floor, batching on/off, ISM, start-up."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from bench import wrk
from bench.inputs import Model, random_sequence
from bench.server import Server, http, post_json

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
    label: str = ""  # how its rows name it (default: the model's name), e.g. the model and the request's size

    @property
    def name(self) -> str:
        return self.label or self.model.name


@dataclass(frozen=True)
class Endpoints:
    """Where wrk sends a kind's requests: the script, the env variable naming the file, each server's route."""

    script: str
    file_env: str  # BENCH_FILE (a file uploaded as multipart) or BENCH_BODY (a body sent as it is)
    path: str  # our endpoint
    mounted: str  # the floor's Starlette route
    api: str  # the floor's @bentoml.api endpoint


def target(model: Model, request_file: Path, endpoints: Endpoints, label: str = "") -> Target:
    """What wrk sends for ``model``: ``request_file`` to ``endpoints`` (its kind's, ``bench.kinds``)."""
    e = endpoints
    return Target(model, e.script, {e.file_env: str(request_file)}, e.path, e.mounted, e.api, label)


def ceiling(pipeline_rps: float, floor_rps: float) -> float:
    """Throughput when each request costs the pipeline's time plus the framework's: 1 / (1/pipeline + 1/floor)."""
    if pipeline_rps <= 0 or floor_rps <= 0:
        raise ValueError(f"throughputs must be positive; got pipeline={pipeline_rps}, floor={floor_rps}")
    return 1.0 / (1.0 / pipeline_rps + 1.0 / floor_rps)


def overhead_ms(service_rps: float, pipeline_rps: float, floor_rps: float) -> float:
    """Per-request time of the service beyond the pipeline and the floor: 1000/service - 1000/pipeline - 1000/floor."""
    return 1000.0 / service_rps - 1000.0 / pipeline_rps - 1000.0 / floor_rps


@dataclass(frozen=True)
class Arm:
    """One side of a comparison: a server and the endpoint wrk loads, or an in-process loop (the pipeline)."""

    label: str
    server: Server | None = None
    path: str = ""
    local: Callable[[float], float] | None = None  # seconds -> requests/s, run in this process
    script: str = ""  # its own wrk script and BENCH_* env (default: the target's)
    env: dict[str, str] | None = None
    only: tuple[int, ...] = ()  # the concurrencies it runs at (default: every one)
    run: Callable[[int, float], dict] | None = None  # another load generator: (concurrency, seconds) -> a wrk-like row

    def wrk_args(self, t: "Target") -> tuple[str, dict[str, str]]:
        return self.script or t.script, t.env if self.env is None else self.env


def per_round(rates: list[float]) -> dict:
    """Each round's req/s, as numbers and as text ('566 / 611 / 590'): how far the machine drifted under one point."""
    return {"rps_rounds": rates, "per_round": " / ".join(f"{v:.0f}" for v in rates)}


def combine(runs: list[dict]) -> dict:
    """Rounds of one arm as one figure: requests over seconds; the median p50/p90 and the worst p99; counts summed."""
    statuses: dict[str, int] = {}
    for r in runs:
        for code, n in r["statuses"].items():
            statuses[code] = statuses.get(code, 0) + n
    requests, seconds = sum(r["requests"] for r in runs), sum(r["seconds"] for r in runs)
    return {"requests": requests, "seconds": seconds, "rps": requests / seconds if seconds else float("nan"),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p90_ms": statistics.median(r["p90_ms"] for r in runs), "p99_ms": max(r["p99_ms"] for r in runs),
            "statuses": statuses, "socket_errors": sum(r["socket_errors"] for r in runs),
            "wrk_non_2xx": sum(r["wrk_non_2xx"] for r in runs), "non_2xx": sum(r["non_2xx"] for r in runs),
            "rounds": len(runs), **per_round([r["rps"] for r in runs])}


def interleaved(arms: list[Arm], t: Target, concurrencies: tuple[int, ...], seconds: float, rounds: int,
                measure: Callable[[Arm], dict] | None = None) -> dict[str, list[dict]]:
    """wrk against every arm at each concurrency, the arms taking turns in ``rounds`` rounds.

    On a shared machine the background load drifts over minutes; arms measured in alternation
    see the same drift, so their ratio holds where figures taken minutes apart do not. Each
    arm gets a short discarded warm-up run first. ``measure(arm)`` (optional) is read before and
    after every run; its differences are summed into the row (``deltas``).
    """
    for arm in arms:
        if arm.run is not None:
            arm.run(max(concurrencies), min(seconds, 1.0))
        elif arm.server is not None:
            script, env = arm.wrk_args(t)
            wrk.run(arm.server.url + arm.path, script, max(concurrencies), min(seconds, 1.0), env)
    rows: dict[str, list[dict]] = {arm.label: [] for arm in arms}
    for c in concurrencies:
        runs: dict[str, list[dict]] = {arm.label: [] for arm in arms}
        deltas: dict[str, dict[str, float]] = {arm.label: {} for arm in arms}
        for r in range(rounds):
            for arm in arms[r % len(arms):] + arms[: r % len(arms)]:  # rotate who goes first
                if arm.only and c not in arm.only:
                    continue
                if arm.local is not None:
                    runs[arm.label].append({"rps": arm.local(seconds)})
                    continue
                before = measure(arm) if measure else {}
                if arm.run is not None:
                    runs[arm.label].append(arm.run(c, seconds))
                else:
                    script, env = arm.wrk_args(t)
                    runs[arm.label].append(wrk.run(arm.server.url + arm.path, script, c, seconds, env).to_dict())
                after = measure(arm) if measure else {}
                for key in after:
                    deltas[arm.label][key] = deltas[arm.label].get(key, 0.0) + after[key] - before[key]
        for arm in arms:
            if arm.only and c not in arm.only:
                continue
            if arm.local is not None:  # a rate per round (1/median request time): their median
                rates = [r["rps"] for r in runs[arm.label]]
                rows[arm.label].append({"model": t.name, "concurrency": c, "rps": statistics.median(rates),
                                        **per_round(rates)})
                continue
            rows[arm.label].append({"model": t.name, "endpoint": arm.path, "concurrency": c,
                                    **combine(runs[arm.label]), **deltas[arm.label]})
    return rows


def batch_rows(server: Server, model: str) -> dict[str, float]:
    """Inference calls and rows so far for ``model``, from the service's biomed_batch_size histogram."""
    status, body = http("GET", server.url + "/metrics")
    totals = {"inference_calls": 0.0, "inference_rows": 0.0}
    for line in body.decode().splitlines():
        for suffix, key in (("count", "inference_calls"), ("sum", "inference_rows")):
            if line.startswith(f"biomed_batch_size_{suffix}{{") and f'model="{model}"' in line:
                totals[key] += float(line.rsplit(" ", 1)[1])
    return totals


def batching(on: Server, off: Server, t: Target, concurrency: int, seconds: float, rounds: int) -> list[dict]:
    """Throughput at one concurrency with batching on and off (two servers, interleaved), with rows per call."""
    arms = [Arm("on", on, t.path), Arm("off", off, t.path)]
    rows = interleaved(arms, t, (concurrency,), seconds, rounds, lambda arm: batch_rows(arm.server, t.model.name))
    out = []
    for arm in arms:
        row = rows[arm.label][0]
        calls = row["inference_calls"]
        out.append({**row, "batching": arm.label, "rows_per_call": row["inference_rows"] / calls if calls else float("nan")})
    return out


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
