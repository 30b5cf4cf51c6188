"""The per-process engine: the loaded models, a handler for each, the preprocessing pool and the metrics."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from biomed.errors import InputError
from biomed.preprocess.budget import DecodeBudget
from service.config import ServiceConfig
from service.handlers import HANDLERS, Handler, Shared
from service.memory import Trimmer
from service.metrics import metrics
from service.runtime import LoadedModel, StartupError, load_model, warm_up

log = logging.getLogger("biomed.service")
H = TypeVar("H", bound=Handler)

_current: "Engine | None" = None


class UnknownModel(InputError):
    status = 404
    code = "unknown_model"


def current() -> "Engine":
    """The engine of this worker process (set when the BentoML service starts)."""
    if _current is None:
        raise RuntimeError("the biomed engine is not started in this process")
    return _current


class Engine:
    """Loads every configured model once, warms it up, and hands requests to each model's handler."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = metrics()
        self.handlers: dict[str, Handler] = {}
        self.trimmer = Trimmer()
        self.ready = False
        self._pools = (ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="preprocess"),
                       ThreadPoolExecutor(max(1, config.preprocess_threads // 2), thread_name_prefix="preprocess-small"))
        shared = Shared(config, self.metrics, *self._pools, DecodeBudget(config.max_decoding_bytes))
        self.metrics.gpu_required.set(1 if config.require_gpu else 0)
        for ref in config.models:
            model = load_model(ref, config)
            if model.name in self.handlers:
                raise StartupError(f"model {model.name} is configured twice in BIOMED_MODELS")
            if model.kind not in HANDLERS:
                raise StartupError(f"model {model.name}: kind {model.kind!r} has no handler; known: {', '.join(HANDLERS)}")
            handler = HANDLERS[model.kind]
            warm_up(model, handler.max_batch_size(config))
            self.handlers[model.name] = handler(model, shared)
            self.metrics.model_info.labels(model=model.name, version=model.version, provider=model.provider,
                                           sha256=model.sha256).set(1)
        if not self.handlers:
            raise StartupError("no models configured; set BIOMED_MODELS to a comma list of name[:version]")
        self.ready = True

    @property
    def models(self) -> dict[str, LoadedModel]:
        return {name: h.model for name, h in self.handlers.items()}

    def pick(self, ref: str | None, kind: type[H]) -> H:
        """The handler of the model named ``name`` or ``name:version``, or of the first loaded model of ``kind``."""
        if ref is None or ref == "":
            for handler in self.handlers.values():
                if isinstance(handler, kind):
                    return handler
            raise UnknownModel(f"no {kind.kind} model is loaded; loaded: {self._names()}")
        name, _, version = ref.partition(":")
        handler = self.handlers.get(name)
        if handler is None or (version and version not in ("latest", handler.model.version)):
            raise UnknownModel(f"model {ref!r} is not loaded; loaded: {self._names()}")
        if not isinstance(handler, kind):
            raise InputError(f"model {ref!r} is a {handler.kind} model; this endpoint needs a {kind.kind} model",
                             code="wrong_model_kind")
        return handler

    def _names(self) -> str:
        return ", ".join(f"{m.name}:{m.version} ({m.kind})" for m in self.models.values())

    def close(self) -> None:
        for handler in self.handlers.values():
            handler.close()
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)


def start(config: ServiceConfig) -> Engine:
    global _current
    _current = Engine(config)
    return _current
