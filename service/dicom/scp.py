"""The C-STORE receiver (a pynetdicom SCP) on ``BIOMED_DICOM_PORT``, in the worker process.

It answers C-ECHO and C-STORE for the image storage SOP classes (``pipeline.IMAGE_STORAGE``)
in every transfer syntax the decoder reads, as ``BIOMED_DICOM_AET``; associations from calling
AE titles not in ``BIOMED_DICOM_ALLOWED_AETS`` (``*`` allows any), or calling another AE title
than ``BIOMED_DICOM_AET``, are rejected. Connections are bounded before any association
(``gate.py``: ``BIOMED_DICOM_MAX_CONNECTIONS``, half of them per peer address, the oldest
connection that has not asked for an association closed to make room; the A-ASSOCIATE-RQ due
within ``BIOMED_DICOM_ASSOCIATE_TIMEOUT_S``) and every PDU's length is checked from its header
before its body is read (a P-DATA-TF at most 256 KiB + 6, any other PDU 64 KiB). pynetdicom runs
each association in a thread of its own; a C-STORE handler hands the instance to the event
loop (``asyncio.run_coroutine_threadsafe``) so that it goes through the same handler and
batchers as HTTP requests, and waits for the outcome there, never on the loop.

Memory is bounded before anything is parsed: pynetdicom writes each incoming dataset to a
temporary file as it arrives (``STORE_RECV_CHUNKED_DATASET``), a dataset past
``BIOMED_MAX_UPLOAD_MB``, or one that would take the temporary folder past this worker's share
of ``BIOMED_DICOM_TEMP_MB``, aborts its association while it is still arriving (there is no
status to answer before the whole dataset is in), a dataset cut by an abort or a reset is
removed when its association ends, at most ``BIOMED_DICOM_MAX_ASSOCIATIONS``
associations run at once, and the instances read into memory at once are capped at
``BIOMED_MAX_BODIES_MB`` (0xA700 past it, as when the decode budget or the model's queue is
full or the answer does not come within ``BIOMED_REQUEST_TIMEOUT_S``; one peer address holds at
most its share of that budget, as over HTTP). Bad data gets a failure
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
import math
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
from service.dicom.gate import MAXIMUM_LENGTH, Gate, Handler, Temp

log = logging.getLogger("biomed.dicom")
NETWORK_TIMEOUT_S = 60.0  # an association idle this long, or one PDU arriving this long, is closed
_META_SLACK = 64 * 1024  # the file meta pynetdicom writes in front of the dataset
_STALE_S = 600.0  # a temporary file untouched this long was left by a process that ended (a crash)
_REPORT_EVERY_S = 10.0  # connection refusals are logged at most this often (with their count)


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


def _server_class(gate: Gate, temp: Temp):  # type: ignore[no-untyped-def]
    from pynetdicom.transport import ThreadedAssociationServer

    class SharedPortServer(ThreadedAssociationServer):
        """pynetdicom's server with ``SO_REUSEPORT`` (every worker listens on the same port) and the ``Gate``."""

        daemon_threads = True
        request_queue_size = 128  # the listen backlog: a burst of connections is accepted (and gated), not left waiting

        def server_bind(self) -> None:
            if hasattr(socket, "SO_REUSEPORT"):
                self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            super().server_bind()

        def verify_request(self, request: Any, client_address: Any) -> bool:
            return gate.admit(request, str(client_address[0]))

    SharedPortServer.gate, SharedPortServer.temp = gate, temp  # read by gate.Handler
    return SharedPortServer


def _ae_class(gate: Gate):  # type: ignore[no-untyped-def]
    from pynetdicom import AE

    class GatedAE(AE):
        """pynetdicom counts every connection's association against ``maximum_associations``, also one that has not
        asked for anything yet; here only those that have count against ``BIOMED_DICOM_MAX_ASSOCIATIONS``."""

        _limit = 10

        @property
        def maximum_associations(self) -> int:
            return self._limit + gate.unassociated()

        @maximum_associations.setter
        def maximum_associations(self, value: int) -> None:
            self._limit = max(int(value), 1)

    return GatedAE


