"""Adaptive batching inside the worker: concurrent requests share one inference call.

While one batch runs on the accelerator (or the CPU's threads), new requests
queue; the next call takes all of them, up to ``max_batch_size`` rows. A call
waits up to ``max_latency_ms`` for the batch to fill only while other requests
are still being decoded, so a lone request is never held back.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np


@dataclass
class _Item:
    x: np.ndarray
    future: asyncio.Future
    offset: int = 0  # rows of x already handed to a batch
    parts: list = field(default_factory=list)  # (first row, outputs) as batches finish


@dataclass
class Batcher:
    """Serialises calls to ``run`` (one batch at a time) and merges queued requests into each call.

    Args:
        run: maps an (N, ...) array to (N, T) outputs; called in a worker thread.
        max_batch_size: most rows per call; larger submissions are split across calls.
        max_latency_ms: longest wait for more rows while requests are in preprocessing.
        on_batch: called with (rows, seconds) after each call, for metrics.
    """

    run: Callable[[np.ndarray], np.ndarray]
    max_batch_size: int
    max_latency_ms: float = 5.0
    on_batch: Callable[[int, float], None] | None = None
    incoming: int = 0  # requests admitted but not yet submitted (decoding)
    _queue: list[_Item] = field(default_factory=list)
    _wakeup: asyncio.Event | None = None
    _task: asyncio.Task | None = None
    _executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="infer"))

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """Queue rows and wait for their outputs (same order)."""
        if len(x) == 0:
            raise ValueError("empty batch")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._loop())
        item = _Item(x, loop.create_future())
        self._queue.append(item)
        self._wakeup.set()  # type: ignore[union-attr]
        return await item.future

    def _take(self) -> tuple[np.ndarray | None, list[tuple[_Item, int, int]]]:
        """Rows for the next call (None when only abandoned requests were queued), and each part's slice."""
        parts, rows = [], 0
        while self._queue and rows < self.max_batch_size:
            item = self._queue[0]
            if item.future.done():  # its request is gone (timed out, client left): nobody waits for the rest
                self._queue.pop(0)
                continue
            n = min(len(item.x) - item.offset, self.max_batch_size - rows)
            parts.append((item, item.offset, item.offset + n))
            item.offset += n
            rows += n
            if item.offset == len(item.x):
                self._queue.pop(0)
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
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - started)
                self._deliver(out, parts)

    @staticmethod
    def _deliver(out: np.ndarray, parts: list[tuple[_Item, int, int]]) -> None:
        start = 0
        for item, a, b in parts:
            item.parts.append((a, out[start : start + (b - a)]))
            start += b - a
            got = sum(len(p) for _, p in item.parts)
            if got == len(item.x) and not item.future.done():
                pieces = sorted(item.parts, key=lambda p: p[0])
                item.future.set_result(pieces[0][1] if len(pieces) == 1 else np.concatenate([p for _, p in pieces]))

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
