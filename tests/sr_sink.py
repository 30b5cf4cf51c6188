"""A PACS stand-in for the SR forwarder: a pynetdicom C-STORE SCP in the test process that keeps every object it
receives, in order, so that a test can count deliveries (none lost, none twice) and read them back.

Lighter than Orthanc (tests/orthanc.py) where only what arrived matters: ``BIOMED_DICOM_DESTINATION`` is
``Sink.peer``.
"""

from __future__ import annotations

import threading
from collections import Counter

import pydicom


class Sink:
    """A Storage SCP on a free loopback port, keeping what it is sent (``received``: datasets in arrival order)."""

    AET = "SINK"

    def __init__(self) -> None:
        self.received: list[pydicom.Dataset] = []
        self._lock = threading.Lock()
        self._server = None
        self.port = 0

    @property
    def peer(self) -> str:
        return f"{self.AET}@127.0.0.1:{self.port}"

    def start(self) -> "Sink":
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title=self.AET)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self._server.server_address[1])
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()

    def _store(self, event) -> int:  # type: ignore[no-untyped-def]
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.received.append(ds)
        return 0x0000

    def uids(self) -> Counter:
        """How many times each SOP Instance UID arrived."""
        with self._lock:
            return Counter(str(ds.SOPInstanceUID) for ds in self.received)

    def by_uid(self, uid: str) -> pydicom.Dataset:
        with self._lock:
            return next(ds for ds in self.received if str(ds.SOPInstanceUID) == uid)
