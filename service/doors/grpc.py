"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``) and gRPC health checking.

Not BentoML's gRPC mode (that speaks BentoML's own protocol): a ``grpc.aio`` server of our own in every
worker, on the worker's event loop, on ``BIOMED_GRPC_PORT`` (``SO_REUSEPORT``: the workers share it).
``bind`` listens at once, before the models load, so a port in use is a start-up error; ``start`` serves
once the engine is up; ``close`` (the service's shutdown) reports NOT_SERVING and lets calls in flight
finish for up to ``GRACE_S``.

The calls are a table (``METHODS``), each a coroutine from its parsed request message to its answer; the
door around them does what the HTTP guard and ``endpoint.wrapper`` do for REST, with the same
``Admission``, data plane (``service/inference.py``), batchers and metrics (``door="grpc"``):

1. the token: every call but ServerLive, ServerReady and the health check needs ``authorization:
   Bearer <token>`` metadata when a token is set (``BIOMED_API_TOKEN``, ``BIOMED_API_TOKENS_FILE``;
   UNAUTHENTICATED, recorded in the audit trail); ModelInfer calls are audited as predictions;
2. a concurrency slot of the worker's share of ``BIOMED_MAX_CONCURRENCY`` (UNAVAILABLE at once past it);
3. its turn to read the request message: every method is registered as client-streaming so that the
   door, not gRPC, reads the one message, and at most ``BIOMED_GRPC_MAX_STREAMS`` calls per worker read
   theirs at once (the others wait unread); a message past ``BIOMED_MAX_UPLOAD_MB`` is refused by gRPC
   itself (RESOURCE_EXHAUSTED), one that does not arrive within ``BIOMED_BODY_TIMEOUT_S`` by the door;
   once read, its bytes count in the worker's ``BIOMED_MAX_BODIES_MB`` (UNAVAILABLE past it) and the
   turn passes on (docs/reliability.md, "Memory model");
4. the work, within ``BIOMED_REQUEST_TIMEOUT_S`` (DEADLINE_EXCEEDED). A call the client cancels or whose
   deadline passes is cancelled by gRPC, and its work with it (its rows leave the batcher's queue).

Errors carry the REST door's message, ``"<code>: <detail>"``, with the status of ``STATUS``.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from dataclasses import dataclass
from typing import Any, Awaitable, Callable
from urllib.parse import unquote

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2
from tritonclient.grpc import service_pb2 as pb

import biomed
from biomed.errors import InputError, MalformedInput
from biomed.runtime import StartupError
from biomed.settings import env
from service import audit, inference
from service.admission import Unauthorized
from service.config import ServiceConfig
from service.engine import Engine, current
from service.protocol.v2_grpc import SERVICE, encode_grpc, parse_grpc

log = logging.getLogger("biomed.service")
HEALTH = "grpc.health.v1.Health"
GRACE_S = 5.0  # how long calls in flight may finish once the worker stops
C = grpc.StatusCode
STATUS = {400: C.INVALID_ARGUMENT, 401: C.UNAUTHENTICATED, 403: C.PERMISSION_DENIED, 404: C.NOT_FOUND,
          408: C.DEADLINE_EXCEEDED, 413: C.RESOURCE_EXHAUSTED, 429: C.UNAVAILABLE, 499: C.CANCELLED,
          504: C.DEADLINE_EXCEEDED}  # any other 4xx (415, 422): INVALID_ARGUMENT


def peer_address(peer: str | None) -> str | None:
    """The client's address of a gRPC peer string (``ipv4:10.0.0.7:51234``, ``ipv6:[::1]:51234``), without its port:
    what the body budget's share per address counts (as the HTTP guard does with the client's address)."""
    if not peer or ":" not in peer:
        return None
    _, _, rest = peer.partition(":")
    host = rest.rsplit(":", 1)[0] if rest.count(":") == 1 or rest.startswith("[") else rest
    return host.strip("[]") or None


class Timeout(InputError):
    status = 504
    code = "timeout"


class BodyTimeout(InputError):
    status = 408
    code = "request_timeout"


@dataclass(frozen=True)
class Method:
    """One call: its service, name, request message, and whether it is open (no token, no concurrency slot)."""

    service: str
    name: str
    request: Any  # the protobuf message class
    run: Callable[[Any, Engine, "GrpcDoor"], Awaitable[Any]]
    open: bool = False
    audited: bool = False  # a prediction: recorded in the audit trail (service/audit)

    @property
    def label(self) -> str:
        return f"grpc_{self.name}"  # biomed_rejected_requests_total's endpoint


# ---------------------------------------------------------------- the calls


async def server_live(msg: pb.ServerLiveRequest, engine: Engine, door: "GrpcDoor") -> pb.ServerLiveResponse:
    return pb.ServerLiveResponse(live=True)


async def server_ready(msg: pb.ServerReadyRequest, engine: Engine, door: "GrpcDoor") -> pb.ServerReadyResponse:
    return pb.ServerReadyResponse(ready=door.serving(engine))


async def server_metadata(msg: pb.ServerMetadataRequest, engine: Engine, door: "GrpcDoor") -> Any:
    return pb.ServerMetadataResponse(name="biomed-serve", version=biomed.__version__)


async def model_ready(msg: pb.ModelReadyRequest, engine: Engine, door: "GrpcDoor") -> pb.ModelReadyResponse:
    inference.pick(engine, msg.name, msg.version or None)
    return pb.ModelReadyResponse(ready=engine.ready)


async def model_metadata(msg: pb.ModelMetadataRequest, engine: Engine, door: "GrpcDoor") -> Any:
    doc = inference.model_metadata(engine, inference.pick(engine, msg.name, msg.version or None))
    tensors = {key: [pb.ModelMetadataResponse.TensorMetadata(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                     for t in doc[key]] for key in ("inputs", "outputs")}
    return pb.ModelMetadataResponse(name=doc["name"], versions=doc["versions"], platform=doc["platform"], **tensors)


async def model_infer(msg: pb.ModelInferRequest, engine: Engine, door: "GrpcDoor") -> pb.ModelInferResponse:
    handler = inference.pick(engine, msg.model_name, msg.model_version or None)
    req = parse_grpc(msg, inference.signature(handler))
    del msg
    return encode_grpc(await inference.infer(handler, req, door="grpc"))


async def health_check(msg: Any, engine: Engine, door: "GrpcDoor") -> Any:
    """SERVING once every model is warmed up, as ``/readyz`` answers 200 (NOT_SERVING while stopping)."""
    if msg.service not in ("", SERVICE):
        raise InputError(f"service {msg.service[:200]!r} is not checked here; ask for '' or {SERVICE!r}",
                         code="not_found", status=404)
    status = health_pb2.HealthCheckResponse.SERVING if door.serving(engine) else \
        health_pb2.HealthCheckResponse.NOT_SERVING
    return health_pb2.HealthCheckResponse(status=status)


METHODS = (
    Method(SERVICE, "ServerLive", pb.ServerLiveRequest, server_live, open=True),
    Method(SERVICE, "ServerReady", pb.ServerReadyRequest, server_ready, open=True),
    Method(SERVICE, "ServerMetadata", pb.ServerMetadataRequest, server_metadata),
    Method(SERVICE, "ModelReady", pb.ModelReadyRequest, model_ready),
    Method(SERVICE, "ModelMetadata", pb.ModelMetadataRequest, model_metadata),
    Method(SERVICE, "ModelInfer", pb.ModelInferRequest, model_infer, audited=True),
    Method(HEALTH, "Check", health_pb2.HealthCheckRequest, health_check, open=True),
)


# ---------------------------------------------------------------- the door


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()


class GrpcDoor:
    """This worker's gRPC server (see the module docstring)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.reading = asyncio.Semaphore(config.grpc_max_streams)  # calls reading their message at once
        self.closing = False
        self.server = grpc.aio.server(options=[("grpc.so_reuseport", 1),
                                               ("grpc.max_receive_message_length", config.max_upload_bytes)])
        for service in (SERVICE, HEALTH):
            handlers = {m.name: grpc.stream_unary_rpc_method_handler(self._behaviour(m), response_serializer=_serialize)
                        for m in METHODS if m.service == service}
            self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
        self._started: asyncio.Task | None = None

    def serving(self, engine: Engine) -> bool:
        return engine.ready and not self.closing

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Serve calls (on ``loop``, the worker's, from the service's start-up)."""
        self._started = loop.create_task(self.server.start())
        self._started.add_done_callback(_report_start)

    async def close(self) -> None:
        self.closing = True
        await self.server.stop(GRACE_S)

    def _behaviour(self, method: Method) -> Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]:
        async def behaviour(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            engine = current()
            try:
                return await self._call(method, context, engine)
            except InputError as err:
                engine.metrics.rejected.labels(endpoint=method.label, reason=err.code).inc()
                await _abort(context, err)
            except asyncio.CancelledError:  # the client cancelled, or its deadline passed: gRPC answered it
                left = context.time_remaining()
                reason = "deadline_exceeded" if left is not None and left <= 0 else "client_closed_request"
                engine.metrics.rejected.labels(endpoint=method.label, reason=reason).inc()
                raise
            except Exception as err:  # noqa: BLE001 - a bug of ours: log where, never the input
                frames = "".join(traceback.format_tb(err.__traceback__))
                log.error("%s failed with %s\n%s", method.label, type(err).__name__, frames)
                await context.abort(C.INTERNAL, "internal: the server failed; see its log")
            finally:
                engine.trimmer.after_request()

        behaviour.__name__ = method.name
        return behaviour

    async def _call(self, method: Method, context: grpc.aio.ServicerContext, engine: Engine) -> Any:
        """Admission, the message, the work (see the module docstring); InputError for what the client gets wrong."""
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        admission = engine.admission
        peer = peer_address(unquote(context.peer() or ""))  # the body budget's key and the audit trail's "from where"
        who = None
        if not method.open:
            scheme, _, token = metadata.get("authorization", "").partition(" ")
            who = admission.authorised(token if scheme.lower() == "bearer" else None, peer or "", "grpc")
            if who is None:  # the admission recorded the refusal in the audit trail
                raise Unauthorized(f"send authorization metadata 'Bearer <token>' ({env('api_token')} or one of "
                                   f"{env('api_tokens_file')})")
            admission.enter()
        held = 0
        try:
            async with asyncio.timeout(self.config.request_timeout_s) as clock:
                async with self.reading:
                    raw = await self._read(context)
                    admission.hold(len(raw), peer)
                    held = len(raw)
                msg = _parse(method, raw)
                del raw
                with engine.scope(metadata.get("x-request-id")):
                    if not method.audited:
                        return await method.run(msg, engine, self)
                    async with audit.current().predicting("grpc", method.label, who, peer or ""):
                        return await method.run(msg, engine, self)
        except TimeoutError:
            if clock.expired():
                raise Timeout(f"the request did not finish within {self.config.request_timeout_s:g} s "
                              f"({env('request_timeout_s')})") from None
            raise
        finally:
            if held:
                admission.release(held, peer)
            if not method.open:
                admission.leave()

    async def _read(self, context: grpc.aio.ServicerContext) -> bytes:
        """The call's one request message, within ``BIOMED_BODY_TIMEOUT_S``."""
        seconds = self.config.body_timeout_s
        try:
            async with asyncio.timeout(seconds):
                raw = await context.read()
        except TimeoutError:
            raise BodyTimeout(f"the request message did not arrive within {seconds:g} s "
                              f"({env('body_timeout_s')})") from None
        if raw is grpc.aio.EOF:
            raise MalformedInput("the call carried no request message; send one")
        return raw


def _parse(method: Method, raw: bytes) -> Any:
    try:
        return method.request.FromString(raw)
    except DecodeError:
        raise MalformedInput(f"the message is not a {method.request.DESCRIPTOR.full_name} (protobuf could not "
                             "parse it)") from None


async def _abort(context: grpc.aio.ServicerContext, err: InputError) -> None:
    retry = (("grpc-retry-pushback-ms", "1000"),) if err.status == 429 else ()  # as REST's Retry-After: 1
    await context.abort(STATUS.get(err.status, C.INVALID_ARGUMENT), f"{err.code}: {err.detail}",
                        trailing_metadata=retry)


def _report_start(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.critical("the gRPC server did not start: %s", task.exception())


def bind(config: ServiceConfig) -> GrpcDoor:
    """This worker's gRPC server, listening on ``BIOMED_GRPC_HOST:BIOMED_GRPC_PORT`` (StartupError when it cannot)."""
    door = GrpcDoor(config)
    address = _address(config.grpc_host, config.grpc_port)
    try:
        door.server.add_insecure_port(address)
    except RuntimeError:
        raise StartupError(f"the gRPC server cannot listen on {address} (in use by another program, or not an "
                           f"address of this host; {env('grpc_port')}, {env('grpc_host')})") from None
    log.info("Open Inference Protocol v2 over gRPC on %s", address)
    return door
