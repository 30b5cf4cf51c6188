"""Shared fixtures: an isolated model store with tiny demo models, built once per test session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    # Before anything imports bentoml: every test uses its own model store, never ~/bentoml.
    if "BIOMED_TEST_STORE" not in os.environ:
        os.environ["BIOMED_TEST_STORE"] = tempfile.mkdtemp(prefix="biomed-test-store-")
    os.environ["BENTOML_HOME"] = os.environ["BIOMED_TEST_STORE"]
    os.environ.setdefault("BIOMED_PROGRESS", "0")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")


@pytest.fixture(scope="session")
def demo_models(demo_workdir: Path) -> dict[str, str]:
    """Tiny demo data, trained for two epochs and exported as demo-image and demo-dna (tags by kind).

    Accuracy is not the point here (see the slow demo-model test); the pipeline is.
    """
    from biomed.demo.build import build_demo_models
    from biomed.store import resolve

    build_demo_models(demo_workdir, force=False, quick=True)
    return {"image": str(resolve("demo-image").tag), "dna": str(resolve("demo-dna").tag), "workdir": str(demo_workdir)}
