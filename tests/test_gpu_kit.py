"""scripts/gpu/kit.py, the GPU benchmark in one command, as a dry run on this CPU-only machine: the kit packed
into parts, each part received (as one device call would carry it), the parts joined and checked, then every
case run on the CPU provider with tiny timings, the service last, results.md/json written as it goes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
KIT = REPO / "scripts" / "gpu" / "kit.py"


def _kit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(KIT), *args], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=900)


@pytest.mark.slow
def test_pack_receive_run_dry(tmp_path: Path, demo_models: dict[str, str]) -> None:
    env = {**os.environ, "BIOMED_GPU_DIR": str(tmp_path / "device"), "BIOMED_PROGRESS": "0"}
    packed = _kit("pack", "--out", str(tmp_path / "kit"), "--no-wheels", "--quick", "--chunk-mb", "16", env=env)
    assert packed.returncode == 0, packed.stderr[-3000:]
    manifest = json.loads((tmp_path / "kit" / "manifest.json").read_text())
    parts = sorted((tmp_path / "kit").glob("part-*"))
    assert len(parts) == len(manifest["parts"]) >= 2 and all(p.stat().st_size <= 16 * 2**20 for p in parts)
    damaged = tmp_path / "kit" / "part-99"
    damaged.write_bytes(b"not a part")
    assert _kit("receive", str(damaged), env=env).returncode != 0  # a stray or damaged file is refused
    for part in parts:
        received = _kit("receive", str(part), env=env)
        assert received.returncode == 0, received.stderr[-2000:]
    assert "all parts here" in received.stdout
    out = tmp_path / "results"
    ran = _kit("run", "--dry-run", "--out", str(out), "--batches", "1,64", "--seconds", "0.05", "--load-seconds", "1",
               env=env)
    assert ran.returncode == 0, (ran.stdout[-2000:], ran.stderr[-3000:])
    results = json.loads((out / "results.json").read_text())
    steps = results["steps"]
    assert results["dry_run"] is True and list(steps)[:3] == ["onnxruntime", "roofline", "service"]
    models = {r["model"] for r in steps["onnxruntime"]["rows"]}
    assert {"demo-image", "demo-dna", "demo-volume", "bench-resnet18", "bench-danq", "bench-resnet3d"} <= models
    engines = {r["engine"] for r in steps["onnxruntime"]["rows"]}
    assert {"ort-cpu-fp32", "ort-cpu-fp16", "ort-cpu-fp16+iobinding"} <= engines
    roof = steps["roofline"]
    assert roof["batch"] == 64 and roof["bound"] > 0 and roof["bound"] <= min(roof["flop_bound"], roof["memory_bound"])
    service = steps["service"]
    assert {(s["model"], s["concurrency"]) for s in service} >= {("bench-resnet18", 1), ("bench-resnet18", 16),
                                                                  ("bench-resnet3d", 1), ("demo-volume", 16)}
    assert all(s["rps"] > 0 and s["non_2xx"] == 0 and s["pipeline_rps"] > 0 for s in service), service
    markdown = (out / "results.md").read_text()
    assert "DRY RUN" in markdown and "Roofline" in markdown and "service ÷ pipeline" in markdown
