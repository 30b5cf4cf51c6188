"""The result of a series (or a study) as one DICOM Comprehensive 3D SR (TID 1500), over the group's instances.

Built on the instance SR (``sr.py``: the same document, codes, algorithm identification and
patient and study modules), with:

- one TID 1501 measurement group for the series: its combined probabilities (or values) and
  predicted label (``biomed.series.combine``), referencing the instance (and frame) that drove
  it as its source image; its algorithm identification names the aggregation
  ("series result: max over 60 instances, 60 frames");
- every instance of the group in the image library (TID 1600: one entry per instance, grouped by
  modality and frame of reference, each with its modality, rows and columns), and in the
  Current Requested Procedure Evidence Sequence;
- with ``per_instance``, one measurement group per instance and frame after the series' own
  (those of the instance SRs);
- what the series mixes (sizes, modalities: ``biomed.series.mixture``), when it does, as a
  Comment (DCM 121106) of the report;
- a Predecessor Documents Sequence naming the group's previous SR, when a late instance made
  this one.

Its UID derives from the group's key and the content identities of the instances it covers
(``series_sr_uid``): the same instances give the same SR. Built with plain pydicom datasets
where highdicom would take milliseconds per instance (its image library: 7 ms an entry).
Nothing here logs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import functools
from typing import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.coding import Code

from biomed.outputs import Producer
from biomed.outputs.sr import (
    Previous, algorithm_id, document, evidence, measurement_group, report, uid,
)
from biomed.series import Member, Result

_SOURCE = Code("260753009", "SCT", "Source")
_PIXELS = Code("{pixels}", "UCUM", "Pixels")
_MEASUREMENTS = "126010"  # DCM Imaging Measurements: the container of the measurement groups


def series_sr_uid(key: str, identities: Iterable[str], algorithm: Producer) -> str:
    """The SR's SOP Instance UID for the group ``key`` covering the instances of these content identities."""
    digest = hashlib.sha256("\n".join(sorted(identities)).encode("ascii")).hexdigest()
    return uid("series-sr", key, digest, algorithm.name, algorithm.version)


def _coded(code: Code) -> Dataset:
    ds = Dataset()
    ds.CodeValue, ds.CodingSchemeDesignator, ds.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return ds


def _item(relationship: str, value_type: str, concept: Code) -> Dataset:
    ds = Dataset()
    ds.RelationshipType, ds.ValueType = relationship, value_type
    ds.ConceptNameCodeSequence = DicomSequence([_coded(concept)])
    return ds


def _container(concept: Code, items: list[Dataset]) -> Dataset:
    ds = _item("CONTAINS", "CONTAINER", concept)
    ds.ContinuityOfContent = "SEPARATE"
    ds.ContentSequence = DicomSequence(items)
    return ds


def _num(concept: Code, value: int) -> Dataset:
    ds = _item("HAS ACQ CONTEXT", "NUM", concept)
    measured = Dataset()
    measured.MeasurementUnitsCodeSequence = DicomSequence([_coded(_PIXELS)])
    measured.NumericValue = str(int(value))
    ds.MeasuredValueSequence = DicomSequence([measured])
    return ds


@functools.lru_cache(maxsize=1)
def _modalities() -> dict[str, Code]:
    """The acquisition modalities of CID 29 by their defined term (``CT``: Computed Tomography)."""
    from pydicom.sr.codedict import codes

    collection = codes.cid29
    return {code.value: code for code in (getattr(collection, k) for k in collection.dir())}


def _modality(member: Member) -> Dataset:
    from pydicom.sr.codedict import codes

    item = _item("HAS ACQ CONTEXT", "CODE", codes.DCM.Modality)
    term = member.modality or "OT"
    item.ConceptCodeSequence = DicomSequence([_coded(_modalities().get(term, Code(term, "DCM", term)))])
    return item


def _entry(member: Member) -> Dataset:
    """TID 1601 one image: its SOP Class and Instance, modality, rows and columns."""
    from pydicom.sr.codedict import codes

    image = _item("CONTAINS", "IMAGE", _SOURCE)
    reference = Dataset()
    reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID = member.sop_class, member.sop_instance
    image.ReferencedSOPSequence = DicomSequence([reference])
    descriptors = [_modality(member)]
    if member.rows and member.columns:
        descriptors += [_num(codes.DCM.PixelDataRows, member.rows), _num(codes.DCM.PixelDataColumns, member.columns)]
    image.ContentSequence = DicomSequence(descriptors)
    return image


