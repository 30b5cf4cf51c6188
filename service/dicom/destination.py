"""Where results go (``BIOMED_DICOM_DESTINATION``): a DICOMweb server (STOW-RS) or a DICOM peer (C-STORE).

Either sends whatever DICOM object the spool holds: SRs today, and any object of
``biomed.outputs`` (Parametric Map, Secondary Capture). A C-STORE association asks for every
storage SOP class the project writes (``biomed.outputs.DICOM_STORAGE``), explicit or implicit VR
little endian; an object of another SOP class or transfer syntax is sent on a new association
that asks for it too. Each ``send`` answers ``delivered`` (the destination confirmed the
instance), ``retry`` (it may take it later: no connection, a timeout, 5xx, 408, 429, DIMSE
0xA7xx "out of resources") or ``rejected`` (it refused this instance, or its SOP class: any
other failure). Nothing is logged but the kind of failure and a SOP class's name: no UIDs of
instances, and never the URL (it may carry credentials).
"""

from __future__ import annotations

import logging
import re
from io import BytesIO
from typing import TYPE_CHECKING, Callable

from pydicom import dcmread
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from biomed.outputs import DICOM_STORAGE
from service.config import DICOM_PEER as _PEER

if TYPE_CHECKING:
    from pynetdicom.presentation import PresentationContext

log = logging.getLogger("biomed.dicom")
TIMEOUT_S = 30.0


def describe(destination: str) -> str:
    """The destination for a log line: its scheme and host, or the peer, never credentials or a path."""
    peer = _PEER.match(destination)
    if peer is not None:
        return f"DICOM peer {peer['aet']}@{peer['host']}:{peer['port']}"
    host = re.sub(r"^https?://(?:[^@/]*@)?", "", destination).split("/")[0]
    return f"DICOMweb server {host}"


class DicomWeb:
    """STOW-RS to ``{base}/studies`` with dicomweb-client, one POST per SR (one session per delivery round)."""

    def __init__(self, base_url: str) -> None:
        from dicomweb_client.api import DICOMwebClient

        self.client = DICOMwebClient(url=base_url.rstrip("/"), timeout=TIMEOUT_S)
        self.client.set_http_retry_params(retry=False)  # the forwarder retries, with its own backoff

    def send(self, data: bytes) -> str:
        import requests

        ds = dcmread(BytesIO(data))
        try:
            answer = self.client.store_instances([ds])
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            log.warning("the DICOMweb destination answered HTTP %d", status)
            return "retry" if status >= 500 or status in (408, 429) else "rejected"
        except (requests.RequestException, OSError) as err:
            log.warning("the DICOMweb destination could not be reached (%s)", type(err).__name__)
            return "retry"
        if len(answer.get("FailedSOPSequence", [])):
            reasons = {int(item.get("FailureReason", 0)) for item in answer.FailedSOPSequence}
            log.warning("the DICOMweb destination did not store an SR (failure reason %s)",
                        ", ".join(f"0x{r:04X}" for r in sorted(reasons)))
            return "retry" if all(0xA700 <= r <= 0xA7FF for r in reasons) else "rejected"
        return "delivered"

    def close(self) -> None:
        self.client._session.close()  # noqa: SLF001 - dicomweb-client has no public close


_NATIVE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))  # what pynetdicom converts between when sending


def _takes(context: "PresentationContext", sop_class: str, syntax: str) -> bool:
    """Whether an accepted presentation context carries ``sop_class`` in ``syntax`` (or converts to it)."""
    accepted = str(context.transfer_syntax[0])
    return str(context.abstract_syntax) == sop_class and (accepted == syntax or {accepted, syntax} <= set(_NATIVE))


class Dimse:
    """C-STORE to ``AET@host:port`` with pynetdicom, one association per delivery round (re-associating for an
    object of a SOP class or transfer syntax the association did not ask for)."""

    def __init__(self, peer: str, calling_aet: str) -> None:
        from pynetdicom import AE

        match = _PEER.match(peer)
        assert match is not None  # validated by ServiceConfig.from_env
        self.aet, self.host, self.port = match["aet"], match["host"].strip("[]"), int(match["port"])
        self.ae = AE(ae_title=calling_aet)
        self.ae.acse_timeout = self.ae.dimse_timeout = self.ae.network_timeout = TIMEOUT_S
        self.ae.connection_timeout = 10
        self.assoc = None
        self.asked: set[tuple[str, str]] = set()  # (SOP class, transfer syntax) the association asked for

    def _contexts(self, sop_class: str, syntax: str) -> list["PresentationContext"]:
        """The project's storage SOP classes, each in native little endian (the peer picks), and ``sop_class`` in
        ``syntax`` in a context of its own when not among them; ``asked`` records what they ask for."""
        from pynetdicom import build_context

        contexts = [build_context(cls, list(_NATIVE)) for cls in DICOM_STORAGE]
        self.asked = {(cls, t) for cls in DICOM_STORAGE for t in _NATIVE}
        if (sop_class, syntax) not in self.asked:
            contexts.append(build_context(sop_class, syntax))
            self.asked.add((sop_class, syntax))
        return contexts

    def _accepts(self, sop_class: str, syntax: str) -> bool:
        return any(_takes(cx, sop_class, syntax) for cx in self.assoc.accepted_contexts)

    def _associate(self, sop_class: str, syntax: str) -> bool:
        """An association asking for the project's SOP classes and this object's; False when it was not made."""
        contexts = self._contexts(sop_class, syntax)
        self.assoc = self.ae.associate(self.host, self.port, ae_title=self.aet, contexts=contexts)
        if not self.assoc.is_established:
            what = "rejected" if self.assoc.is_rejected else "aborted" if self.assoc.is_aborted else "failed"
            log.warning("the association with the DICOM destination %s", what)
            self.assoc = None
            return False
        return True

    def send(self, data: bytes) -> str:
        ds = dcmread(BytesIO(data))
        sop_class = str(ds.SOPClassUID)
        syntax = str(ds.file_meta.get("TransferSyntaxUID", _NATIVE[0]))
        if self.assoc is not None and self.assoc.is_established and not self._accepts(sop_class, syntax) \
                and (sop_class, syntax) not in self.asked:
            self.close()  # this object's SOP class or transfer syntax was not asked for: ask again, with it
        if (self.assoc is None or not self.assoc.is_established) and not self._associate(sop_class, syntax):
            return "retry"
        if not self._accepts(sop_class, syntax):
            log.warning("the DICOM destination does not take %s in %s", UID(sop_class).name, UID(syntax).name)
            return "rejected"
        status = self.assoc.send_c_store(ds)
        code = int(status.Status) if status is not None and "Status" in status else None
        if code is None:  # no answer: the association ended
            log.warning("the DICOM destination did not answer a C-STORE")
            self.assoc = None
            return "retry"
        if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success, or stored with a warning
            return "delivered"
        log.warning("the DICOM destination answered C-STORE status 0x%04X", code)
        return "retry" if 0xA700 <= code <= 0xA7FF else "rejected"

    def close(self) -> None:
        if self.assoc is not None and self.assoc.is_established:
            self.assoc.release()
        self.assoc = None


def connector(destination: str, calling_aet: str) -> Callable[[], DicomWeb | Dimse]:
    """A factory of deliveries for ``destination`` (validated by ``ServiceConfig.from_env``)."""
    if destination.startswith(("http://", "https://")):
        return lambda: DicomWeb(destination)
    return lambda: Dimse(destination, calling_aet)
