"""The durable spool of result SRs and the forwarder that delivers them to ``BIOMED_DICOM_DESTINATION``.

Layout of ``BIOMED_DICOM_SPOOL``:

- ``<SR SOP Instance UID>.dcm``: an SR waiting for the destination's confirmation. Written
  under ``tmp/``, flushed and fsynced, then hard-linked into place (the link fails when the
  same SR is already pending: the duplicate is counted, not written twice) and the directory
  fsynced, all before the sender of the source instance is answered.
- ``sent/<UID>``: an empty marker per SR the destination confirmed (kept 7 days), so that the
  same source instance sent again, with the same model version, is not delivered twice.
- ``rejected/<UID>.dcm``: SRs the destination refused outright (a DICOM failure status or an
  HTTP 4xx other than 408/429): kept for an operator, never retried on their own.
- ``.forwarder.lock``: held (POSIX lock) by the one process that forwards.

One forwarder per spool, whatever the number of workers (or pods, on a shared volume): each
worker runs a forwarder thread that delivers only while it holds the lock; the others wait
for it and take over when its process ends. Delivery is in spool order (oldest first); a
failure that may pass (no connection, a timeout, 5xx, 408, 429, a DIMSE "out of resources")
waits with exponential backoff (1 s doubling up to ``BIOMED_DICOM_RETRY_MAX_S``) and retries
the same SR; a file leaves the spool only after the destination confirmed it. A restart
resumes whatever is in the spool. Nothing here logs a UID or any content of an SR: counts and
outcomes only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from biomed.preprocess.dicom_read import is_uid
from service import audit

log = logging.getLogger("biomed.dicom")
SENT_KEEP_S = 7 * 24 * 3600
LOCK_POLL_S = 2.0
IDLE_POLL_S = 0.5


class Delivery(Protocol):
    """A destination: ``send`` answers ``delivered``, ``retry`` (may pass) or ``rejected`` (will not)."""

    def send(self, data: bytes) -> str: ...

    def close(self) -> None: ...


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """SR files waiting for the destination (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.tmp, self.sent, self.rejected = self.root / "tmp", self.root / "sent", self.root / "rejected"
        for d in (self.root, self.tmp, self.sent, self.rejected):
            d.mkdir(parents=True, exist_ok=True)
        self.added = threading.Event()  # set when this process spools an SR (wakes its forwarder)

    def _path(self, uid: str) -> Path:
        if not is_uid(uid):
            raise ValueError("not a UID")
        return self.root / f"{uid}.dcm"

    def is_known(self, uid: str) -> bool:
        """Whether this SR is pending or was delivered."""
        return self._path(uid).exists() or (self.sent / uid).exists()

    def put(self, uid: str, data: bytes) -> bool:
        """Store an SR durably; False when the same SR is already pending or was delivered (a duplicate)."""
        final = self._path(uid)
        if self.is_known(uid):
            return False
        tmp = self.tmp / f"{uid}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, final)  # atomic; refuses to replace an SR another worker put there meanwhile
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.root)
        self.added.set()
        return True

    def pending(self) -> list[Path]:
        """The SRs waiting, oldest first."""
        entries = []
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.name.endswith(".dcm") and entry.is_file():
                    with contextlib.suppress(FileNotFoundError):
                        entries.append((entry.stat().st_mtime_ns, entry.name))
        return [self.root / name for _, name in sorted(entries)]

    def depth(self) -> int:
        return len(self.pending())

    def delivered(self, path: Path) -> None:
        """The destination confirmed ``path``: mark it sent, then remove it."""
        uid = path.name[: -len(".dcm")]
        (self.sent / uid).touch()
        path.unlink(missing_ok=True)
        _fsync_dir(self.root)

    def reject(self, path: Path) -> None:
        os.replace(path, self.rejected / path.name)
        _fsync_dir(self.root)

    def prune(self, now: float | None = None) -> int:
        """Forget delivery markers older than a week, and writes interrupted by a crash; returns markers removed."""
        now = time.time() if now is None else now
        removed = 0
        for marker in self.sent.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - marker.stat().st_mtime > SENT_KEEP_S:
                    marker.unlink()
                    removed += 1
        for part in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - part.stat().st_mtime > 3600:
                    part.unlink()
        return removed


class Forwarder(threading.Thread):
    """Delivers the spool to the destination while this process holds the spool's lock (module docstring)."""

    def __init__(self, spool: Spool, connect: Callable[[], Delivery], metrics: Any, retry_max_s: float,
                 destination: str = "") -> None:
        super().__init__(name="dicom-forwarder", daemon=True)
        self.destination = destination  # BIOMED_DICOM_DESTINATION, for the audit trail
        self.spool = spool
        self.connect = connect
        self.metrics = metrics
        self.retry_max_s = max(retry_max_s, 1.0)
        self.stopping = threading.Event()
        self.wake = spool.added
        self._lock_fd: int | None = None
        self._pruned = 0.0

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.wake.set()
        self.join(timeout)

    def _hold_lock(self) -> bool:
        if self._lock_fd is not None:
            return True
        fd = os.open(self.spool.root / ".forwarder.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EACCES, errno.EAGAIN):
                raise
            return False
        self._lock_fd = fd
        log.info("this worker forwards the SR spool (%d waiting)", self.spool.depth())
        return True

    def _wait(self, seconds: float) -> None:
        self.wake.wait(seconds)
        self.wake.clear()

    def run(self) -> None:
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                if not self._hold_lock():
                    self._wait(LOCK_POLL_S)
                    continue
                if time.monotonic() - self._pruned > 3600:
                    self.spool.prune()
                    self._pruned = time.monotonic()
                pending = self.spool.pending()
                self.metrics.dicom_spool_depth.set(len(pending))
                if not pending:
                    self._wait(IDLE_POLL_S)
                    continue
                if self._deliver(pending):
                    backoff = 1.0
                else:
                    depth = len(self.spool.pending())
                    self.metrics.dicom_spool_depth.set(depth)
                    log.warning("the destination did not take an SR; %d waiting, next attempt in %.0f s", depth, backoff)
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, self.retry_max_s)
            except Exception as err:  # noqa: BLE001 - a disk or bug problem: keep the thread, say what kind
                log.error("the SR forwarder failed (%s); retrying in %.0f s", type(err).__name__, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _deliver(self, pending: list[Path]) -> bool:
        """Send ``pending`` in order over one connection; False at the first failure that may pass."""
        delivery = None
        sent: list = []  # what the destination confirmed, for the audit trail (service/audit)
        try:
            for done, path in enumerate(pending, start=1):
                if self.stopping.is_set():
                    return True
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                delivery = delivery or self.connect()
                outcome = delivery.send(data)
                self.metrics.dicom_forwarded.labels(outcome=outcome if outcome != "retry" else "retried").inc()
                if outcome == "delivered":
                    self.spool.delivered(path)
                    sent.append(audit.current().subject_of(data))
                elif outcome == "rejected":
                    log.error("the destination refused an SR; it was moved to %s", self.spool.rejected)
                    self.spool.reject(path)
                else:
                    return False
                self.metrics.dicom_spool_depth.set(len(pending) - done)
            return True
        finally:
            if delivery is not None:
                with contextlib.suppress(Exception):
                    delivery.close()
            audit.current().results_sent(self.destination, [s for s in sent if s is not None])
