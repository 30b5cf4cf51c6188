"""A real `bentoml serve service.service:Biomed` with two workers: concurrency, batching, metrics, no torch,
Prometheus scraping it, and a clean SIGTERM shutdown. Slow: one server start for the module.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import psutil
import pydicom
import pytest

from conftest import METRIC_LABELS
import yaml

try:
    from tests.prom import free_port, running_prometheus, wait_for_query
    from tests.tools import REPO, require_tool
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from prom import free_port, running_prometheus, wait_for_query
    from tools import REPO, require_tool

pytestmark = pytest.mark.slow


CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
TOKEN = "serve-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
READY_TIMEOUT_S = 120


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen
    log: Path

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _bentoml() -> str:
    exe = Path(sys.executable).parent / "bentoml"
    return str(exe) if exe.exists() else "bentoml"


@pytest.fixture(scope="module")
def server(demo_models: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "bentoml.log"
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR" and not k.startswith("BIOMED_MAX")}
    env.update({"BIOMED_WORKERS": "2", "BIOMED_API_TOKEN": TOKEN, "BIOMED_INTRA_OP_THREADS": "1",
                "BENTOML_HOME": os.environ["BENTOML_HOME"], "BENTOML_DO_NOT_TRACK": "True", "PYTHONUNBUFFERED": "1"})
    with open(log, "wb") as out:
        process = subprocess.Popen([_bentoml(), "serve", "service.service:Biomed", "--host", "127.0.0.1",
                                    "--port", str(port)], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", port, process, log)
    try:
        _wait_ready(srv)
        yield srv
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the session this test started
            process.wait(timeout=10)


def _wait_ready(srv: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if srv.process.poll() is not None:
            pytest.fail(f"bentoml serve exited with {srv.process.returncode}:\n{srv.tail()}")
        try:
            if httpx.get(f"{srv.url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"bentoml serve not ready within {READY_TIMEOUT_S} s:\n{srv.tail()}")


def _tree(pid: int) -> list:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def scrape(url: str) -> dict[str, list]:
    from prometheus_client.parser import text_string_to_metric_families

    r = httpx.get(f"{url}/metrics", timeout=10)  # no token: /metrics stays open
    assert r.status_code == 200
    return {f.name: f.samples for f in text_string_to_metric_families(r.text) if f.name.startswith("biomed_")}


def _traffic(url: str, n: int, concurrency: int) -> list[tuple[str, int, str]]:
    ct = CT_SMALL.read_bytes()
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), int(rng.integers(50, 450)))) for _ in range(n)]

    with httpx.Client(base_url=url, headers=AUTH, timeout=120,
                      limits=httpx.Limits(max_connections=concurrency)) as client:

        def one(i: int) -> tuple[str, int, str]:
            if i % 2:
                r = client.post("/predict_image", files={"file": ("ct.dcm", ct, "application/dicom")})
                ok = r.status_code == 200 and len(r.json()["predictions"]) == 1
            else:
                r = client.post("/predict_dna", json={"sequences": [seqs[i], {"id": f"s{i}", "sequence": seqs[i][::-1]}]})
                ok = r.status_code == 200 and [p["id"] for p in r.json()["predictions"]] == ["0", f"s{i}"]
            return ("image" if i % 2 else "dna", r.status_code if ok else -r.status_code, r.text[:200])

        with ThreadPoolExecutor(concurrency) as pool:
            return list(pool.map(one, range(n)))


def test_concurrent_requests_batch_and_metrics(server: Server) -> None:
    results = _traffic(server.url, 200, concurrency=24)
    failed = [r for r in results if r[1] != 200]
    assert not failed, failed[:5]
    # the auth contract holds on the real server too
    assert httpx.post(f"{server.url}/predict_dna", json={"sequences": ["ACGT"]}).status_code == 401
    assert httpx.get(f"{server.url}/readyz").status_code == 200 and httpx.get(f"{server.url}/livez").status_code == 200

    families = scrape(server.url)
    for name, labels in METRIC_LABELS.items():
        assert name in families, f"{name} missing from /metrics"
        for s in families[name]:
            if not s.name.endswith("_created"):
                assert set(s.labels) - {"le"} == labels, (name, s.labels)
    batch = families["biomed_batch_size"]
    for model in ("demo-image", "demo-dna"):
        count = sum(s.value for s in batch if s.name.endswith("_count") and s.labels["model"] == model)
        total = sum(s.value for s in batch if s.name.endswith("_sum") and s.labels["model"] == model)
        at_most_one = sum(s.value for s in batch if s.name.endswith("_bucket") and s.labels["model"] == model
                          and float(s.labels["le"]) == 1.0)
        assert count > 0 and total / count > 1 and at_most_one < count, (model, count, total, at_most_one)
    images = sum(s.value for s in families["biomed_predictions"] if s.name.endswith("_total")
                 and s.labels["model"] == "demo-image")
    assert images >= 100  # summed over both workers
    assert {s.labels["model"] for s in families["biomed_model_info"] if s.value == 1} == {"demo-image", "demo-dna", "demo-volume"}  # the default models
    assert {"dicom", "dna"} <= {s.labels["kind"] for s in families["biomed_preprocess_seconds"]}
    assert ("predict_dna", "unauthorized") in {(s.labels["endpoint"], s.labels["reason"])
                                               for s in families["biomed_rejected_requests"] if s.value > 0}


def test_two_workers_and_no_torch_in_any_process(server: Server) -> None:
    procs = _tree(server.process.pid)
    maps = {}
    for p in procs:
        try:
            maps[p.pid] = Path(f"/proc/{p.pid}/maps").read_text()
        except (FileNotFoundError, ProcessLookupError, psutil.NoSuchProcess):
            continue
    with_ort = [pid for pid, text in maps.items() if "onnxruntime" in text]
    assert len(with_ort) >= 2, f"expected two workers with onnxruntime loaded; process tree: {[p.cmdline() for p in procs]}"
    with_torch = [pid for pid, text in maps.items() if "libtorch" in text or "/torch/" in text]
    assert not with_torch, f"torch is loaded in {with_torch}"


def _prometheus_config(tmp: Path, port: int) -> Path:
    source = REPO / "deploy" / "prometheus"
    doc = yaml.safe_load((source / "prometheus.yml").read_text())
    [job] = [j for j in doc["scrape_configs"] if j.get("static_configs")]
    job["static_configs"][0]["targets"] = [f"127.0.0.1:{port}"]
    job["scrape_interval"] = "1s"
    doc["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    doc["scrape_configs"] = [job]
    shutil.copytree(source / "rules", tmp / "rules")
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(doc))
    return config


def test_prometheus_scrapes_the_service(server: Server, tmp_path: Path) -> None:
    require_tool("prometheus", "apt-get install prometheus")
    config = _prometheus_config(tmp_path, server.port)
    job = yaml.safe_load(config.read_text())["scrape_configs"][0]["job_name"]
    with running_prometheus(config) as prom:
        wait_for_query(prom.url, f'up{{job="{job}"}} == 1', timeout_s=30)
        assert all(r[1] == 200 for r in _traffic(server.url, 20, concurrency=8))
        served = sum(s.value for s in scrape(server.url)["biomed_predictions"] if s.name.endswith("_total"))
        result = wait_for_query(prom.url, f'sum(biomed_predictions_total{{job="{job}"}})', timeout_s=30,
                                until=lambda r: bool(r) and float(r[0]["value"][1]) >= served)
        assert float(result[0]["value"][1]) == served
        labelled = wait_for_query(prom.url, 'biomed_predictions_total{model="demo-image"}')
        assert all(r["metric"]["service"] == "biomed-serve" and "label" in r["metric"] for r in labelled)
        assert wait_for_query(prom.url, "biomed_model_info == 1")


def test_sigterm_exits_cleanly(server: Server) -> None:
    procs = _tree(server.process.pid)
    assert len(procs) >= 3
    server.process.send_signal(signal.SIGTERM)
    try:
        code = server.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail(f"bentoml serve did not exit within 60 s of SIGTERM:\n{server.tail()}")
    _, alive = psutil.wait_procs(procs, timeout=15)
    assert not alive, f"processes left behind: {[p.pid for p in alive]}"
    log = server.tail()
    assert code == 0, f"exit code {code}:\n{log}"
    assert "Traceback" not in log, log
