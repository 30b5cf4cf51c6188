"""A real Prometheus server for tests: Debian's `prometheus` binary on a loopback port.

    port = free_port()
    config.write_text(...targets: ["127.0.0.1:3000"]...)
    with running_prometheus(config, port=port) as prom:
        wait_for_query(prom.url, 'up{job="biomed"} == 1')
        samples = query(prom.url, "biomed_model_info")

Each server gets its own temporary TSDB directory and is stopped (SIGTERM, then SIGKILL)
on exit. Needs the `prometheus` Debian package (or any prometheus on PATH).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Prometheus:
    """A running server: its base URL, process and TSDB directory."""

    url: str
    process: subprocess.Popen[bytes]
    storage: Path
    log: Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback)
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@contextlib.contextmanager
def running_prometheus(
    config: Path,
    *,
    port: int | None = None,
    binary: str = "prometheus",
    ready_timeout_s: float = 30.0,
    extra_args: tuple[str, ...] = (),
) -> Iterator[Prometheus]:
    """Start Prometheus with ``config``, wait until /-/ready answers 200, stop it on exit.

    Args:
        config: the prometheus.yml; relative rule_files resolve against its folder.
        port: where to listen on 127.0.0.1; a free one when None.
        binary: the executable name or path.
        ready_timeout_s: how long start-up may take before RuntimeError (with its log).
        extra_args: more command-line flags.
    """
    exe = shutil.which(binary) or binary
    port = free_port() if port is None else port
    with tempfile.TemporaryDirectory(prefix="biomed-prom-") as tmp:
        storage = Path(tmp) / "tsdb"
        log = Path(tmp) / "prometheus.log"
        cmd = [
            exe,
            f"--config.file={config}",
            f"--storage.tsdb.path={storage}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            *extra_args,
        ]
        with open(log, "wb") as log_file:
            process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        server = Prometheus(f"http://127.0.0.1:{port}", process, storage, log)
        try:
            _wait_ready(server, ready_timeout_s)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


def _wait_ready(server: Prometheus, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"prometheus exited with {server.process.returncode}:\n{server.log.read_text()}"
            )
        with contextlib.suppress(OSError):
            status, _ = _get(f"{server.url}/-/ready", timeout=1.0)
            if status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"prometheus not ready after {timeout_s} s:\n{server.log.read_text()}")


def query(url: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """Run an instant query; return the result list (each {"metric": {...}, "value": [t, v]}).

    Raises:
        RuntimeError: the API answered with an error (bad PromQL, ...).
    """
    params = {"query": expr}
    if at is not None:
        params["time"] = str(at)
    status, body = _get(f"{url}/api/v1/query?{urllib.parse.urlencode(params)}")
    payload = json.loads(body)
    if status != 200 or payload.get("status") != "success":
        raise RuntimeError(f"query {expr!r} failed ({status}): {payload.get('error', body[:200])}")
    return list(payload["data"]["result"])


def wait_for_query(
    url: str,
    expr: str,
    *,
    timeout_s: float = 30.0,
    until: Callable[[list[dict[str, Any]]], bool] = bool,
) -> list[dict[str, Any]]:
    """Poll ``expr`` until ``until(result)`` holds (default: non-empty); return the result.

    Raises:
        TimeoutError: with the last result, when the condition never held.
    """
    deadline = time.monotonic() + timeout_s
    result: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        result = query(url, expr)
        if until(result):
            return result
        time.sleep(0.5)
    raise TimeoutError(f"{expr!r} did not hold within {timeout_s} s; last result: {result}")
