"""Classification results as a DICOM Comprehensive 3D SR (TID 1500 Measurement Report), with highdicom.

One SR per classified instance: one TID 1501 image-level measurement group per frame, whose
Finding (DCM 121071, TID 1501 row 3b) is the predicted label and which holds every label's
probability as a measurement (``1`` UCUM, no units), each concept coded in our private coding
scheme ``99BIOMED`` (declared in the SR's Coding Scheme Identification Sequence). Each group
references its source image (and frame, for multi-frame images) and identifies the algorithm
(TID 4019: model name, version, parameters with the ONNX file's sha256; the manufacturer is the
observer device's and the equipment's, not TID 4019's). A regression model's group holds each
value as a measurement in its UCUM unit (``Producer.output``), its Finding "Image measurement".
Every content item is one the 2022 templates name, so PixelMed's TID 1500 validator finds none
"not in template" (docs/conformance.md: the change from SRs written before, which carried a
"Predicted label" CODE and an "Algorithm Manufacturer" TEXT in each group). The document is
UNVERIFIED, its Content Qualification RESEARCH, and its series description says "research use
only, not for diagnostic use".

The patient and study modules are copied from the source, so that a PACS files the SR with
the study: the one place where the service hands patient data back (to the PACS it came from).
Nothing here logs.

UIDs are deterministic: the SR's SOP Instance UID derives from (the source's content identity,
model name, model version), its series from (study, model name, version). The content identity
(``biomed.preprocess.identity``) is the SHA-256 of the decoded pixels with the Patient ID and
the Study, Series and SOP Instance UIDs: re-sending an image, in any transfer syntax, yields the
same SR, which a PACS keeps once; a corrected instance under the same SOP Instance UID (other
pixels or Patient ID) yields a new SR, which names the one made before it, when known, in its
Predecessor Documents Sequence (``Previous``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset

from biomed.outputs import Producer

SCHEME = "99BIOMED"  # private coding scheme (PS3.16 8.2: designators starting with 99 are private)
SCHEME_NAME = "biomed-serve model outputs"
MANUFACTURER = "biomed-serve"
NOTICE = "research use only, not for diagnostic use"
SERIES_NUMBER = 9001
# uuid5 namespace of this service's UIDs (a fixed random UUID; the UIDs are 2.25.<uuid as an integer>, PS3.5 B.2).
_NAMESPACE = uuid.UUID("6c1b1f5e-2f8e-4a4d-9a55-0d2b8f7e41c3")
# Patient and study attributes copied from the source beyond those highdicom copies (Patient, General Study and
# Patient Study modules).
_COPIED = ("IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence", "OtherPatientIDsSequence", "PatientAge",
           "PatientSize", "PatientWeight", "EthnicGroup", "PatientComments", "PatientIdentityRemoved",
           "DeidentificationMethod", "StudyDescription", "IssuerOfAccessionNumberSequence",
           "ProcedureCodeSequence", "AdmittingDiagnosesDescription", "PatientBirthTime", "ResponsiblePerson",
           "ResponsibleOrganization", "PatientSpeciesDescription", "PatientBreedDescription", "TimezoneOffsetFromUTC")
_REQUIRED_EMPTY = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                   "StudyDate", "StudyTime", "ReferringPhysicianName")


def uid(*parts: str) -> str:
    """A UID that depends only on ``parts``: ``2.25.<uuid5>`` (at most 44 characters)."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(31).join(parts)).int}"


SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR Storage


def sr_uid(identity: str, algorithm: Producer) -> str:
    """The SR's SOP Instance UID for the source of this content identity (module docstring) and model version."""
    return uid("sr", identity, algorithm.name, algorithm.version)


def series_uid(study: str, algorithm: Producer) -> str:
    """The Series Instance UID of this model version's SRs in ``study``."""
    return uid("series", study, algorithm.name, algorithm.version)


def source_key(source_sop_instance_uid: str, algorithm: Producer) -> str:
    """What one source instance's SRs by one model version share, whatever its content (a UID-shaped key)."""
    return uid("source", source_sop_instance_uid, algorithm.name, algorithm.version)


@dataclass(frozen=True)
class Previous:
    """An SR made before for the same source instance (same SOP Instance UID, other content): the new one names it."""

    study: str
    series: str
    sop_instance: str

    def as_dataset(self) -> Dataset:
        ds = Dataset()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = self.study, self.series
        ds.SOPClassUID, ds.SOPInstanceUID = SR_CLASS, self.sop_instance
        return ds


