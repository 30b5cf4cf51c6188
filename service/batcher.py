"""Adaptive, fair batching inside the worker: concurrent requests share one inference call.

While one batch runs on the accelerator (or the CPU's threads), new requests
queue; the next call takes rows from all of them, up to ``max_batch_size`` rows.
Each queued request gets an equal share of every call (round robin), so a
16-base request behind two hundred 30,000-row explanations waits one call, not
all of theirs. A call waits up to ``max_latency_ms`` for the batch to fill only
while other requests are still being decoded, so a lone request is never held back.

Admission (``admit``) bounds what the queue may hold: a request over
``max_request_rows`` is refused (413), and one that would take the queue past
``max_queued_bytes`` is refused at once (429) instead of waiting to time out.
Rows of a request whose caller is gone (timed out, disconnected) are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from biomed.errors import Overloaded, TooLarge
from biomed.settings import env


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    queued_at: float
    offset: int = 0  # rows of x already handed to a batch
    done: int = 0  # rows of x whose outputs have arrived
    parts: list = field(default_factory=list)  # (first row, outputs) as batches finish


@dataclass
class Batcher:
    """Serialises calls to ``run`` (one batch at a time) and merges queued requests into each call.

    Args:
        run: maps an (N, ...) array to (N, T) outputs; called in a worker thread.
        max_batch_size: most rows per call; larger submissions are split across calls.
        max_latency_ms: longest wait for more rows while requests are in preprocessing.
        on_batch: called with (rows, seconds) after each call, for metrics.
        on_queue: called with (rows waiting, seconds the served requests waited) after each take, for metrics.
        max_request_rows: most rows one request may queue (0: no limit).
        max_queued_bytes: most bytes of rows admitted at once (0: no limit).
    """

    run: Callable[[np.ndarray], np.ndarray]
    max_batch_size: int
    max_latency_ms: float = 5.0
    on_batch: Callable[[int, float], None] | None = None
    on_queue: Callable[[int, list[float]], None] | None = None
    max_request_rows: int = 0
    max_queued_bytes: int = 0
    incoming: int = 0  # requests admitted but not yet submitted (decoding)
    admitted_bytes: int = 0
    _queue: deque = field(default_factory=deque)
    _wakeup: asyncio.Event | None = None
    _task: asyncio.Task | None = None
    _executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="infer"))

    @contextlib.contextmanager
    def admit(self, rows: int, row_bytes: int, what: str = "this request") -> Iterator[None]:
        """Reserve queue room for ``rows`` rows of ``row_bytes`` each, for the duration of a request.

        Raises:
            TooLarge: more rows than ``max_request_rows`` (BIOMED_MAX_REQUEST_ROWS).
            Overloaded: the queue's bytes would pass ``max_queued_bytes`` (BIOMED_MAX_QUEUED_MB).
        """
        if self.max_request_rows and rows > self.max_request_rows:
            raise TooLarge(f"{what} needs {rows} model rows; one request may queue at most {self.max_request_rows} "
                           f"({env('max_request_rows')}): send it in smaller parts")
        nbytes = rows * row_bytes
        if self.max_queued_bytes and self.admitted_bytes + nbytes > self.max_queued_bytes:
            if nbytes > self.max_queued_bytes:
                raise TooLarge(f"{what} needs {nbytes / 2**20:.1f} MB of model rows; the queue holds at most "
                               f"{self.max_queued_bytes / 2**20:g} MB ({env('max_queued_bytes')}): send it in smaller "
                               "parts")
            raise Overloaded(f"the model's queue is full ({self.admitted_bytes / 2**20:.1f} of "
                             f"{self.max_queued_bytes / 2**20:g} MB, {env('max_queued_bytes')}); retry shortly")
        self.admitted_bytes += nbytes
        try:
            yield
        finally:
            self.admitted_bytes -= nbytes

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue rows and wait for their outputs (same order)."""
        if len(x) == 0:
            raise ValueError("empty batch")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())
        item = _Item(x, loop.create_future(), time.perf_counter())
        self._queue.append(item)
        self._wakeup.set()  # type: ignore[union-attr]
        return await item.future

    def _take(self) -> tuple[np.ndarray | None, list[tuple[_Item, int, int]]]:
        """Rows for the next call, an equal share from each waiting request (None when only abandoned ones were queued).

        A request that still has rows after its share goes to the back of the line, so the next
        call starts with the requests this one reached last.
        """
        queue = self._queue
        for _ in range(len(queue)):  # drop requests whose caller is gone: nobody waits for their rows
            item = queue.popleft()
            if not item.future.done():
                queue.append(item)
        parts, rows, waited = [], 0, []
        while queue and rows < self.max_batch_size:
            share = max(1, (self.max_batch_size - rows) // len(queue))
            for _ in range(len(queue)):
                if rows >= self.max_batch_size:
                    break
                item = queue.popleft()
                n = min(len(item.x) - item.offset, share, self.max_batch_size - rows)
                if item.offset == 0:
                    waited.append(time.perf_counter() - item.queued_at)
                parts.append((item, item.offset, item.offset + n))
                item.offset += n
                rows += n
                if item.offset < len(item.x):
                    queue.append(item)
        if self.on_queue is not None:
            self.on_queue(self._queued_rows(), waited)
        if not parts:
            return None, parts
        batch = parts[0][0].x[parts[0][1] : parts[0][2]] if len(parts) == 1 else np.concatenate(
            [item.x[a:b] for item, a, b in parts])
        return batch, parts

    def _queued_rows(self) -> int:
        return sum(len(i.x) - i.offset for i in self._queue)

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()  # type: ignore[union-attr]
            self._wakeup.clear()  # type: ignore[union-attr]
            while self._queue:
                deadline = time.monotonic() + self.max_latency_ms / 1000
                while self.incoming > 0 and self._queued_rows() < self.max_batch_size and time.monotonic() < deadline:
                    await asyncio.sleep(0.0005)
                batch, parts = self._take()
                if batch is None:
                    continue
                started = time.perf_counter()
                try:
                    out = await loop.run_in_executor(self._executor, self.run, batch)
                except Exception as err:  # noqa: BLE001 - handed to every waiting request
                    for item, _, _ in parts:
                        if not item.future.done():
                            item.future.set_exception(err)
                    batch = parts = None  # type: ignore[assignment]
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - started)
                self._deliver(out, parts)
                # Waiting for the next batch must not keep this one's requests (their whole inputs) alive.
                batch = parts = out = None  # type: ignore[assignment]

    @staticmethod
    def _deliver(out: np.ndarray, parts: list[tuple[_Item, int, int]]) -> None:
        start = 0
        for item, a, b in parts:
            item.parts.append((a, out[start : start + (b - a)]))
            start += b - a
            item.done += b - a
            if item.done == len(item.x) and not item.future.done():
                pieces = sorted(item.parts, key=lambda p: p[0])
                item.future.set_result(pieces[0][1] if len(pieces) == 1 else np.concatenate([p for _, p in pieces]))

    @property
    def idle(self) -> bool:
        """No rows queued, admitted or on their way (decoding): nothing of any request is here."""
        return self.admitted_bytes == 0 and self.incoming == 0 and not self._queue

    async def aclose(self, timeout: float = 5.0) -> None:
        """``close``, then let the cancelled batch loop finish (its traceback would hold the batcher in a cycle)."""
        task = self._task
        self.close()
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)

    def close(self) -> None:
        """Stop the loop and the inference thread; the batcher keeps no reference to its cancelled task (with the
        heap frozen after start-up, a cycle through it would keep an unloaded model alive)."""
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._queue.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
