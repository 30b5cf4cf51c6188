"""Faults: broken models refuse to start (naming model and file), GPU absence, signals, dead workers.

Fast tests call ``biomed.runtime`` directly on copies of the demo models; the slow ones run
``bentoml serve`` (tests/live_server.py): a corrupt model or ``BIOMED_REQUIRE_GPU=1`` on a host
without a usable GPU exits non-zero with the reason in its output; SIGTERM lets in-flight
requests finish and exits 0; a SIGKILLed worker is replaced and the server then answers all.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import onnx
import psutil
import pytest

try:
    from tests import live_server
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import live_server

from biomed.runtime import StartupError, load_model, make_session
from service.config import ServiceConfig

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # the same on a GPU host: CUDA is not usable, so the CPU takes over


# --------------------------------------------------------------------------- broken model files (fast)

def _broken_copy(tmp_path: Path, fault: str) -> Path:
    """A copy of demo-dna's model.onnx with ``fault`` applied; returns its path (parent dir named like a tag)."""
    from biomed.store import onnx_path, resolve

    src = onnx_path(resolve("demo-dna"))
    dst = tmp_path / "demo-dna" / "model.onnx"
    dst.parent.mkdir(parents=True)
    if fault == "missing":
        return dst
    if fault == "corrupt":
        dst.write_bytes(os.urandom(4096))
        return dst
    if fault == "truncated":
        dst.write_bytes(src.read_bytes()[:2000])
        return dst
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    doc = json.loads(props["biomed"])
    del model.metadata_props[:]
    if fault == "no_metadata":
        pass
    elif fault == "metadata_not_json":
        model.metadata_props.add(key="biomed", value="{not json")
    elif fault == "metadata_wrong_schema":
        doc.pop("labels")
        doc["kind"] = "protein"
        model.metadata_props.add(key="biomed", value=json.dumps(doc))
    onnx.save(model, str(dst))
    return dst


@pytest.fixture()
def broken_store(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_models: dict[str, str]):  # type: ignore[no-untyped-def]
    """Point load_model at a broken copy of demo-dna; yields a function taking the fault's name."""
    import biomed.store as store

    real = store.resolve("demo-dna")

    def use(fault: str) -> Path:
        path = _broken_copy(tmp_path / fault, fault)
        monkeypatch.setattr(store, "resolve", lambda ref, where=None: real)
        monkeypatch.setattr(store, "onnx_path", lambda model: path)
        return path

    return use, str(real.tag)


@pytest.mark.parametrize(("fault", "says"), [
    ("missing", "is missing"),
    ("corrupt", "not a readable ONNX file"),
    ("truncated", "not a readable ONNX file"),
    ("no_metadata", "has no 'biomed' metadata"),
    ("metadata_not_json", "is not JSON"),
    ("metadata_wrong_schema", "does not match schema"),
])
def test_broken_model_fails_start_up_naming_model_and_file(broken_store, fault: str, says: str) -> None:  # type: ignore[no-untyped-def]
    use, tag = broken_store
    path = use(fault)
    with pytest.raises(StartupError) as err:
        load_model("demo-dna", ServiceConfig().runtime_options())
    message = str(err.value)
    assert tag in message and says in message, message
    assert path.name in message, message


def test_unknown_model_fails_start_up_listing_the_store(demo_models: dict[str, str]) -> None:
    with pytest.raises(StartupError, match=r"'no-such-model'.*available: .*demo-dna"):
        load_model("no-such-model", ServiceConfig().runtime_options())


