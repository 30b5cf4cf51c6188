"""A real ``bentoml serve service.service:Biomed`` subprocess (or ``biomed serve``, as a user starts it) for the
slow tests.

The server runs in its own process group with the test model store (``BENTOML_HOME``), on a
free loopback port; its stdout and stderr go to a file the tests can grep (patient data) or
quote (start-up failures).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
BENTOML = Path(sys.executable).with_name("bentoml")
BIOMED = Path(sys.executable).with_name("biomed")  # the console script: `biomed serve` checks the store, then execs bentoml


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A started server: its process, base URL and combined log file."""

    proc: subprocess.Popen
    url: str
    log: Path
    env: dict[str, str] = field(repr=False)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def tree(self) -> list[psutil.Process]:
        """The server's main process and every descendant still alive."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def rss(self) -> int:
        """Resident memory of the whole process tree, in bytes."""
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll ``/readyz`` until 200; fail with the server's output when it exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} before ready:\n{self.output()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.25)
        raise AssertionError(f"server not ready within {timeout}s:\n{self.output()[-4000:]}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM the process group, then SIGKILL whatever is left; returns the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # stray workers of a main process that died first
        return self.proc.returncode


def server_env(**extra: str) -> dict[str, str]:
    """The test environment plus ``extra`` (the model store comes from conftest's ``BENTOML_HOME``)."""
    env = dict(os.environ)
    env.update({"BENTOML_DO_NOT_TRACK": "True", "BIOMED_PROGRESS": "0", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def start(log: Path, workers: int = 1, through_cli: bool = False, args: tuple[str, ...] = (), **env: str) -> Server:
    """Start a server (not yet ready); ``env`` adds or overrides environment variables.

    ``through_cli``: started with ``biomed serve --port P`` (as the README starts it) instead of ``bentoml serve``;
    ``args``: more of its flags (``--grpc-port P``).
    """
    port = free_port()
    full_env = server_env(BIOMED_WORKERS=str(workers), **env)
    serve = [str(BIOMED), "serve"] if through_cli else [str(BENTOML), "serve", "service.service:Biomed"]
    out = log.open("wb")
    proc = subprocess.Popen(
        [*serve, "--host", "127.0.0.1", "--port", str(port), *args],
        cwd=REPO, env=full_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
    )
    out.close()
    return Server(proc, f"http://127.0.0.1:{port}", log, full_env)


@contextlib.contextmanager
def running(log: Path, workers: int = 1, through_cli: bool = False, args: tuple[str, ...] = (),
            **env: str) -> Iterator[Server]:
    """A ready server, stopped on exit."""
    server = start(log, workers, through_cli, args, **env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def asgi_app():  # type: ignore[no-untyped-def]
    """``Biomed.to_asgi()`` for an in-process test; BentoML's request metrics only for the first app.

    BentoML registers its request metrics in the process-wide Prometheus registry once per app, so
    a second app with them on fails at start-up (DuplicateTimeseries); later apps run with them off.
    The environment the service reads must be set before the app's lifespan starts.
    """
    import copy

    from prometheus_client import REGISTRY

    from service.service import Biomed

    saved = copy.deepcopy(Biomed.config)
    if any(m.name.startswith("bentoml_service_request") for m in REGISTRY.collect()):
        Biomed.config["metrics"] = {**Biomed.config.get("metrics", {}), "enabled": False}
    try:
        return Biomed.to_asgi()
    finally:
        Biomed.config.clear()
        Biomed.config.update(saved)
