"""A small HTTP/1.1 load generator (asyncio, keep-alive, standard library only), for machines without wrk.

Each of ``concurrency`` connections sends the same request back to back for ``seconds`` and reads
each response whole (Content-Length or chunked); the figures match what ``bench/wrk.py`` reports.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Result:
    requests: int
    seconds: float
    non_2xx: int
    errors: int
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _request(url: str, method: str, body: bytes, headers: dict[str, str]) -> tuple[str, int, bytes]:
    parts = urlsplit(url)
    head = [f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1",
            f"Host: {parts.netloc}", f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return parts.hostname or "127.0.0.1", parts.port or 80, ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    status = int((await reader.readline()).split()[1])
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.lower() == "content-length":
            length = int(value)
        elif name.lower() == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
    if chunked:
        while (size := int((await reader.readline()).strip() or b"0", 16)) > 0:
            await reader.readexactly(size + 2)
        await reader.readline()
    elif length:
        await reader.readexactly(length)
    return status


async def _connection(host: str, port: int, raw: bytes, until: float, latencies: list[float], counts: dict) -> None:
    reader = writer = None
    while time.perf_counter() < until:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(host, port)
            started = time.perf_counter()
            writer.write(raw)
            status = await _read_response(reader)  # type: ignore[arg-type]
            latencies.append(time.perf_counter() - started)
            counts["requests"] += 1
            counts["non_2xx"] += not 200 <= status < 300
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            counts["errors"] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _run(url: str, concurrency: int, seconds: float, method: str, body: bytes, headers: dict[str, str]) -> Result:
    host, port, raw = _request(url, method, body, headers)
    latencies: list[float] = []
    counts = {"requests": 0, "non_2xx": 0, "errors": 0}
    started = time.perf_counter()
    until = started + seconds
    await asyncio.gather(*(_connection(host, port, raw, until, latencies, counts) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies) or [float("nan")]
    return Result(counts["requests"], elapsed, counts["non_2xx"], counts["errors"],
                  statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3)


def load(url: str, concurrency: int, seconds: float, body: bytes = b"", method: str = "POST",
         headers: dict[str, str] | None = None) -> Result:
    """Drive ``url`` with ``concurrency`` keep-alive connections for ``seconds``."""
    return asyncio.run(_run(url, concurrency, seconds, method, body, headers or {}))
