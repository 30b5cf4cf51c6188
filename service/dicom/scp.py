"""The C-STORE receiver (a pynetdicom SCP) on ``BIOMED_DICOM_PORT``, in the worker process.

It answers C-ECHO and C-STORE for the image storage SOP classes (``pipeline.IMAGE_STORAGE``)
in every transfer syntax the decoder reads, as ``BIOMED_DICOM_AET``; associations from calling
AE titles not in ``BIOMED_DICOM_ALLOWED_AETS`` are rejected (``*`` allows any). pynetdicom runs
each association in a thread of its own; a C-STORE handler hands the instance to the event
loop (``asyncio.run_coroutine_threadsafe``) so that it goes through the same handler and
batchers as HTTP requests, and waits for the outcome there, never on the loop.

Memory is bounded before anything is parsed: pynetdicom writes each incoming dataset to a
temporary file as it arrives (``STORE_RECV_CHUNKED_DATASET``), a dataset past
``BIOMED_MAX_UPLOAD_MB`` aborts its association while it is still arriving (there is no status
to answer before the whole dataset is in), at most ``BIOMED_DICOM_MAX_ASSOCIATIONS``
associations run at once, and the instances read into memory at once are capped at
``BIOMED_MAX_BODIES_MB`` (0xA700 past it, as when the decode budget or the model's queue is
full or the answer does not come within ``BIOMED_REQUEST_TIMEOUT_S``). Bad data gets a failure
status (``pipeline`` lists them) with the error code in Error Comment; the association stays.

Several workers share the port with ``SO_REUSEPORT``: each worker binds its own listening
socket and the kernel spreads new associations over them, so C-STORE load is spread over the
workers like HTTP requests (pynetdicom binds with ``SO_REUSEADDR`` only; ``SharedPortServer``
adds ``SO_REUSEPORT`` before the bind). The logs carry counts and statuses, never UIDs or
other identifiers of an instance.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from biomed.errors import Overloaded
from biomed.settings import env
from service import audit
from service.admission import Admission
from service.dicom import pipeline

log = logging.getLogger("biomed.dicom")
_META_SLACK = 64 * 1024  # the file meta pynetdicom writes in front of the dataset
_STALE_S = 600.0  # a partial temporary file untouched this long belongs to an association that ended


def _transfer_syntaxes() -> list[str]:
    """Every transfer syntax pydicom can decode here (its native ones and the installed plugins')."""
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import AllTransferSyntaxes

    found = []
    for ts in AllTransferSyntaxes:
        try:
            if get_decoder(ts).is_available:
                found.append(ts)
        except Exception:  # noqa: BLE001 - pydicom raises for syntaxes it has no decoder class for
            continue
    return found


def _server_class():  # type: ignore[no-untyped-def]
    from pynetdicom.transport import ThreadedAssociationServer

    class SharedPortServer(ThreadedAssociationServer):
        """pynetdicom's server with ``SO_REUSEPORT``: every worker listens on the same port."""

        daemon_threads = True

        def server_bind(self) -> None:
            if hasattr(socket, "SO_REUSEPORT"):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

    return SharedPortServer


class Receiver:
    """The SCP of one worker; ``start`` binds the port (``OSError`` when it cannot)."""

    def __init__(self, config: Any, handler: Any, admission: Admission, loop: asyncio.AbstractEventLoop,
                 spool: Any = None) -> None:
        self.config = config
        self.metrics = handler.metrics  # not the handler: each instance goes to the default image model of the moment
        self.admission = admission  # the gates HTTP requests pass: a concurrency slot and the body budget
        self.loop = loop
        self.spool = spool
        self.server = None
        self.incoming = Path(tempfile.gettempdir()) / f"biomed-cstore-{config.dicom_port}"
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        from pynetdicom import AE, _config, dimse_messages, evt
        from pynetdicom.sop_class import Verification

        _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's standard handlers log identifiers of each message
        _config.STORE_RECV_CHUNKED_DATASET = True
        self.incoming.mkdir(parents=True, exist_ok=True)
        incoming = str(self.incoming)
        # pynetdicom writes each incoming dataset with NamedTemporaryFile: into our folder, where stale partial files
        # (an association that ended mid-dataset) are swept.
        dimse_messages.NamedTemporaryFile = lambda *a, **kw: tempfile.NamedTemporaryFile(  # type: ignore[assignment]
            *a, **{**kw, "dir": incoming, "prefix": "cstore-"})
        c = self.config
        ae = AE(ae_title=c.dicom_aet)
        ae.maximum_associations = c.dicom_max_associations
        ae.maximum_pdu_size = 256 * 1024
        ae.acse_timeout = 30
        ae.dimse_timeout = ae.network_timeout = 60
        if "*" not in c.dicom_allowed_aets:  # ServiceConfig refuses an empty list (which pynetdicom reads as "any")
            ae.require_calling_aet = list(c.dicom_allowed_aets)  # others: rejected, "calling AE title not recognised"
        syntaxes = _transfer_syntaxes()
        for sop_class in pipeline.IMAGE_STORAGE:
            ae.add_supported_context(sop_class, syntaxes)
        ae.add_supported_context(Verification)
        handlers = [(evt.EVT_C_STORE, self._store), (evt.EVT_PDU_RECV, self._count),
                    (evt.EVT_REJECTED, self._rejected)]
        handlers += audit.current().dimse_handlers()  # the audit trail: refused AE titles, associations' ends
        self.server = ae.make_server((c.dicom_host, c.dicom_port), evt_handlers=handlers,
                                     server_class=_server_class())
        thread = threading.Thread(target=self.server.serve_forever, name="dicom-scp", daemon=True)
        thread.start()
        ae._servers.append(self.server)  # noqa: SLF001 - as AE.start_server does, so ae.shutdown() finds it
        self._sweeper = threading.Thread(target=self._sweep, name="dicom-scp-sweep", daemon=True)
        self._sweeper.start()
        if "*" in c.dicom_allowed_aets:
            log.warning("the C-STORE receiver accepts associations from any calling AE title "
                        f"({env('dicom_allowed_aets')}=*); list the modalities' and PACS' AE titles instead")
        log.info("C-STORE receiver %s on %s:%d (%d image storage SOP classes, %d transfer syntaxes)",
                 c.dicom_aet, c.dicom_host, c.dicom_port, len(pipeline.IMAGE_STORAGE), len(syntaxes))

    def stop(self) -> None:
        self._stop.set()
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.shutdown()
            self.server = None

    # --- event handlers (pynetdicom's threads) -------------------------------------------------------------------

    def _count(self, event: Any) -> None:
        """Abort an association whose dataset grows past ``BIOMED_MAX_UPLOAD_MB`` while it arrives."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        size = getattr(event.assoc, "_biomed_bytes", 0)
        for item in items:
            data = item.presentation_data_value or b""
            if data and not data[0] & 1:  # a data set fragment (bit 0 clear)
                size += len(data) - 1
                if data[0] & 2:  # its last fragment: the next message starts afresh
                    size = 0
        event.assoc._biomed_bytes = size
        if size > self.config.max_upload_bytes:
            event.assoc._biomed_bytes = 0
            self.metrics.dicom_received.labels(door="dimse", outcome="too_large").inc()
            log.warning(f"aborted an association: a dataset passed %g MB ({env('max_upload_bytes')})",
                        self.config.max_upload_bytes / 2**20)
            event.assoc.abort(block=False)

    def _rejected(self, event: Any) -> None:
        self.metrics.dicom_received.labels(door="dimse", outcome="association_rejected").inc()
        log.warning(f"rejected an association from calling AE title %r (not in {env('dicom_allowed_aets')})",
                    str(getattr(event.assoc.requestor, "ae_title", ""))[:16])

    def _store(self, event: Any) -> Dataset:
        status = Dataset()
        try:
            outcome = self._receive(event)
        except Exception as err:  # noqa: BLE001 - a bug of ours: never take the association down with it
            log.error("a C-STORE failed with %s", type(err).__name__)
            outcome = pipeline.Outcome("internal")
        status.Status = outcome.status
        audit.current().dimse_stored(event, outcome)  # written per study when the association ends (service/audit)
        if not outcome.ok:
            status.ErrorComment = outcome.code[:64]
        return status

    def _refused(self, code: str) -> pipeline.Outcome:
        self.metrics.dicom_received.labels(door="dimse", outcome=code).inc()
        return pipeline.Outcome(code)

    def _receive(self, event: Any) -> pipeline.Outcome:
        path = Path(event.dataset_path)
        size = path.stat().st_size
        if size > self.config.max_upload_bytes + _META_SLACK:
            return self._refused("too_large")
        try:
            self.admission.enter()
        except Overloaded:
            return self._refused("too_many_requests")
        try:
            self.admission.hold(size)
        except Overloaded:
            self.admission.leave()
            return self._refused("too_many_requests")
        future: concurrent.futures.Future | None = None
        try:
            data = path.read_bytes()
            coroutine = self._classify(data)
            del data
            try:
                future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
            except RuntimeError:  # the loop is closed: the worker is stopping
                coroutine.close()
                return self._refused("too_many_requests")
            return future.result(timeout=self.config.request_timeout_s)
        except concurrent.futures.TimeoutError:
            if future is not None:
                future.cancel()
            return self._refused("timeout")
        finally:
            self.admission.release(size)
            self.admission.leave()

    async def _classify(self, data: bytes) -> pipeline.Outcome:
        """The instance through this worker's image model (its default or canary now: a reload may have swapped it),
        held as a request holds it, so the version is not unloaded under it."""
        from service.engine import current

        engine = current()
        with engine.scope():
            return await pipeline.receive(engine.pick(None, "classify"), data, "dimse", spool=self.spool)

    def _sweep(self) -> None:
        """Remove partial datasets of associations that ended mid-transfer."""
        while not self._stop.wait(60):
            now = time.time()
            with contextlib.suppress(OSError):
                for entry in os.scandir(self.incoming):
                    with contextlib.suppress(OSError):
                        if now - entry.stat().st_mtime > _STALE_S:
                            os.unlink(entry.path)
