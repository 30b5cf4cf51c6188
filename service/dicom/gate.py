"""The C-STORE receiver's connections, bounded before anything is associated or buffered.

pynetdicom (3.0) gives every TCP connection an association with two threads that poll it, reads
a PDU whole into memory as its header announces it (up to 4 GiB), and counts connections that
have not asked for anything among ``maximum_associations``. Here, through its public extension
point (``AE.make_server(request_handler=...)``):

- ``Gate``: at most ``BIOMED_DICOM_MAX_CONNECTIONS`` connections per worker, and half of them
  (or ``BIOMED_DICOM_MAX_ASSOCIATIONS``, when more: one sender may use every association) from one
  peer address. At a cap, the oldest connection that has not yet sent an
  A-ASSOCIATE-RQ (of that peer, at the peer's cap) is closed to admit the new one; when every
  connection has associated, the new one is closed at once. A connection must send its
  A-ASSOCIATE-RQ within ``BIOMED_DICOM_ASSOCIATE_TIMEOUT_S`` of opening.
- ``Handler``: a connection that has sent nothing yet waits in one thread blocked on the socket
  (no association, no polling threads) until its first bytes; then its association runs on a
  ``BoundedSocket``. When the association ends, whatever temporary file it left (a dataset cut
  by an abort or a reset) is removed (``Temp``).
- ``BoundedSocket``: every PDU's length is checked from its 6-byte header before its body is
  read: a P-DATA-TF at most our Maximum Length (256 KiB) + 6, any other PDU at most 64 KiB;
  past it the connection is closed. Each read has a deadline (the associate timeout before the
  A-ASSOCIATE-RQ, the network timeout after), so a peer that trickles holds one PDU for a
  bounded time.
- ``Temp``: the bytes of incoming datasets in the receiver's temporary folder, capped at this
  worker's share of ``BIOMED_DICOM_TEMP_MB`` (the association whose dataset would pass it is
  aborted).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import select
import socket
import struct
import threading
import time
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Callable

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.transport import AssociationSocket, RequestHandler

log = logging.getLogger("biomed.dicom")

MAXIMUM_LENGTH = 256 * 1024  # our Maximum Length Received (the P-DATA-TF PDUs' variable field)
P_DATA_MAX = MAXIMUM_LENGTH + 6  # a P-DATA-TF's PDU length: a peer may count its PDV item header in
OTHER_MAX = 64 * 1024  # any other PDU (an A-ASSOCIATE-RQ of many presentation contexts is ~30 KB)
P_DATA_TF, A_ASSOCIATE_RQ = 0x04, 0x01
_HEADER = struct.Struct(">BBL")


class PduTooLong(ConnectionAbortedError):
    """A PDU header announced more than the receiver reads (the connection is closed)."""


@dataclass(eq=False)
class Connection:
    """One accepted TCP connection."""

    sock: socket.socket
    peer: str
    opened: float = field(default_factory=time.monotonic)
    started: bool = False  # its first bytes came: it has an association (and pynetdicom's threads)
    associating: bool = False  # an A-ASSOCIATE-RQ header arrived
    closed: bool = False

    def close(self) -> None:
        """Close the socket under whoever reads it (its reader sees the end of the stream)."""
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class Gate:
    """The connections of one worker's receiver (module docstring); every method is thread-safe."""

    def __init__(self, max_connections: int, max_associations: int, associate_timeout_s: float,
                 network_timeout_s: float, report: Callable[[str, str], None]) -> None:
        self.max_connections = max(max_connections, 1)
        self.per_peer = min(self.max_connections, max(self.max_connections // 2, max_associations, 1))
        self.associate_timeout_s = associate_timeout_s
        self.network_timeout_s = network_timeout_s
        self.report = report  # (outcome, peer): counted and logged by the receiver
        self._open: list[Connection] = []  # oldest first
        self._closing: set[Connection] = set()  # closed here to make room, their threads not yet ended
        self._by_sock: dict[int, Connection] = {}
        self._lock = threading.Lock()

    def admit(self, sock: socket.socket, peer: str) -> bool:
        """Whether a new connection may stay; makes room by closing the oldest one still waiting (module docstring)."""
        with self._lock:
            mine = [c for c in self._open if c.peer == peer]
            if len(mine) >= self.per_peer:
                victim = next((c for c in mine if not c.associating), None)
            elif len(self._open) >= self.max_connections:
                victim = next((c for c in self._open if not c.associating), None)
            else:
                victim = None
            full = len(mine) >= self.per_peer or len(self._open) >= self.max_connections
            if full and victim is None:
                outcome = "too_many_connections"
            else:
                outcome = ""
                if victim is not None:
                    self._open.remove(victim)
                    self._closing.add(victim)
                    victim.close()
                connection = Connection(sock, peer)
                self._open.append(connection)
                self._by_sock[id(sock)] = connection
        if outcome:
            self.report(outcome, peer)
        elif victim is not None:
            self.report("idle_connection_closed", victim.peer)
        return not outcome

    def connection(self, sock: socket.socket) -> Connection | None:
        with self._lock:
            return self._by_sock.get(id(sock))

    def starting(self, connection: Connection) -> None:
        """Its first bytes came: its association starts."""
        with self._lock:
            connection.started = True

    def associating(self, connection: Connection) -> None:
        """Its A-ASSOCIATE-RQ is arriving: no longer a connection to close for room."""
        connection.associating = True

    def leave(self, connection: Connection) -> None:
        with self._lock:
            self._by_sock.pop(id(connection.sock), None)
            if connection in self._open:
                self._open.remove(connection)
            self._closing.discard(connection)

    def unassociated(self) -> int:
        """Associations started on connections that have not asked for one (pynetdicom counts them among its
        associations), including those closed to make room whose threads have not ended yet."""
        with self._lock:
            return sum(c.started and not c.associating for c in (*self._open, *self._closing))

    def count(self) -> int:
        with self._lock:
            return len(self._open)


class BoundedSocket(AssociationSocket):
    """pynetdicom's socket wrapper with every PDU's length checked before its body is read (module docstring)."""

    def __init__(self, assoc: Association, client_socket: socket.socket, connection: Connection, gate: Gate) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.connection = connection
        self.gate = gate
        self._body_next = False  # the next read is the body of the PDU whose header was read last

    def recv(self, nr_bytes: int) -> bytearray:
        """``nr_bytes`` from the peer (fewer at the end of the stream); ``OSError`` past a bound or a deadline."""
        body, self._body_next = self._body_next, False
        data = self._read(nr_bytes)
        if not body and len(data) == _HEADER.size:
            self._check(bytes(data))
        return data

    def _deadline(self) -> float:
        c = self.connection
        if not c.associating:
            return c.opened + self.gate.associate_timeout_s
        return time.monotonic() + self.gate.network_timeout_s

    def _read(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        data = bytearray()
        if sock is None:
            return data
        deadline = self._deadline()
        while len(data) < nr_bytes:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the peer did not send a whole PDU in time")
            sock.settimeout(left)  # also bounds a send to a peer that does not read
            chunk = sock.recv(min(nr_bytes - len(data), 65536))
            if not chunk:
                break
            data += chunk
        return data

    def _check(self, header: bytes) -> None:
        pdu_type, _, length = _HEADER.unpack(header)
        bound = P_DATA_MAX if pdu_type == P_DATA_TF else OTHER_MAX
        if length > bound:
            self.gate.report("pdu_too_long", self.connection.peer)
            raise PduTooLong(f"a PDU of type 0x{pdu_type:02X} announced {length} bytes; at most {bound} are read")
        if pdu_type == A_ASSOCIATE_RQ:
            self.gate.associating(self.connection)
        self._body_next = length > 0


class Handler(RequestHandler):
    """One connection: admitted by the server's ``Gate``, its association run on a ``BoundedSocket``, its leftovers
    removed when it ends (module docstring). ``server.gate`` and ``server.temp`` are the receiver's."""

    def handle(self) -> None:
        gate: Gate = self.server.gate  # type: ignore[attr-defined]
        connection = gate.connection(self.request)
        if connection is None:
            return
        assoc = None
        try:
            if not self._first_bytes(connection, gate.associate_timeout_s):
                return
            gate.starting(connection)
            assoc = self._association(connection, gate)
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            gate.leave(connection)
            if assoc is not None:
                self.server.temp.ended(assoc)  # type: ignore[attr-defined]
            with contextlib.suppress(OSError):
                self.request.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                self.request.close()

    def _first_bytes(self, connection: Connection, timeout: float) -> bool:
        """Wait, in this thread alone, for the peer's first bytes; False when none come in time or it was closed."""
        try:
            readable, _, _ = select.select([self.request], [], [], timeout)
        except (OSError, ValueError):
            return False
        if not readable or connection.closed:
            if not readable:
                self.server.gate.report("associate_timeout", connection.peer)  # type: ignore[attr-defined]
            return False
        try:
            return bool(self.request.recv(1, socket.MSG_PEEK))
        except OSError:
            return False

    def _association(self, connection: Connection, gate: Gate) -> Association:
        """The acceptor association of this connection, configured as pynetdicom's own handler does, on our socket."""
        ae, server = self.ae, self.server
        assoc = Association(ae, "acceptor")
        assoc.name = f"AcceptorThread@{dt.datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(BoundedSocket(assoc, self.request, connection, gate))
        assoc.acceptor.maximum_length = ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title  # type: ignore[attr-defined]
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(server.contexts)  # type: ignore[attr-defined]
        assoc.requestor.address_info = self.remote
        for event in server.get_events():  # type: ignore[attr-defined]
            handlers = server.get_handlers(event)  # type: ignore[attr-defined]
            if event.is_intervention:
                if handlers and handlers[0] is not None:
                    assoc.bind(event, *handlers)
            else:
                for handler, args in handlers:
                    assoc.bind(event, handler, args)
        return assoc


class Temp:
    """Bytes of incoming datasets in the receiver's temporary folder, by association (module docstring)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.total = 0
        self._files: dict[str, int] = {}  # path -> bytes written
        self._by_assoc: dict[int, list[str]] = {}
        self._current: dict[int, str] = {}
        self._lock = threading.Lock()

    def created(self, owner: Any, path: str) -> None:
        """pynetdicom opened ``path`` for the dataset arriving on ``owner``'s association (its DUL thread)."""
        key = id(owner)
        with self._lock:
            self._files[path] = 0
            self._by_assoc.setdefault(key, []).append(path)
            self._current[key] = path

    def grew(self, owner: Any, nbytes: int) -> bool:
        """``nbytes`` more arrive for ``owner``'s current dataset; False when the folder would pass its cap."""
        key = id(owner)
        with self._lock:
            path = self._current.get(key)
            if path is None or path not in self._files:
                return True
            if self.cap and self.total + nbytes > self.cap:
                return False
            self._files[path] += nbytes
            self.total += nbytes
            return True

    def done(self, path: str) -> None:
        """The dataset at ``path`` was handled (pynetdicom removes the file)."""
        with self._lock:
            self.total -= self._files.pop(path, 0)

    def ended(self, owner: Any) -> None:
        """``owner``'s association is over: remove the files it left (a dataset cut by an abort or a reset)."""
        key = id(owner)
        with self._lock:
            paths = self._by_assoc.pop(key, [])
            self._current.pop(key, None)
            left = [p for p in paths if p in self._files]
            for p in left:
                self.total -= self._files.pop(p)
        for p in left:
            with contextlib.suppress(OSError):
                os.unlink(p)