def _code(value: str, meaning: str):  # type: ignore[no-untyped-def]
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value[:16], meaning=meaning[:64], scheme_designator=SCHEME)


def label_code(label: str, index: int):  # type: ignore[no-untyped-def]
    """The coded concept of a model label (code value ``L<index>``; meaning the label)."""
    return _code(f"L{index}", label)


def probability_code(label: str, index: int):  # type: ignore[no-untyped-def]
    """The concept name of a label's probability (code value ``P<index>``)."""
    return _code(f"P{index}", f"Probability of {label}")


def value_code(label: str, index: int):  # type: ignore[no-untyped-def]
    """The concept name of a regression model's value (code value ``V<index>``; meaning the value's name)."""
    return _code(f"V{index}", label)


def _unit(ucum: str):  # type: ignore[no-untyped-def]
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    return codes.UCUM.NoUnits if ucum == "1" else CodedConcept(value=ucum, meaning=ucum, scheme_designator="UCUM")


MEASURED_TYPE = ("REG", "Image measurement")  # a regression model's Finding


def evidence(source: Dataset) -> Dataset:
    """A copy of the source header without pixel data, with the empty Type 2 values highdicom reads."""
    header = Dataset()
    for element in source:
        if element.tag.group in (0x7FE0,) or element.keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            continue
        header.add(element)
    for keyword in _REQUIRED_EMPTY:
        if keyword not in header:
            setattr(header, keyword, None)
    return header


def _image_library(source: Dataset):  # type: ignore[no-untyped-def]
    """TID 1600: highdicom's (with its descriptors), or a bare entry when the source lacks what they need."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    try:
        return hd.sr.ImageLibrary([source])
    except (AttributeError, ValueError, TypeError, KeyError, IndexError):  # e.g. a CT without Pixel Spacing
        library = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibrary,
                                             relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        group = hd.sr.ContainerContentItem(name=codes.DCM.ImageLibraryGroup,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        image = hd.sr.ImageContentItem(name=hd.sr.CodedConcept("260753009", "SCT", "Source"),
                                       referenced_sop_class_uid=source.SOPClassUID,
                                       referenced_sop_instance_uid=source.SOPInstanceUID,
                                       relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        group.ContentSequence = hd.sr.ContentSequence([image])
        library.ContentSequence = hd.sr.ContentSequence([group])
        return [library]


def algorithm_id(algorithm: Producer, *notes: str):  # type: ignore[no-untyped-def]
    """TID 4019: the model's name, version, the ONNX file's sha256, the notice, and ``notes``."""
    import highdicom as hd

    return hd.sr.AlgorithmIdentification(name=algorithm.name, version=algorithm.version,
                                         parameters=[f"sha256 of the ONNX file: {algorithm.sha256}", NOTICE, *notes])


def measurement_group(row: np.ndarray, algorithm: Producer, algo, sop_class: str, sop_instance: str,  # type: ignore[no-untyped-def]
                      frame_number: int | None, tracking: tuple[str, str]):
    """TID 1501 of one result ``row`` (labels): its Finding the predicted label, each probability a measurement (or
    each regression value in its unit, the Finding "Image measurement"), referencing one source image (and frame,
    1-based, for a multi-frame one). ``tracking``: the tracking identifier's (UID, text)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    regression = algorithm.output.regression
    best = int(row.argmax())
    if regression:
        measurements = [hd.sr.Measurement(name=value_code(label, i), value=float(v), unit=_unit(unit))
                        for i, (label, v, unit) in enumerate(zip(algorithm.labels, row, algorithm.output.units))]
        finding = _code(*MEASURED_TYPE)
    else:
        measurements = [hd.sr.Measurement(name=probability_code(label, i), value=float(p), unit=codes.UCUM.NoUnits)
                        for i, (label, p) in enumerate(zip(algorithm.labels, row))]
        finding = label_code(algorithm.labels[best], best)  # the predicted label
    image = hd.sr.SourceImageForMeasurementGroup(
        referenced_sop_class_uid=sop_class, referenced_sop_instance_uid=sop_instance,
        referenced_frame_numbers=[frame_number] if frame_number is not None else None)
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking[0], identifier=tracking[1]),
        finding_type=finding, algorithm_id=algo, measurements=measurements, source_images=[image])


