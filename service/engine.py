"""The per-process engine: the loaded models, a handler for each, the preprocessing pool and the metrics."""

from __future__ import annotations

import contextlib
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from biomed.errors import InputError, with_article
from biomed.preprocess.budget import DecodeBudget
from biomed.runtime import LoadedModel, StartupError
from biomed.settings import env
from service.admission import Admission
from service.config import ServiceConfig
from service.handlers import Handler, Shared, kinds_serving
from service.lifecycle import Lifecycle
from service.memory import Trimmer
from service.metrics import metrics
from service.versions import Scope, Versions, current_scope

log = logging.getLogger("biomed.service")

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
    """Loads every configured model version once, warms it up, and hands requests to the version's handler.

    ``versions`` holds each model name's loaded versions, its default and its canaries
    (``service/versions.py``); ``lifecycle`` decides what is loaded and reloads it while serving
    (``service/lifecycle.py``); ``users`` counts the requests holding each handler (``scope``).
    """

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = metrics()
        self.versions: dict[str, Versions] = {}
        self.users: dict[Handler, int] = {}
        self.trimmer = Trimmer()
        self.ready = False
        self._pools = (ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="preprocess"),
                       ThreadPoolExecutor(max(1, config.preprocess_threads // 2), thread_name_prefix="preprocess-small"))
        self.admission = Admission(config, DecodeBudget(config.max_decoding_bytes))  # every door's gates
        shared = Shared(config, self.metrics, *self._pools, self.admission.decode)
        self.metrics.gpu_required.set(1 if config.require_gpu else 0)
        if not config.models:
            raise StartupError(f"no models configured; set {env('models')} to a comma list of name[:version]")
        self.lifecycle = Lifecycle(self, shared)
        self.lifecycle.start()
        if not self.versions:
            raise StartupError(f"no models configured; set {env('models')} to a comma list of name[:version]")
        self.lifecycle.watch()
        self.ready = True

    @property
    def handlers(self) -> dict[str, Handler]:
        """Each model name's default handler, in ``BIOMED_MODELS`` order."""
        return {name: v.default_handler for name, v in self.versions.items()}

    @property
    def models(self) -> dict[str, LoadedModel]:
        """Every loaded model version, by ``name:version``: each name's versions in load order."""
        return {f"{name}:{version}": h.model for name, v in self.versions.items() for version, h in v.handlers.items()}

    def loaded_versions(self, name: str) -> list[str]:
        """The versions of ``name`` this worker serves (none: ``[]``)."""
        v = self.versions.get(name)
        return list(v.handlers) if v is not None else []

    def _not_loaded(self, ref: str) -> str:
        """The 404 detail for ``ref``, with a hint when the store holds it but ``BIOMED_MODELS`` does not ask for it."""
        name, _, version = ref.partition(":")
        detail = f"model {ref!r} is not loaded; loaded: {self._names()}"
        parts = [name, *([version] if version and version != "latest" else [])]
        if all(_STORE_NAME.fullmatch(p) and ".." not in p for p in parts) and any(
                root.joinpath(*parts).is_dir() for root in {d.parent for d in self.lifecycle.dirs.values()}):
            detail += (f"; {ref} is in the model store but not served here: add it to {env('models')} (or "
                       f"{env('canary')}) and restart to serve it")
        return detail

    def pick(self, ref: str | None, operation: str | None = None, request_id: str | None = None) -> Handler:
        """The handler for ``ref`` that serves ``operation`` (a handler method a door calls; None: any model).

        ``name:version`` is that version; ``name`` (or ``name:latest``) is the name's default or, for its share of
        the requests, a canary; none is the first model, in ``BIOMED_MODELS`` order, whose kind serves
        ``operation`` (its default or canary). The choice of a canary follows ``request_id`` (the request's
        ``X-Request-ID``, from the scope when not given) when there is one. Inside a ``scope`` the handler counts
        as in use until it closes.

        Raises:
            UnknownModel (404): no such model or version, or none loaded serves ``operation``.
            InputError (422 ``wrong_model_kind``): the model named does not serve ``operation``.
        """
        scope = current_scope.get()
        if request_id is None and scope is not None:
            request_id = scope.request_id
        if ref is None or ref == "":
            for v in self.versions.values():
                if _serves(v.default_handler, operation):
                    handler, route = v.route(request_id)
                    return self._hold(handler, route, scope)
            raise UnknownModel(f"no loaded model serves this endpoint (it needs {with_article(_kinds(operation))} model); "
                               f"loaded: {self._names()}")
        name, _, version = ref.partition(":")
        v = self.versions.get(name)
        if v is None:
            raise UnknownModel(self._not_loaded(ref))
        if version in ("", "latest"):
            handler, route = v.route(request_id)
        elif version in v.handlers:
            handler, route = v.handlers[version], "named"
        else:
            raise UnknownModel(self._not_loaded(ref))
        if not _serves(handler, operation):
            raise InputError(f"model {ref!r} is {with_article(handler.kind)} model; this endpoint needs {with_article(_kinds(operation))} "
                             "model", code="wrong_model_kind")
        return self._hold(handler, route, scope)

    def route(self, modality: str, operation: str) -> Handler:
        """The handler a DICOM door sends an instance (or a series) of ``modality`` to, for ``operation``.

        ``BIOMED_DICOM_MODEL`` when set; else, in ``BIOMED_MODELS`` order, the first model serving ``operation``
        whose metadata lists ``modality`` (``modalities``), else the first serving it that lists none. A model that
        lists other modalities only is never sent this one.

        Raises:
            UnknownModel (404): no loaded model takes ``modality`` for ``operation``.
            InputError (422 ``wrong_model_kind``): ``BIOMED_DICOM_MODEL`` does not serve ``operation``.
        """
        if self.config.dicom_model:
            return self.pick(self.config.dicom_model, operation)
        fallback = None
        for name, v in self.versions.items():
            handler = v.default_handler
            if not _serves(handler, operation):
                continue
            listed = handler.model.doc.get("modalities") or ()
            if modality and modality in listed:
                return self.pick(name, operation)
            if not listed and fallback is None:
                fallback = name
        if fallback is None:
            raise UnknownModel(f"no loaded model takes {modality or 'these'} instances here (it needs a "
                               f"{_kinds(operation)} model listing the modality, or none); loaded: {self._names()}")
        return self.pick(fallback, operation)

    def _hold(self, handler: Handler, route: str, scope: Scope | None) -> Handler:
        if scope is not None:
            self.users[handler] = self.users.get(handler, 0) + 1
            scope.picked.append((handler, route))
        return handler

    @contextlib.contextmanager
    def scope(self, request_id: str | None = None) -> Iterator[Scope]:
        """One request: the handlers ``pick`` hands out inside it stay in use (not unloaded) until it closes, and
        its time is counted per version in ``biomed_model_request_seconds``."""
        scope = Scope(request_id or None)
        token = current_scope.set(scope)
        try:
            yield scope
        finally:
            current_scope.reset(token)
            seconds = time.perf_counter() - scope.started
            seen = set()
            for handler, route in scope.picked:
                left = self.users.get(handler, 0) - 1
                if left > 0:
                    self.users[handler] = left
                else:
                    self.users.pop(handler, None)
                if handler not in seen:
                    seen.add(handler)
                    m = handler.model
                    self.metrics.model_requests.labels(model=m.name, version=m.version, route=route).observe(seconds)
            scope.picked.clear()

    def _names(self) -> str:
        return ", ".join(f"{m.name}:{m.version} ({m.kind})" for m in self.models.values())

    def close(self) -> None:
        self.lifecycle.close()
        for v in self.versions.values():
            for handler in v.handlers.values():
                handler.close()
        for pool in self._pools:
            pool.shutdown(wait=False, cancel_futures=True)


def _serves(handler: Handler, operation: str | None) -> bool:
    return operation is None or operation in handler.operations


_STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # a name or version that can be a store folder


def _kinds(operation: str | None) -> str:
    return " or ".join(kinds_serving(operation)) if operation else "any"


def start(config: ServiceConfig) -> Engine:
    global _current
    _current = Engine(config)
    return _current
