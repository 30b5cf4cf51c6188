"""service.batcher: merging, ordering, splitting, failures and latency, with a numpy stand-in for the model."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Awaitable, Callable

import numpy as np
import pytest

from service.batcher import Batcher


class Recorder:
    """A fake model (doubles its input, optionally slowly) that records each call's batch size."""

    def __init__(self, delay_s: float = 0.0, fail_on: float | None = None) -> None:
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.calls: list[int] = []
        self.sizes: list[int] = []  # from on_batch
        self.threads: set[str] = set()

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        self.threads.add(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_on is not None and (x == self.fail_on).any():
            raise RuntimeError("model failed on this batch")
        return np.concatenate([x * 2, x + 1], axis=1)  # (N, 2)

    def on_batch(self, rows: int, seconds: float) -> None:
        assert seconds >= 0
        self.sizes.append(rows)


def batcher(rec: Recorder, max_batch_size: int = 64, max_latency_ms: float = 5.0) -> Batcher:
    return Batcher(rec.run, max_batch_size=max_batch_size, max_latency_ms=max_latency_ms, on_batch=rec.on_batch)


def rows(first: int, n: int) -> np.ndarray:
    return np.arange(first, first + n, dtype=np.float32)[:, None]  # (n, 1)


def expected(x: np.ndarray) -> np.ndarray:
    return np.concatenate([x * 2, x + 1], axis=1)


def run_async(make: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(make())


@pytest.mark.parametrize("sizes", [[1] * 24, [1, 3, 2, 5, 1, 4, 7], [2] * 10])
def test_concurrent_submits_are_merged_and_answered_in_order(sizes: list[int]) -> None:
    rec = Recorder(delay_s=0.01)
    b = batcher(rec)

    async def main() -> None:
        starts = np.cumsum([0, *sizes[:-1]]) * 100  # disjoint values per caller
        inputs = [rows(int(s), n) for s, n in zip(starts, sizes)]
        outputs = await asyncio.gather(*(b.submit(x) for x in inputs))
        for x, out in zip(inputs, outputs):
            np.testing.assert_array_equal(out, expected(x))

    try:
        run_async(main)
    finally:
        b.close()
    assert max(rec.sizes) > 1, rec.sizes
    assert sum(rec.sizes) == sum(sizes) and rec.sizes == rec.calls
    assert len(rec.calls) < len(sizes)
    assert rec.threads == {next(iter(rec.threads))} and next(iter(rec.threads)).startswith("infer")


def test_requests_arriving_during_a_call_form_the_next_batch() -> None:
    rec = Recorder(delay_s=0.05)
    b = batcher(rec)

    async def main() -> None:
        first = asyncio.ensure_future(b.submit(rows(0, 1)))
        await asyncio.sleep(0.01)  # the first call is running now
        later = [rows(10 * i, 1) for i in range(1, 9)]
        outs = await asyncio.gather(first, *(b.submit(x) for x in later))
        for x, out in zip([rows(0, 1), *later], outs):
            np.testing.assert_array_equal(out, expected(x))

    try:
        run_async(main)
    finally:
        b.close()
    assert rec.sizes == [1, 8]


@pytest.mark.parametrize("max_batch_size, n", [(4, 10), (3, 3), (5, 1), (7, 50)])
def test_large_submission_is_split_and_reassembled(max_batch_size: int, n: int) -> None:
    rec = Recorder()
    b = batcher(rec, max_batch_size=max_batch_size)

    async def main() -> None:
        x = rows(0, n)
        np.testing.assert_array_equal(await b.submit(x), expected(x))

    try:
        run_async(main)
    finally:
        b.close()
    assert max(rec.sizes) <= max_batch_size and sum(rec.sizes) == n
    assert len(rec.sizes) == -(-n // max_batch_size)


def test_split_submissions_mixed_with_small_ones() -> None:
    rec = Recorder(delay_s=0.005)
    b = batcher(rec, max_batch_size=8)

    async def main() -> None:
        inputs = [rows(0, 3), rows(100, 20), rows(200, 1), rows(300, 9), rows(400, 2)]
        outs = await asyncio.gather(*(b.submit(x) for x in inputs))
        for x, out in zip(inputs, outs):
            np.testing.assert_array_equal(out, expected(x))

    try:
        run_async(main)
    finally:
        b.close()
    assert max(rec.sizes) <= 8 and sum(rec.sizes) == 35


def test_exception_reaches_every_waiting_caller_and_batcher_recovers() -> None:
    rec = Recorder(delay_s=0.01, fail_on=-1.0)
    b = batcher(rec)

    async def main() -> None:
        bad = np.array([[-1.0]], dtype=np.float32)
        results = await asyncio.gather(b.submit(rows(0, 2)), b.submit(bad), b.submit(rows(5, 3)),
                                       return_exceptions=True)
        assert all(isinstance(r, RuntimeError) and "model failed" in str(r) for r in results), results
        # the batcher keeps serving afterwards, merged and split alike
        outs = await asyncio.gather(b.submit(rows(0, 2)), b.submit(rows(10, 5)))
        np.testing.assert_array_equal(outs[0], expected(rows(0, 2)))
        np.testing.assert_array_equal(outs[1], expected(rows(10, 5)))

    try:
        run_async(main)
    finally:
        b.close()
    assert sum(rec.sizes) == 7  # on_batch counts successful calls only


def test_exception_in_one_part_of_a_split_submission_fails_it_once() -> None:
    rec = Recorder(fail_on=-1.0)
    b = batcher(rec, max_batch_size=2)

    async def main() -> None:
        x = rows(0, 6)
        x[3] = -1.0  # the second of three calls fails
        with pytest.raises(RuntimeError):
            await b.submit(x)
        np.testing.assert_array_equal(await b.submit(rows(0, 5)), expected(rows(0, 5)))

    try:
        run_async(main)
    finally:
        b.close()


def test_empty_submission_is_refused() -> None:
    b = batcher(Recorder())

    async def main() -> None:
        with pytest.raises(ValueError):
            await b.submit(np.zeros((0, 1), dtype=np.float32))

    try:
        run_async(main)
    finally:
        b.close()


def test_lone_request_is_not_delayed_when_nothing_is_incoming() -> None:
    rec = Recorder()
    b = batcher(rec, max_latency_ms=3000)

    async def main() -> float:
        await b.submit(rows(0, 1))  # start the loop
        started = time.perf_counter()
        for i in range(5):
            await b.submit(rows(i, 1))
        return (time.perf_counter() - started) / 5

    try:
        per_call = asyncio.run(main())
    finally:
        b.close()
    assert per_call < 0.3, f"a lone request waited {per_call:.3f} s (max_latency_ms=3000)"


def test_batch_waits_for_incoming_requests_up_to_the_deadline() -> None:
    """The control for the test above: with a request still decoding, the call waits for it (bounded)."""
    rec = Recorder()
    b = batcher(rec, max_latency_ms=200)

    async def main() -> tuple[float, float]:
        b.incoming = 1  # a request is being decoded and never arrives
        started = time.perf_counter()
        await b.submit(rows(0, 1))
        waited = time.perf_counter() - started
        b.incoming = 1  # now it arrives after 50 ms: both go in one call
        first = asyncio.ensure_future(b.submit(rows(1, 1)))

        async def late() -> np.ndarray:
            await asyncio.sleep(0.05)
            b.incoming = 0
            return await b.submit(rows(2, 1))

        await asyncio.gather(first, late())
        return waited, time.perf_counter() - started

    try:
        waited, _ = asyncio.run(main())
    finally:
        b.close()
    assert 0.18 <= waited < 2.0
    assert rec.sizes == [1, 2]


def test_rows_of_an_abandoned_request_are_not_run() -> None:
    """A request that timed out or lost its client mid-way: its remaining chunks are dropped, the others served."""
    rec = Recorder(delay_s=0.05)
    b = batcher(rec, max_batch_size=8)

    async def main() -> None:
        big = asyncio.ensure_future(b.submit(rows(0, 80)))  # 10 calls of 8 rows if it ran to the end
        await asyncio.sleep(0.08)  # the first chunk or two are in the model
        big.cancel()
        small = await b.submit(rows(1000, 3))
        np.testing.assert_array_equal(small, expected(rows(1000, 3)))

    run_async(main)
    assert sum(rec.calls) <= 8 * 3 + 3, rec.calls  # at most the chunks already started, then the small request
    b.close()


# --- fairness and admission ---------------------------------------------------------------------------------

def test_a_small_request_is_served_in_the_next_call_behind_large_ones() -> None:
    """Round robin: each queued request gets a share of every call, so a 2-row request waits one call, not 40."""
    rec = Recorder(delay_s=0.01)
    b = batcher(rec, max_batch_size=16)

    async def main() -> None:
        large = [asyncio.ensure_future(b.submit(rows(10_000 * (i + 1), 160))) for i in range(4)]
        await asyncio.sleep(0.005)  # the first call is running
        calls_before = len(rec.calls)
        small = await b.submit(rows(0, 2))
        np.testing.assert_array_equal(small, expected(rows(0, 2)))
        assert len(rec.calls) - calls_before <= 2, rec.calls  # the small one rode in the next call
        assert not all(f.done() for f in large)
        for i, f in enumerate(large):
            np.testing.assert_array_equal(await f, expected(rows(10_000 * (i + 1), 160)))

    try:
        run_async(main)
    finally:
        b.close()
    assert max(rec.sizes) <= 16 and sum(rec.sizes) == 4 * 160 + 2


def test_admission_refuses_oversized_and_overflowing_requests() -> None:
    from biomed.errors import Overloaded, TooLarge

    b = Batcher(lambda x: x, max_batch_size=8, max_request_rows=100, max_queued_bytes=1000)
    with pytest.raises(TooLarge, match="BIOMED_MAX_REQUEST_ROWS"):
        with b.admit(101, 1):
            pass
    with pytest.raises(TooLarge, match="BIOMED_MAX_QUEUED_MB"):
        with b.admit(100, 11):  # 1,100 bytes can never fit
            pass
    with b.admit(60, 10):
        assert b.admitted_bytes == 600
        with pytest.raises(Overloaded, match="BIOMED_MAX_QUEUED_MB"):
            with b.admit(50, 10):
                pass
        with b.admit(40, 10):
            assert b.admitted_bytes == 1000
    assert b.admitted_bytes == 0
    b.close()