def frame_groups(header: Dataset, probs: np.ndarray, algorithm: Producer, algo) -> list:  # type: ignore[no-untyped-def]
    """One measurement group per frame of one instance (``probs``: (frames, labels))."""
    multi_frame = int(probs.shape[0]) > 1 or int(header.get("NumberOfFrames", 1) or 1) > 1
    return [measurement_group(row, algorithm, algo, str(header.SOPClassUID), str(header.SOPInstanceUID),
                              frame + 1 if multi_frame else None,
                              (uid("tracking", str(header.SOPInstanceUID), algorithm.name, algorithm.version, str(frame)),
                               f"{algorithm.name} frame {frame + 1}"))
            for frame, row in enumerate(np.asarray(probs, dtype=np.float64))]


def report(groups: list, algorithm: Producer, library: list):  # type: ignore[no-untyped-def]
    """The TID 1500 content tree: the device observer, the measurement ``groups``, and ``library`` (TID 1600 content
    items) before them."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=uid("device", algorithm.name, algorithm.version, algorithm.sha256), name=algorithm.name,
        manufacturer_name=MANUFACTURER, model_name=f"{algorithm.name} {algorithm.version}"[:64])
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.cid270.Device, observer_identifying_attributes=device))
    root = hd.sr.MeasurementReport(observation_context=context, procedure_reported=codes.cid100.ImagingProcedure,
                                   imaging_measurements=groups)[0]
    at = next(i for i, item in enumerate(root.ContentSequence)
              if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ImagingMeasurements.value)
    for offset, item in enumerate(library):
        root.ContentSequence.insert(at + offset, item)
    return root


def document(header: Dataset, root, algorithm: Producer, sop_instance: str, previous: Previous | None,  # type: ignore[no-untyped-def]
             now: dt.datetime | None = None, instance_number: int = 1) -> Dataset:
    """The Comprehensive 3D SR of ``root`` over ``header``'s patient and study (module docstring)."""
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    now = now or dt.datetime.now()
    sr = hd.sr.Comprehensive3DSR(
        evidence=[header], content=root,
        series_instance_uid=series_uid(str(header.StudyInstanceUID), algorithm),
        series_number=SERIES_NUMBER, sop_instance_uid=sop_instance,
        previous_versions=[previous.as_dataset()] if previous is not None else None,
        instance_number=instance_number, manufacturer=MANUFACTURER, is_complete=True, is_final=False,
        is_verified=False, content_qualification="RESEARCH",
        series_description=f"{NOTICE.capitalize()}: {algorithm.name}"[:64],
        manufacturer_model_name=algorithm.name[:64], software_versions=algorithm.version[:64],
        coding_schemes=[CodingSchemeIdentificationItem(designator=SCHEME, name=SCHEME_NAME,
                                                       responsible_organization=MANUFACTURER)],
        content_date=now.date(), content_time=now.time().replace(microsecond=0),
    )
    for keyword in _COPIED:
        if keyword in header:
            sr.add(header[keyword])
    return sr


def build_sr(source: Dataset, probs: np.ndarray, algorithm: Producer, identity: str, now: dt.datetime | None = None,
             previous: Previous | None = None) -> Dataset:
    """The SR of one classified instance.

    Args:
        source: the source instance's header (pixel data may be absent); needs SOP Class/Instance and
            Study Instance UIDs.
        probs: (frames, labels) probabilities (or regression values, as ``algorithm.output`` says), frame order.
        algorithm: the model version that produced ``probs``.
        identity: the source's content identity (``biomed.preprocess.identity``; ``Upload.identity``).
        now: content date/time (default: now).
        previous: the SR this one replaces (a corrected source under the same SOP Instance UID).
    """
    header = evidence(source)
    groups = frame_groups(header, probs, algorithm, algorithm_id(algorithm))
    root = report(groups, algorithm, _image_library(header))
    return document(header, root, algorithm, sr_uid(identity, algorithm), previous, now)


def sr_bytes(sr: Dataset) -> bytes:
    """The SR as a DICOM Part-10 file."""
    out = BytesIO()
    sr.save_as(out, enforce_file_format=True)
    return out.getvalue()
