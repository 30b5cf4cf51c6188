"""What every door does around its endpoints: run the work, turn input errors into its error form, and let a
client that leaves be a client that left.

- An ``InputError`` becomes its 4xx status with the door's error body, counted in
  ``biomed_rejected_requests_total`` (endpoint = the route name).
- A client that leaves mid-request is not a server error: its work is cancelled (``http_io`` watches for
  the disconnect once the body is in), one line is logged, and the unsent answer is a 499, as nginx counts it.
- Anything else is a bug of ours: a logged 500 naming the code location, never the input.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from typing import Any, Awaitable, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from biomed.errors import InputError
from service.engine import Engine, current

log = logging.getLogger("biomed.service")

Endpoint = Callable[[Request, Engine], Awaitable[Any]]
ErrorBody = Callable[[str, str], dict]  # (code, detail) -> the door's error body


def wrapper(error_body: ErrorBody) -> Callable[[str, Endpoint], Callable[[Request], Awaitable[Response]]]:
    """A door's ``wrap(name, endpoint)``: its endpoints as ASGI endpoints answering errors with ``error_body``."""

    def wrap(name: str, endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        async def route(request: Request) -> Response:
            engine = current()
            # The model versions the request picks stay loaded until it ends; X-Request-ID keeps its canary choice.
            scope = engine.scope(request.headers.get("x-request-id"))
            scope.__enter__()  # before the task: it runs in a copy of this context
            work = asyncio.ensure_future(endpoint(request, engine))
            request.state.work = work  # cancelled by http_io when the client goes away
            try:
                answer = await work
                return answer if isinstance(answer, Response) else JSONResponse(answer)
            except InputError as err:
                engine.metrics.rejected.labels(endpoint=name, reason=err.code).inc()
                return JSONResponse(error_body(err.code, err.detail), status_code=err.status)
            except ClientDisconnect:  # gone while sending the body
                return _client_gone(name, engine, error_body)
            except asyncio.CancelledError:
                if getattr(request.state, "client_gone", False):  # gone while waiting for the answer
                    return _client_gone(name, engine, error_body)
                raise  # cancelled from outside (the request timeout, shutdown): not ours to answer
            except Exception as err:  # noqa: BLE001 - a bug of ours: log where, never the input
                frames = "".join(traceback.format_tb(err.__traceback__))
                log.error("%s failed with %s\n%s", name, type(err).__name__, frames)
                return JSONResponse(error_body("internal", "the server failed; see its log"), status_code=500)
            finally:
                engine.trimmer.after_request()  # memory back to the system once requests stop
                work.cancel()  # no-op when finished
                watch = getattr(request.state, "watch", None)
                if watch is not None:
                    watch.cancel()
                # An exception's traceback holds this frame, whose ``work`` holds the exception: a cycle that would
                # keep the request's data (bodies, parsed records) alive until a full garbage collection.
                request.state.work = request.state.watch = work = None
                scope.__exit__(None, None, None)

        route.__name__ = name
        return route

    return wrap


def _client_gone(name: str, engine: Engine, error_body: ErrorBody) -> Response:
    log.info("%s: the client closed the connection before the answer; its work was stopped", name)
    engine.metrics.rejected.labels(endpoint=name, reason="client_closed_request").inc()
    return JSONResponse(error_body("client_closed_request", "the client closed the connection"), status_code=499)
