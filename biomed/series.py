"""A series (or a study) of classified instances and its one result, for every door that groups them.

The DICOM doors group instances in the spool (``service/dicom/groups.py``) and ``/predict_series``
and v2's ``group: "series"`` take a series in one request (``service/handlers/image.py``); all of
them describe each instance as a ``Member`` and combine the members here, so the same instances
give the same result whichever way they came:

- ``combine``: the series' values, label by label, over every frame of every member: their ``max``
  ("any slice shows it") or their ``mean`` (``aggregate_of``: ``BIOMED_SERIES_AGGREGATE``, else the
  model's ``output.aggregate``). The winning label is the one with the highest combined probability
  (a regression model's first value); the source is the frame with the highest value of it, the
  first in series order (Instance Number, then SOP Instance UID) on a tie.
- ``mixture``: what a series mixes (sizes, modalities, SOP classes), as counts, for the SR and the
  logs; every member is kept in the result whatever it mixes.
- ``group_key``: the one key of a member's group, per grouping (``series`` or ``study``), patient
  and model version.
- ``Collected``: the members of one series as a request brings them: a resent identical instance
  counts once, an instance of another series (or study, or patient) is refused.

A model that takes a whole series as one row (a volume model, ``WHOLE``) gives every member the
series' one row for each of its frames: the members still say which instances the result covers
(the SR's image library), and ``combine`` gives that row back, the first instance in series order as
its source.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

import numpy as np

from biomed.errors import InputError
from biomed.outputs.semantics import AGGREGATES, Semantics
from biomed.outputs.sr import uid

GROUPINGS = ("series", "study")
WHOLE = "volume"  # the aggregate of a group its model assembles as one volume: every member holds the series' row


@dataclass(frozen=True)
class Member:
    """One instance of a group: its content identity, its UIDs, what the SR's image library says of it, and its
    model outputs, (frames, labels) in frame order. Nothing here is logged: UIDs identify a patient's study."""

    identity: str
    sop_class: str
    sop_instance: str
    study: str
    series: str
    patient: str = ""
    instance_number: int = 0
    modality: str = ""
    rows: int = 0
    columns: int = 0
    frame_of_reference: str = ""
    values: Any = None  # np.ndarray (frames, labels)

    @classmethod
    def of(cls, header: Any, identity: str, values: np.ndarray) -> "Member":
        """From the instance's header (a pydicom Dataset, pixel data not needed) and its model outputs."""

        def text(keyword: str) -> str:
            return str(header.get(keyword, "") or "").strip()

        try:
            number = int(str(header.get("InstanceNumber", 0) or 0).strip() or 0)
        except ValueError:
            number = 0
        return cls(identity, text("SOPClassUID"), text("SOPInstanceUID"), text("StudyInstanceUID"),
                   text("SeriesInstanceUID"), text("PatientID"), number, text("Modality") or "OT",
                   int(header.get("Rows", 0) or 0), int(header.get("Columns", 0) or 0), text("FrameOfReferenceUID"),
                   np.asarray(values, dtype=np.float64))

    @property
    def frames(self) -> int:
        return int(len(self.values))

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "values"}
        d["values"] = np.asarray(self.values, dtype=np.float64).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Member":
        """The inverse of ``to_dict`` (KeyError or ValueError for a record that is not one)."""
        fields = {k: d[k] for k in cls.__dataclass_fields__ if k != "values"}
        values = np.asarray(d["values"], dtype=np.float64)
        if values.ndim != 2 or len(values) == 0:
            raise ValueError("a member's values are (frames, labels)")
        return cls(**fields, values=values)


@dataclass(frozen=True)
class Result:
    """A group's result: the combined values (labels), the winning label, and the member and frame that drove it.

    ``source`` indexes ``members`` as ``combine`` ordered them (``ordered``)."""

    values: np.ndarray
    best: int
    source: int
    frame: int
    how: str
    members: tuple[Member, ...]

    @property
    def driver(self) -> Member:
        return self.members[self.source]


