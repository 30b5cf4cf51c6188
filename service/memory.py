"""Giving memory back to the system after a burst (glibc's allocator keeps freed memory by default).

Two settings of glibc's malloc, from the process itself: arrays over 1 MB are always mapped
on their own and unmapped when freed (the default threshold grows with the largest freed
block, so after one large request every later array of that size stays in the heap); and,
a second after requests stop, a garbage collection and ``malloc_trim`` return the heap's free pages. Elsewhere than
glibc (macOS, musl) both are skipped.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging

log = logging.getLogger("biomed.service")
M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD = 1 << 20
TRIM_DELAY_S = 1.0
TRIM_AT_LEAST_EVERY_S = 10.0


@functools.lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def configure() -> None:
    """Large allocations straight from (and back to) the system; call once per worker at start-up."""
    libc = _libc()
    if libc is not None and not libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD):
        log.warning("mallopt(M_MMAP_THRESHOLD) failed; memory after a burst may stay resident")


def _trim() -> None:
    gc.collect()  # whatever a burst left in reference cycles first (start-up objects are frozen: this is cheap)
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def release() -> None:
    """Collect and return free heap pages to the system now (after a model is unloaded); blocking, for a thread."""
    _trim()


class Trimmer:
    """Schedules one ``malloc_trim`` a moment after the latest request, off the event loop."""

    def __init__(self, delay_s: float = TRIM_DELAY_S) -> None:
        self.delay_s = delay_s
        self._pending: asyncio.TimerHandle | None = None
        self._last = 0.0

    def after_request(self) -> None:
        """Trim ``delay_s`` after the latest request (and at least every 10 s under steady traffic)."""
        loop = asyncio.get_running_loop()
        if self._pending is not None:
            if loop.time() - self._last < TRIM_AT_LEAST_EVERY_S:
                self._pending.cancel()
            else:
                return  # keep the pending one: it is due
        self._pending = loop.call_later(self.delay_s, self._run, loop)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending = None
        self._last = loop.time()
        loop.run_in_executor(None, _trim)
