"""Model lifecycle on a real ``bentoml serve`` with two workers: versions side by side, a canary share, a reload
when a new export lands, a promote under wrk load, and the queue metrics under that load.

One server for the module, on a model store of its own (the versions added here never reach other modules):
``BIOMED_MODELS=demo-dna,demo-dna:V1`` (the default follows the store's newest export; V1 stays loaded) with
``BIOMED_CANARY=demo-dna:V1=10``. The tests run in order and share its state:

1. both versions answer on both doors, by ``name:version``;
2. the canary gets 10 % (± 3 points) of 2,000 requests for ``demo-dna``, the same version for the same
   ``X-Request-ID`` on every worker;
3. a new export (v3, carrying a 96 MiB initializer it reads, so its memory shows) is loaded, warmed up and made
   the default while ``/readyz`` stays 200; v2 is drained and unloaded, its ``biomed_model_info`` series gone;
4. ``biomed models promote demo-dna:v2`` under wrk at 16 connections: no failed request, v2 serving within
   seconds on both workers, v3 unloaded and its memory given back; the queue metrics move with the load.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.versions import share_point

try:
    from tests import live_server, model_store
    from tests.tools import require_tool
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server
    import model_store
    from tools import require_tool

pytestmark = pytest.mark.slow

BALLAST_MB = 96
CANARY = 10.0
SEQUENCE = "ACGTTGCAAGGCTTACGGATCCATGCATGCAATTGGCCAA" * 5
FIGURES: dict[str, object] = {}  # printed at the end of the module, for the record


@pytest.fixture(scope="module")
def v1(demo_models: dict[str, str]) -> str:
    return demo_models["dna"].split(":")[1]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, demo_models: dict[str, str], v1: str) -> Path:
    root = model_store.own_store(tmp_path_factory.mktemp("lifecycle-store"), demo_models["dna"])
    model_store.add_version(root, "demo-dna", v1, "v2")  # the newest export when the server starts
    return root


@pytest.fixture(scope="module")
def server(models: Path, v1: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[live_server.Server]:
    log = tmp_path_factory.mktemp("lifecycle") / "server.log"
    with live_server.running(log, workers=2, BIOMED_MODEL_STORE=str(models), BIOMED_MODELS=f"demo-dna,demo-dna:{v1}",
                             BIOMED_CANARY=f"demo-dna:{v1}={CANARY:g}", BIOMED_MODEL_POLL_S="0.5",
                             BIOMED_PROVIDERS="cpu", BIOMED_INTRA_OP_THREADS="1", BIOMED_MAX_DNA_BATCH_SIZE="16",
                             BIOMED_MAX_LATENCY_MS="2") as s:
        with httpx.Client(base_url=s.url, timeout=30) as c:  # both workers up (each answers once it has started)
            for _ in range(20):
                assert c.get("/models").status_code == 200
        yield s
    if FIGURES:
        print("\nlifecycle figures:", FIGURES)


def _predict(client: httpx.Client, model: str | None = "demo-dna", request_id: str | None = None,
             fresh: bool = False) -> httpx.Response:
    """``fresh``: on a new connection (a kept-alive one stays with one worker; a new one may reach either)."""
    body: dict = {"sequences": [SEQUENCE]}
    if model is not None:
        body["model"] = model
    headers = {"X-Request-ID": request_id} if request_id else {}
    return client.post("/predict_dna", json=body, headers={**headers, "Connection": "close"} if fresh else headers)


def _default_ids(n: int) -> list[str]:
    """Request ids that fall outside the canary share: their requests for demo-dna go to the default version."""
    ids = (f"default-{i}" for i in range(10 * n))
    return [i for i in ids if share_point("demo-dna", i) >= CANARY][:n]


def _families(url: str) -> dict[str, list]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {f.name: f.samples for f in text_string_to_metric_families(text) if f.name.startswith("biomed_")}


def _loaded(client: httpx.Client) -> dict[str, dict]:
    """demo-dna's versions in the worker that answers (on a new connection: either worker)."""
    models = client.get("/models", headers={"Connection": "close"}).json()["models"]
    return {m["version"]: m for m in models if m["name"] == "demo-dna"}


def _reloads(url: str) -> dict[str, float]:
    """biomed_model_reloads_total by outcome, summed over the workers."""
    out: dict[str, float] = Counter()
    for s in _families(url).get("biomed_model_reloads", []):
        if s.name.endswith("_total"):
            out[s.labels["outcome"]] += s.value
    return out


def _wait(check, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout:g} s")


