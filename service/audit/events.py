"""The service's audit events as DICOM audit messages (PS3.15 A.5.3), from plain values: who, from where, what.

Each function answers the messages of one event as ``(severity, xml)`` (RFC 5424 severity: 5 notice for a
success, 4 warning for a failure). An event about DICOM instances is one message per patient (PS3.15 A.5.3:
"This message may only include information about a single patient"), each naming its studies (with their
SOP classes and instance counts) and the patient (ID and name). Instances come counted (``Instances``: how
many of each study, patient and SOP class), so what an event holds is bounded by its studies, not by its
instances. The service itself is one participant of
every message, as a DICOM application: UserID its AE title, AlternativeUserID ``AETITLES=<AE title>``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

from service.audit import messages as m

Message = tuple[int, str]  # (RFC 5424 severity, the XML)
NOTICE, WARNING = 5, 4
Instances = Counter  # Subject (without its SOP Instance UID) -> how many instances


@dataclass(frozen=True)
class Subject:
    """The identifiers of one DICOM instance, for the audit trail only (never logged)."""

    study: str
    patient_id: str
    patient_name: str
    sop_class: str

    @classmethod
    def of(cls, ds: Any) -> "Subject | None":
        """From a DICOM header (a pydicom Dataset); None without a Study Instance UID."""
        study = str(ds.get("StudyInstanceUID", "") or "").strip()
        if not study:
            return None
        return cls(study, str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""),
                   str(ds.get("SOPClassUID", "") or ""))


def counted(subjects: Iterable[Subject | None]) -> Instances:
    """How many instances of each study, patient and SOP class ``subjects`` hold (None: an instance not read)."""
    return Counter(s for s in subjects if s is not None)


@dataclass(frozen=True)
class Source:
    """The service as the messages name it: its AE title and the Audit Source ID (the host)."""

    aet: str
    source_id: str

    def participant(self, requestor: bool = False, role: m.Code | None = m.APPLICATION) -> m.Participant:
        return m.Participant(self.aet, requestor, role, alternative=f"AETITLES={self.aet}", name="biomed-serve")


def _severity(outcome: int) -> int:
    return NOTICE if outcome == m.SUCCESS else WARNING


def application(source: Source, started: bool, when: dt.datetime) -> list[Message]:
    """Application Activity: this worker started (serving) or is stopping."""
    kind = m.APPLICATION_START if started else m.APPLICATION_STOP
    return [(NOTICE, m.render(m.APPLICATION_ACTIVITY, "E", m.SUCCESS, when, [source.participant()], source.source_id,
                              types=(kind,)))]


def authentication_failed(source: Source, address: str, door: str, when: dt.datetime) -> list[Message]:
    """User Authentication (Login) failed: a request through ``door`` without a token that opens anything."""
    client = m.Participant("unknown", True, address=address)  # the token presented is never written
    return [(WARNING, m.render(m.USER_AUTHENTICATION, "E", m.MINOR_FAILURE, when,
                               [client, source.participant(role=None)], source.source_id, types=(m.LOGIN,),
                               description=f"no valid bearer token ({door})"))]


def node_refused(source: Source, calling: str, address: str, why: str, when: dt.datetime) -> list[Message]:
    """Security Alert (Node Authentication): an association from an AE title that may not send, refused."""
    node = m.Participant(calling, True, alternative=f"AETITLES={calling}", address=address)
    subject = m.Entity(calling, m.NODE_ID, m.SYSTEM_OBJECT, m.SECURITY_RESOURCE, description=why)
    return [(WARNING, m.render(m.SECURITY_ALERT, "E", m.MINOR_FAILURE, when, [node, source.participant(role=None)],
                               source.source_id, [subject], types=(m.NODE_AUTHENTICATION,), description=why))]


def _patients(instances: Instances) -> dict[tuple[str, str], Instances]:
    grouped: dict[tuple[str, str], Instances] = {}
    for s, n in instances.items():
        grouped.setdefault((s.patient_id, s.patient_name), Counter())[s] += n
    return grouped


def _objects(patient: tuple[str, str], instances: Instances) -> list[m.Entity]:
    """The studies of one patient's instances (SOP classes with their counts), then the patient."""
    studies: dict[str, Counter] = {}
    for s, n in instances.items():
        studies.setdefault(s.study, Counter())[s.sop_class] += n
    found = [m.Entity(uid, m.STUDY_INSTANCE_UID, m.SYSTEM_OBJECT, m.REPORT, sop_classes=tuple(sorted(classes.items())))
             for uid, classes in studies.items()]
    return [*found, m.Entity(patient[0], m.PATIENT_NUMBER, m.PERSON, m.PATIENT, name=patient[1])]


def transferred(source: Source, sender: m.Participant, receiver: m.Participant, instances: Instances,
                action: str, outcome: int, when: dt.datetime, description: str = "") -> list[Message]:
    """DICOM Instances Transferred (``action`` C: the service received them; R: it sent them), per patient."""
    return [(_severity(outcome), m.render(m.INSTANCES_TRANSFERRED, action, outcome, when, [sender, receiver],
                                          source.source_id, _objects(patient, group), description=description))
            for patient, group in _patients(instances).items()]


@dataclass(frozen=True)
class Request:
    """A prediction request as the trail names it: who (the token's name), from where, through which door and
    endpoint, with which model versions ((name, version, sha256)), and how it ended (HTTP status)."""

    client: str
    address: str
    door: str
    endpoint: str
    models: tuple[tuple[str, str, str], ...]
    status: int


def _outcome(status: int) -> int:
    return m.SUCCESS if status < 400 else m.MINOR_FAILURE if status < 500 else m.SERIOUS_FAILURE


def prediction(source: Source, request: Request, instances: Instances, when: dt.datetime) -> list[Message]:
    """A model prediction (or explanation): DICOM Instances Accessed (Read) per patient of the DICOM instances it
    read, or the private event "Model prediction" when it read none (DNA, PNG, tensors); every one of them with
    Event Type "Model prediction" and the model versions as participant objects."""
    outcome = _outcome(request.status)
    client = m.Participant(request.client, True, address=request.address)
    detail = (("door", request.door), ("endpoint", request.endpoint), ("status", str(request.status)))
    models = [m.Entity(f"{name}:{version}", m.MODEL_VERSION, m.SYSTEM_OBJECT, m.RESOURCE, name=name,
                       details=(("sha256", sha256), *detail)) for name, version, sha256 in request.models]
    if not models:  # refused before a model was picked: the request is still named
        models = [m.Entity("none", m.MODEL_VERSION, m.SYSTEM_OBJECT, m.RESOURCE, details=detail)]
    parties = [client, source.participant()]
    description = "" if outcome == m.SUCCESS else f"HTTP status {request.status}"
    groups = _patients(instances)
    if not groups:
        return [(_severity(outcome), m.render(m.PREDICTION, "E", outcome, when, parties, source.source_id, models,
                                              types=(m.PREDICTION,), description=description))]
    return [(_severity(outcome), m.render(m.INSTANCES_ACCESSED, "R", outcome, when, parties, source.source_id,
                                          [*models, *_objects(patient, group)], types=(m.PREDICTION,),
                                          description=description))
            for patient, group in groups.items()]
