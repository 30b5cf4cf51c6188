"""The per-process engine: loaded models, their batchers, the preprocessing pool, metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from biomed.errors import InputError
from biomed.preprocess.image import Limits
from service.batcher import Batcher
from service.config import ServiceConfig
from service.metrics import metrics
from service.runtime import LoadedModel, StartupError, load_model, warm_up

log = logging.getLogger("biomed.service")
T = TypeVar("T")

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
    """Loads every configured model once, warms it up, and serves predictions through batchers."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.metrics = metrics()
        self.models: dict[str, LoadedModel] = {}
        self.ready = False
        self.limits = Limits(max_pixels=config.max_pixels, max_frames=config.max_frames, max_bytes=config.max_upload_bytes)
        self._pool = ThreadPoolExecutor(config.preprocess_threads, thread_name_prefix="preprocess")
        self.metrics.gpu_required.set(1 if config.require_gpu else 0)
        for ref in config.models:
            model = load_model(ref, config)
            if model.name in self.models:
                raise StartupError(f"model {model.name} is configured twice in BIOMED_MODELS")
            model.batcher = self._batcher(model)
            warm_up(model)
            self.models[model.name] = model
            self.metrics.model_info.labels(model=model.name, version=model.version, provider=model.provider,
                                           sha256=model.sha256).set(1)
        if not self.models:
            raise StartupError("no models configured; set BIOMED_MODELS to a comma list of name[:version]")
        self.ready = True

    def _batcher(self, model: LoadedModel) -> Batcher:
        size = self.config.max_batch_size if model.kind == "image" else self.config.max_dna_batch_size
        histogram = self.metrics.inference_seconds.labels(model=model.name, provider=model.provider)
        batch_sizes = self.metrics.batch_size.labels(model=model.name)

        def on_batch(rows: int, seconds: float) -> None:
            histogram.observe(seconds)
            batch_sizes.observe(rows)

        return Batcher(model.run, max_batch_size=size, max_latency_ms=self.config.max_latency_ms, on_batch=on_batch)

    def pick(self, ref: str | None, kind: str) -> LoadedModel:
        """The model named by ``name`` or ``name:version``, or the first loaded model of ``kind``."""
        if ref is None or ref == "":
            for model in self.models.values():
                if model.kind == kind:
                    return model
            raise UnknownModel(f"no {kind} model is loaded; loaded: {self._names()}")
        name, _, version = ref.partition(":")
        model = self.models.get(name)
        if model is None or (version and version not in ("latest", model.version)):
            raise UnknownModel(f"model {ref!r} is not loaded; loaded: {self._names()}")
        if model.kind != kind:
            raise InputError(f"model {ref!r} is a {model.kind} model; this endpoint needs a {kind} model",
                             code="wrong_model_kind")
        return model

    def _names(self) -> str:
        return ", ".join(f"{m.name}:{m.version} ({m.kind})" for m in self.models.values())

    async def in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    @contextlib.contextmanager
    def admitting(self, model: LoadedModel) -> Iterator[None]:
        """Mark a request as on its way to ``model``'s batcher, so a forming batch may wait for it."""
        model.batcher.incoming += 1
        try:
            yield
        finally:
            model.batcher.incoming -= 1

    def dna_predictor(self, model: LoadedModel, started: float) -> Callable[[np.ndarray], Any]:
        """The batcher's submit, recording the encoding time of the request on its first call."""
        seen = False

        async def predict(rows: np.ndarray) -> np.ndarray:
            nonlocal seen
            if not seen:
                self.metrics.preprocess_seconds.labels(kind="dna").observe(time.perf_counter() - started)
                seen = True
            return await model.batcher.submit(rows)

        return predict

    def count_predictions(self, model: LoadedModel, labels: list[str]) -> None:
        for label in labels:
            self.metrics.predictions.labels(model=model.name, label=label).inc()

    def close(self) -> None:
        for model in self.models.values():
            model.batcher.close()
        self._pool.shutdown(wait=False, cancel_futures=True)


def start(config: ServiceConfig) -> Engine:
    global _current
    _current = Engine(config)
    return _current
