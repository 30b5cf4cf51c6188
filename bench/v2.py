"""The Open Inference Protocol v2 rows of ``biomed bench``: the same work as the native endpoint, in binary v2.

The image request is the same DICOM file as ``/predict_image``'s upload, as one BYTES element ``file``; the
DNA request the same sequence as ``/predict_dna``'s body, as one BYTES element ``sequence``. Both ask for
binary outputs, as tritonclient does by default. wrk sends the body with ``bench/wrk/v2.lua``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable

from bench.inputs import Model
from biomed import kinds

CONCURRENCY = (1, 16)  # the v2 rows' concurrencies (those of the run's own that are among these)


def file_element(request_file: Path) -> bytes:
    """The element of an upload: the whole file, as ``/predict_image`` receives it."""
    return request_file.read_bytes()


def sequence_element(request_file: Path) -> bytes:
    """The element of a DNA body: its one sequence, as ``/predict_dna`` receives it."""
    return json.loads(request_file.read_text())["sequences"][0].encode()


def body(model: Model, request_file: Path, out: Path, element: Callable[[Path], bytes]) -> tuple[Path, int]:
    """Write the binary v2 request for ``model`` doing the native request's work; return it and its JSON length.

    ``element`` turns the native request file into the one BYTES element of the kind's person input
    (``biomed.kinds``: ``file``, ``sequence``); its kind's entry in ``bench.kinds`` says which.
    """
    data = element(request_file)
    blob = struct.pack("<I", len(data)) + data
    header = json.dumps({"inputs": [{"name": kinds.get(model.kind).person.name, "shape": [1], "datatype": "BYTES",
                                     "parameters": {"binary_data_size": len(blob)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(header + blob)
    return out, len(header)


def env(path: Path, header_length: int) -> dict[str, str]:
    """What ``bench/wrk/v2.lua`` reads."""
    return {"BENCH_BODY": str(path), "BENCH_HEADER_LENGTH": str(header_length)}


def ratios(results: dict) -> list[dict]:
    """v2 binary ÷ native req/s for each model and concurrency measured in the same interleaved rounds."""
    native = {(r["model"], r["concurrency"]): r for r in results.get("service", [])}
    rows = []
    for v2 in results.get("v2_binary", []):
        n = native.get((v2["model"], v2["concurrency"]))
        if n is None:
            continue
        rows.append({"model": v2["model"], "concurrency": v2["concurrency"], "native_rps": n["rps"],
                     "native_path": n["endpoint"], "v2_rps": v2["rps"], "v2_per_round": v2.get("per_round", ""),
                     "v2_p50_ms": v2["p50_ms"], "v2_p99_ms": v2["p99_ms"], "native_p99_ms": n["p99_ms"],
                     "v2_of_native": v2["rps"] / n["rps"] if n["rps"] else float("nan"), "non_2xx": v2["non_2xx"]})
    return rows
