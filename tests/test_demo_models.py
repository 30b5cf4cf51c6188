"""The full demo build (`make demo-models`): the three models in the store, held-out AUROC >= 0.95, above the baseline
(the volume model on >= 100 held-out series), and occlusion peaks in the planted lesions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from biomed import metadata


@pytest.mark.slow
def test_demo_models_meet_the_bar(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path / "store"), "BIOMED_PROGRESS": "0"}
    started = time.monotonic()
    build = subprocess.run([sys.executable, "-m", "cli", "demo-models", "--workdir", str(tmp_path / "demo")],
                           env=env, capture_output=True, text=True, timeout=1200)
    assert build.returncode == 0, build.stderr[-2000:]
    print(f"demo-models took {time.monotonic() - started:.0f} s")
    listed = subprocess.run([sys.executable, "-m", "cli", "models", "--json"], env=env, capture_output=True,
                            text=True, timeout=120, check=True)
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["demo-image"]["kind"] == "image" and rows["demo-dna"]["kind"] == "dna"
    assert rows["demo-volume"]["kind"] == "volume"
    for name in ("demo-image", "demo-dna", "demo-volume"):
        path = next((tmp_path / "store" / "models" / name).glob("*/model.onnx"))
        doc = metadata.read(path)
        test, base = doc["training"]["metrics"], doc["training"]["baseline"]
        for task, auroc in test["auroc"].items():
            assert auroc >= 0.95, (name, task, auroc)
        assert test["auroc_macro"] > base["auroc_macro"], (name, test["auroc_macro"], base["auroc_macro"])
        card = (path.parent / "README.md").read_text()
        assert f"{test['auroc_macro']:.3f}" in card
    # The image analogue of the ISM check: on the held-out images with a lesion, the occlusion map of the lesion's
    # class (default patch and stride) peaks in the lesion, grown by one patch (lesions are a few pixels at 64x64).
    from training.demo.dicom_demo import occlusion_hits

    image_model = next((tmp_path / "store" / "models" / "demo-image").glob("*/model.onnx"))
    demo = tmp_path / "demo"
    hits, images = occlusion_hits(image_model, demo / "image", demo / "runs" / "image" / "split.json")
    print(f"occlusion peak in the lesion: {hits}/{images}")
    assert images >= 40 and hits >= 0.9 * images, (hits, images)
    # The same in 3D: on the held-out series with a lesion, the 3D occlusion map's peak in the lesion grown by one box.
    from training.demo.volume_demo import occlusion_hits as volume_hits

    volume_model = next((tmp_path / "store" / "models" / "demo-volume").glob("*/model.onnx"))
    assert metadata.read(volume_model)["training"]["split"]["test"] >= 100
    hits, series = volume_hits(volume_model, demo / "volume", demo / "runs" / "volume")
    print(f"3D occlusion peak in the lesion: {hits}/{series}")
    assert series >= 40 and hits >= 0.9 * series, (hits, series)