class ReadyWatch:
    """Polls /readyz every 50 ms in a thread; ``failures`` are the answers other than 200."""

    def __init__(self, url: str) -> None:
        self.url, self.polls, self.failures = url, 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self._stop.is_set():
                try:
                    status = c.get(f"{self.url}/readyz").status_code
                except httpx.HTTPError as err:
                    status = type(err).__name__
                self.polls += 1
                if status != 200:
                    self.failures.append(status)
                self._stop.wait(0.05)

    def __enter__(self) -> "ReadyWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _switch_time(client: httpx.Client, version: str, since: float, ids: list[str], timeout: float = 30.0) -> float:
    """Seconds from ``since`` until 20 requests in a row for demo-dna (default-routed ids) answer ``version``."""
    in_a_row, i = 0, 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = _predict(client, request_id=ids[i % len(ids)], fresh=True)
        i += 1
        assert r.status_code == 200, r.text
        in_a_row = in_a_row + 1 if r.json()["version"] == version else 0
        if in_a_row == 20:
            return time.monotonic() - since
        time.sleep(0.01)
    raise AssertionError(f"{version} was not the default within {timeout:g} s")


# ---------------------------------------------------------------- 1. versions side by side


def test_two_versions_served_and_addressed(server: live_server.Server, v1: str) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        loaded = _loaded(c)
        assert set(loaded) == {v1, "v2"}
        assert loaded["v2"]["default"] and not loaded[v1]["default"] and loaded[v1]["canary_percent"] == CANARY
        assert all(m["memory"]["host_bytes"] > 0 and m["memory"]["device_bytes"] is None for m in loaded.values())
        for version in (v1, "v2"):
            for _ in range(4):  # both workers, most likely
                r = _predict(c, f"demo-dna:{version}")
                assert r.status_code == 200 and r.json()["version"] == version
            r = c.post(f"/v2/models/demo-dna/versions/{version}/infer", json={
                "inputs": [{"name": "sequence", "datatype": "BYTES", "shape": [1], "data": [SEQUENCE]}]})
            assert r.status_code == 200 and r.json()["model_version"] == version, r.text
            assert c.get(f"/v2/models/demo-dna/versions/{version}/ready").json()["ready"] is True
        assert sorted(c.get("/v2/models/demo-dna").json()["versions"]) == sorted([v1, "v2"])
        assert _predict(c, "demo-dna:v9").status_code == 404
        assert c.post("/v2/models/demo-dna/versions/v9/infer", json={
            "inputs": [{"name": "sequence", "datatype": "BYTES", "shape": [1], "data": [SEQUENCE]}]}).status_code == 404
        r = c.post("/admin/models/promote", json={"model": "demo-dna:v2"})  # no BIOMED_API_TOKEN: no admin endpoint
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    info = {s.labels["version"] for s in _families(server.url)["biomed_model_info"]}
    assert info == {v1, "v2"}
    memory = {(s.labels["version"], s.labels["device"]) for s in _families(server.url)["biomed_model_memory_bytes"]}
    assert memory == {(v1, "host"), ("v2", "host")}


# ---------------------------------------------------------------- 2. canary


def test_canary_share(server: live_server.Server, v1: str) -> None:
    with httpx.Client(base_url=server.url, timeout=60, limits=httpx.Limits(max_connections=16)) as c:
        with ThreadPoolExecutor(16) as pool:
            random_split = list(pool.map(lambda _: _predict(c).json()["version"], range(2000)))
            ids = [str(uuid.UUID(int=i)) for i in range(1000)]
            by_id = list(pool.map(lambda i: _predict(c, request_id=i).json()["version"], ids))
            again = list(pool.map(lambda i: _predict(c, request_id=i).json()["version"], ids[:200]))
    share = 100 * Counter(random_split)[v1] / len(random_split)
    share_by_id = 100 * Counter(by_id)[v1] / len(by_id)
    FIGURES.update(canary_share_random=round(share, 2), canary_share_by_id=round(share_by_id, 2))
    assert abs(share - CANARY) <= 3, share
    assert abs(share_by_id - CANARY) <= 3, share_by_id
    assert again == by_id[:200]  # the same id, the same version, whichever worker answers
    routed = Counter()
    for s in _families(server.url)["biomed_model_request_seconds"]:
        if s.name.endswith("_count"):
            routed[(s.labels["version"], s.labels["route"])] += s.value
    assert routed[(v1, "canary")] >= 0.9 * (Counter(random_split)[v1] + Counter(by_id)[v1] + Counter(again)[v1])
    predictions = {s.labels["version"] for s in _families(server.url)["biomed_predictions"] if s.value > 0}
    assert {v1, "v2"} <= predictions  # counted per version


# ---------------------------------------------------------------- 3. a new export is taken up


