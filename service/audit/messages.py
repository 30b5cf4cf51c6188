"""DICOM audit messages (PS3.15 A.5.1, the DICOM Audit Message schema) as XML text, from plain values.

``render`` writes one ``AuditMessage``: its Event Identification, Active Participants, Audit Source and
Participant Objects in the schema's order, every value escaped, on one line (a newline in a value is
written as a character reference), so that a syslog line holds one message. The codes the service uses
are here; the private ones (``99BIOMED``) are those the SRs use (docs/conformance.md).
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr


@dataclass(frozen=True)
class Code:
    """A coded value (schema's CodedValueType): csd-code, codeSystemName, originalText."""

    value: str
    scheme: str
    meaning: str

    def xml(self, element: str) -> str:
        return (f"<{element} csd-code={_q(self.value)} codeSystemName={_q(self.scheme)} "
                f"originalText={_q(self.meaning)}/>")


APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
APPLICATION_START = Code("110120", "DCM", "Application Start")
APPLICATION_STOP = Code("110121", "DCM", "Application Stop")
INSTANCES_ACCESSED = Code("110103", "DCM", "DICOM Instances Accessed")
INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")
LOGIN = Code("110122", "DCM", "Login")
APPLICATION = Code("110150", "DCM", "Application")
DESTINATION = Code("110152", "DCM", "Destination Role ID")
SOURCE = Code("110153", "DCM", "Source Role ID")
STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
NODE_ID = Code("110182", "DCM", "Node ID")
PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
PREDICTION = Code("PRED", "99BIOMED", "Model prediction")  # EventID without DICOM instances; EventTypeCode of all
MODEL_VERSION = Code("MODEL", "99BIOMED", "Model version")

# Event Outcome Indicator
SUCCESS, MINOR_FAILURE, SERIOUS_FAILURE = 0, 4, 8
# Participant Object Type Code and Role (RFC 3881)
PERSON, SYSTEM_OBJECT = 1, 2
PATIENT, REPORT, RESOURCE, SECURITY_RESOURCE = 1, 3, 4, 13


@dataclass(frozen=True)
class Participant:
    """An Active Participant: ``address`` an IP address or host name (Network Access Point ID, type 2 or 1)."""

    user_id: str
    requestor: bool
    role: Code | None = None
    alternative: str = ""
    name: str = ""
    address: str = ""

    def xml(self) -> str:
        attrs = [f"UserID={_q(self.user_id)}"]
        if self.alternative:
            attrs.append(f"AlternativeUserID={_q(self.alternative)}")
        if self.name:
            attrs.append(f"UserName={_q(self.name)}")
        attrs.append(f'UserIsRequestor="{"true" if self.requestor else "false"}"')
        if self.address:
            kind = "2" if _is_ip(self.address) else "1"
            attrs.append(f'NetworkAccessPointID={_q(self.address)} NetworkAccessPointTypeCode="{kind}"')
        role = self.role.xml("RoleIDCode") if self.role else ""
        return f"<ActiveParticipant {' '.join(attrs)}>{role}</ActiveParticipant>"


@dataclass(frozen=True)
class Entity:
    """A Participant Object: ``sop_classes`` (SOP Class UID, instances) of a study; ``details`` name/value pairs
    (written base64, as the schema's ValuePair wants)."""

    id: str
    id_type: Code
    type_code: int
    role: int
    name: str = ""
    details: tuple[tuple[str, str], ...] = ()
    description: str = ""
    sop_classes: tuple[tuple[str, int], ...] = ()

    def xml(self) -> str:
        inner = [self.id_type.xml("ParticipantObjectIDTypeCode")]
        if self.name:
            inner.append(f"<ParticipantObjectName>{_e(self.name)}</ParticipantObjectName>")
        inner += [f"<ParticipantObjectDetail type={_q(k)} value={_q(base64.b64encode(v.encode()).decode())}/>"
                  for k, v in self.details]
        if self.description:
            inner.append(f"<ParticipantObjectDescription>{_e(self.description)}</ParticipantObjectDescription>")
        inner += [f'<SOPClass UID={_q(uid)} NumberOfInstances="{n}"/>' for uid, n in self.sop_classes]
        return (f'<ParticipantObjectIdentification ParticipantObjectID={_q(self.id)} '
                f'ParticipantObjectTypeCode="{self.type_code}" ParticipantObjectTypeCodeRole="{self.role}">'
                f"{''.join(inner)}</ParticipantObjectIdentification>")


def render(event: Code, action: str, outcome: int, when: dt.datetime, participants: list[Participant],
           source_id: str, objects: tuple[Entity, ...] = (), types: tuple[Code, ...] = (),
           description: str = "") -> str:
    """One ``AuditMessage`` (PS3.15 A.5.1): ``action`` the Event Action Code (C, R, U, D, E); ``when`` aware."""
    moment = when.astimezone(dt.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")
    head = (f'<EventIdentification EventActionCode="{action}" EventDateTime="{moment}" '
            f'EventOutcomeIndicator="{outcome}">{event.xml("EventID")}{"".join(t.xml("EventTypeCode") for t in types)}'
            + (f"<EventOutcomeDescription>{_e(description)}</EventOutcomeDescription>" if description else "")
            + "</EventIdentification>")
    return (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?><AuditMessage>{head}{''.join(p.xml() for p in participants)}"
            f"<AuditSourceIdentification AuditSourceID={_q(source_id)}/>{''.join(o.xml() for o in objects)}"
            "</AuditMessage>")


_NEWLINES = {"\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}


def _q(value: str) -> str:
    return quoteattr(_clean(value), _NEWLINES)


def _e(value: str) -> str:
    return escape(_clean(value), _NEWLINES)


def _clean(value: str) -> str:
    """``value`` without the characters XML 1.0 cannot hold (control characters other than tab and newlines)."""
    return "".join(c for c in str(value) if c >= " " or c in "\t\n\r")


def _is_ip(address: str) -> bool:
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return False
    return True
