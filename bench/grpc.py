"""The v2-over-gRPC rows of ``biomed bench``: the v2 binary request's work as a ``ModelInferRequest``, loaded
with ``h2load`` (nghttp2's HTTP/2 load generator, a C program like wrk) on one connection, as a gRPC client's
one channel carries its calls: concurrency ``c`` is ``c`` streams in flight.

h2load sees gRPC's HTTP status (200 whatever the call's outcome), so every run is checked against the
server: the calls it refused (``biomed_rejected_requests_total`` of the ``grpc_*`` endpoints) are the row's
``non_2xx``. Each row also has the server's CPU time per request (the process tree's user + system time
over the run), the per-request cost this door is compared by with the REST door.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import struct
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from bench.inputs import Model
from bench.server import Server, http
from biomed import kinds

PATH = "/inference.GRPCInferenceService/ModelInfer"


def h2load_path() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise FileNotFoundError("h2load is not installed; install it with: apt-get install nghttp2-client")
    return found


def body(model: Model, request_file: Path, out: Path, element: Callable[[Path], bytes]) -> Path:
    """Write the framed gRPC request (a 0 flag byte, the 4-byte big-endian length, the message) doing the v2
    binary request's work: the one BYTES element of the kind's person input, raw."""
    from tritonclient.grpc import service_pb2 as pb

    data = element(request_file)
    msg = pb.ModelInferRequest(model_name=model.name)
    msg.inputs.add(name=kinds.get(model.kind).person.name, datatype="BYTES", shape=[1])
    msg.raw_input_contents.append(struct.pack("<I", len(data)) + data)
    raw = msg.SerializeToString()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"\x00" + struct.pack(">I", len(raw)) + raw)
    return out


def _percentile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def run(server: Server, port: int, framed: Path, streams: int, seconds: float) -> dict:
    """One h2load run of ``seconds``, ``streams`` calls in flight on one connection; a row like ``WrkResult``'s."""
    before = refused(server)
    with tempfile.NamedTemporaryFile(prefix="h2load-", suffix=".log") as log:
        args = [h2load_path(), "-D", f"{max(seconds, 0.5):g}", "-c", "1", "-m", str(streams), "-t", "1",
                "-H", "content-type: application/grpc", "-H", "te: trailers", "-d", str(framed),
                "--log-file", log.name, f"http://127.0.0.1:{port}{PATH}"]
        proc = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, env=dict(os.environ))
        if proc.returncode != 0:
            raise RuntimeError(f"h2load failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        elapsed = sorted(int(line.split("\t")[2]) / 1e3 for line in Path(log.name).read_text().splitlines()
                         if line.count("\t") >= 2)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, "
                     r"(\d+) timeout", proc.stdout)
    took = re.search(r"finished in ([\d.]+)(ms|s),", proc.stdout)
    if done is None or took is None:
        raise ValueError("h2load printed no summary:\n" + proc.stdout[-2000:])
    secs = float(took.group(1)) / (1e3 if took.group(2) == "ms" else 1.0)
    succeeded, broken = int(done.group(2)), sum(int(g) for g in done.groups()[2:])
    calls_refused = int(refused(server) - before)
    return {"requests": succeeded, "seconds": secs, "rps": succeeded / secs if secs else float("nan"),
            "p50_ms": statistics.median(elapsed) if elapsed else float("nan"), "p90_ms": _percentile(elapsed, 0.9),
            "p99_ms": _percentile(elapsed, 0.99), "statuses": {}, "socket_errors": broken,
            "wrk_non_2xx": calls_refused, "non_2xx": broken + calls_refused}


def refused(server: Server) -> float:
    """The calls the server's gRPC door refused so far (``biomed_rejected_requests_total{endpoint=~"grpc_.*"}``);
    not those h2load itself cut short when its time was up (``client_closed_request``: as wrk's unanswered last
    requests, which no run counts)."""
    _, text = http("GET", server.url + "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines()
               if line.startswith("biomed_rejected_requests_total{") and 'endpoint="grpc_' in line
               and 'reason="client_closed_request"' not in line)


def server_cpu(server: Server) -> dict[str, float]:
    """The server's process tree's CPU seconds so far (a ``load.interleaved`` measure)."""
    import psutil

    total = 0.0
    for proc in server.processes():
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return {"server_cpu_s": total}


def ratios(results: dict) -> list[dict]:
    """gRPC ÷ REST v2 binary req/s for each model and concurrency of the same rounds, and each door's server CPU
    milliseconds per request."""
    rest = {(r["model"], r["concurrency"]): r for r in results.get("v2_binary", [])}
    rows = []
    for g in results.get("grpc", []):
        r = rest.get((g["model"], g["concurrency"]))
        if r is None:
            continue
        cost = {f"{door}_cpu_ms": 1e3 * row["server_cpu_s"] / row["requests"] if row.get("requests") and
                "server_cpu_s" in row else float("nan") for door, row in (("rest", r), ("grpc", g))}
        rows.append({"model": g["model"], "concurrency": g["concurrency"], "rest_rps": r["rps"], "grpc_rps": g["rps"],
                     "grpc_per_round": g.get("per_round", ""), "rest_p50_ms": r["p50_ms"], "grpc_p50_ms": g["p50_ms"],
                     "rest_p99_ms": r["p99_ms"], "grpc_p99_ms": g["p99_ms"], **cost,
                     "grpc_of_rest": g["rps"] / r["rps"] if r["rps"] else float("nan"),
                     "non_2xx": g["non_2xx"] + r["non_2xx"]})
    return rows
