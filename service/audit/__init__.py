"""The audit trail: who did what, from where, with which model version, to which study (``BIOMED_AUDIT``).

Each worker writes DICOM audit messages (PS3.15 A.5, ``events.py``) as RFC 5424 syslog to the target
(``syslog.py``: a 0600 file, UDP or TCP) from a background thread behind a bounded queue, so a slow or
dead target never holds up or fails a request: past the queue, messages are dropped and counted
(``biomed_audit_dropped_total``, alert ``BiomedAuditMessagesDropped``). Off (``BIOMED_AUDIT`` unset),
every call returns at once. This is the one place patient and study identifiers are written; the logs
carry none, and no token is ever written (a client is named by its token's name, ``service/tokens.py``).

Where each event is recorded, by one call where it happens:

- application start and stop: ``service/service.py`` (each worker);
- a failed authentication: ``Admission.authorised`` (``service/admission.py``; the HTTP guard and the gRPC door);
- instances received over C-STORE: ``Receiver._store`` (``service/dicom/scp.py``), one message per association and
  study, written when the association ends (``dimse_handlers``, bound by the receiver);
- a refused calling AE title (Security Alert): the receiver's rejections (``dimse_handlers``);
- instances received over STOW-RS: ``service/doors/dicomweb.py``, per request and study;
- results sent to the PACS: the spool's forwarder (``service/dicom/spool.py``), per delivery round and study;
- predictions and explanations (native API, v2 REST, gRPC): the routes marked ``audited`` in the route table
  (``audited`` wraps them in ``service/app.py``) and the gRPC door's ``ModelInfer``, with the studies the image
  handler read for them (``noted``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import threading
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

from biomed.errors import InputError
from biomed.runtime import StartupError
from biomed.settings import DICOM_PEER, env
from service.audit import events, syslog
from service.audit import messages as m
from service.audit.events import Subject
from service.metrics import metrics
from service.versions import current_scope

log = logging.getLogger("biomed.service")
ANONYMOUS = "anonymous"  # the client when no token is required
CLIENT = "biomed.client"  # the ASGI scope key under which the HTTP guard leaves the client's name
CLOSE_S = 2.0  # how long a stopping worker keeps writing what is queued


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Audit:
    """This worker's audit trail (see the module docstring); ``Audit()`` is the one that is off."""

    def __init__(self, config: Any = None) -> None:
        self.sender: syslog.Sender | None = None
        self.config = config
        self._transfers: dict[int, list] = {}  # an association's: [calling AE title, address, _Held]
        self._lock = threading.Lock()
        if config is None or not config.audit:
            return
        dropped = metrics().audit_dropped
        dropped.labels(reason="full")  # the series exists (at 0) from the start
        self.source = events.Source(config.dicom_aet, syslog.hostname())
        self.pid = str(os.getpid())
        self.sender = syslog.Sender(syslog.sink(config.audit), config.audit_buffer,
                                    lambda reason: dropped.labels(reason=reason).inc())
        self.sender.start()

    @property
    def enabled(self) -> bool:
        return self.sender is not None

    def _emit(self, make: Callable[[dt.datetime], list[events.Message]]) -> None:
        """Queue an event's messages; ``make`` runs on the sender's thread (values it closes over are the caller's,
        so pass copies of anything that changes)."""
        if self.sender is None:
            return
        when, host, pid = _now(), self.source.source_id, self.pid
        self.sender.put(lambda: [syslog.frame(xml, severity, when, host, pid) for severity, xml in make(when)])

    # ---------------------------------------------------------------- events

    def application(self, started: bool) -> None:
        self._emit(lambda when: events.application(self.source, started, when))

    def authentication_failed(self, address: str, door: str) -> None:
        self._emit(lambda when: events.authentication_failed(self.source, address, door, when))

    @contextlib.asynccontextmanager
    async def predicting(self, door: str, endpoint: str, client: str | None, address: str) -> AsyncIterator[None]:
        """Around a prediction: on its end, one event with who asked, the model versions the request picked and the
        studies the handler read for it (``noted``), and how it ended (the HTTP status; gRPC's as REST's)."""
        status = 200
        try:
            yield
        except InputError as err:
            status = err.status
            raise
        except asyncio.CancelledError:  # the client left, or the request timed out
            status = 499
            raise
        except Exception:
            status = 500
            raise
        finally:
            if self.sender is not None:
                scope = current_scope.get()
                picked = dict.fromkeys((h.model.name, h.model.version, h.model.sha256) for h, _ in scope.picked) \
                    if scope is not None else {}
                instances = events.counted(scope.subjects if scope is not None else ())
                request = events.Request(client or ANONYMOUS, address, door, endpoint, tuple(picked), status)
                self._emit(lambda when: events.prediction(self.source, request, instances, when))

    def stow_stored(self, client: str | None, address: str, outcomes: Iterable[Any]) -> None:
        """STOW-RS: the instances of one request (``pipeline.Outcome``), taken and refused, per study."""
        if self.sender is None:
            return
        sender = m.Participant(client or ANONYMOUS, True, m.SOURCE, address=address)
        held = _Held()
        for outcome in outcomes:
            held.add(outcome)
        self._transferred(sender, held, "STOW-RS")

    def _transferred(self, sender: m.Participant, held: "_Held", door: str) -> None:
        receiver = self.source.participant(role=m.DESTINATION)
        for ok, instances in ((True, held.taken), (False, held.refused)):
            if instances:
                outcome, why = (m.SUCCESS, "") if ok else (m.MINOR_FAILURE, f"refused over {door}: "
                                                           + ", ".join(sorted(held.codes)))
                self._emit(lambda when, i=instances, o=outcome, w=why: events.transferred(
                    self.source, sender, receiver, i, "C", o, when, w))

    def results_sent(self, destination: str, subjects: list[Subject | None]) -> None:
        """Result objects the destination confirmed (the forwarder's delivery round), per study."""
        instances = events.counted(subjects)
        if self.sender is None or not instances:
            return
        peer = DICOM_PEER.match(destination)
        if peer is not None:
            receiver = m.Participant(peer["aet"], False, m.DESTINATION, alternative=f"AETITLES={peer['aet']}",
                                     address=peer["host"].strip("[]"))
        else:  # a DICOMweb URL: its scheme and host, never credentials or a path
            scheme, _, rest = destination.partition("://")
            host = rest.split("/")[0].rpartition("@")[2]
            receiver = m.Participant(f"{scheme}://{host}", False, m.DESTINATION, address=host.rsplit(":", 1)[0])
        sender = self.source.participant(requestor=True, role=m.SOURCE)
        self._emit(lambda when: events.transferred(self.source, sender, receiver, instances, "R", m.SUCCESS, when))

    def subject_of(self, data: bytes) -> Subject | None:
        """The identifiers of a Part-10 object's header (for ``results_sent``); None when off (nothing is parsed)."""
        if self.sender is None:
            return None
        from io import BytesIO

        from pydicom import dcmread

        try:
            return Subject.of(dcmread(BytesIO(data), stop_before_pixels=True))
        except Exception:  # noqa: BLE001 - our own object, but never the forwarder's end
            return None

    # ---------------------------------------------------------------- the C-STORE receiver (pynetdicom's threads)

    def dimse_stored(self, event: Any, outcome: Any) -> None:
        """One C-STORE's outcome, kept with its association until the association ends (``dimse_handlers``)."""
        if self.sender is None:
            return
        requestor = event.assoc.requestor
        with self._lock:
            entry = self._transfers.setdefault(id(event.assoc), [str(requestor.ae_title).strip(),
                                                                 str(requestor.address), _Held()])
            entry[2].add(outcome)

    def _association_ended(self, event: Any) -> None:
        with self._lock:
            entry = self._transfers.pop(id(event.assoc), None)
        if entry is not None:
            calling, address, held = entry
            sender = m.Participant(calling, True, m.SOURCE, alternative=f"AETITLES={calling}", address=address)
            self._transferred(sender, held, "C-STORE")

    def _rejected(self, event: Any) -> None:
        """A refused association: a Security Alert when its calling AE title may not send or its called AE title is
        not the service's (a refusal at the association limit is not a security matter)."""
        requestor = event.assoc.requestor
        request = getattr(requestor, "primitive", None)  # the A-ASSOCIATE-RQ as received
        calling = str(getattr(request, "calling_ae_title", "") or getattr(requestor, "ae_title", "") or "").strip()
        called = str(getattr(request, "called_ae_title", "") or "").strip()
        allowed = self.config.dicom_allowed_aets
        if "*" not in allowed and calling not in allowed:
            why = f"calling AE title not in {env('dicom_allowed_aets')}"
        elif called and called != self.config.dicom_aet:
            why = f"called AE title {called!r} is not {env('dicom_aet')}"
        else:
            return
        address = str(requestor.address)
        self._emit(lambda when: events.node_refused(self.source, calling, address, why, when))

    def dimse_handlers(self) -> list[tuple[Any, Callable[[Any], None]]]:
        """pynetdicom event handlers for the receiver: a refused association, an association's end."""
        if self.sender is None:
            return []
        from pynetdicom import evt

        return [(evt.EVT_REJECTED, self._rejected), (evt.EVT_CONN_CLOSE, self._association_ended)]

    def close(self) -> None:
        """Write what is queued (for up to ``CLOSE_S``), then stop."""
        if self.sender is not None:
            self.sender.close(CLOSE_S)


