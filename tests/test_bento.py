"""`bentoml build` from source: the bento holds the serving code and dependencies only (no torch, CLI, training,
demo or benchmark code)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bentoml_build_makes_a_torch_free_non_root_bento(demo_models: dict) -> None:
    bentoml = str(Path(sys.executable).with_name("bentoml"))
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True"}
    built = subprocess.run([bentoml, "build", "-o", "tag"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=600)
    assert built.returncode == 0, built.stderr[-3000:]
    tag = built.stdout.strip().splitlines()[-1].split("__tag__:")[-1].strip()
    name, version = tag.split(":")
    bento = Path(os.environ["BENTOML_HOME"]) / "bentos" / name / version
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().lower()
    assert not re.search(r"^torch\b|^torchvision\b|^triton\b", requirements, re.M), "torch must not be in the serving image"
    assert "onnxruntime-gpu" in requirements and "pydicom" in requirements
    dockerfile = (bento / "env" / "docker" / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1] not in ("root", "0"), users
    assert "torch" not in dockerfile.lower()
    src = bento / "src"
    assert (src / "service" / "service.py").exists() and (src / "biomed" / "preprocess" / "dicom.py").exists()
    assert all((src / "service" / "ui" / name).exists() for name in ("index.html", "style.css", "app.js"))  # the page
    shipped = sorted(str(p.relative_to(src)) for p in src.rglob("*.py"))
    assert all(p.startswith(("service/", "biomed/")) for p in shipped), shipped
    assert not [p for p in shipped if p.startswith(("cli/", "biomed/demo/", "biomed/bench/"))], shipped
    assert not (src / "models").exists() and not (src / "training").exists() and not (src / "bench").exists()
    assert not list(src.rglob("*.onnx"))
    bento_yaml = (bento / "bento.yaml").read_text()
    assert "demo-image" in bento_yaml and "demo-dna" in bento_yaml
    subprocess.run([bentoml, "delete", "-y", tag], env=env, capture_output=True, timeout=120)


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def _bare(requirement: str) -> str:
    """A requirement without its environment marker and extras: ``name`` + version specifier."""
    text = requirement.split(";")[0].strip()
    return re.sub(r"\[[^\]]*\]", "", text).replace(" ", "").lower()


def test_the_dependency_lists_agree() -> None:
    """pyproject.toml's dependencies are the one list: the bento's packages and the GPU kit's wheels say the same
    (the bento takes onnxruntime-gpu with its CUDA wheels; the kit pins its onnxruntime-gpu build)."""
    import yaml

    tomllib = __import__("tomllib" if sys.version_info >= (3, 11) else "tomli")  # tomli: the test extra on 3.10

    sys.path.insert(0, str(ROOT / "scripts" / "gpu"))
    import kit

    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    serving = {_bare(r) for r in listed if _name(r) not in ("onnxruntime", "onnxruntime-gpu", "bentoml")}
    bento = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"]
    assert {_bare(p) for p in bento if _name(p) != "onnxruntime-gpu"} == serving
    gpu = [r for r in listed if _name(r) == "onnxruntime-gpu"]
    assert [_bare(p) for p in bento if _name(p) == "onnxruntime-gpu"] == [_bare(r) for r in gpu]
    assert any("[cuda,cudnn]" in p for p in bento if _name(p) == "onnxruntime-gpu")
    wheels = kit.serving_wheels()
    assert {_bare(w) for w in wheels if _name(w) not in ("onnxruntime-gpu", "bentoml")} == serving
    assert kit.ONNXRUNTIME_GPU in wheels and any(_name(w) == "bentoml" for w in wheels)
