"""The image explanation rows of ``biomed bench``: ``/explain_image`` on the 512x512 CT slice, default patch and stride.

Each format (JSON map, PNG overlay, DICOM object) is timed end to end through the running service (upload,
decode, the occlusion's 226 model rows through the batcher, the answer): the median of ``repeats`` requests sent
one at a time, after one warm-up. The goal is under 1 s on two CPU cores.

Alone, on the demo model in the store: ``python -m bench.explain [--repeats N]`` starts a service, measures and
prints the row.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench.inputs import Model, ct_slice, load_model
from bench.server import Server, http

FORMATS = ("json", "png", "dicom")
GOAL_S = 1.0


def explain_image(server: Server, model: Model, ct: Path, repeats: int) -> dict:
    """Median seconds of ``/explain_image`` per format on ``ct`` (a raw ``application/dicom`` body)."""
    data = ct.read_bytes()
    row: dict = {"model": model.name, "image": "512x512 CT slice", "repeats": repeats}
    for fmt in FORMATS:
        times = []
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            status, body = http("POST", f"{server.url}/explain_image?format={fmt}&model={model.name}", data,
                                "application/dicom", timeout=120)
            if status != 200:
                raise RuntimeError(f"/explain_image?format={fmt} answered {status}: {body[:200]!r}")
            if i:
                times.append(time.perf_counter() - t0)
            if fmt == "json" and not i:
                m = json.loads(body)["map"]
                row.update(patch=m["patch"], stride=m["stride"], model_rows=m["patches"] + 1)
        row[f"{fmt}_median_s"] = statistics.median(times)
        row[f"{fmt}_min_s"] = min(times)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo-image")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    model = load_model(args.model, "image")
    with tempfile.TemporaryDirectory(prefix="biomed-bench-explain-") as tmp:
        work = Path(tmp)
        server = Server("service.service:Biomed", {"BIOMED_MODELS": model.ref, "BIOMED_API_TOKEN": "",
                                                   "BIOMED_WORKERS": "1"}, work / "service.log")
        server.start()
        try:
            row = explain_image(server, model, ct_slice(work / "ct_512.dcm"), args.repeats)
        finally:
            server.stop()
    print(json.dumps(row, indent=2))
    return 0 if row["json_median_s"] < GOAL_S else 1


if __name__ == "__main__":
    raise SystemExit(main())