def test_a_new_export_is_loaded_warmed_swapped_and_the_old_one_unloaded(server: live_server.Server, models: Path,
                                                                        v1: str) -> None:
    heavy = model_store.ballast(models / "demo-dna" / v1 / "model.onnx", BALLAST_MB)
    ids = _default_ids(50)
    with httpx.Client(base_url=server.url, timeout=30) as c, ReadyWatch(server.url) as ready:
        before = server.rss()
        written = time.monotonic()
        model_store.add_version(models, "demo-dna", v1, "v3", onnx=heavy)
        FIGURES["export_to_default_s"] = round(_switch_time(c, "v3", written, ids), 2)
        _wait(lambda: _reloads(server.url)["unloaded"] == 2, 30, "v2 unloaded by both workers")
        loaded = _loaded(c)
    assert not ready.failures and ready.polls > 10, ready.failures[:5]
    assert set(loaded) == {v1, "v3"} and loaded["v3"]["default"] and loaded[v1]["canary_percent"] == CANARY
    assert loaded["v3"]["memory"]["host_bytes"] >= 0.8 * BALLAST_MB * 2**20, loaded["v3"]["memory"]
    families = _families(server.url)
    assert {s.labels["version"] for s in families["biomed_model_info"]} == {v1, "v3"}
    assert {s.labels["version"] for s in families["biomed_model_memory_bytes"]} == {v1, "v3"}
    reloads = _reloads(server.url)
    assert reloads["loaded"] == 2 and reloads["unloaded"] == 2 and not reloads["failed"], reloads
    time.sleep(2)  # the trim after requests stop
    FIGURES.update(v3_host_mib_per_worker=round(loaded["v3"]["memory"]["host_bytes"] / 2**20),
                   rss_growth_with_v3_mib=round((server.rss() - before) / 2**20))


# ---------------------------------------------------------------- 4. promote under load


def test_promote_under_wrk_load(server: live_server.Server, models: Path, v1: str, tmp_path: Path) -> None:
    from bench import wrk

    require_tool("wrk", "apt-get install wrk")
    body = tmp_path / "body.json"
    body.write_text('{"sequences": ["%s"], "model": "demo-dna"}' % (SEQUENCE * 5))  # 18 rows: more than a batch
    ids = _default_ids(50)
    time.sleep(1)
    rss_with_v3 = server.rss()
    quiet = _families(server.url)
    with httpx.Client(base_url=server.url, timeout=30) as c:  # one request at a time: the queue time of an idle server
        for i in range(40):
            assert _predict(c, request_id=ids[i % len(ids)]).status_code == 200
    idle = _families(server.url)
    samples: list[float] = []
    stop = threading.Event()

    def sample_queue() -> None:
        while not stop.is_set():
            rows = sum(s.value for s in _families(server.url).get("biomed_queue_rows", []))
            samples.append(rows)
            stop.wait(0.25)

    result: dict[str, wrk.WrkResult] = {}
    runner = threading.Thread(target=lambda: result.update(run=wrk.run(
        f"{server.url}/predict_dna", "dna.lua", connections=16, seconds=14, env={"BENCH_BODY": str(body)})))
    sampler = threading.Thread(target=sample_queue, daemon=True)
    with httpx.Client(base_url=server.url, timeout=30) as c, ReadyWatch(server.url) as ready:
        runner.start()
        sampler.start()
        time.sleep(4)
        out = subprocess.run([sys.executable, "-m", "cli", "models", "--store", str(models), "promote",
                              "demo-dna:v2"], capture_output=True, text=True, timeout=120, cwd=live_server.REPO)
        promoted = time.monotonic()  # the rollout file is written: from here on it is the servers' to take up
        assert out.returncode == 0, out.stderr
        switch = _switch_time(c, "v2", promoted, ids)
        runner.join(60)
        stop.set()
        _wait(lambda: _reloads(server.url)["unloaded"] == 4, 30, "v3 unloaded by both workers")
        loaded = _loaded(c)
    run = result["run"]
    busy = _families(server.url)
    assert run.requests > 100 and run.non_2xx == 0, (run.statuses, run.socket_errors)
    assert not ready.failures, ready.failures[:5]
    assert switch < 10, switch
    assert set(loaded) == {v1, "v2"} and loaded["v2"]["default"] and loaded[v1]["canary_percent"] == 0
    assert {s.labels["version"] for s in busy["biomed_model_info"]} == {v1, "v2"}
    time.sleep(3)  # the trim a moment after requests stop
    released = rss_with_v3 - server.rss()
    assert released >= BALLAST_MB * 2**20, released / 2**20  # two workers each held the 96 MiB initializer

    def queue(families: dict[str, list]) -> tuple[float, float]:
        count = sum(s.value for s in families["biomed_queue_seconds"] if s.name.endswith("_count"))
        total = sum(s.value for s in families["biomed_queue_seconds"] if s.name.endswith("_sum"))
        return count, total

    (cq, sq), (c0, s0), (c1, s1) = queue(quiet), queue(idle), queue(busy)
    idle_mean = (s0 - sq) / (c0 - cq)
    load_mean = (s1 - s0) / (c1 - c0)
    FIGURES.update(wrk_requests=run.requests, wrk_rps=round(run.rps), wrk_p99_ms=round(run.p99_ms, 1),
                   wrk_statuses=run.statuses, promote_to_default_s=round(switch, 2),
                   rss_released_mib=round(released / 2**20), queue_mean_ms_before=round(1000 * idle_mean, 2),
                   queue_mean_ms_under_load=round(1000 * load_mean, 2), queue_rows_max=max(samples, default=0))
    assert c1 - c0 >= run.requests, (c0, c1, run.requests)  # every request's rows were queued and timed
    assert load_mean > 2 * idle_mean and max(samples) > 0, FIGURES