class _Held:
    """Instances received, counted (bounded by their studies, not their number): taken, refused, and why."""

    def __init__(self) -> None:
        self.taken: events.Instances = events.Instances()
        self.refused: events.Instances = events.Instances()
        self.codes: set[str] = set()

    def add(self, outcome: Any) -> None:
        if outcome.subject is None:
            return
        if outcome.ok:
            self.taken[outcome.subject] += 1
        else:
            self.refused[outcome.subject] += 1
            self.codes.add(outcome.code)


_current = Audit()


def configure(config: Any) -> Audit:
    """This worker's audit trail from its settings (StartupError when the target cannot be opened)."""
    global _current
    try:
        _current = Audit(config)
    except OSError as err:
        raise StartupError(f"the audit trail {env('audit')} cannot be opened ({err.strerror or type(err).__name__})") \
            from None
    if _current.enabled:
        log.info("audit trail: %s (%s)", config.audit.split(":", 1)[0], "DICOM audit messages, RFC 5424")
    return _current


def current() -> Audit:
    return _current


def close() -> None:
    """Write what is queued and stop (the worker's shutdown); the trail is off afterwards."""
    global _current
    _current.close()
    _current = Audit()


def noted(header: Any) -> None:
    """The DICOM instance a request's handler read (its header), for the request's audit event."""
    scope = current_scope.get()
    if scope is not None and header is not None and _current.sender is not None:
        subject = Subject.of(header)
        if subject is not None:
            scope.subjects.append(subject)


def audited(door: str, endpoint: str, run: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Awaitable[Any]]:
    """An HTTP endpoint ``run(request, engine)`` whose requests are audited as predictions (``Audit.predicting``):
    the client as the guard named it, from the connection's address."""

    async def endpoint_audited(request: Any, engine: Any) -> Any:
        client = request.scope.get(CLIENT)
        address = request.client.host if request.client else ""
        async with current().predicting(door, endpoint, client, address):
            return await run(request, engine)

    endpoint_audited.__name__ = getattr(run, "__name__", endpoint)
    return endpoint_audited
