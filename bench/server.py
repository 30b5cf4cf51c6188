"""Starting and stopping ``bentoml serve`` processes for the benchmark, and measuring them."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: bytes | None = None, content_type: str = "application/json",
         timeout: float = 60.0) -> tuple[int, bytes]:
    """One request with the standard library: (status, body); 4xx/5xx are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@dataclass
class Server:
    """A ``bentoml serve`` process group on a free port; ``startup_s`` is spawn to the first 200 on /readyz."""

    target: str  # "service.service:Biomed" or "bench.floor_service:Floor"
    env: dict[str, str]
    log: Path
    port: int = 0
    startup_s: float = float("nan")
    _proc: subprocess.Popen | None = None
    _log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "Server":
        self.port = self.port or free_port()
        bentoml = Path(sys.executable).with_name("bentoml")
        cmd = [str(bentoml)] if bentoml.exists() else [sys.executable, "-m", "bentoml"]
        cmd += ["serve", self.target, "--host", "127.0.0.1", "--port", str(self.port)]
        env = {**os.environ, "BENTOML_DO_NOT_TRACK": "True", "BENTOML_HOME": str(self._home()), **self.env}
        self._log = self.log.open("ab")
        started = time.perf_counter()
        self._proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        while time.perf_counter() - started < timeout_s:
            if self._proc.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise RuntimeError(f"{self.target} exited with {self._proc.returncode} before it was ready; see "
                                   f"{self.log}: {' | '.join(tail)[-600:]}")
            try:
                if http("GET", self.url + "/readyz", timeout=2)[0] == 200:
                    self.startup_s = time.perf_counter() - started
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.target} was not ready after {timeout_s:.0f} s; see {self.log}")

    def _home(self) -> Path:
        """A BENTOML_HOME of this server's own, sharing the model store.

        ``bentoml serve`` empties ``$BENTOML_HOME/prometheus_multiproc_dir`` as it starts, so two
        servers on one home lose each other's metrics (the batching case reads them).
        """
        from bentoml._internal.configuration.containers import BentoMLContainer

        home = self.log.parent / f"home-{self.log.stem}"
        home.mkdir(parents=True, exist_ok=True)
        models = home / "models"
        if not models.exists():
            models.symlink_to(Path(BentoMLContainer.model_store_dir.get()).resolve(), target_is_directory=True)
        return home

    def _children(self) -> list:
        import psutil

        try:
            return psutil.Process(self._proc.pid).children(recursive=True) if self._proc else []
        except psutil.Error:
            return []

    def processes(self) -> list:
        """The server's process tree: its main process and every descendant alive now (psutil processes)."""
        import psutil

        if self._proc is None:
            return []
        try:
            root = psutil.Process(self._proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def rss_mb(self) -> float:
        """Resident memory of the server's whole process tree (arbiter, API server, workers), MiB."""
        import psutil

        if self._proc is None:
            return float("nan")
        root = psutil.Process(self._proc.pid)
        total = 0
        for proc in [root, *root.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                continue
        return total / 2**20

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            children = self._children()  # BentoML's workers run in process groups of their own
            os.killpg(self._proc.pid, signal.SIGTERM)  # the group this Popen started, nothing else
            try:
                self._proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(timeout=10)
            for child in children:  # any the arbiter left behind, by their own pid
                try:
                    child.wait(timeout=5)
                except Exception:  # noqa: BLE001 - psutil's NoSuchProcess or TimeoutExpired
                    with contextlib.suppress(Exception):
                        child.kill()
        if self._log is not None:
            self._log.close()
        self._proc = None

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def post_json(url: str, payload: dict, timeout: float = 120.0) -> tuple[int, dict]:
    status, body = http("POST", url, json.dumps(payload).encode(), timeout=timeout)
    return status, json.loads(body or b"{}")
