"""What an attacker does to the C-STORE receiver, for the hostile tests and the soak: connections from other loopback
addresses (127.0.0.2 and up are other peers), PDU headers that lie, and C-STOREs cut mid-dataset.

dcmtk's tools are called by their absolute paths: pynetdicom installs scripts of the same names into the venv.
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import time
from pathlib import Path

import pydicom

ECHOSCU, STORESCU = "/usr/bin/echoscu", "/usr/bin/storescu"
A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0, 0])


def connect(port: int, source: str = "127.0.0.2") -> socket.socket:
    """A TCP connection to the receiver from ``source`` (a loopback address: another peer)."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``sock`` within ``seconds`` (whatever it sent first is read and dropped)."""
    sock.settimeout(seconds)
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


def still_open(socks: list[socket.socket], deadline: float) -> list[socket.socket]:
    """The sockets of ``socks`` the server has not closed by ``deadline`` (monotonic)."""
    waiting = list(socks)
    while waiting and time.monotonic() < deadline:
        readable, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            try:
                if sock.recv(65536):
                    continue
            except OSError:
                pass
            waiting.remove(sock)
    return waiting


def pdu_bomb(port: int, pdu_type: int = 0x01, length: int = 500_000_000, source: str = "127.0.0.2") -> bool:
    """A PDU header announcing ``length`` bytes and 64 KiB of its body: True when the server closes at once."""
    sock = connect(port, source)
    try:
        sock.sendall(struct.pack(">BBL", pdu_type, 0, length) + b"\0" * 65536)
        return closed_within(sock, 2)
    except OSError:
        return True
    finally:
        sock.close()


def echo(port: int, calling: str, called: str) -> subprocess.CompletedProcess:
    return subprocess.run([ECHOSCU, "-aet", calling, "-aec", called, "127.0.0.1", str(port)], capture_output=True,
                          text=True, timeout=60)


def store(port: int, files: list[Path], calling: str, called: str) -> subprocess.CompletedProcess:
    """storescu of ``files`` (-R: their SOP classes only; -xs: every transfer syntax storescu knows proposed)."""
    return subprocess.run([STORESCU, "-R", "-xs", "-aet", calling, "-aec", called, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=120)


def partial_store(port: int, path: Path, how: str, calling: str, called: str, after_pdus: int = 6) -> None:
    """Associate and start a C-STORE of ``path``; after ``after_pdus`` P-DATA PDUs, end it by ``how``: ``abort``
    (an A-ABORT PDU, then close) or ``reset`` (a TCP RST). Any other ``how`` lets it run."""
    from pydicom.uid import ExplicitVRLittleEndian
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import CTImageStorage

    sent = {"p-data": 0}

    def cut(event) -> None:  # type: ignore[no-untyped-def]
        if type(event.pdu).__name__ != "P_DATA_TF":
            return
        sent["p-data"] += 1
        if sent["p-data"] == after_pdus and how in ("abort", "reset"):
            raw = event.assoc.dul.socket.socket
            if how == "abort":
                raw.sendall(A_ABORT)
            else:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()

    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title=called, evt_handlers=[(evt.EVT_PDU_SENT, cut)])
    if not assoc.is_established:
        raise AssertionError("the association for a partial C-STORE was not established")
    try:
        assoc.send_c_store(pydicom.dcmread(path))
    except Exception:  # noqa: BLE001 - the socket was cut under it
        pass
    assoc.abort()
