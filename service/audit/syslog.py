"""Audit messages as RFC 5424 syslog, to a file, a UDP (RFC 5426) or a TCP (RFC 6587) receiver, never in a request's way.

``frame``: ``<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID - MSG`` with PRI facility 10
(security/authorization, as PS3.15 A.7 asks), MSGID ``DICOM+RFC3881`` (PS3.15 A.7's value for
messages of this profile), no structured data, and the audit message as MSG: UTF-8 after a BOM
(RFC 5424's MSG-UTF8).

``Sender``: a bounded queue (``BIOMED_AUDIT_BUFFER`` messages) and one background thread per worker
that writes them out, so a request only ever puts a message in the queue (or, with the queue full,
counts it dropped: ``biomed_audit_dropped_total{reason="full"}``) and goes on. The thread keeps a
message it could not write and tries again after a pause (0.25 s doubling to 8 s), reconnecting,
while new messages wait in the queue behind it; a receiver that stays down fills the queue. A
file target is opened with mode 0600 and appended to, one message a line; a file moved away (log
rotation) is noticed and a new one created. Nothing here logs a message's content.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import queue
import socket
import threading
from typing import Any, Callable

log = logging.getLogger("biomed.service")
FACILITY = 10  # security/authorization messages (PS3.15 A.6, A.7)
MSGID = "DICOM+RFC3881"
APP_NAME = "biomed-serve"
BOM = b"\xef\xbb\xbf"
TIMEOUT_S = 5.0  # connecting to and writing to a network receiver
PAUSE_S, PAUSE_MAX_S = 0.25, 8.0


def frame(xml: str, severity: int, when: dt.datetime, host: str, procid: str) -> bytes:
    """One RFC 5424 message (no transport framing): the header, no structured data, the XML as MSG-UTF8."""
    stamp = when.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return f"<{FACILITY * 8 + severity}>1 {stamp} {host} {APP_NAME} {procid} {MSGID} - ".encode() + BOM \
        + xml.encode("utf-8")


class FileSink:
    """Appends each message as a line to ``path`` (created with mode 0600; a looser mode is tightened)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.open()

    def open(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
        self.fd = fd

    def send(self, frames: list[bytes]) -> None:
        if self.fd is None or not os.path.exists(self.path):  # moved away (rotated) or closed: a new file
            self.close()
            self.open()
        os.write(self.fd, b"".join(f + b"\n" for f in frames))  # type: ignore[arg-type]

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None


class UdpSink:
    """One datagram per message (RFC 5426); a message a receiver misses is not known here."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host.strip("[]"), port)
        self.sock: socket.socket | None = None

    def send(self, frames: list[bytes]) -> None:
        if self.sock is None:
            family = socket.AF_INET6 if ":" in self.address[0] else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_DGRAM)
        for f in frames:
            self.sock.sendto(f, self.address)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class TcpSink:
    """A connection kept open, each message octet-counted (RFC 6587 3.4.1: ``LEN SP MSG``)."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host.strip("[]"), port)
        self.sock: socket.socket | None = None

    def send(self, frames: list[bytes]) -> None:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=TIMEOUT_S)
        self.sock.sendall(b"".join(f"{len(f)} ".encode() + f for f in frames))

    def close(self) -> None:
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None


def sink(target: str) -> FileSink | UdpSink | TcpSink:
    """The sink of ``BIOMED_AUDIT`` (validated by the settings); OSError when a file cannot be opened."""
    if target.startswith("file:"):
        return FileSink(target[5:])
    scheme, _, rest = target.partition("://")
    host, _, port = rest.rpartition(":")
    return (UdpSink if scheme == "udp" else TcpSink)(host, int(port))


class Sender(threading.Thread):
    """The background writer (module docstring); ``put`` never waits."""

    def __init__(self, target: Any, size: int, dropped: Callable[[str], None]) -> None:
        super().__init__(name="audit-sender", daemon=True)
        self.target = target
        self.queue: queue.Queue[Callable[[], list[bytes]]] = queue.Queue(maxsize=size)
        self.dropped = dropped
        self.stopping = threading.Event()

    def put(self, render: Callable[[], list[bytes]]) -> None:
        """Queue the messages ``render`` makes (it runs on this thread); counted as dropped when the queue is full."""
        try:
            self.queue.put_nowait(render)
        except queue.Full:
            self.dropped("full")

    def _next(self) -> list[bytes] | None:
        try:
            render = self.queue.get(timeout=0.2)
        except queue.Empty:
            return None
        try:
            return render()
        except Exception as err:  # noqa: BLE001 - a bug of ours: never the thread's end, never the content
            log.error("an audit message could not be made (%s); it is dropped", type(err).__name__)
            self.dropped("error")
            return None

    def run(self) -> None:
        held: list[bytes] | None = None
        pause = PAUSE_S
        while True:
            if held is None:
                if self.stopping.is_set() and self.queue.empty():
                    break
                held = self._next()
                if held is None:
                    continue
            try:
                self.target.send(held)
            except OSError as err:
                self.target.close()
                if self.stopping.is_set():
                    self.dropped("unreachable")
                    held = None
                    continue
                if pause == PAUSE_S:  # the first failure of a run of them
                    log.warning("the audit target cannot be written (%s); messages wait in the buffer and are "
                                "retried", type(err).__name__)
                self.stopping.wait(pause)
                pause = min(pause * 2, PAUSE_MAX_S)
                continue
            if pause != PAUSE_S:
                log.info("the audit target is written again")
            held, pause = None, PAUSE_S
        self.target.close()

    def close(self, timeout: float) -> None:
        """Write what is queued for up to ``timeout`` seconds; what is left is dropped (and counted)."""
        self.stopping.set()
        self.join(timeout)
        left = 0
        while self.is_alive():  # what is still queued is taken out here (the thread may finish the one it holds)
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
            left += 1
            self.dropped("unreachable")
        if left:
            log.warning("%d audit messages were not written before the worker stopped", left)


def hostname() -> str:
    """This host's name as RFC 5424's HOSTNAME wants it (printable US-ASCII, at most 255)."""
    name = socket.gethostname() or "-"
    return "".join(c for c in name if "!" <= c <= "~")[:255] or "-"