class Receiver:
    """The SCP of one worker; ``start`` binds the port (``OSError`` when it cannot)."""

    def __init__(self, config: Any, handler: Any, admission: Admission, loop: asyncio.AbstractEventLoop,
                 spool: Any = None, groups: Any = None) -> None:
        self.config = config
        self.metrics = handler.metrics  # not the handler: each instance goes to the default image model of the moment
        self.admission = admission  # the gates HTTP requests pass: a concurrency slot and the body budget
        self.loop = loop
        self.spool = spool
        self.groups = groups  # instances into their series (or study) in the spool, when grouped
        self.server = None
        self.incoming = Path(tempfile.gettempdir()) / f"biomed-cstore-{config.dicom_port}"
        workers = max(config.workers, 1)
        self.gate = Gate(config.dicom_max_connections, config.dicom_max_associations, config.dicom_associate_timeout_s,
                         NETWORK_TIMEOUT_S, self._report)
        self.temp = Temp(math.ceil(config.dicom_temp_bytes / workers))  # the folder is the port's: shared out
        self._reported: dict[str, int] = {}
        self._report_at = 0.0
        self._report_lock = threading.Lock()
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    def _temporary_file(self, *args: Any, **kwargs: Any) -> Any:
        """pynetdicom's NamedTemporaryFile for an incoming dataset: in our folder, counted for its association
        (called from the association's DUL thread, whose ``assoc`` it is)."""
        f = tempfile.NamedTemporaryFile(*args, **{**kwargs, "dir": str(self.incoming), "prefix": "cstore-"})
        self.temp.created(getattr(threading.current_thread(), "assoc", None), f.name)
        return f

    def start(self) -> None:
        from pynetdicom import _config, dimse_messages, evt
        from pynetdicom.sop_class import Verification

        _config.LOG_HANDLER_LEVEL = "none"  # pynetdicom's standard handlers log identifiers of each message
        _config.STORE_RECV_CHUNKED_DATASET = True
        self.incoming.mkdir(parents=True, exist_ok=True)
        # pynetdicom writes each incoming dataset with NamedTemporaryFile: into our folder, counted (``Temp``).
        dimse_messages.NamedTemporaryFile = self._temporary_file  # type: ignore[assignment]
        c = self.config
        ae = _ae_class(self.gate)(ae_title=c.dicom_aet)
        ae.maximum_associations = c.dicom_max_associations
        ae.maximum_pdu_size = MAXIMUM_LENGTH
        ae.acse_timeout = c.dicom_associate_timeout_s  # the A-ASSOCIATE-RQ's deadline (pynetdicom's ARTIM timer)
        ae.dimse_timeout = ae.network_timeout = NETWORK_TIMEOUT_S
        ae.require_called_aet = True  # others: rejected, "called AE title not recognised"
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
                                     server_class=_server_class(self.gate, self.temp), request_handler=Handler)
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

    def _report(self, outcome: str, peer: str) -> None:
        """A connection refused or closed by the gate: counted, and logged at most every 10 s with the count."""
        self.metrics.dicom_received.labels(door="dimse", outcome=outcome).inc()
        with self._report_lock:
            self._reported[outcome] = self._reported.get(outcome, 0) + 1
            now = time.monotonic()
            if now - self._report_at < _REPORT_EVERY_S:
                return
            self._report_at = now
            counts, self._reported = self._reported, {}
        log.warning(f"C-STORE connections refused or closed since the last report: %s (at most %d connections per "
                    f"worker, {env('dicom_max_connections')}; the A-ASSOCIATE-RQ within %g s, "
                    f"{env('dicom_associate_timeout_s')}); the latest from %s",
                    ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), self.gate.max_connections,
                    self.gate.associate_timeout_s, peer)

    def _count(self, event: Any) -> None:
        """Abort an association whose dataset grows past ``BIOMED_MAX_UPLOAD_MB`` while it arrives, or would take the
        temporary folder past its cap (``BIOMED_DICOM_TEMP_MB``)."""
        items = getattr(event.pdu, "presentation_data_value_items", None)
        if not items:
            return
        size = getattr(event.assoc, "_biomed_bytes", 0)
        arriving = 0
        for item in items:
            data = item.presentation_data_value or b""
            if data and not data[0] & 1:  # a data set fragment (bit 0 clear)
                size += len(data) - 1
                arriving += len(data) - 1
                if data[0] & 2:  # its last fragment: the next message starts afresh
                    size = 0
        event.assoc._biomed_bytes = size
        if size > self.config.max_upload_bytes:
            self._abort(event.assoc, "too_large", f"a dataset passed %g MB ({env('max_upload_bytes')})",
                        self.config.max_upload_bytes / 2**20)
        elif not self.temp.grew(event.assoc, arriving):
            self._abort(event.assoc, "temp_full", f"the temporary folder of incoming datasets is at this worker's "
                        f"%g MB ({env('dicom_temp_bytes')})", self.temp.cap / 2**20)

    def _abort(self, assoc: Any, code: str, why: str, *args: Any) -> None:
        assoc._biomed_bytes = 0
        self.metrics.dicom_received.labels(door="dimse", outcome=code).inc()
        log.warning(f"aborted an association: {why}", *args)
        assoc.abort(block=False)

    def _rejected(self, event: Any) -> None:
        self.metrics.dicom_received.labels(door="dimse", outcome="association_rejected").inc()
        request = getattr(event.assoc.requestor, "primitive", None)  # the A-ASSOCIATE-RQ as received
        log.warning(f"rejected an association from calling AE title %r to called AE title %r (the calling one must be "
                    f"in {env('dicom_allowed_aets')}, the called one {env('dicom_aet')}, and at most %d associations "
                    f"at once, {env('dicom_max_associations')})",
                    str(getattr(request, "calling_ae_title", "") or "")[:16],
                    str(getattr(request, "called_ae_title", "") or "")[:16], self.config.dicom_max_associations)

    def _store(self, event: Any) -> Dataset:
        status = Dataset()
        try:
            outcome = self._receive(event)
        except Exception as err:  # noqa: BLE001 - a bug of ours: never take the association down with it
            log.error("a C-STORE failed with %s", type(err).__name__)
            outcome = pipeline.Outcome("internal")
        finally:
            self.temp.done(str(event.dataset_path))  # pynetdicom removes the file once this returns
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
        peer = str(getattr(event.assoc.requestor, "address", "") or "") or None
        try:
            self.admission.enter()
        except Overloaded:
            return self._refused("too_many_requests")
        try:
            self.admission.hold(size, peer)
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
            self.admission.release(size, peer)
            self.admission.leave()

    async def _classify(self, data: bytes) -> pipeline.Outcome:
        """The instance through this worker's image model (its default or canary now: a reload may have swapped it),
        held as a request holds it, so the version is not unloaded under it."""
        from service.engine import current

        engine = current()
        with engine.scope():
            operation = pipeline.door_operation(self.groups)
            return await pipeline.receive(engine.pick(None, operation), data, "dimse", spool=self.spool,
                                          groups=self.groups,
                                          route=lambda modality: engine.route(modality, operation))

    def _sweep(self) -> None:
        """Remove what a process that ended (a crash) left in the folder: ours are removed as their associations end."""
        while not self._stop.wait(60):
            now = time.time()
            with contextlib.suppress(OSError):
                for entry in os.scandir(self.incoming):
                    with contextlib.suppress(OSError):
                        if now - entry.stat().st_mtime > _STALE_S:
                            os.unlink(entry.path)
