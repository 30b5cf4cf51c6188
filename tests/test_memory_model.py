"""The memory model of docs/reliability.md, driven: a real server with scaled-down limits, every bounded
resource pushed to its limit at once, and the worker's resident memory sampled against
``ServiceConfig.memory_bound()`` for those limits.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from service.config import ServiceConfig

try:
    from tests import live_server
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server

LIMITS = {"BIOMED_MAX_UPLOAD_MB": "8", "BIOMED_MAX_BODIES_MB": "32", "BIOMED_MAX_DECODING_MB": "96",
          "BIOMED_MAX_DECODED_MB": "32", "BIOMED_MAX_QUEUED_MB": "8", "BIOMED_MAX_CONCURRENCY": "64"}


def test_the_bound_adds_up_the_documented_terms() -> None:
    c = ServiceConfig.from_env(LIMITS)
    mb = 2**20
    assert c.memory_bound(models=2) == (400 + 3 * 32 + 96 + 2 * 3 * 8 + 128) * mb
    # the default limits (three demo models, a fourth while a reload warms up) fit a 4 GiB pod with 0.75 GiB to spare
    assert ServiceConfig().memory_bound() < 3.25 * 2**30


def test_the_readme_s_memory_figures_are_the_bound_at_the_defaults() -> None:
    """README: "... bound a worker's memory (X MB at the defaults, Y MB with the C-STORE receiver on; logged at
    start-up ...)": the figures are ServiceConfig().memory_bound(), without and with a DICOM port, as logged."""
    import re

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    found = re.search(r"worker's memory \(([\d,]+) MB at the defaults, ([\d,]+) MB with the C-STORE receiver on",
                      " ".join(text.split()))
    assert found, "the README's memory sentence moved"
    plain, dicom = (int(v.replace(",", "")) for v in found.groups())
    receiver = ServiceConfig.from_env({"BIOMED_DICOM_PORT": "11112", "BIOMED_DICOM_ALLOWED_AETS": "STORESCU"})
    assert (plain, dicom) == (round(ServiceConfig().memory_bound() / 2**20), round(receiver.memory_bound() / 2**20))


def _big_ct(rows: int) -> bytes:
    """CT_small grown to rows x rows 16-bit (2 rows^2 bytes of pixel data), noise so nothing compresses."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = ds.Columns = rows
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.random.default_rng(rows).integers(0, 4096, (rows, rows), dtype=np.uint16).tobytes()
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


@pytest.mark.slow
def test_the_worst_case_stays_under_the_bound(tmp_path: Path, demo_models: dict[str, str]) -> None:
    bound = ServiceConfig.from_env(LIMITS).memory_bound(models=2)
    image = _big_ct(1900)  # 7.2 MB body, 7.2 MB decoded: near the upload cap
    sequence = "".join(np.random.default_rng(5).choice(list("ACGT"), 5000))
    with live_server.running(tmp_path / "server.log", CUDA_VISIBLE_DEVICES="", BIOMED_MODELS="demo-image,demo-dna",
                             **LIMITS) as server:  # the two models the bound counts (the load drives those two)
        peak, stop = [server.rss()], threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], server.rss())
                time.sleep(0.05)

        async def drive(until: float) -> dict[int, int]:
            counts: dict[int, int] = {}
            async with httpx.AsyncClient(base_url=server.url, timeout=120,
                                         limits=httpx.Limits(max_connections=64)) as client:
                async def worker(i: int) -> None:
                    while time.monotonic() < until:
                        if i % 3 == 0:
                            r = await client.post("/predict_image", content=image,
                                                  headers={"content-type": "application/dicom"})
                        elif i % 3 == 1:
                            r = await client.post("/explain_dna", json={"sequence": sequence[:2000]})  # 4.8 MB of rows
                        else:
                            r = await client.post("/predict_dna", json={"sequences": [sequence * 40]})
                        counts[r.status_code] = counts.get(r.status_code, 0) + 1

                await asyncio.gather(*(worker(i) for i in range(48)))
            return counts

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            counts = asyncio.run(drive(time.monotonic() + 20))
        finally:
            stop.set()
            sampler.join(5)
    print(f"\nworst case: {counts}; peak RSS {peak[0] / 2**20:.0f} MB, bound {bound / 2**20:.0f} MB")
    assert set(counts) <= {200, 429} and counts.get(200, 0) > 0 and counts.get(429, 0) > 0, counts
    assert peak[0] < bound, f"peak RSS {peak[0] / 2**20:.0f} MB over the bound {bound / 2**20:.0f} MB"
