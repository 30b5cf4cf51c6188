"""service/traffic.py: 504 on time, nothing of a finished request left on the loop, 429 in the contract's form."""

from __future__ import annotations

import asyncio
import copy
import json
import time

import pytest

from service.guard import Guard
from service.traffic import RouteLabelledMetrics, TimeoutMiddleware


def _request(app, timeout: float) -> tuple[list[dict], asyncio.AbstractEventLoop]:  # type: ignore[no-untyped-def]
    """One HTTP request through the middleware; the messages sent and the loop it ran on."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    async def main() -> asyncio.AbstractEventLoop:
        await TimeoutMiddleware(app, timeout)({"type": "http", "path": "/x", "method": "POST", "headers": []},
                                              receive, send)
        return asyncio.get_running_loop()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(main())
        return sent, loop
    finally:
        loop.close()


async def _ok(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_finished_request_leaves_no_live_timer_and_no_context_behind() -> None:
    captured = {}

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        captured["timers"] = list(asyncio.get_running_loop()._scheduled)  # noqa: SLF001 - what BentoML's leaves
        await _ok(scope, receive, send)

    sent, loop = _request(app, timeout=60.0)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    (timer,) = captured["timers"]
    assert timer.cancelled(), "the timer must be cancelled once the response has started"
    assert len(timer._context) == 0  # noqa: SLF001 - scheduled in an empty context: no request state held


def test_no_response_within_the_timeout_is_a_504_with_the_contract_error_body() -> None:
    async def slow(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await asyncio.sleep(5)
        await _ok(scope, receive, send)

    sent, _ = _request(slow, timeout=0.05)
    assert sent[0]["status"] == 504
    body = json.loads(b"".join(m.get("body", b"") for m in sent[1:]))
    assert body["error"] == "timeout" and "BIOMED_REQUEST_TIMEOUT_S" in body["detail"]


def test_an_app_error_surfaces_at_once_not_after_the_timeout() -> None:
    async def broken(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("bug")

    started = time.perf_counter()
    with pytest.raises(RuntimeError, match="bug"):
        _request(broken, timeout=30.0)
    assert time.perf_counter() - started < 5.0


def test_a_response_that_started_in_time_may_finish_after_it() -> None:
    async def streaming(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": b"done"})

    sent, _ = _request(streaming, timeout=0.05)
    assert sent[0]["status"] == 200 and sent[-1]["body"] == b"done"


def test_the_service_app_uses_it_in_place_of_bentomls() -> None:
    from service.service import Biomed

    saved = copy.deepcopy(Biomed.config)
    Biomed.config["metrics"] = {**Biomed.config.get("metrics", {}), "enabled": False}  # registers nothing globally
    try:
        stack = [m.cls for m in Biomed.to_asgi().user_middleware]
    finally:
        Biomed.config.clear()
        Biomed.config.update(saved)
    assert TimeoutMiddleware in stack and Guard in stack
    assert not [c for c in stack if c.__name__ == "TimeoutMiddleware" and c is not TimeoutMiddleware]
    # the concurrency limit is the guard's (counted once the body is in), not BentoML's
    assert not [c for c in stack if c.__name__ == "MaxConcurrencyMiddleware"]
    assert Biomed.config["traffic"]["timeout"] > 0


def test_request_metrics_are_labelled_by_route_template() -> None:
    import service.service  # noqa: F401 - installs the replacements
    from bentoml._internal.server.http import instruments

    from service.routes import label

    assert instruments.RunnerTrafficMetricsMiddleware is RouteLabelledMetrics
    assert label("/predict_dna") == "/predict_dna" and label("/ui/style.css") == "/ui/{name}"
    assert {label(p) for p in ("/x", "/predict_dna/", "/%0aFORGED", "/" + "a" * 5000)} == {"other"}


@pytest.fixture()
def tight_service(demo_models: dict[str, str]):  # type: ignore[no-untyped-def]
    """The in-process service with one request in flight at most and a 0.3 s timeout."""
    from conftest import inprocess_client
    from service.service import Biomed

    saved = copy.deepcopy(Biomed.config)
    Biomed.config["traffic"] = {**Biomed.config["traffic"], "timeout": 0.3}
    try:
        yield from inprocess_client({"BIOMED_MAX_CONCURRENCY": "1"})
    finally:
        Biomed.config.clear()
        Biomed.config.update(saved)


def test_overload_answers_429_and_a_slow_request_504(tight_service) -> None:  # type: ignore[no-untyped-def]
    import threading

    long = "ACGT" * 1250  # 5,000 bases of ISM: far longer than the 0.3 s timeout on any machine here
    first: dict = {}
    worker = threading.Thread(target=lambda: first.update(r=tight_service.post("/explain_dna", json={"sequence": long})))
    worker.start()
    time.sleep(0.1)  # the ISM request holds the one slot now (it runs for seconds; the timeout ends it at 0.3 s)
    deadline = time.monotonic() + 10
    second = None
    while time.monotonic() < deadline and worker.is_alive():
        second = tight_service.post("/predict_dna", json={"sequences": ["ACGT"]})
        if second.status_code == 429:
            break
        time.sleep(0.01)
    worker.join(timeout=60)
    assert second is not None and second.status_code == 429, "a second request while one is in flight must be refused"
    assert second.json()["error"] == "too_many_requests" and "BIOMED_MAX_CONCURRENCY" in second.json()["detail"]
    assert first["r"].status_code == 504 and first["r"].json()["error"] == "timeout"
    # It recovers at once: the abandoned request's remaining ISM rows are dropped, not run ahead of this one.
    assert tight_service.post("/predict_dna", json={"sequences": ["ACGT"]}).status_code == 200