def test_require_gpu_without_cuda_fails(demo_models: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from biomed.store import onnx_path, resolve

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    path = onnx_path(resolve("demo-dna"))
    _, provider = make_session(path, ServiceConfig().runtime_options())
    if provider != "CPUExecutionProvider":
        pytest.skip(f"CUDA stayed usable in this process ({provider}); the server test below covers it")
    with pytest.raises(StartupError, match="BIOMED_REQUIRE_GPU=1"):
        make_session(path, ServiceConfig(require_gpu=True).runtime_options())


# --------------------------------------------------------------------------- real servers (slow)

def _store_copy(tmp_path: Path, fault: str) -> tuple[Path, Path]:
    """A private model store holding the demo models, demo-dna's file broken by ``fault``."""
    home = tmp_path / "bentoml"
    shutil.copytree(Path(os.environ["BENTOML_HOME"]) / "models", home / "models", symlinks=True)
    target = next((home / "models" / "demo-dna").glob("*/model.onnx"))
    if fault == "missing":
        target.unlink()
    else:
        target.write_bytes(os.urandom(2048))
    return home, target


def _exits_with(tmp_path: Path, says: list[str], timeout: float = 120.0, **env: str) -> str:
    server = live_server.start(tmp_path / "server.log", **env)
    try:
        code = server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        server.stop()
        pytest.fail(f"the server kept running:\n{server.output()[-3000:]}")
    finally:
        server.stop()
    output = server.output()
    assert code != 0, output[-3000:]
    for text in says:
        assert text in output, f"{text!r} not in:\n{output[-3000:]}"
    return output


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["missing", "corrupt"])
def test_server_with_broken_model_exits_non_zero(tmp_path: Path, demo_models: dict[str, str], fault: str) -> None:
    home, target = _store_copy(tmp_path, fault)
    _exits_with(tmp_path, ["demo-dna", str(target)], BENTOML_HOME=str(home))


@pytest.mark.slow
def test_server_requiring_gpu_exits_non_zero_without_one(tmp_path: Path, demo_models: dict[str, str]) -> None:
    _exits_with(tmp_path, ["BIOMED_REQUIRE_GPU=1", "CPUExecutionProvider"], BIOMED_REQUIRE_GPU="1", **NO_GPU)


def _explain(url: str, bases: int) -> int:
    return httpx.post(f"{url}/explain_dna", json={"sequence": "ACGTTGCA" * (bases // 8)}, timeout=120).status_code


@pytest.mark.slow
def test_sigterm_lets_in_flight_requests_finish(tmp_path: Path, demo_models: dict[str, str]) -> None:
    server = live_server.start(tmp_path / "server.log", **NO_GPU)
    try:
        server.wait_ready()
        assert _explain(server.url, 64) == 200  # warm
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            started = time.monotonic()
            futures = [pool.submit(_explain, server.url, 4800) for _ in range(4)]
            time.sleep(0.5)
            assert not any(f.done() for f in futures), "requests finished before SIGTERM; make them larger"
            os.kill(server.proc.pid, signal.SIGTERM)  # the main process only, as Kubernetes would
            statuses = [f.result() for f in futures]
        code = server.proc.wait(60)
        print(f"\nSIGTERM after 0.5 s: {statuses} after {time.monotonic() - started:.1f} s; exit {code}")
        assert statuses == [200] * 4, server.output()[-3000:]
        assert code == 0, server.output()[-3000:]
    finally:
        server.stop()


def _workers(server: live_server.Server) -> list[psutil.Process]:
    found = []
    for p in server.tree():
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker.service" in " ".join(p.cmdline()):
                found.append(p)
        except psutil.Error:  # gone or a zombie meanwhile
            pass
    return found


@pytest.mark.slow
def test_killed_worker_is_replaced_and_cpu_fallback_is_visible(tmp_path: Path, demo_models: dict[str, str]) -> None:
    with live_server.running(tmp_path / "server.log", workers=2, **NO_GPU) as server:
        models = httpx.get(f"{server.url}/models", timeout=10).json()["models"]
        assert {m["provider"] for m in models} == {"CPUExecutionProvider"}, models
        info = [line for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
                if line.startswith("biomed_model_info{")]
        assert len(info) >= 2 and all('provider="CPUExecutionProvider"' in line for line in info), info

        workers = _workers(server)
        assert len(workers) == 2, [p.cmdline() for p in server.tree()]
        victim = workers[0].pid
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            alive = [p for p in _workers(server) if p.pid != victim]
            if len(alive) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the killed worker was not replaced:\n{server.output()[-3000:]}")
        server.wait_ready()
        time.sleep(3)  # the new worker loads its models behind the shared socket; readyz may hit the old one
        server.wait_ready()
        with httpx.Client(timeout=60) as client:
            statuses = [client.post(f"{server.url}/predict_dna", json={"sequences": ["ACGT" * 30]}).status_code
                        for _ in range(40)]
        assert statuses == [200] * 40, (statuses, server.output()[-3000:])
        assert server.proc.poll() is None