def ordered(members: Iterable[Member]) -> tuple[Member, ...]:
    """Series order: Instance Number, then SOP Instance UID (an order every door finds the same)."""
    return tuple(sorted(members, key=lambda m: (m.instance_number, m.sop_instance)))


def aggregate_of(setting: str, semantics: Semantics) -> str:
    """How instances combine: the deployment's ``BIOMED_SERIES_AGGREGATE`` when set, else the model's."""
    how = setting or semantics.aggregate
    if how not in AGGREGATES:
        raise ValueError(f"aggregate {how!r} is unknown; accepted: {', '.join(AGGREGATES)}")
    return how


def combine(members: Iterable[Member], how: str, semantics: Semantics) -> Result:
    """The group's one result (module docstring); ValueError for no members or members of other widths. ``how``:
    ``max``, ``mean`` or ``WHOLE`` (the members' rows are the series' one row: their mean is that row)."""
    chosen = ordered(members)
    if not chosen:
        raise ValueError("a group without instances has no result")
    rows = np.concatenate([m.values for m in chosen])  # (all frames, labels)
    combined = rows.max(axis=0) if how == "max" else rows.mean(axis=0)
    best = 0 if semantics.regression else int(np.argmax(combined))
    row = int(np.argmax(rows[:, best]))  # the first row of the highest value
    member = int(np.searchsorted(np.cumsum([m.frames for m in chosen]), row, side="right"))
    frame = row - sum(m.frames for m in chosen[:member])
    return Result(combined, best, member, frame, how, chosen)


def mixture(members: Sequence[Member]) -> str | None:
    """What the group mixes, as counts (sizes, modalities, SOP classes, series of a study...), or None."""
    parts = []
    for what, of in (("sizes", lambda m: f"{m.rows}x{m.columns}"), ("modalities", lambda m: m.modality),
                     ("SOP classes", lambda m: m.sop_class), ("frame counts", lambda m: str(m.frames))):
        counts = collections.Counter(of(m) for m in members)
        if len(counts) > 1:
            parts.append(f"{what} " + ", ".join(f"{k} ({n})" for k, n in counts.most_common(8)))
    return "; ".join(parts) or None


def with_row(members: Iterable[Member], row: np.ndarray) -> list[Member]:
    """The members of a series assembled as one volume, each holding the series' one ``row`` for each frame."""
    return [replace(m, values=np.tile(np.asarray(row, dtype=np.float64), (m.frames, 1))) for m in members]


def group_key(member: Member, by: str, model: str, version: str) -> str:
    """The UID-shaped key of the group ``member`` joins, grouping ``by`` series or study, for one model version."""
    if by not in GROUPINGS:
        raise ValueError(f"grouping {by!r} is unknown; accepted: {', '.join(GROUPINGS)}")
    within = member.series if by == "series" else ""
    return uid("group", by, member.patient, member.study, within, model, version)


class Collected:
    """The members of one series in the order a request brings them (one per content identity), each with the
    request's element (file) index it came from."""

    def __init__(self) -> None:
        self.members: dict[str, tuple[Member, int]] = {}

    def __len__(self) -> int:
        return len(self.members)

    def add(self, member: Member, element: int) -> bool:
        """Take ``member`` (file ``element`` of the request); False for a content already taken.

        Raises:
            InputError (422 ``series_mismatch``): another series, study or patient than the first file's.
        """
        if member.identity in self.members:
            return False
        if self.members:
            first, at = next(iter(self.members.values()))
            for what, mine, theirs in (("Series Instance UID", member.series, first.series),
                                       ("Study Instance UID", member.study, first.study),
                                       ("Patient ID", member.patient, first.patient)):
                if mine != theirs:
                    raise InputError(f"file element {element} has another {what} than file element {at}: a "
                                     "request holds the instances of one series", code="series_mismatch")
        self.members[member.identity] = (member, element)
        return True

    def element_of(self, member: Member) -> int:
        return self.members[member.identity][1]
