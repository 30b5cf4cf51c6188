"""Model versions and rollouts without a real server: the settings, what a worker loads and routes, the store's
rollout file and its CLI, the canary split, series removal in multi-process mode, memory readings, and the
admin endpoint on the in-process app (its own model store, with a token).

The same on a real ``bentoml serve`` with two workers, under load: tests/test_lifecycle.py.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Iterator

import pytest

from biomed import store
from biomed.runtime import StartupError
from service.config import ServiceConfig
from service.lifecycle import Plan, desired, plans
from service.versions import Versions, share_point

try:
    from tests import model_store
    from tests.conftest import inprocess_client, metrics_text
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import model_store
    from conftest import inprocess_client, metrics_text

TOKEN = "rollout-test-token"


# ---------------------------------------------------------------- settings


def test_canary_setting_is_parsed_and_checked() -> None:
    c = ServiceConfig.from_env({"BIOMED_CANARY": "demo-dna:v2=10, demo-image:b=2.5"})
    assert c.canary == (("demo-dna", "v2", 10.0), ("demo-image", "b", 2.5))
    assert ServiceConfig.from_env({}).canary == () and ServiceConfig.from_env({}).model_poll_s == 10.0
    for bad in ("demo-dna=10", "demo-dna:v2", "demo-dna:v2=x", "demo-dna:v2=101", "demo-dna:latest=5",
                "demo-dna:a=60,demo-dna:b=50", ":v2=5"):
        with pytest.raises(ValueError, match="BIOMED_CANARY"):
            ServiceConfig.from_env({"BIOMED_CANARY": bad})


def test_the_memory_bound_counts_every_version_that_can_be_loaded_at_once() -> None:
    base = {"BIOMED_MODELS": "demo-dna:v1,demo-dna:v2", "BIOMED_MODEL_POLL_S": "0"}
    off = ServiceConfig.from_env(base)
    assert off.memory_bound() == off.memory_bound(models=2)
    watched = ServiceConfig.from_env({**base, "BIOMED_MODEL_POLL_S": "5"})
    assert watched.memory_bound() == off.memory_bound(models=3)  # a reload: the new version beside the old
    canary = ServiceConfig.from_env({**base, "BIOMED_CANARY": "demo-dna:v3=5,demo-dna:v2=5"})
    assert canary.memory_bound() == off.memory_bound(models=3)  # v3 is loaded too; v2 is already counted


# ---------------------------------------------------------------- what a worker loads and routes


def test_plans_group_the_entries_by_name() -> None:
    [dna, image] = plans(("demo-dna", "demo-image:a", "demo-dna:v1"), (("demo-dna", "v2", 10.0),))
    assert dna == Plan("demo-dna", (None, "v1"), (("v2", 10.0),)) and image == Plan("demo-image", ("a",), ())
    with pytest.raises(StartupError, match="twice"):
        plans(("demo-dna:v1", "demo-dna:v1"), ())
    with pytest.raises(StartupError, match="twice"):
        plans(("demo-dna", "demo-dna:latest"), ())
    with pytest.raises(StartupError, match="not in BIOMED_MODELS"):
        plans(("demo-dna",), (("demo-image", "v2", 5.0),))


def test_desired_versions() -> None:
    follow = Plan("m", (None,), ())
    for rollout in ({}, {"default": "latest"}):
        assert (desired(follow, "v3", rollout).default, desired(follow, "v3", rollout).needed) == ("v3", ("v3",))
    pinned = Plan("m", ("v1", "v2"), (("v2", 10.0),))
    want = desired(pinned, "v3", {})
    assert (want.default, want.canary, want.needed) == ("v1", (("v2", 10.0),), ("v1", "v2"))
    promoted = desired(pinned, "v3", {"default": "v2", "canary": {}})  # a promote ends the canary
    assert (promoted.default, promoted.canary, promoted.needed) == ("v2", (), ("v2", "v1"))
    # a promoted default replaces a bare first entry (the newest export is not kept for it); the default is no canary
    ahead = desired(follow, "v3", {"default": "v1", "canary": {"v4": 5.0, "v1": 50.0}})
    assert (ahead.default, ahead.canary, ahead.needed) == ("v1", (("v4", 5.0),), ("v1", "v4"))
    both = desired(Plan("m", (None, "v1"), ()), "v3", {"default": "v2"})  # a pinned entry stays loaded
    assert (both.default, both.needed) == ("v2", ("v2", "v1"))


def test_the_canary_split_follows_the_request_id() -> None:
    assert share_point("m", "id-1") == share_point("m", "id-1") != share_point("other", "id-1")
    points = [share_point("m", f"request-{i}") for i in range(20_000)]
    assert all(0 <= p < 100 for p in points)
    assert abs(sum(p < 10 for p in points) / len(points) - 0.10) < 0.01  # uniform enough for a 10% share

    class H:  # the router only hands handlers out
        def __init__(self, name: str) -> None:
            self.name = name

    v = Versions("m", {"v1": H("v1"), "v2": H("v2")}, "v1", (("v2", 10.0),))  # type: ignore[dict-item]
    by_id = Counter(v.route(f"id-{i}")[0].name for i in range(5000))
    at_random = Counter(v.route(None)[1] for _ in range(5000))
    assert abs(by_id["v2"] / 5000 - 0.10) < 0.02 and abs(at_random["canary"] / 5000 - 0.10) < 0.02
    assert {v.route("sticky")[0].name for _ in range(20)} == {v.route("sticky")[0].name}
    grown = Versions("m", v.handlers, "v1", (("v2", 50.0),))
    assert all(grown.route(f"id-{i}")[0].name == "v2" for i in range(5000) if v.route(f"id-{i}")[0].name == "v2")


# ---------------------------------------------------------------- the store's rollout file and the CLI


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, demo_models: dict[str, str]) -> Path:
    """A store of this module's own: demo-dna (v1, the fixture's), v2 and a broken v3; demo-image."""
    root = model_store.own_store(tmp_path_factory.mktemp("rollout-store"), demo_models["dna"], demo_models["image"])
    v1 = demo_models["dna"].split(":")[1]
    model_store.add_version(root, "demo-dna", v1, "v2", latest=False)
    model_store.add_version(root, "demo-dna", v1, "v3-broken", onnx=b"not an onnx file", latest=False)
    return root


def test_promote_and_canary_write_the_rollout_file(models: Path, demo_models: dict[str, str]) -> None:
    from cli.main import main

    folder = models / "demo-dna"
    v1 = demo_models["dna"].split(":")[1]
    try:
        assert store.promote("demo-dna:v2", models) == {"model": "demo-dna", "default": "v2", "canary": {}}
        assert store.read_rollout(folder) == {"default": "v2", "canary": {}}
        assert store.set_canary(f"demo-dna:{v1}", 15, models)["canary"] == {v1: 15.0}
        assert store.read_rollout(folder) == {"default": "v2", "canary": {v1: 15.0}}
        with pytest.raises(ValueError, match="over 100"):
            store.set_canary("demo-dna:v3-broken", 90, models)
        with pytest.raises(store.ModelNotFound):
            store.promote("demo-dna:v9", models)
        with pytest.raises(ValueError, match="exact version"):
            store.set_canary("demo-dna:latest", 5, models)
        assert main(["models", "--store", str(models), "promote", "demo-dna:latest"]) == 0
        assert store.read_rollout(folder) == {"default": "latest", "canary": {}}
        assert main(["models", "--store", str(models), "canary", "demo-dna:v2", "20"]) == 0
        assert main(["models", "--store", str(models), "promote", "demo-dna:v9"]) == 1
        assert main(["models", "--store", str(models), "canary", "demo-dna:v2"]) == 1  # no percentage
        assert store.read_rollout(folder) == {"default": "latest", "canary": {"v2": 20.0}}
        # written whole, nothing left over but the lock
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == [store.ROLLOUT_LOCK]
        (folder / store.ROLLOUT_FILE).write_text("{not json")
        assert store.read_rollout(folder) == {}  # a file that cannot be read changes nothing
    finally:
        (folder / store.ROLLOUT_FILE).unlink(missing_ok=True)


def test_models_listing_shows_the_rollout(models: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    try:
        store.promote("demo-dna:v2", models)
        store.set_canary("demo-dna:v3-broken", 5, models)
        assert main(["models", "--store", str(models), "--json"]) == 0
        rows = {(r["name"], r["version"]): r["rollout"] for r in json.loads(capsys.readouterr().out)}
        assert rows[("demo-dna", "v2")] == "default" and rows[("demo-dna", "v3-broken")] == "canary 5%"
        assert main(["models", "--store", str(models)]) == 0
        assert "ROLLOUT" in capsys.readouterr().out
        assert main(["models", "--store", str(models), "promote"]) == 1
    finally:
        (models / "demo-dna" / store.ROLLOUT_FILE).unlink(missing_ok=True)


# ---------------------------------------------------------------- metrics and memory


def test_a_removed_series_leaves_the_multiprocess_files() -> None:
    from prometheus_client import CollectorRegistry, Gauge, generate_latest, multiprocess

    from service.metrics import remove_series

    gauge = Gauge("biomed_test_removable", "test", ["model", "version"], multiprocess_mode="livemax",
                  registry=CollectorRegistry())
    other = Gauge("biomed_test_neighbour", "test", ["a"], multiprocess_mode="livemax", registry=CollectorRegistry())
    gauge.labels(model="m", version="old").set(1)
    gauge.labels(model="m", version="new").set(1)
    other.labels(a="x").set(7)

    def exposed() -> str:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry).decode()

    assert 'version="old"' in exposed()
    remove_series(gauge, model="m", version="old")
    text = exposed()
    assert 'biomed_test_removable{model="m",version="old"}' not in text
    assert 'biomed_test_removable{model="m",version="new"} 1.0' in text and 'biomed_test_neighbour{a="x"} 7.0' in text
    other.labels(a="x").set(8)  # values of the same file keep working after the rewrite
    gauge.labels(model="m", version="old").set(2)  # and a removed series can come back
    assert 'biomed_test_neighbour{a="x"} 8.0' in exposed() and 'version="old"} 2.0' in exposed()


def test_memory_readings() -> None:
    from service import footprint

    assert footprint.host_rss() > 10 * 2**20
    smi = "1234, 512\n999, 100\n1234, 16\n"
    assert footprint.parse_compute_apps(smi, 1234) == 528 * 2**20
    assert footprint.parse_compute_apps(smi, 5) is None and footprint.parse_compute_apps("No devices", 5) is None
    assert footprint.parse_used_memory("0, 2048\n1, 10\n") == 2048 * 2**20
    before = footprint.Footprint.before(on_gpu=False)
    grown = bytearray(64 * 2**20)
    cost = before.cost("CPUExecutionProvider")
    assert cost["device_bytes"] is None and cost["host_bytes"] >= 48 * 2**20
    del grown


# ---------------------------------------------------------------- the in-process app: versions, admin endpoint


@pytest.fixture(scope="module")
def client(models: Path, demo_models: dict[str, str]) -> Iterator["TestClient"]:  # noqa: F821
    v1 = demo_models["dna"].split(":")[1]
    env = {"BIOMED_MODEL_STORE": str(models), "BIOMED_MODELS": f"demo-dna:{v1},demo-image", "BIOMED_API_TOKEN": TOKEN,
           "BIOMED_MODEL_POLL_S": "0.2", "BIOMED_CANARY": "demo-dna:v2=25"}
    try:
        yield from inprocess_client(env)
    finally:
        (models / "demo-dna" / store.ROLLOUT_FILE).unlink(missing_ok=True)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _loaded(client) -> dict[str, dict]:  # type: ignore[no-untyped-def]
    r = client.get("/models", headers=AUTH)
    assert r.status_code == 200
    return {f"{m['name']}:{m['version']}": m for m in r.json()["models"]}


def _until(check, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_versions_canary_and_addressing(client, demo_models: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    v1 = demo_models["dna"].split(":")[1]
    loaded = _loaded(client)
    assert loaded[f"demo-dna:{v1}"]["default"] is True and loaded["demo-dna:v2"]["canary_percent"] == 25
    assert loaded["demo-dna:v2"]["default"] is False and loaded["demo-dna:v2"]["memory"]["host_bytes"] > 0
    assert "demo-dna:v3-broken" not in loaded
    body = {"sequences": ["ACGT" * 10]}
    for version in (v1, "v2"):
        r = client.post("/predict_dna", json={**body, "model": f"demo-dna:{version}"}, headers=AUTH)
        assert r.status_code == 200 and r.json()["version"] == version
        r = client.post(f"/v2/models/demo-dna/versions/{version}/infer", headers=AUTH, json={
            "inputs": [{"name": "sequence", "datatype": "BYTES", "shape": [1], "data": ["ACGT" * 10]}]})
        assert r.status_code == 200 and r.json()["model_version"] == version
    r = client.post("/predict_dna", json={**body, "model": "demo-dna:v9"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"] == "unknown_model"
    assert client.get("/v2/models/demo-dna/versions/v9/ready", headers=AUTH).status_code == 404
    assert sorted(client.get("/v2/models/demo-dna", headers=AUTH).json()["versions"]) == sorted([v1, "v2"])
    shares = Counter(client.post("/predict_dna", json=body, headers=AUTH).json()["version"] for _ in range(400))
    assert 0.15 < shares["v2"] / 400 < 0.35, shares
    sticky = {client.post("/predict_dna", json=body, headers={**AUTH, "X-Request-ID": "patient-batch-7"}).json()["version"]
              for _ in range(10)}
    assert len(sticky) == 1


def test_admin_promote(client, models: Path, demo_models: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    v1 = demo_models["dna"].split(":")[1]
    path = "/admin/models/promote"
    assert client.post(path, json={"model": "demo-dna:v2"}).status_code == 401
    r = client.post(path, json={"model": "demo-dna:v2"}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json() == {"model": "demo-dna", "default": "v2", "canary": {}, "serving": "v2", "previous": v1}
    loaded = _loaded(client)
    assert loaded["demo-dna:v2"]["default"] and loaded[f"demo-dna:{v1}"]["canary_percent"] == 0  # the canary ended
    assert client.post("/predict_dna", json={"sequences": ["ACGT"]}, headers=AUTH).json()["version"] == "v2"
    r = client.post(path, json={"model": "demo-dna:v3-broken"}, headers=AUTH)
    assert r.status_code == 422 and r.json()["error"] == "load_failed", r.text
    assert store.read_rollout(models / "demo-dna") == {"default": "v2", "canary": {}}  # put back as it was
    for body, status, code in (({"model": "demo-dna:v9"}, 404, "unknown_model"), ({"model": "other:v1"}, 404,
                                "unknown_model"), ({"model": ""}, 400, "invalid_body"), ({}, 400, "invalid_body")):
        r = client.post(path, json=body, headers=AUTH)
        assert (r.status_code, r.json()["error"]) == (status, code), r.text
    # a change written by the CLI (or another worker) reaches this worker at its next look at the store
    store.set_canary("demo-dna:" + v1, 40, models)
    assert _until(lambda: _loaded(client)[f"demo-dna:{v1}"]["canary_percent"] == 40)
    store.promote(f"demo-dna:{v1}", models)
    assert _until(lambda: _loaded(client)[f"demo-dna:{v1}"]["default"])
    # v2 was loaded for the canary of BIOMED_CANARY only, which the promote ended: drained and unloaded
    assert _until(lambda: "demo-dna:v2" not in _loaded(client))
    info = [line for line in metrics_text(client).splitlines() if line.startswith("biomed_model_info{")]
    assert info and not [line for line in info if 'version="v2"' in line], info


def test_concurrent_promotes_are_serialised(client, models: Path, demo_models: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    """A good and a failing promote at once, either first: the good one's 200 means it stuck (the failing one's
    restore does not put a stale file back), and the failure names the version that failed."""
    from concurrent.futures import ThreadPoolExecutor

    v1 = demo_models["dna"].split(":")[1]
    path = "/admin/models/promote"

    def post(ref: str):  # type: ignore[no-untyped-def]
        return client.post(path, json={"model": ref}, headers=AUTH)

    with ThreadPoolExecutor(2) as pool:
        for good, bad_first in (("v2", False), (v1, True), ("v2", True), (v1, False)):
            refs = ["demo-dna:v3-broken", f"demo-dna:{good}"] if bad_first else [f"demo-dna:{good}", "demo-dna:v3-broken"]
            answers = dict(zip(refs, pool.map(post, refs)))
            ok, failed = answers[f"demo-dna:{good}"], answers["demo-dna:v3-broken"]
            assert ok.status_code == 200 and ok.json()["serving"] == good, ok.text
            assert failed.status_code == 422 and "demo-dna:v3-broken cannot be loaded" in failed.json()["detail"]
            assert store.read_rollout(models / "demo-dna")["default"] == good  # it stuck
            assert _loaded(client)[f"demo-dna:{good}"]["default"]


def test_admin_promote_is_409_where_the_store_cannot_be_written(client, models: Path) -> None:  # type: ignore[no-untyped-def]
    """The rollout file cannot be replaced (here a folder stands where it goes; a bento's read-only store fails the
    same way): 409 ``store_read_only``, pointing at ``biomed models promote``; nothing changes."""
    blocker = models / "demo-dna" / store.ROLLOUT_FILE
    blocker.unlink(missing_ok=True)
    blocker.mkdir()
    try:
        r = client.post("/admin/models/promote", json={"model": "demo-dna:v2"}, headers=AUTH)
        assert (r.status_code, r.json()["error"]) == (409, "store_read_only"), r.text
        assert "biomed models promote" in r.json()["detail"]
    finally:
        blocker.rmdir()
    assert [p.name for p in blocker.parent.iterdir() if p.name.startswith(f".{store.ROLLOUT_FILE}.")] == []  # no temp file


def test_commands_here_run_the_version_the_servers_serve(client, models: Path, demo_models: dict[str, str],  # type: ignore[no-untyped-def]
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """``score-variants``, ``predict-regions``, ``explain`` and ``explain-image`` without a version load what a server
    following the name serves by default (one rule: biomed.store.rollout_default), and say so when a promote or a
    canary is in play."""
    from cli.local import load_local

    v1 = demo_models["dna"].split(":")[1]
    monkeypatch.setenv("BIOMED_MODEL_STORE", str(models))  # the store the servers load from
    try:
        store.promote(f"demo-dna:{v1}", models)
        assert _until(lambda: client.post("/predict_dna", json={"sequences": ["ACGT"]}, headers=AUTH).json()["version"]
                      == v1)
        (models / "demo-dna" / store.ROLLOUT_FILE).unlink()
        assert store.default_ref("demo-dna", models) == store.Choice(f"demo-dna:{v1}", "newest", {})  # nothing promoted
        capsys.readouterr()
        assert load_local("demo-dna", "dna").version == v1 and capsys.readouterr().err == ""
        store.promote("demo-dna:v2", models)
        store.set_canary(f"demo-dna:{v1}", 10, models)
        served = _until(lambda: client.post("/predict_dna", json={"sequences": ["ACGT"]},
                                            headers={**AUTH, "X-Request-ID": "x-3"}).json()["version"] == "v2")
        assert served and load_local("demo-dna", "dna").version == "v2"  # what the servers serve by default
        note = capsys.readouterr().err
        assert f"demo-dna is demo-dna:v2, the version promoted in the store; the canary {v1} (10%)" in note, note
        assert load_local(f"demo-dna:{v1}", "dna").version == v1 and capsys.readouterr().err == ""  # named: as named
    finally:
        (models / "demo-dna" / store.ROLLOUT_FILE).unlink(missing_ok=True)


def test_a_model_in_the_store_but_not_served_gets_a_404_that_says_how_to_serve_it(client) -> None:  # type: ignore[no-untyped-def]
    r = client.post("/predict_dna", json={"sequences": ["ACGT"], "model": "demo-dna:v3-broken"}, headers=AUTH)
    assert (r.status_code, r.json()["error"]) == (404, "unknown_model")
    assert "demo-dna:v3-broken is in the model store but not served here: add it to BIOMED_MODELS" in r.json()["detail"]
    for absent in ("demo-dna:v9", "nope", "../demo-dna"):
        r = client.post("/predict_dna", json={"sequences": ["ACGT"], "model": absent}, headers=AUTH)
        assert r.status_code == 404 and "in the model store" not in r.json()["detail"], (absent, r.text)


def test_models_promote_is_explicit_and_says_what_ended(models: Path, demo_models: dict[str, str],  # type: ignore[no-untyped-def]
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from cli.main import main

    v1 = demo_models["dna"].split(":")[1]
    try:
        assert main(["models", "--store", str(models), "promote", "demo-dna"]) == 1  # which version? refused
        assert "needs NAME:VERSION (or demo-dna:latest: follow the newest export)" in capsys.readouterr().err
        assert not (models / "demo-dna" / store.ROLLOUT_FILE).exists()
        assert main(["models", "--store", str(models), "promote", "demo-dna:v2"]) == 0
        assert capsys.readouterr().out.startswith("demo-dna: default v2; servers watching")  # no canary, none ended
        store.set_canary(f"demo-dna:{v1}", 5, models)
        assert main(["models", "--store", str(models), "promote", "demo-dna:latest"]) == 0
        assert capsys.readouterr().out.startswith(f"demo-dna: default the newest export (canary {v1} 5% ended);")
    finally:
        (models / "demo-dna" / store.ROLLOUT_FILE).unlink(missing_ok=True)
