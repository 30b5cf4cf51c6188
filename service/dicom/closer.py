"""The closer: each worker's thread that makes the results of the spool's groups (``groups.py``) and spools their SRs.

Each worker runs one. A group is closed once no instance has joined it for
``BIOMED_DICOM_GROUP_TIMEOUT_S`` (the quiet period, measured from the last arrival on disk, so a
restart resumes it), or at once when ``BIOMED_DICOM_GROUP_MAX_INSTANCES`` instances wait: the
closer claims the next result, builds its SR (``biomed.outputs.series_sr``), spools it for the
forwarder, and empties the instances' files. An instance that arrives after a result makes the
next one, whose SR covers the whole group and names the previous SR (Predecessor Documents
Sequence); in a series larger than the cap, the next result is a part of its own (the instances
since, naming none), so a result never covers more than the cap: what bounds a closer's memory.
Each result is claimed by a hard link (``Groups.claim``), so however many closers look, in however
many workers and pods, one makes it. A result claimed but never spooled (a crash between the two)
is spooled by the next closer that looks once the claim is a minute old; an instance whose record
a crash lost is classified again from its file (``reclassify``). Nothing here logs a UID or any
content of an instance: counts, steps and outcomes only.

A group of a model that takes a whole series as one row (a volume model: its group's aggregate is
``biomed.series.WHOLE``) is assembled here: the files of the instances the result covers are read
(their sizes within ``BIOMED_MAX_SERIES_MB`` first) and made one volume by the model's handler
(``assemble``) before they are emptied; every member gets the series' row. Its files emptied, a later
result of such a group covers only the instances since (its own part, naming no previous SR). A set
of files that makes no volume the model takes (a gap or tilt it does not resample, too few slices, a
mixed series) gets no SR: the result is recorded as refused, with its reason's code, and logged.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import threading
import time
from typing import Any, Callable

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from biomed.outputs import Producer
from biomed.outputs.series_sr import build_series_sr, series_sr_uid
from biomed.outputs.sr import Previous, series_uid, sr_bytes
from biomed.errors import InputError
from biomed.series import WHOLE, Member, combine, mixture, with_row
from service.dicom.groups import Groups, producer_of

log = logging.getLogger("biomed.dicom")
POLL_S = 0.25  # how often a closer looks at the open groups
RETRY_S = 30.0  # a group whose closing failed is looked at again after this long
ORPHAN_S = 60.0  # a result claimed this long ago whose SR is not in the spool lost its closer (a crash)
Reclassify = Callable[[str, str, bytes], "np.ndarray | None"]  # (model, version, file) -> outputs, or None
Assemble = Callable[[str, str, list], "np.ndarray | None"]  # (model, version, paths) -> the series' row, or None


class Closer(threading.Thread):
    """Closes this spool's quiet (or full) groups and spools their SRs (module docstring); one per worker."""

    def __init__(self, groups: Groups, reclassify: Reclassify, metrics: Any, assemble: Assemble | None = None) -> None:
        super().__init__(name="dicom-groups", daemon=True)
        self.groups = groups
        self.spool = groups.spool
        self.policy = groups.policy
        self.reclassify = reclassify
        self.assemble = assemble
        self.metrics = metrics
        self.stopping = threading.Event()
        self._retry_at: dict[str, float] = {}  # groups whose closing failed: not before then
        self._seen: dict[str, tuple[float, int]] = {}  # key -> (marker mtime, instances waiting) at the last count
        self._covered: dict[str, tuple[int, frozenset[str]]] = {}  # key -> (its latest result, what results cover)
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
        self._covered = {k: v for k, v in self._covered.items() if k in keys}
        if now - self._pruned > 3600:
            self._pruned = now
            with contextlib.suppress(OSError):
                self.groups.prune(now)

    def _full(self, key: str, last: float) -> bool:
        """Whether ``BIOMED_DICOM_GROUP_MAX_INSTANCES`` instances wait (counted again only after a new arrival;
        the instances earlier results covered read again only after a new result)."""
        seen = self._seen.get(key)
        if seen is None or seen[0] != last:
            n = self.groups.results(key)
            if self._covered.get(key, (None,))[0] != n:
                _, latest = self.groups.latest(key)
                self._covered[key] = (n, frozenset(latest["covered"]) if latest else frozenset())
            covered = self._covered[key][1]
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
        if latest is not None and latest["sr"] and not self.groups.spooled(key, n) and \
                not self.spool.is_known(latest["sr"]):
            if self.groups.claimed_s(key, n) <= ORPHAN_S:
                return None  # its closer is at work (it settles the group)
            self._spool(key, latest)  # claimed, then a crash before its SR reached the spool
        covered = set(latest["covered"]) if latest else set()
        arrived = {i: t for i, t in self.groups.instances(key).items() if i not in covered}
        if not arrived:
            self.groups.settle(key, covered)
            return None
        group = self.groups.read_group(key)
        algo = producer_of(group)
        limit = self.policy.max_instances
        new = self._members(key, sorted(arrived, key=lambda i: (arrived[i], i))[:limit], algo)
        if not new:
            raise RuntimeError("no instance of the group could be read")
        header = self.groups.header(key, new[0].identity)
        if header is None:
            raise RuntimeError("the file of an instance waiting in the group cannot be read")
        volume = group["aggregate"] == WHOLE  # the files make one volume: read before they are emptied
        prior = [Member.from_dict(m) for m in latest["members"]] if latest and not volume else []
        whole = len(prior) + len(new) <= limit  # else a new part of a series larger than the cap: its own SR
        members = prior + new if whole else new
        done = {m.identity for m in new}
        refused = None
        if volume:
            members, refused = self._volume(key, members, algo)
        record = {"n": n + 1, "members": [m.to_dict() for m in members], "header": header.to_json_dict(),
                  "sr": None if refused else series_sr_uid(key, [m.identity for m in members], algo),
                  "previous": latest["sr"] if latest and whole and not volume else None, "last": last,
                  "group": group, "covered": sorted(covered | done), "refused": refused}
        if not self.groups.claim(key, n + 1, record):
            return None
        if refused:
            self.groups.mark_spooled(key, n + 1)
            log.warning("a group of %d instances makes no volume its model takes (%s): no SR", len(members), refused)
        else:
            self._spool(key, record)
        self.groups.empty(key, done)
        self.groups.settle(key, covered | done)
        return len(members), n + 1

    def _volume(self, key: str, members: list[Member], algo: Producer) -> tuple[list[Member], str | None]:
        """A volume model's group: its files as one volume (``assemble``), every member holding its row; or the
        members as they are and the code of the reason the files make no volume."""
        if self.assemble is None:
            raise RuntimeError("no assembler for a volume model's group")
        paths = [self.groups.root / key / f"{m.identity}.dcm" for m in members]
        try:
            row = self.assemble(algo.name, algo.version, paths)
        except InputError as err:
            return members, err.code
        if row is None:
            raise LookupError(f"model {algo.name}:{algo.version} is not loaded")
        return with_row(members, row), None

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
        algo = producer_of(group)
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
        self.groups.mark_spooled(key, int(record["n"]))
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
