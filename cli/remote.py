"""A client of a running biomed-serve (one server, or a Kubernetes Service in front of many).

Used by ``biomed score-variants --server URL`` and ``biomed predict-regions --server URL``:
batches go to the native JSON API (``/score_variants``, ``/predict_dna``) with the bearer
token, at most ``in_flight`` requests at a time. 429 and 503 answers (the server's admission
control, a pod that is not ready) are retried after the ``Retry-After`` the server sent, or an
exponential backoff; a 413 splits the batch in two and sends the halves; connection errors
are retried like a 503. Anything else is an error naming the status and the server's detail.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence, TypeVar

from biomed.errors import with_article
from biomed.kinds.dna import KIND as DNA
from biomed.settings import env

T = TypeVar("T")
RETRY_STATUSES = {429, 502, 503, 504}


class RemoteError(RuntimeError):
    """The server refused a request for good (or kept refusing it); the message says why in one line."""


class _Split(Exception):
    """413: the batch is over one of the server's caps."""


@dataclass
class Stats:
    """What the client went through: requests sent, retried (by status), split after a 413."""

    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    splits: int = 0
    waited_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def retried(self, why: str, wait: float) -> None:
        with self.lock:
            self.retries[why] = self.retries.get(why, 0) + 1
            self.waited_s += wait

    def describe(self) -> str:
        parts = [f"{self.requests} requests"]
        if self.retries:
            parts.append("retried " + ", ".join(f"{n} x {k}" for k, n in sorted(self.retries.items())))
        if self.splits:
            parts.append(f"{self.splits} batches split after 413")
        return "; ".join(parts)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: fall back to the backoff


class Remote:
    """Bounded, retrying JSON calls to one biomed-serve URL."""

    def __init__(self, url: str, token: str | None = None, in_flight: int = 4, timeout_s: float = 300.0,
                 max_attempts: int = 10, max_wait_s: float = 30.0) -> None:
        import httpx

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--server {url!r} is not an http(s) URL, e.g. http://biomed-serve.biomed:3000")
        if in_flight < 1:
            raise ValueError(f"--in-flight must be at least 1; got {in_flight}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self.in_flight, self.max_attempts, self.max_wait_s = in_flight, max_attempts, max_wait_s
        self.client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s,
                                   limits=httpx.Limits(max_connections=in_flight, max_keepalive_connections=in_flight))
        self.pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="biomed-remote")
        self.stats = Stats()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()

    def __enter__(self) -> "Remote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ one request

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """One call, retried on 429/502/503/504 and connection errors; 413 raises ``_Split``."""
        import httpx

        for attempt in range(1, self.max_attempts + 1):
            with self.stats.lock:
                self.stats.requests += 1
            try:
                r = self.client.request(method, path, json=body)
            except httpx.TransportError as err:
                why, status, wait = type(err).__name__, None, None
            else:
                if r.status_code < 300:
                    return r.json()
                status, why, wait = r.status_code, str(r.status_code), _retry_after(r.headers.get("retry-after"))
                if status == 413:
                    raise _Split(self._detail(r))
                if status not in RETRY_STATUSES:
                    hint = f" (set {env('api_token')} or pass --token)" if status == 401 else ""
                    raise RemoteError(f"{self.url}{path} answered {status}: {self._detail(r)}{hint}")
            if attempt == self.max_attempts:
                break
            if wait is None:  # exponential backoff with jitter: 0.5, 1, 2, 4 ... s, capped
                wait = min(self.max_wait_s, 0.5 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            wait = min(wait, self.max_wait_s)
            self.stats.retried(why, wait)
            time.sleep(wait)
        raise RemoteError(f"{self.url}{path}: gave up after {self.max_attempts} attempts (last: {why}"
                          f"{'' if status is None else ' from the server'})")

    @staticmethod
    def _detail(r: Any) -> str:
        try:
            body = r.json()
            return f"{body.get('error', '')}: {body.get('detail', '')}".strip(": ")
        except ValueError:
            return r.text[:200].replace("\n", " ")

    # ------------------------------------------------------------------ batches

    def batched(self, path: str, items: Sequence[Any], size: int, body: Callable[[Sequence[Any]], dict],
                results: Callable[[dict], list]) -> list:
        """POST ``items`` in batches of ``size`` (at most ``in_flight`` at a time); the results in item order.

        A batch answered 413 is split in two and each half sent, down to single items.
        """
        def send(batch: Sequence[Any]) -> list:
            try:
                out = results(self.request("POST", path, body(batch)))
            except _Split as err:
                if len(batch) == 1:
                    raise RemoteError(f"{self.url}{path} refuses even one item (413: {err})") from None
                with self.stats.lock:
                    self.stats.splits += 1
                half = len(batch) // 2
                return send(batch[:half]) + send(batch[half:])
            if len(out) != len(batch):
                raise RemoteError(f"{self.url}{path} answered {len(out)} results for {len(batch)} items")
            return out

        batches = [items[i : i + size] for i in range(0, len(items), size)]
        out: list = []
        for part in self.pool.map(send, batches):
            out.extend(part)
        return out

    def model(self, ref: str) -> dict:
        """The ``GET /models`` entry of ``name[:version]``; a clear error when the server does not serve it."""
        name, _, version = ref.partition(":")
        models = self.request("GET", "/models")["models"]
        for m in models:
            if m["name"] == name and (not version or version == "latest" or m["version"] == version):
                if m["kind"] != DNA.name:
                    raise RemoteError(f"model {ref!r} on {self.url} is {with_article(m['kind'])} model; these commands need "
                                      f"{with_article(DNA.name)} model")
                return m
        served = ", ".join(f"{m['name']}:{m['version']}" for m in models) or "none"
        raise RemoteError(f"{self.url} does not serve model {ref!r}; it serves: {served}")
