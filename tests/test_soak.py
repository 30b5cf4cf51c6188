"""Soak: a real ``bentoml serve`` under mixed valid and invalid traffic at concurrency 32 for ~2 minutes.

Zero 5xx, zero dropped requests (every request gets an HTTP response), and the RSS of the server's
process tree grows less than 10 % between the end of the warm-up and the end of the run.
"""

from __future__ import annotations

import asyncio
import io
import os
import random
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

try:
    from tests import live_server
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server

SECONDS = float(os.environ.get("BIOMED_SOAK_SECONDS", "75"))
WARMUP = float(os.environ.get("BIOMED_SOAK_WARMUP", "45"))
# The default request timeout (60 s, longer than the warm-up): BentoML 1.4's own timeout middleware kept each
# request's context (~6 kB) alive that long (docs/reliability.md); service/traffic.py must not.
REQUEST_TIMEOUT = "60"
# uvicorn closes a connection idle for 5 s; a client reusing it at that moment gets a reset before its request
# reaches the server (the classic keep-alive race; proxies must likewise idle out first). Expire sooner.
KEEPALIVE = 2.0
CONCURRENCY = 32


def _ct() -> bytes:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm")).read_bytes()


def _requests() -> list[tuple[str, dict, int]]:
    """(path, httpx kwargs, expected status class): valid and invalid, images and DNA."""
    ct = _ct()
    rng = random.Random(8)
    seq = "".join(rng.choice("ACGT") for _ in range(400))
    return [
        ("/predict_dna", {"json": {"sequences": [seq[:101], {"id": "b", "sequence": seq}]}}, 2),
        ("/predict_dna", {"json": {"sequences": ["ACGTRYACGT"]}}, 4),
        ("/predict_dna", {"content": b'{"sequences": [', "headers": {"content-type": "application/json"}}, 4),
        ("/predict_image", {"files": {"file": ("ct.dcm", ct)}}, 2),
        ("/predict_image", {"files": {"file": ("ct.dcm", ct[: len(ct) // 2])}}, 4),
        ("/predict_image", {"files": {"file": ("x.bin", rng.randbytes(2048))}}, 4),
        ("/predict_fasta", {"files": {"file": ("s.fa", f">a\n{seq}\n>b\n{seq[:50]}\n".encode())}}, 2),
        ("/score_variants", {"json": {"variants": [{"sequence": seq[:101], "position": 50, "ref": seq[50],
                                                    "alt": "A" if seq[50] != "A" else "C"}]}}, 2),
        ("/score_variants", {"json": {"variants": [{"sequence": "ACGT", "position": 9, "ref": "A", "alt": "C"}]}}, 4),
        ("/explain_dna", {"json": {"sequence": seq[:120]}}, 2),
        ("/models", {}, 2),
    ]


async def _soak(url: str, until: float, counts: Counter, failures: list) -> None:
    mix = _requests()
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=CONCURRENCY, keepalive_expiry=KEEPALIVE)) as client:
        async def worker(index: int) -> None:
            i = index
            while time.monotonic() < until:
                path, kwargs, expected = mix[i % len(mix)]
                i += 7
                try:
                    r = await (client.get(path) if path == "/models" else client.post(path, **kwargs))
                except httpx.HTTPError as err:
                    counts["dropped"] += 1
                    failures.append((path, type(err).__name__))
                    continue
                counts["requests"] += 1
                counts[f"{r.status_code // 100}xx"] += 1
                if r.status_code // 100 != expected:
                    failures.append((path, r.status_code, r.text[:200]))

        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))


@pytest.mark.slow
def test_soak(tmp_path: Path, demo_models: dict[str, str]) -> None:
    with live_server.running(tmp_path / "server.log", CUDA_VISIBLE_DEVICES="",
                             BIOMED_REQUEST_TIMEOUT_S=REQUEST_TIMEOUT) as server:
        warm: Counter = Counter()
        failures: list = []
        asyncio.run(_soak(server.url, time.monotonic() + WARMUP, warm, failures))
        rss_before = server.rss()
        counts: Counter = Counter()
        started = time.monotonic()
        asyncio.run(_soak(server.url, started + SECONDS, counts, failures))
        elapsed = time.monotonic() - started
        rss_after = server.rss()
        alive = server.proc.poll() is None
        log = [line for line in server.output().splitlines()
               if any(w in line for w in ("ERROR", "Error", "Traceback", "WARNING", "exited", "killed"))]
    growth = (rss_after - rss_before) / rss_before
    print(f"\nsoak {elapsed:.0f} s at concurrency {CONCURRENCY}: {dict(counts)} (+{dict(warm)} warm-up); "
          f"RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MB ({growth:+.1%})")
    assert alive
    assert counts["5xx"] == 0 and counts["dropped"] == 0 and warm["5xx"] == 0 and warm["dropped"] == 0, (failures[:10], log[-20:])
    assert not failures, (failures[:10], log[-20:])
    assert counts["requests"] > 500
    assert growth < 0.10, f"server RSS grew {growth:.1%}"
