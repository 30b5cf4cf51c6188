"""Large DNA requests through the service against onnxruntime alone on the same number of model rows.

``/predict_dna`` with 10,000 sequences, ``/score_variants`` with 10,000 variants and ``/explain_dna``
on 5 kb (``quick``: a tenth of each): each request sent whole, one at a time, timed from the first
byte sent to the last received; onnxruntime alone runs as many rows of the model's length in the
service's 1,024-row calls in this process. The two take turns, ``rounds`` times, and the best of
each is kept (the least disturbed by the rest of the machine).
"""

from __future__ import annotations

import json
import time
import urllib.request

import numpy as np

from bench.inputs import Model
from bench.server import Server
from biomed import dna_ops
from biomed.preprocess.dna import DnaSpec

CALL_ROWS = 1024  # the service's BIOMED_MAX_DNA_BATCH_SIZE


def _sequence(rng: np.random.Generator, n: int) -> str:
    return "".join(rng.choice(list("ACGT"), n))


def requests(model: Model, quick: bool) -> list[tuple[str, str, bytes, int, int]]:
    """(case, route, JSON body, items, model rows) of each large request."""
    spec = DnaSpec.from_dict(model.doc["preprocess"])
    rng = np.random.default_rng(11)
    n, length = (1_000, 500) if quick else (10_000, 5_000)
    sequences = [_sequence(rng, spec.length) for _ in range(n)]
    variants = []
    for _ in range(n):
        q = _sequence(rng, spec.length - 1)
        at = len(q) // 2
        variants.append({"sequence": q, "position": at, "ref": q[at], "alt": "A" if q[at] != "A" else "C"})
    explain = _sequence(rng, length)
    return [
        (f"/predict_dna, {n:,} sequences of {spec.length}", "/predict_dna",
         json.dumps({"sequences": sequences, "model": model.name}).encode(), n,
         dna_ops.sequence_rows([spec.length] * n, spec, True)),
        (f"/score_variants, {n:,} variants", "/score_variants",
         json.dumps({"variants": variants, "model": model.name}).encode(), n, dna_ops.variant_rows(n, spec, True)),
        (f"/explain_dna, {length:,} bases", "/explain_dna", json.dumps({"sequence": explain, "model": model.name}).encode(),
         1, dna_ops.explain_rows(length, spec, True)),
    ]


def _post(url: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310 - our own local server
        response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
    return time.perf_counter() - started


def _onnxruntime(model: Model, rows: int) -> float:
    """Seconds for onnxruntime alone on ``rows`` rows of the model's input, in CALL_ROWS-row calls."""
    from biomed.runtime import RuntimeOptions, make_session

    session, _ = make_session(model.path, RuntimeOptions())  # as the service's sessions, on the CPU
    name = session.get_inputs()[0].name
    x = np.random.default_rng(0).integers(0, 4, (min(rows, 8 * CALL_ROWS), model.length), dtype=np.uint8)
    session.run(None, {name: x[:CALL_ROWS]})
    started = time.perf_counter()
    done = 0
    while done < rows:
        n = min(CALL_ROWS, rows - done)
        start = done % (len(x) - n + 1) if len(x) > n else 0
        session.run(None, {name: x[start : start + n]})
        done += n
    return time.perf_counter() - started


def large_requests(server: Server, model: Model, quick: bool, rounds: int) -> list[dict]:
    out = []
    for case, route, body, items, rows in requests(model, quick):
        _post(server.url + route, body)  # warm-up
        service, alone = [], []
        for _ in range(rounds):
            service.append(_post(server.url + route, body))
            alone.append(_onnxruntime(model, rows))
        best_service, best_alone = min(service), min(alone)
        out.append({"case": case, "items": items, "rows": rows, "service_s": best_service,
                    "onnxruntime_s": best_alone, "service_rows_per_s": rows / best_service,
                    "onnxruntime_rows_per_s": rows / best_alone, "ratio": best_alone / best_service,
                    "per_round": " / ".join(f"{a / s:.2f}" for s, a in zip(service, alone))})
    return out
