"""Shared fixtures: an isolated model store with tiny demo models, built once per test session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The contract's custom metrics and their labels (docs/api.md, "Metrics").
METRIC_LABELS = {
    "biomed_inference_seconds": {"model", "version", "provider"},
    "biomed_batch_size": {"model", "version"},
    "biomed_predictions": {"model", "version", "label", "door"},
    "biomed_rejected_requests": {"endpoint", "reason"},
    "biomed_preprocess_seconds": {"kind"},
    "biomed_model_info": {"model", "version", "provider", "sha256"},
    "biomed_queue_rows": {"model", "version"},
    "biomed_queue_seconds": {"model", "version"},
    "biomed_model_memory_bytes": {"model", "version", "device"},
    "biomed_model_request_seconds": {"model", "version", "route"},
}


def pytest_configure(config: pytest.Config) -> None:
    # Before anything imports bentoml: every test uses its own model store, never ~/bentoml.
    if "BIOMED_TEST_STORE" not in os.environ:
        os.environ["BIOMED_TEST_STORE"] = tempfile.mkdtemp(prefix="biomed-test-store-")
    os.environ["BENTOML_HOME"] = os.environ["BIOMED_TEST_STORE"]
    os.environ.setdefault("BIOMED_PROGRESS", "0")
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    # BentoML's /metrics reads prometheus_client's multi-process files, as under `bentoml serve`;
    # prometheus_client picks its value class when first imported, so this must come first.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="biomed-prom-mp-"))


def inprocess_client(env: dict[str, str] | None = None) -> Iterator["TestClient"]:  # noqa: F821
    """The service in-process (``Biomed.to_asgi()`` under a TestClient) with ``env`` set while it starts."""
    from starlette.testclient import TestClient

    from live_server import asgi_app

    with pytest.MonkeyPatch.context() as mp:
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        with TestClient(asgi_app(), raise_server_exceptions=False) as client:  # the service starts here
            mp.undo()  # what was read at start-up stays in force
            yield client


def metrics_text(client: "TestClient") -> str:  # noqa: F821
    """``/metrics`` of an in-process app, or this process's multi-process files when an earlier in-process app of
    the session left BentoML's /metrics route off for this one (see ``live_server.asgi_app``)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess

    r = client.get("/metrics")
    if r.status_code == 404 and "bentoml_service_request" not in r.text:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry).decode()
    assert r.status_code == 200
    return r.text


@pytest.fixture(scope="session")
def demo_workdir() -> Path:
    """The demo data and training runs, kept beside the test store (a reused ``BIOMED_TEST_STORE`` keeps its runs)."""
    return Path(os.environ["BIOMED_TEST_STORE"]) / "demo-workdir"


@pytest.fixture(scope="session")
def demo_models(demo_workdir: Path) -> dict[str, str]:
    """Tiny demo data, trained for two epochs and exported as demo-image, demo-dna and demo-volume (tags by kind).

    Accuracy is not the point here (see the slow demo-model test); the pipeline is. A reused store without the
    runs that made its models (tests compare the served models with their training runs) is rebuilt.
    """
    from training.demo.build import build_demo_models
    from biomed.store import resolve

    runs = [demo_workdir / "runs" / kind / "split.json" for kind in ("image", "dna", "volume")]
    build_demo_models(demo_workdir, force=not all(r.is_file() for r in runs), quick=True)
    return {"image": str(resolve("demo-image").tag), "dna": str(resolve("demo-dna").tag),
            "volume": str(resolve("demo-volume").tag), "workdir": str(demo_workdir)}


@pytest.fixture(scope="session")
def shared_server(demo_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator["Server"]:  # noqa: F821
    """One real server for the whole test session, started as a user starts it (``biomed serve --port P``): the
    session's test store with demo-image, demo-dna and demo-volume, no token, a free port, and the v2 gRPC door on
    another (``env["BIOMED_GRPC_PORT"]``); stopped when the session ends.
    Tests that share it must leave it as they found it (no rollouts, no settings of their own)."""
    from live_server import free_port, running

    log = tmp_path_factory.mktemp("shared-server") / "server.log"
    with running(log, through_cli=True, BIOMED_MODELS="demo-image,demo-dna,demo-volume", BIOMED_API_TOKEN="",
                 BIOMED_GRPC_PORT=str(free_port())) as server:
        yield server