def image_library(members: Iterable[Member]) -> Dataset:
    """TID 1600: the members, in series order, in one group per modality and frame of reference."""
    from pydicom.sr.codedict import codes

    groups: dict[tuple[str, str], list[Dataset]] = {}
    for member in members:
        groups.setdefault((member.modality, member.frame_of_reference), []).append(_entry(member))
    containers = []
    for (_, frame_of_reference), entries in groups.items():
        shared = []
        if frame_of_reference:
            ref = _item("HAS ACQ CONTEXT", "UIDREF", codes.DCM.FrameOfReferenceUID)
            ref.UID = frame_of_reference
            shared.append(ref)
        containers.append(_container(codes.DCM.ImageLibraryGroup, shared + entries))
    return _container(codes.DCM.ImageLibrary, containers)


def _comment(text: str) -> Dataset:
    from pydicom.sr.codedict import codes

    item = _item("CONTAINS", "TEXT", codes.DCM.Comment)
    item.TextValue = text[:1024]
    return item


def _evidence(members: Iterable[Member]) -> DicomSequence:
    """The Current Requested Procedure Evidence Sequence: every member, by study and series."""
    studies: dict[str, dict[str, list[Member]]] = {}
    for m in members:
        studies.setdefault(m.study, {}).setdefault(m.series, []).append(m)
    items = []
    for study, series in studies.items():
        item = Dataset()
        item.StudyInstanceUID = study
        refs = []
        for series_uid, members_of in series.items():
            ref = Dataset()
            ref.SeriesInstanceUID = series_uid
            sops = []
            for m in members_of:
                sop = Dataset()
                sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = m.sop_class, m.sop_instance
                sops.append(sop)
            ref.ReferencedSOPSequence = DicomSequence(sops)
            refs.append(ref)
        item.ReferencedSeriesSequence = DicomSequence(refs)
        items.append(item)
    return DicomSequence(items)


def _frame_number(member: Member, frame: int) -> int | None:
    return frame + 1 if member.frames > 1 else None


def build_series_sr(header: Dataset, result: Result, algorithm: Producer, key: str, previous: Previous | None = None,
                    per_instance: bool = False, note: str | None = None, now: dt.datetime | None = None,
                    instance_number: int = 1) -> Dataset:
    """The SR of a group (module docstring).

    Args:
        header: an instance of the group (pixel data may be absent): the SR's patient and study modules.
        result: the group's result (``biomed.series.combine``), with its members in series order.
        algorithm: the model version that produced the members' values.
        key: the group's key (``biomed.series.group_key``).
        previous: the group's SR before this one (instances arrived after it was made).
        per_instance: add one measurement group per instance and frame.
        note: what the group mixes (``biomed.series.mixture``), as a Comment.
        instance_number: the SR's Instance Number (1 for a group's first SR, 2 for the one after...).
    """
    driver = result.driver
    source = evidence(header)
    source.SOPClassUID, source.SOPInstanceUID = driver.sop_class, driver.sop_instance
    source.SeriesInstanceUID, source.StudyInstanceUID = driver.series, driver.study
    frames = sum(m.frames for m in result.members)
    algo = algorithm_id(algorithm, f"series result: {result.how} over {len(result.members)} instances, {frames} frames")
    group = measurement_group(np.asarray(result.values, dtype=np.float64), algorithm, algo, driver.sop_class,
                              driver.sop_instance, _frame_number(driver, result.frame),
                              (uid("tracking", "group", key, algorithm.name, algorithm.version),
                               f"{algorithm.name} {result.how} of {len(result.members)} instances"))
    root = report([group], algorithm, [])
    sr = document(source, root, algorithm, series_sr_uid(key, (m.identity for m in result.members), algorithm),
                  previous, now, instance_number)
    # What highdicom would check against the evidence (or take milliseconds an item to build), added as datasets.
    content = list(sr.ContentSequence)
    at = next(i for i, item in enumerate(content) if item.ConceptNameCodeSequence[0].CodeValue == _MEASUREMENTS)
    if per_instance:
        measurements = content[at]
        measurements.ContentSequence = DicomSequence(list(measurements.ContentSequence) + [
            measurement_group(row, algorithm, algo, m.sop_class, m.sop_instance, _frame_number(m, f),
                              (uid("tracking", m.sop_instance, algorithm.name, algorithm.version, str(f)),
                               f"{algorithm.name} instance {i + 1} frame {f + 1}"))[0]
            for i, m in enumerate(result.members) for f, row in enumerate(m.values)])
    content[at:at] = [image_library(result.members)] + ([_comment(note)] if note else [])
    sr.ContentSequence = DicomSequence(content)
    sr.CurrentRequestedProcedureEvidenceSequence = _evidence(result.members)
    return sr
