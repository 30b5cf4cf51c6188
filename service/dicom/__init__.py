"""The hospital's way in and out: the C-STORE receiver, STOW-RS, and results as DICOM SR to a PACS.

- ``scp.py``: the C-STORE receiver (pynetdicom) on ``BIOMED_DICOM_PORT``, in each worker.
- ``service/doors/dicomweb.py``: STOW-RS (``POST /dicomweb/studies``), streamed part by part.
- ``pipeline.py``: what both do with an instance: parse once, check, route it by Modality, classify it (an image
  model) or check and decode it (a volume model, whose series is assembled when its group closes), spool its SR
  (``biomed/outputs/sr.py``: the TID 1500 Comprehensive 3D SR of one classified instance).
- ``groups.py``: with ``BIOMED_DICOM_GROUP_BY`` = ``series`` or ``study`` (not ``instance``), the
  instances in their groups in the spool; ``closer.py``: each worker's thread that makes one SR per
  group once it is quiet (a volume model's group: its files assembled there, ``_assemble``).
- ``spool.py``: the durable spool and its forwarder; ``destination.py``: STOW-RS or C-STORE to the PACS, for any
  DICOM object the spool holds.

``start`` runs in each worker once the engine is up, on the worker's event loop (the
receiver's threads hand instances to it); ``current`` is this worker's (``None`` when
neither ``BIOMED_DICOM_PORT`` nor ``BIOMED_DICOM_DESTINATION`` is set).
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from biomed.runtime import StartupError
from biomed.settings import env

if TYPE_CHECKING:
    import numpy as np

    from service.dicom.closer import Closer
    from service.dicom.groups import Groups
    from service.dicom.scp import Receiver
    from service.dicom.spool import Forwarder, Spool
    from service.engine import Engine

log = logging.getLogger("biomed.dicom")
_current: "Dicom | None" = None


class Dicom:
    """This worker's DICOM side: the spool and its forwarder (with a destination), the receiver (with a port)."""

    def __init__(self, engine: "Engine", loop: asyncio.AbstractEventLoop | None) -> None:
        config = engine.config
        self.config = config
        self.loop = loop
        self.spool: Spool | None = None
        self.forwarder: Forwarder | None = None
        self.groups: Groups | None = None
        self.closer: Closer | None = None
        self.receiver: Receiver | None = None
        # With series groups, a model that takes series (an image or a volume model); else one classifying instances.
        operation = "predict_series" if config.dicom_destination and config.dicom_group_by == "series" else "classify"
        try:
            handler = engine.pick(None, operation)  # not kept: a reload may swap the model
        except Exception:  # noqa: BLE001 - UnknownModel: no image model is loaded
            raise StartupError(f"{env('dicom_port')}/{env('dicom_destination')} need an image model (or, grouping by "
                               f"series, a volume model) in {env('models')}") from None
        if config.dicom_model:
            try:
                engine.pick(config.dicom_model, operation)
            except Exception as err:  # noqa: BLE001 - UnknownModel or wrong_model_kind
                raise StartupError(f"{env('dicom_model')}={config.dicom_model!r} cannot take DICOM instances: "
                                   f"{getattr(err, 'detail', err)}") from None
        for name in ("pydicom", "pynetdicom", "highdicom", "dicomweb_client"):  # they log identifiers at INFO/ERROR
            logging.getLogger(name).setLevel(logging.CRITICAL)
        if config.dicom_destination:
            import highdicom.sr  # noqa: F401 - imported now (about a second), not on the first instance's clock

            from service.dicom import destination
            from service.dicom.spool import Forwarder, Spool

            try:
                self.spool = Spool(config.dicom_spool)
            except OSError as err:
                raise StartupError(f"the SR spool {env('dicom_spool')} cannot be created ({type(err).__name__}: "
                                   f"{err.strerror})") from None
            self.forwarder = Forwarder(self.spool, destination.connector(config.dicom_destination, config.dicom_aet),
                                       engine.metrics, config.dicom_retry_max_s, config.dicom_destination)
            self.forwarder.start()
            log.info("result SRs go to the %s through the spool (%d waiting)",
                     destination.describe(config.dicom_destination), self.spool.depth())
            if config.dicom_group_by != "instance":
                self._group(engine)
        if config.dicom_port:
            if loop is None:
                raise StartupError("the C-STORE receiver needs the worker's event loop")
            from service.dicom.scp import Receiver

            self.receiver = Receiver(config, handler, engine.admission, loop, self.spool, self.groups)
            try:
                self.receiver.start()
            except OSError as err:
                self.close()
                raise StartupError(f"the C-STORE receiver cannot listen on port {config.dicom_port} "
                                   f"({err.strerror or type(err).__name__})") from None
            if not config.dicom_destination:
                log.warning(f"{env('dicom_destination')} is not set: instances are classified but no SR goes out")

    def _group(self, engine: "Engine") -> None:
        """Instances into their groups in the spool, and this worker's closer (``groups.py``, ``closer.py``)."""
        from service.dicom.closer import Closer
        from service.dicom.groups import Groups, Policy

        c = self.config
        policy = Policy(c.dicom_group_by, c.dicom_group_timeout_s, c.dicom_group_max_instances, c.sr_per_instance)
        self.groups = Groups(self.spool, policy)  # type: ignore[arg-type]
        self.closer = Closer(self.groups, self._reclassify, engine.metrics, self._assemble)
        self.closer.start()
        log.info("instances are grouped by %s: one SR per group, %g s after its last instance (%s)", c.dicom_group_by,
                 c.dicom_group_timeout_s, env("dicom_group_timeout_s"))

    def _reclassify(self, model: str, version: str, data: bytes) -> "np.ndarray | None":
        """An instance's outputs again (its group record was lost in a crash), by that model version if loaded (a
        volume model's: its placeholders, ``VolumeHandler.receive_instance``)."""

        async def run(handler: Any) -> "np.ndarray":
            from biomed.preprocess.upload import Upload

            return await handler.receive_instance(Upload(data), "dimse")

        return self._on_loop(model, version, run)

    def _assemble(self, model: str, version: str, paths: list[Path]) -> "np.ndarray | None":
        """A closed group of a volume model: its instances' files as one volume, the series' one row (labels); None
        when that model version is not loaded; an ``InputError`` when they make no volume it takes."""

        async def run(handler: Any) -> "np.ndarray":
            from biomed.preprocess.volume import read_files

            files = await handler.in_thread(read_files, paths, handler.limits)  # 413 from the sizes, before reading
            return await handler.assemble(files, "dimse")

        return self._on_loop(model, version, run)

    def _on_loop(self, model: str, version: str, run: Callable[[Any], Awaitable["np.ndarray"]]
                 ) -> "np.ndarray | None":
        """``run(handler)`` on the worker's event loop, for that model version (None when it is not loaded)."""
        if self.loop is None:
            return None

        async def call() -> "np.ndarray | None":
            from service.engine import UnknownModel, current

            engine = current()
            with engine.scope():
                try:
                    handler = engine.pick(f"{model}:{version}")
                except UnknownModel:
                    return None
                return await run(handler)

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=self.config.request_timeout_s)

    def close(self) -> None:
        if self.receiver is not None:
            self.receiver.stop()
        if self.closer is not None:
            self.closer.stop()
        if self.forwarder is not None:
            self.forwarder.stop()


def start(engine: "Engine", loop: asyncio.AbstractEventLoop | None) -> Dicom | None:
    """Start this worker's DICOM side when configured (``StartupError`` when it cannot)."""
    global _current
    c = engine.config
    _current = Dicom(engine, loop) if (c.dicom_port or c.dicom_destination) else None
    return _current


def current() -> Dicom | None:
    return _current
