"""The durable spool of result SRs and the forwarder that delivers them to ``BIOMED_DICOM_DESTINATION``.

Layout of ``BIOMED_DICOM_SPOOL``:

- ``<SR SOP Instance UID>.dcm``: an SR waiting for the destination's confirmation. Written
  under ``tmp/``, flushed and fsynced, then hard-linked into place (the link fails when the
  same SR is already pending: the duplicate is counted, not written twice) and the directory
  fsynced, all before the sender of the source instance is answered.
- ``sent/<UID>``: an empty marker per SR the destination confirmed (kept 7 days), so that the
  same source instance sent again, with the same model version, is not delivered twice: the
  pending file itself, renamed there (no new file, so a full disk still takes it) and emptied.
- ``timing/<UID>``: for the SR of a group of instances (``groups.py``, which keeps its groups under
  ``groups/`` and ``open/`` here), the group's last arrival as its mtime, until the SR is delivered
  (``biomed_dicom_group_seconds``).
- ``versions/<key>``: per source instance (its SOP Instance UID) and model version, the SR made
  for it last; a corrected instance under the same SOP Instance UID gets a new SR that names
  that one (``biomed.outputs.sr.Previous``). Kept as long as the delivery markers.
- ``rejected/<UID>.dcm``: SRs the destination refused outright (a DICOM failure status or an
  HTTP 4xx other than 408/429): kept for an operator, never retried on their own.
- ``.forwarder.lock``: held (POSIX lock) by the one process that forwards.

One forwarder per spool, whatever the number of workers (or pods, on a shared volume): each
worker runs a forwarder thread that delivers only while it holds the lock; the others wait
for it and take over when its process ends. Delivery is in spool order (oldest first); a
failure that may pass (no connection, a timeout, 5xx, 408, 429, a DIMSE "out of resources")
waits with exponential backoff (1 s doubling up to ``BIOMED_DICOM_RETRY_MAX_S``) and retries
the same SR; a file leaves the spool only after the destination confirmed it. A restart
resumes whatever is in the spool.

Delivered but not recorded: when the destination confirmed an SR but the spool cannot record it
(``sent/`` full or unwritable), the SR is not sent again: it leaves the spool unmarked (a later
re-send of the same source would deliver it again), or, when it cannot even leave, this
process skips it from then on; either way ``biomed_dicom_forwarded_total{outcome="unrecorded"}``
counts it (the ``BiomedSrDeliveryUnrecorded`` alert) and the log says which step failed and why.
The SRs behind it go on. Only a crash between the destination's confirmation and the record
(or a restart while an SR is skipped) sends an SR again, once, when the forwarder resumes.
Nothing here logs a UID or any content of an SR: counts, steps and outcomes only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from biomed.outputs.sr import Previous
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


def fsync_dir(path: Path) -> None:
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
        self.versions, self.timing = self.root / "versions", self.root / "timing"
        for d in (self.root, self.tmp, self.sent, self.rejected, self.versions, self.timing):
            d.mkdir(parents=True, exist_ok=True)
        self.added = threading.Event()  # set when this process spools an SR (wakes its forwarder)

    def _path(self, uid: str) -> Path:
        if not is_uid(uid):
            raise ValueError("not a UID")
        return self.root / f"{uid}.dcm"

    def is_known(self, uid: str) -> bool:
        """Whether this SR is pending or was delivered."""
        return self._path(uid).exists() or (self.sent / uid).exists()

    def put(self, uid: str, data: bytes, arrived: float | None = None) -> bool:
        """Store an SR durably; False when the same SR is already pending or was delivered (a duplicate).

        ``arrived``: the last arrival of the group the SR is the result of (``groups.py``), for ``arrived``.
        """
        final = self._path(uid)
        if self.is_known(uid):
            return False
        tmp = self.tmp / f"{uid}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if arrived is not None:  # before the SR: the forwarder may deliver it at once
            timing = self.timing / uid
            with contextlib.suppress(OSError):
                timing.touch()
                os.utime(timing, (arrived, arrived))
        try:
            os.link(tmp, final)  # atomic; refuses to replace an SR another worker put there meanwhile
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.root)
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

    def delivered(self, path: Path) -> str | None:
        """The destination confirmed ``path``: move it to ``sent/`` as its marker (then empty it).

        Returns None when recorded; else what failed (no UID in it), having removed the SR from the
        spool unmarked when it could.

        Raises:
            Unrecorded: the SR can neither be recorded nor removed (the caller must not send it again).
        """
        marker = self.sent / path.name[: -len(".dcm")]
        try:
            os.replace(path, marker)  # a rename: no new file, so a full disk still takes it
        except FileNotFoundError:
            return None  # another process recorded it
        except OSError as err:
            failed = f"marking it sent failed ({_why(err)})"
            try:
                path.unlink(missing_ok=True)
            except OSError as again:
                raise Unrecorded(f"{failed}, and removing it from the spool failed ({_why(again)})") from None
            return f"{failed}; it was removed from the spool unmarked"
        with contextlib.suppress(OSError):
            os.truncate(marker, 0)
        with contextlib.suppress(OSError):
            fsync_dir(self.root)
        return None

    def arrived(self, uid: str) -> float | None:
        """When the last instance of the group whose result is SR ``uid`` arrived (None for an instance's SR);
        forgotten once read."""
        timing = self.timing / uid
        try:
            at = timing.stat().st_mtime
            timing.unlink()
        except OSError:
            return None
        return at

    def previous(self, key: str) -> Previous | None:
        """The SR made last for the source instance and model version of ``key`` (``sr.source_key``), if any."""
        try:
            doc = json.loads((self.versions / key).read_text())
            return Previous(str(doc["study"]), str(doc["series"]), str(doc["sop_instance"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def remember(self, key: str, made: Previous) -> None:
        """Record ``made`` as the SR of ``key``'s source instance and model version (replacing the one before)."""
        if not is_uid(key):
            raise ValueError("not a UID")
        tmp = self.tmp / f"{key}.{os.getpid()}.{threading.get_ident()}.json"
        tmp.write_text(json.dumps({"study": made.study, "series": made.series, "sop_instance": made.sop_instance}))
        os.replace(tmp, self.versions / key)

    def reject(self, path: Path) -> None:
        os.replace(path, self.rejected / path.name)
        fsync_dir(self.root)

    def prune(self, now: float | None = None) -> int:
        """Forget delivery markers older than a week, and writes interrupted by a crash; returns markers removed."""
        now = time.time() if now is None else now
        removed = 0
        for marker in self.sent.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - marker.stat().st_mtime > SENT_KEEP_S:
                    marker.unlink()
                    removed += 1
        for record in (*self.versions.iterdir(), *self.timing.iterdir()):
            with contextlib.suppress(FileNotFoundError):
                if now - record.stat().st_mtime > SENT_KEEP_S:
                    record.unlink()
        for part in self.tmp.iterdir():
            with contextlib.suppress(FileNotFoundError):
                if now - part.stat().st_mtime > 3600:
                    part.unlink()
        return removed


class Unrecorded(OSError):
    """A delivered SR the spool can neither record nor remove."""


def _why(err: OSError) -> str:
    """An OSError without its file names (they hold UIDs): its errno name and text."""
    name = errno.errorcode.get(err.errno or 0, type(err).__name__)
    return f"{name}: {err.strerror or type(err).__name__}"


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
        self._pruned: float | None = None  # when old records were last pruned (None: not yet)
        self._skipped: set[str] = set()  # delivered SRs the spool could not record nor remove: never sent again here
        self._doing = "starting"  # the step in progress, for the log

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
                self._doing = "taking the spool's lock"
                if not self._hold_lock():
                    self._wait(LOCK_POLL_S)
                    continue
                if self._pruned is None or time.monotonic() - self._pruned > 3600:
                    self._prune()
                self._doing = "listing the spool"
                pending = [p for p in self.spool.pending() if p.name not in self._skipped]
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
                why = _why(err) if isinstance(err, OSError) else type(err).__name__
                log.error("the SR forwarder failed %s (%s); retrying in %.0f s", self._doing, why, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, self.retry_max_s)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _prune(self) -> None:
        """Forget old records, hourly; a failure is logged and never stops deliveries."""
        self._pruned = time.monotonic()
        try:
            self.spool.prune()
        except OSError as err:
            log.error("the SR forwarder could not prune old delivery records (%s); deliveries go on, the next "
                      "try is in an hour", _why(err))

    def _deliver(self, pending: list[Path]) -> bool:
        """Send ``pending`` in order over one connection; False at the first failure that may pass."""
        delivery = None
        sent: list = []  # what the destination confirmed, for the audit trail (service/audit)
        try:
            for done, path in enumerate(pending, start=1):
                if self.stopping.is_set():
                    return True
                self._doing = "reading an SR from the spool"
                try:
                    data = path.read_bytes()
                except FileNotFoundError:
                    continue
                self._doing = "connecting to the destination"
                delivery = delivery or self.connect()
                self._doing = "sending an SR"
                outcome = delivery.send(data)
                self.metrics.dicom_forwarded.labels(outcome=outcome if outcome != "retry" else "retried").inc()
                if outcome == "delivered":
                    self._doing = "recording a delivery"
                    self._record(path)
                    sent.append(audit.current().subject_of(data))
                    arrived = self.spool.arrived(path.name[: -len(".dcm")])
                    if arrived is not None:  # a group's SR: from its last instance to the destination's confirmation
                        self.metrics.dicom_group_seconds.observe(max(time.time() - arrived, 0.0))
                elif outcome == "rejected":
                    self._doing = "moving a refused SR to rejected/"
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
            audit.current().results_sent(self.destination, sent)

    def _record(self, path: Path) -> None:
        """Record a confirmed delivery; when the spool cannot, never send that SR again from here (module docstring)."""
        try:
            failed = self.spool.delivered(path)
        except Unrecorded as err:
            self._skipped.add(path.name)
            failed = f"{err}; this process will not send it again (a restart would, once)"
        if failed is not None:
            self.metrics.dicom_forwarded.labels(outcome="unrecorded").inc()
            log.error("the destination confirmed an SR but the spool could not record it: %s. Check %s (space, "
                      "permissions)", failed, self.spool.sent)
