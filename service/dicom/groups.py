"""Groups of received instances (a series, or a study) in the spool, and the closer that gives each one SR.

With ``BIOMED_DICOM_GROUP_BY`` = ``series`` (or ``study``), an instance classified by either door
(``pipeline.receive``) joins its group here before its sender is answered. A group is the
instances of one series (or study) of one patient for one model version (``biomed.series.group_key``),
whichever association, STOW-RS request, worker or pod brought them: it lives in the spool
(``BIOMED_DICOM_SPOOL``), next to the SRs:

- ``groups/<key>/group.json``: the model version and how its instances combine (written once).
- ``groups/<key>/<identity>.dcm``: an instance, named by its content identity
  (``biomed.preprocess.identity``): written and fsynced while it is classified (``stage``), then
  hard-linked into place and the group's folder fsynced (``commit``), all before the sender is
  answered; the link is the instance's commit, and the same content sent again finds it there and
  counts once (``commit`` answers False). Emptied (not removed: its name still counts) once a
  result covers it.
- ``groups/<key>/<identity>.json``: its member record (UIDs, image library descriptors, model
  outputs: ``biomed.series.Member``), put in place before the ``.dcm`` is linked, not fsynced:
  after a crash a missing or torn record is made again from the ``.dcm`` (``reclassify``).
- ``groups/<key>/result-<n>.json``: the group's n-th result: every member it covers (those of
  result n-1 and the instances since, at most ``BIOMED_DICOM_GROUP_MAX_INSTANCES``), the header
  its SR copies the patient and study from, its SR's UID and the previous one's, and the content
  identities of every instance a result of the group has covered so far. Written and fsynced, then hard-linked into place: the link is
  the claim, so one process makes each result, however many closers look.
- ``open/<key>``: present while the group has instances that no result covers; its mtime is the
  last arrival. A restart recreates missing ones from the instances' own times.
- ``timing/<SR UID>``: the group's last arrival, for ``biomed_dicom_group_seconds`` when the
  destination confirms the SR (``Spool.arrived``).

Each worker runs a ``Closer`` thread. A group is closed once no instance has joined it for
``BIOMED_DICOM_GROUP_TIMEOUT_S`` (the quiet period, measured from the last arrival on disk, so a
restart resumes it), or at once when ``BIOMED_DICOM_GROUP_MAX_INSTANCES`` instances wait: the
closer claims the next result, builds its SR (``biomed.outputs.series_sr``), spools it for the
forwarder, and empties the instances' files. An instance that arrives after a result makes the
next one, whose SR covers the whole group and names the previous SR (Predecessor Documents
Sequence); in a series larger than the cap, the next result is a part of its own (the instances
since, naming none), so a result never covers more than the cap: what bounds a closer's memory. A result claimed but never spooled (a crash between the two) is spooled by the next
closer that looks. Groups untouched for 7 days are forgotten. Nothing here logs a UID or any
content of an instance: counts, steps and outcomes only.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from biomed.outputs import Producer
from biomed.outputs.semantics import Semantics
from biomed.outputs.series_sr import build_series_sr, series_sr_uid
from biomed.outputs.sr import Previous, evidence, series_uid, sr_bytes
from biomed.preprocess.dicom_read import is_uid
from biomed.series import Member, combine, group_key, mixture
from service.dicom.spool import Spool, fsync_dir

log = logging.getLogger("biomed.dicom")
KEEP_S = 7 * 24 * 3600  # groups untouched this long are forgotten
POLL_S = 0.25  # how often a closer looks at the open groups
RETRY_S = 30.0  # a group whose closing failed is looked at again after this long
_STAGED = itertools.count()  # staged files of this process (with its pid and thread in the name)
Reclassify = Callable[[str, str, bytes], "np.ndarray | None"]  # (model, version, file) -> outputs, or None


@dataclass(frozen=True)
class Policy:
    """How groups form and close: the settings, as the closer and ``add`` read them."""

    by: str  # series | study
    timeout_s: float
    max_instances: int
    per_instance: bool = False


def _write(path: Path, data: bytes, sync: bool) -> None:
    with open(path, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def _producer_doc(algo: Producer, how: str) -> dict[str, Any]:
    s = algo.output
    return {"model": algo.name, "version": algo.version, "sha256": algo.sha256, "labels": list(algo.labels),
            "output": {"activation": s.activation, "units": list(s.units), "aggregate": s.aggregate},
            "aggregate": how}


def _producer_of(doc: dict[str, Any]) -> Producer:
    output = doc["output"]
    semantics = Semantics.of_output(output, len(doc["labels"]))
    return Producer(doc["model"], doc["version"], doc["sha256"], tuple(doc["labels"]), output=semantics)


class Groups:
    """The groups of one spool (module docstring): ``add`` from the doors, the rest from a ``Closer``."""

    def __init__(self, spool: Spool, policy: Policy) -> None:
        self.spool = spool
        self.policy = policy
        self.root = spool.root / "groups"
        self.open = spool.root / "open"
        for d in (self.root, self.open):
            d.mkdir(parents=True, exist_ok=True)

    def _tmp(self, name: str) -> Path:
        return self.spool.tmp / f"{name}.{os.getpid()}.{threading.get_ident()}"

    def _group(self, key: str, algo: Producer, how: str) -> Path:
        """The group's folder, made (with its ``group.json``, durably) when this is its first instance."""
        folder = self.root / key
        if (folder / "group.json").exists():
            return folder
        folder.mkdir(exist_ok=True)
        tmp = self._tmp(f"{key}.group")
        _write(tmp, json.dumps({**_producer_doc(algo, how), "by": self.policy.by}).encode(), sync=True)
        try:
            os.link(tmp, folder / "group.json")
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(folder)
        fsync_dir(self.root)
        return folder

    def stage(self, data: bytes) -> Path:
        """An instance's file written and fsynced under a temporary name, while it is classified (``commit``)."""
        tmp = self._tmp(f"staged.{next(_STAGED)}.dcm")
        _write(tmp, data, sync=True)
        return tmp

    def commit(self, staged: Path, header: Dataset, identity: str, values: np.ndarray, algo: Producer,
               how: str) -> bool:
        """Put a ``stage``d instance in its group durably (the staged file is gone after); False when the group has
        this content already."""
        try:
            if not is_uid(str(header.get("SeriesInstanceUID", "") or "")):
                raise ValueError("an instance without a Series Instance UID joins no series")
            member = Member.of(header, identity, values)
            key = group_key(member, self.policy.by, algo.name, algo.version)
            folder = self._group(key, algo, how)
            final = folder / f"{identity}.dcm"
            if final.exists():
                return False
            record = self._tmp(f"{identity}.json")
            _write(record, json.dumps(member.to_dict()).encode(), sync=False)  # a cache of the .dcm: made again if lost
            os.replace(record, folder / f"{identity}.json")
            try:
                os.link(staged, final)  # the commit; refuses a second copy of the same content
            except FileExistsError:
                return False
        finally:
            staged.unlink(missing_ok=True)
        (self.open / key).touch()  # the last arrival (recreated from the instances' times after a crash)
        fsync_dir(folder)
        return True

    def add(self, data: bytes, header: Dataset, identity: str, values: np.ndarray, algo: Producer, how: str) -> bool:
        """Store one classified instance durably in its group (``stage`` then ``commit``); False for a duplicate."""
        return self.commit(self.stage(data), header, identity, values, algo, how)

    # --- the closer's side ---------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """The open groups' keys."""
        with contextlib.suppress(FileNotFoundError):
            return [e.name for e in os.scandir(self.open) if is_uid(e.name)]
        return []

    def instances(self, key: str) -> dict[str, float]:
        """The group's instances: content identity -> arrival time (its file's mtime)."""
        found = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root / key) as it:
            for entry in it:
                if entry.name.endswith(".dcm"):
                    with contextlib.suppress(FileNotFoundError):
                        found[entry.name[:-4]] = entry.stat().st_mtime
        return found

    def latest(self, key: str) -> tuple[int, dict[str, Any] | None]:
        """The number of the group's latest result and the result (0, None before its first)."""
        numbers = [int(p.name[7:-5]) for p in (self.root / key).glob("result-*.json") if p.name[7:-5].isdigit()]
        if not numbers:
            return 0, None
        n = max(numbers)
        return n, json.loads((self.root / key / f"result-{n:06d}.json").read_text())

    def member(self, key: str, identity: str) -> Member | None:
        """The instance's member record, None when missing or torn (a crash before it reached the disk)."""
        try:
            return Member.from_dict(json.loads((self.root / key / f"{identity}.json").read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def header(self, key: str, identity: str) -> Dataset | None:
        """An instance's header from its file (None once a result emptied it)."""
        try:
            return evidence(dcmread(self.root / key / f"{identity}.dcm", stop_before_pixels=True))
        except Exception:  # noqa: BLE001 - pydicom raises many kinds for an emptied or unreadable file
            return None

    def claim(self, key: str, n: int, record: dict[str, Any]) -> bool:
        """Make result ``n`` of the group durable, unless another process made it first (False)."""
        tmp = self._tmp(f"{key}.result-{n}")
        _write(tmp, json.dumps(record).encode(), sync=True)
        try:
            os.link(tmp, self.root / key / f"result-{n:06d}.json")
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(self.root / key)
        return True

    def settle(self, key: str, covered: set[str]) -> None:
        """The group's open marker, after a result covering ``covered``: removed, or kept (with the latest arrival)
        when instances arrived meanwhile. Removed first and the folder read after, so that an instance committed
        meanwhile either shows here or touches the marker after it went."""
        marker = self.open / key
        marker.unlink(missing_ok=True)
        waiting = {i: t for i, t in self.instances(key).items() if i not in covered}
        if waiting:
            marker.touch()
            latest = max(waiting.values())
            with contextlib.suppress(FileNotFoundError):
                if marker.stat().st_mtime > latest:
                    os.utime(marker, (latest, latest))

    def empty(self, key: str, identities: set[str]) -> None:
        """Free the files a result covers (their names stay: the same content again is a duplicate)."""
        for identity in identities:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.root / key / f"{identity}.dcm", 0)

    def recover(self) -> int:
        """At start-up: reopen each group with instances no result covers whose marker a crash lost; returns how many."""
        reopened = 0
        for folder in self.root.iterdir():
            if not is_uid(folder.name) or (self.open / folder.name).exists():
                continue
            with contextlib.suppress(OSError, ValueError):
                _, latest = self.latest(folder.name)
                covered = set(latest["covered"]) if latest else set()
                waiting = [t for i, t in self.instances(folder.name).items() if i not in covered]
                if waiting:
                    marker = self.open / folder.name
                    marker.touch()
                    os.utime(marker, (max(waiting), max(waiting)))
                    reopened += 1
        return reopened

    def prune(self, now: float | None = None) -> int:
        """Forget closed groups untouched for ``KEEP_S``; returns how many."""
        now = time.time() if now is None else now
        removed = 0
        for folder in self.root.iterdir():
            with contextlib.suppress(OSError):
                if (self.open / folder.name).exists() or now - folder.stat().st_mtime < KEEP_S:
                    continue
                shutil.rmtree(folder)
                removed += 1
        return removed

    def read_group(self, key: str) -> dict[str, Any]:
        return json.loads((self.root / key / "group.json").read_text())


class Closer(threading.Thread):
    """Closes this spool's quiet (or full) groups and spools their SRs (module docstring); one per worker."""

    def __init__(self, groups: Groups, reclassify: Reclassify, metrics: Any) -> None:
        super().__init__(name="dicom-groups", daemon=True)
        self.groups = groups
        self.spool = groups.spool
        self.policy = groups.policy
        self.reclassify = reclassify
        self.metrics = metrics
        self.stopping = threading.Event()
        self._retry_at: dict[str, float] = {}  # groups whose closing failed: not before then
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (marker mtime, instances waiting) at the last count
        self._pruned = 0.0

    def stop(self, timeout: float = 10.0) -> None:
        self.stopping.set()
        self.join(timeout)

    def run(self) -> None:
        with contextlib.suppress(OSError):
            reopened = self.groups.recover()
            if reopened:
                log.info("reopened %d group(s) with instances waiting for a result", reopened)
        _warm_up()
        while not self.stopping.wait(POLL_S):
            try:
                self.sweep()
            except Exception as err:  # noqa: BLE001 - a disk or bug problem: keep the thread, say what kind
                log.error("the group closer failed (%s); retrying", _reason(err))
                self.stopping.wait(RETRY_S / 10)

    def sweep(self, now: float | None = None) -> None:
        """One look at every open group: close the quiet or full ones; set the gauges."""
        now = time.time() if now is None else now
        keys = self.groups.keys()
        overdue = 0.0
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                last = (self.groups.open / key).stat().st_mtime
                quiet = now - last
                overdue = max(overdue, quiet - self.policy.timeout_s)
                if self._retry_at.get(key, 0.0) > now:
                    continue
                if quiet >= self.policy.timeout_s or self._full(key, last):
                    self._close(key, last)
        self.metrics.dicom_groups_open.set(len(keys))
        self.metrics.dicom_group_overdue.set(max(overdue, 0.0))
        self._seen = {k: v for k, v in self._seen.items() if k in keys}
        if now - self._pruned > 3600:
            self._pruned = now
            with contextlib.suppress(OSError):
                self.groups.prune(now)

    def _full(self, key: str, last: float) -> bool:
        """Whether ``BIOMED_DICOM_GROUP_MAX_INSTANCES`` instances wait (counted again only after a new arrival)."""
        seen = self._seen.get(key)
        if seen is None or seen[0] != last:
            _, latest = self.groups.latest(key)
            covered = set(latest["covered"]) if latest else set()
            seen = (last, sum(1 for i in self.groups.instances(key) if i not in covered))
            self._seen[key] = seen
        return seen[1] >= self.policy.max_instances

    def _close(self, key: str, last: float) -> None:
        try:
            made = self.close(key, last)
        except Exception as err:  # noqa: BLE001 - logged by kind, retried later
            self._retry_at[key] = time.time() + RETRY_S
            log.error("a group could not be closed (%s); trying again in %.0f s", _reason(err), RETRY_S)
            return
        self._retry_at.pop(key, None)
        if made is not None:
            log.info("a group's result was made: %d instance(s), result %d", *made)

    def close(self, key: str, last: float) -> tuple[int, int] | None:
        """Make the group's next result and spool its SR; (instances, result number), or None when there was
        nothing to do or another process did it."""
        n, latest = self.groups.latest(key)
        if latest is not None and not self.spool.is_known(latest["sr"]):
            self._spool(key, latest)  # claimed, then a crash before its SR reached the spool
        covered = set(latest["covered"]) if latest else set()
        arrived = {i: t for i, t in self.groups.instances(key).items() if i not in covered}
        if not arrived:
            self.groups.settle(key, covered)
            return None
        group = self.groups.read_group(key)
        algo = _producer_of(group)
        limit = self.policy.max_instances
        new = self._members(key, sorted(arrived, key=lambda i: (arrived[i], i))[:limit], algo)
        if not new:
            raise RuntimeError("no instance of the group could be read")
        header = self.groups.header(key, new[0].identity)
        if header is None:
            raise RuntimeError("the group's newest instance cannot be read")
        prior = [Member.from_dict(m) for m in latest["members"]] if latest else []
        whole = len(prior) + len(new) <= limit  # else a new part of a series larger than the cap: its own SR
        members = prior + new if whole else new
        done = {m.identity for m in new}
        record = {"n": n + 1, "members": [m.to_dict() for m in members], "header": header.to_json_dict(),
                  "sr": series_sr_uid(key, [m.identity for m in members], algo),
                  "previous": latest["sr"] if latest and whole else None, "last": last, "group": group,
                  "covered": sorted(covered | done)}
        if not self.groups.claim(key, n + 1, record):
            return None
        self._spool(key, record)
        self.groups.empty(key, done)
        self.groups.settle(key, covered | done)
        return len(members), n + 1

    def _members(self, key: str, identities: list[str], algo: Producer) -> list[Member]:
        """The waiting instances' member records, each made again from its file when missing (``reclassify``)."""
        members = []
        for identity in identities:
            member = self.groups.member(key, identity)
            if member is None:
                member = self._remake(key, identity, algo)
            if member is not None:
                members.append(member)
        return members

    def _remake(self, key: str, identity: str, algo: Producer) -> Member | None:
        path = self.groups.root / key / f"{identity}.dcm"
        try:
            data = path.read_bytes()
            values = self.reclassify(algo.name, algo.version, data)
            if values is None:
                raise LookupError(f"model {algo.name}:{algo.version} is not loaded")
            return Member.of(dcmread(path, stop_before_pixels=True), identity, values)
        except Exception as err:  # noqa: BLE001 - left waiting: the next closing tries it again
            log.warning("an instance's record was lost (a crash) and could not be made again (%s); it waits for "
                        "the group's next result", _reason(err))
            return None

    def _spool(self, key: str, record: dict[str, Any]) -> None:
        """Build the SR of a claimed result and spool it (with its timing record)."""
        group = record["group"]
        algo = _producer_of(group)
        members = [Member.from_dict(m) for m in record["members"]]
        result = combine(members, group["aggregate"], algo.output)
        note = mixture(result.members)
        if note:
            log.warning("a group of %d instances mixes %s; every instance is in its result", len(members), note)
        header = Dataset.from_json(record["header"])
        study = str(header.StudyInstanceUID)
        previous = Previous(study, series_uid(study, algo), record["previous"]) if record["previous"] else None
        sr = build_series_sr(header, result, algo, key, previous,
                             self.policy.per_instance, note, instance_number=int(record["n"]))
        self.spool.put(record["sr"], sr_bytes(sr), arrived=float(record["last"]))
        self.metrics.dicom_group_instances.observe(len(members))


def _warm_up() -> None:
    """highdicom reads its tables of the standard on the first SR it builds (half a second): here, not on a
    group's clock."""
    with contextlib.suppress(Exception):
        from biomed.outputs import sr

        member = Member("0" * 64, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4", "1.2.3", "1.2.3.5", values=np.ones((1, 1)))
        header = Dataset()
        header.SOPClassUID, header.SOPInstanceUID = member.sop_class, member.sop_instance
        header.StudyInstanceUID, header.SeriesInstanceUID, header.Modality = member.study, member.series, "CT"
        algo = Producer("warm-up", "0", "0" * 64, ("x",))
        sr.sr_bytes(build_series_sr(header, combine([member], "max", algo.output), algo, "1.2.3.6"))


def _reason(err: BaseException) -> str:
    """An error without file names or values (they hold UIDs): its errno name, or its type."""
    if isinstance(err, OSError):
        return f"{errno.errorcode.get(err.errno or 0, type(err).__name__)}: {err.strerror or type(err).__name__}"
    return type(err).__name__
