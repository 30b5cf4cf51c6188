"""Groups of received instances (a series, or a study) in the spool, each to get one SR (``closer.py``).

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
- ``groups/<key>/result-<n>.json``: the group's n-th result (``result-<n>.spooled`` once its SR
  is in the spool): every member it covers (those of result n-1 and the instances since, at most
  ``BIOMED_DICOM_GROUP_MAX_INSTANCES``), the header its SR copies the patient and study from, its
  SR's UID and the previous one's, and the content identities of every instance a result of the
  group has covered so far. Written and fsynced, then hard-linked into place: the link is
  the claim, so one process makes each result, however many closers look.
- ``open/<key>``: present while the group has instances that no result covers; its mtime is the
  last arrival. A restart recreates missing ones from the instances' own times.
- ``timing/<SR UID>`` (the spool's): the group's last arrival, for ``biomed_dicom_group_seconds``
  when the destination confirms the SR (``Spool.arrived``).

The closer (``closer.py``) makes each group's results; a result never covers more than
``BIOMED_DICOM_GROUP_MAX_INSTANCES`` instances. Groups untouched for 7 days are forgotten
(``prune``). Nothing here logs a UID or any content of an instance.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from biomed.outputs import Producer
from biomed.outputs.semantics import Semantics
from biomed.outputs.sr import evidence
from biomed.preprocess.dicom_read import is_uid
from biomed.series import Member, group_key
from service.dicom.spool import Spool, fsync_dir

KEEP_S = 7 * 24 * 3600  # groups untouched this long are forgotten
_STAGED = itertools.count()  # staged files of this process (with its pid and thread in the name)


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


def producer_of(doc: dict[str, Any]) -> Producer:
    output = doc["output"]
    semantics = Semantics.of_output(output, len(doc["labels"]))
    return Producer(doc["model"], doc["version"], doc["sha256"], tuple(doc["labels"]), output=semantics)


class Groups:
    """The groups of one spool (module docstring): ``stage``/``commit`` from the doors, the rest for the closer."""

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

    def results(self, key: str) -> int:
        """The number of the group's latest result (0 before its first)."""
        return max((int(p.name[7:-5]) for p in (self.root / key).glob("result-*.json") if p.name[7:-5].isdigit()),
                   default=0)

    def latest(self, key: str) -> tuple[int, dict[str, Any] | None]:
        """The number of the group's latest result and the result (0, None before its first)."""
        n = self.results(key)
        return (n, json.loads((self.root / key / f"result-{n:06d}.json").read_text())) if n else (0, None)

    def spooled(self, key: str, n: int) -> bool:
        """Whether result ``n``'s SR is known to have reached the spool (``mark_spooled``)."""
        return (self.root / key / f"result-{n:06d}.spooled").exists()

    def mark_spooled(self, key: str, n: int) -> None:
        """Result ``n``'s SR is in the spool (not fsynced: lost, the spool itself is asked)."""
        with contextlib.suppress(OSError):
            (self.root / key / f"result-{n:06d}.spooled").touch()

    def claimed_s(self, key: str, n: int) -> float:
        """How long ago result ``n`` of the group was claimed (0 when it cannot be told)."""
        try:
            return time.time() - (self.root / key / f"result-{n:06d}.json").stat().st_mtime
        except OSError:
            return 0.0

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
        """At start-up: reopen each group whose marker a crash lost, with instances no result covers or a result not
        yet in the spool; returns how many."""
        reopened = 0
        for folder in self.root.iterdir():
            if not is_uid(folder.name) or (self.open / folder.name).exists():
                continue
            with contextlib.suppress(OSError, ValueError):
                n, latest = self.latest(folder.name)
                covered = set(latest["covered"]) if latest else set()
                waiting = [t for i, t in self.instances(folder.name).items() if i not in covered]
                unspooled = latest is not None and latest["sr"] and not self.spooled(folder.name, n)
                if unspooled and not self.spool.is_known(latest["sr"]):
                    waiting.append(float(latest["last"]))
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
