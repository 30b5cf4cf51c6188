"""The BentoML service: ``bentoml serve service.service:Biomed`` (what ``biomed serve`` runs).

One class-based service per worker process. At start-up it reads the settings once
(``ServiceConfig.from_env()``), loads every model in ``BIOMED_MODELS`` from the model
store, creates one onnxruntime session per model (TensorRT/CUDA/CPU as configured, the
provider in use read back) and a handler for its kind (``service/handlers/``), warms
each up, and only then reports ready. The routes come from ``service/routes.py``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import warnings

import bentoml

from biomed.runtime import StartupError
from service import audit, dicom, memory, traffic
from service.config import ServiceConfig
from service.guard import Guard
from service.app import build_app

log = logging.getLogger("biomed.service")
# BentoML's own options (workers, timeout) are fixed when the class is decorated, at import.
_BENTOML = ServiceConfig.from_env()
traffic.install()  # BentoML's request timeout without its retention of every request (service/traffic.py)


def _quiet_third_party() -> None:
    """pydicom's warnings can quote element values (patient data): keep them out of the logs."""
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    logging.getLogger("biomed").setLevel(logging.INFO)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    """The worker's event loop (BentoML builds the service instance on it): the gRPC server's, and the one the
    C-STORE receiver's threads hand instances to."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _fail_fast(err: Exception) -> None:
    """Stop the whole server on a start-up error instead of letting the supervisor respawn this worker forever.

    BentoML's process supervisor (circus) restarts a worker that dies, so a missing or corrupt model would
    otherwise loop without end while ``bentoml serve`` keeps running. The worker logs the reason, kills its
    parent when that is ``bentoml serve`` (so it exits non-zero, as a container runtime expects), and exits.
    """
    log.critical("start-up failed: %s", err)
    for handler in logging.getLogger().handlers + log.handlers:
        handler.flush()
    parent = os.getppid()
    try:
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        argv = []
    if any(a.endswith(b"bentoml") for a in argv) and b"serve" in argv:
        os.kill(parent, signal.SIGKILL)
    os._exit(3)


@bentoml.service(
    name="biomed-serve",
    workers=_BENTOML.workers,
    traffic={"timeout": _BENTOML.request_timeout_s},  # the concurrency limit is service/guard.py's
    # No sampling, no tracing middleware work per request (~8 % of a small request's CPU); a rate > 0 turns it on.
    tracing={"sample_rate": _BENTOML.trace_sample_rate} if _BENTOML.trace_sample_rate > 0
    else {"sample_rate": 0.0, "excluded_urls": [".*"]},
    http={"cors": {"enabled": False}},
    endpoints={"livez": "/livez", "readyz": "/readyz"},
    metrics={"enabled": True, "namespace": "bentoml_service"},
    labels={"project": "biomed-serve"},
)
@bentoml.asgi_app(build_app(), path="/")
class Biomed:
    """Loads the configured models once per worker; the HTTP routes live in ``service/routes.py``."""

    def __init__(self) -> None:
        from service import engine

        _quiet_third_party()
        memory.configure()
        loop = _running_loop()
        self.grpc = None
        try:
            config = ServiceConfig.from_env()
            self.audit = audit.configure(config)  # the audit trail (BIOMED_AUDIT), before anything it records
            if config.grpc_port:  # listening at once: a port in use stops start-up before the models load
                from service.doors import grpc

                self.grpc = grpc.bind(config)
            self.engine = engine.start(config)
            self.dicom = dicom.start(self.engine, loop)  # C-STORE receiver, SR forwarder (service/dicom/)
            if self.grpc is not None:
                if loop is None:
                    raise StartupError("the gRPC server needs the worker's event loop")
                self.grpc.start(loop)  # the Open Inference Protocol v2 over gRPC (service/doors/grpc.py)
        except (StartupError, ValueError) as err:
            _fail_fast(err)
            raise
        for model in self.engine.models.values():
            log.info("serving %s:%s kind=%s provider=%s sha256=%s", model.name, model.version, model.kind,
                     model.provider, model.sha256[:12])
        log.info("worst-case memory of this worker under its limits: %.0f MB (docs/reliability.md, memory model)",
                 self.engine.config.memory_bound() / 2**20)
        self.audit.application(started=True)
        # Everything loaded so far lives as long as the worker: keep the collector from walking it again on every
        # full collection (~100k objects, 50 ms a pass on this CPU: a stall of the event loop each time).
        gc.collect()
        gc.freeze()

    def __is_ready__(self) -> bool:
        return self.engine.ready

    @bentoml.on_shutdown
    async def shutdown(self) -> None:
        if self.grpc is not None:
            await self.grpc.close()
        if self.dicom is not None:
            self.dicom.close()
        self.engine.close()
        self.audit.application(started=False)
        audit.close()


Biomed.add_asgi_middleware(Guard)
