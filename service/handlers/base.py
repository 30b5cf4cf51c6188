"""What every handler shares: its model, the model's batcher, the preprocessing pool and the metrics.

A handler is the one place that knows, for its kind of model, how input becomes rows
(decode, preprocess), how rows go through the batcher, and how outputs become results.
Front doors (``service/doors/``) parse their protocol, call a handler and format its answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, TypeVar

import numpy as np

from biomed.errors import InputError, MalformedInput, TooLarge
from biomed.outputs.semantics import Semantics
from biomed.series import Collected, Result, aggregate_of, mixture
from biomed.preprocess.budget import DecodeBudget
from biomed.runtime import LoadedModel
from biomed.settings import env
from service.batcher import Batcher
from service.config import ServiceConfig
from service.metrics import Metrics

T = TypeVar("T")


@dataclass(frozen=True)
class Shared:
    """What the engine lends every handler: the settings, the metrics and the preprocessing threads."""

    config: ServiceConfig
    metrics: Metrics
    pool: ThreadPoolExecutor  # preprocessing of large inputs
    fast_pool: ThreadPoolExecutor  # small uploads, so they never wait behind large ones
    budget: DecodeBudget  # decoded bytes of every decode in flight


class SeriesCollector:
    """The instances of one series as a request brings them (``/predict_series``, v2's ``group: "series"``), one
    ``add`` per file, then the series' one ``result``; each kind that takes series says how (``series_collector``).
    ``collected`` holds the members in request order (a content sent twice counts once)."""

    def __init__(self, handler: "Handler", door: str) -> None:
        self.handler, self.door, self.collected = handler, door, Collected()

    async def add(self, data: bytes, element: int) -> None:
        """Take file ``element`` of the request (4xx for one that is not an instance of the series)."""
        raise NotImplementedError

    async def result(self) -> tuple[Result, dict[str, Any]]:
        """The series' result and what the answer adds (an ``input`` block)."""
        raise NotImplementedError


class Handler:
    """One loaded model and the request logic of its kind (subclasses: one per ``kind``, in ``service/handlers/``).

    A subclass names its kind (``kind``), the operations the doors may ask of it (``operations``: the names of
    its methods they call, so ``Engine.pick(ref, op)`` finds a model that serves an endpoint), the setting that
    caps its rows per inference call (``batch_setting``), and implements ``predict_items`` (the v2 input of what
    a person has) and ``class_labels``; ``check_rows`` adds its checks of raw rows' values. What the model's
    outputs are (probabilities, or regression values) is ``semantics``, read from its metadata here, once.
    """

    kind: ClassVar[str]
    operations: ClassVar[frozenset[str]] = frozenset()
    batch_setting: ClassVar[str] = "max_batch_size"
    # A series is one model row (its files held until the last one is in), not a row per instance: the doors hold
    # every file of a series in their body budget, and the DICOM doors' groups assemble it when the group closes.
    series_whole: ClassVar[bool] = False

    def __init__(self, model: LoadedModel, shared: Shared) -> None:
        self.model = model
        self.shared = shared
        self.config = shared.config
        self.metrics = shared.metrics
        self.semantics = Semantics.of(model.doc)
        version = {"model": model.name, "version": model.version}
        histogram = shared.metrics.inference_seconds.labels(**version, provider=model.provider)
        batch_sizes = shared.metrics.batch_size.labels(**version)
        queue_rows = shared.metrics.queue_rows.labels(**version)
        queue_seconds = shared.metrics.queue_seconds.labels(**version)

        def on_batch(rows: int, seconds: float) -> None:
            histogram.observe(seconds)
            batch_sizes.observe(rows)

        def on_queue(rows: int, waited: list[float]) -> None:
            queue_rows.set(rows)
            for seconds in waited:
                queue_seconds.observe(seconds)

        c = shared.config
        self.row_bytes = model.row_bytes
        self.batcher = Batcher(model.run, max_batch_size=self.max_batch_size(c), max_latency_ms=c.max_latency_ms,
                               on_batch=on_batch, on_queue=on_queue, max_request_rows=c.max_request_rows,
                               max_queued_bytes=c.max_queued_bytes)

    @classmethod
    def max_batch_size(cls, config: ServiceConfig) -> int:
        """Rows per inference call for this kind."""
        return int(getattr(config, cls.batch_setting))

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    def answer(self, **fields: Any) -> dict:
        """A response body: the model's name and version, then ``fields``."""
        return {"model": self.model.name, "version": self.model.version, **fields}

    async def in_thread(self, fn: Callable[..., T], *args: Any, small: bool = False) -> T:
        """Run CPU work (decoding, preprocessing) off the event loop; ``small`` work takes the fast lane."""
        pool = self.shared.fast_pool if small else self.shared.pool
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    @contextlib.contextmanager
    def admitting(self) -> Iterator[None]:
        """Mark a request as on its way to the batcher, so a forming batch may wait for it."""
        self.batcher.incoming += 1
        try:
            yield
        finally:
            self.batcher.incoming -= 1

    def admit(self, rows: int, what: str = "this request") -> contextlib.AbstractContextManager[None]:
        """Reserve room in the model's queue for ``rows`` rows while the request runs (413/429 when there is none)."""
        return self.batcher.admit(rows, self.row_bytes, what)

    async def run(self, rows: np.ndarray) -> np.ndarray:
        """Model outputs (N, labels) for (N, ...) rows, through the batcher."""
        return await self.batcher.submit(rows)

    def count_predictions(self, labels: list[str], door: str = "native") -> None:
        for label, n in collections.Counter(labels).items():  # one counter update per label, not per row
            self.metrics.predictions.labels(model=self.model.name, version=self.model.version, label=label,
                                            door=door).inc(n)

    def row_labels(self, probs: np.ndarray) -> list[str]:
        """What ``biomed_predictions_total`` counts for these output rows: the kind's labels of probabilities
        (``class_labels``), one ``value`` per row of regression values."""
        return self.semantics.counted(probs) if self.semantics.regression else self.class_labels(probs)

    def check_explained_label(self, label: str | None) -> None:
        """422 ``unknown_label`` when an explanation asks for a label the model does not have."""
        if label and label not in self.labels:
            raise InputError(f"label {label!r} is not one of the model's labels: {', '.join(self.labels)}",
                             code="unknown_label")

    def check_occlusion_rows(self, rows: int, layout: str) -> None:
        """413 past ``BIOMED_MAX_OCCLUSION_ROWS``: ``layout`` says which patch and stride over which input make
        the ``rows`` model rows of one occlusion."""
        cap = self.config.max_occlusion_rows
        if rows > cap:
            raise TooLarge(f"{layout} make {rows} model rows; an explanation may run at most {cap} "
                           f"({env('max_occlusion_rows')}): use a larger stride or patch")

    def class_labels(self, probs: np.ndarray) -> list[str]:
        """The labels counted for rows of probabilities (per kind)."""
        raise NotImplementedError

    def parameters(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """The v2 person input's parameter defaults for this model (the kind's, unless its metadata says
        otherwise)."""
        return defaults

    def check_rows(self, x: np.ndarray) -> None:
        """Refuse rows whose values the model cannot take (400/422), before they reach the batcher.

        Their type and shape are the protocol's to check (``service/protocol/v2.py`` against the model's
        signature); a kind adds the checks of its values.
        """
        if len(x) == 0:
            raise MalformedInput("no rows to run (a batch of 0)")

    async def predict_rows(self, x: np.ndarray, door: str = "native") -> np.ndarray:
        """Model outputs (N, labels) for rows given exactly as the model's input (the v2 tensor input), run as given."""
        self.check_rows(x)
        with self.admit(len(x), f"{len(x)} row(s)"):
            probs = await self.run(x)
        self.count_predictions(self.row_labels(probs), door)
        return probs

    async def predict_items(self, items: list[bytes], parameters: dict[str, Any],
                            door: str = "native") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Model outputs (rows, labels) for what a person has (``biomed.kinds``' ``PersonInput``: whole files, DNA
        text), each element decoded and preprocessed as the native endpoints do, and the person input's extra
        outputs (one value per row). ``parameters`` are the request's, already checked against the kind's."""
        raise NotImplementedError

    async def predict_group(self, items: list[bytes], parameters: dict[str, Any],
                            door: str = "native") -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, Any]]:
        """The person input's elements as one group (``parameters.group`` = ``series``, for a kind whose person input
        declares it, through ``series_collector``): the group's one output row, the ``element`` and ``frame`` that
        drove it, and the answer's parameters."""
        if parameters.get("group") != "series":
            raise InputError(f"parameters.group {str(parameters.get('group'))[:20]!r} is unknown; accepted: instance "
                             "(a row per frame), series (one row for the files' series)", code="malformed", status=400)
        collector = self.series_collector(door)
        for i, data in enumerate(items):
            await collector.add(data, i)
        result, _ = await collector.result()
        driver = result.driver
        answer = {"group": "series", "series_instance_uid": driver.series, "instances": len(result.members),
                  "source_instance": driver.sop_instance, "aggregate": result.how}
        return (np.asarray(result.values, dtype=np.float32)[None, :],
                {"element": np.array([collector.collected.element_of(driver)], dtype=np.int32),
                 "frame": np.array([result.frame], dtype=np.int32)}, answer)

    def series_collector(self, door: str = "native") -> SeriesCollector:
        """How this kind takes a series in one request (a kind whose handler serves ``predict_series``)."""
        raise NotImplementedError

    def group_aggregate(self) -> str:
        """How the DICOM doors' groups of this model combine: ``BIOMED_SERIES_AGGREGATE``, else the model's."""
        return aggregate_of(self.config.series_aggregate, self.semantics)

    async def receive_instance(self, upload: Any, door: str) -> np.ndarray:
        """One instance from a DICOM door (an ``Upload`` parsed with ``identify``), checked and decoded (its content
        identity): its values for its group, (frames, labels). A kind whose handler serves ``classify`` (or
        ``predict_series``, for the doors' series groups) says how."""
        raise NotImplementedError

    def series_answer(self, result: Result, **extra: Any) -> dict:
        """``/predict_series``' answer: the series' result, then each instance's rows (series order), then ``extra``."""
        key, labels, regression = self.semantics.name, self.labels, self.semantics.regression
        driver = result.driver
        series = {"uid": driver.series, "instances": len(result.members), "aggregate": result.how,
                  **({} if regression else {"label": labels[result.best]}),
                  key: dict(zip(labels, map(float, result.values))), "source_instance": driver.sop_instance,
                  "source_frame": result.frame, "mixed": mixture(result.members)}
        instances = [{"sop_instance_uid": m.sop_instance, "instance_number": m.instance_number,
                      "predictions": [{"frame": f, **({} if regression else {"label": labels[int(row.argmax())]}),
                                       key: dict(zip(labels, map(float, row)))} for f, row in enumerate(m.values)]}
                     for m in result.members]
        return self.answer(series=series, instances=instances, **extra)

    def close(self) -> None:
        self.batcher.close()
