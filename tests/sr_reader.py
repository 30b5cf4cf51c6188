"""Reading the project's TID 1500 SRs back (tests only): what each measurement group says (highdicom), a series
SR's image library and comments, and dicom3tools' ``dciodvfy`` verdict."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Sequence

import numpy as np
from pydicom.dataset import Dataset


def read_results(sr: Dataset) -> list[dict]:
    """What ``build_sr`` wrote, read back with highdicom: per group, the referenced instance and frame, the
    predicted label and every label's probability (``biomed/outputs/sr.py``)."""
    import highdicom as hd

    document = sr if isinstance(sr, hd.sr.Comprehensive3DSR) else hd.sr.Comprehensive3DSR.from_dataset(sr)
    results = []
    for group in document.content.get_image_measurement_groups():
        [image] = group.source_images
        frames = image.referenced_frame_numbers
        assert not group.get_qualitative_evaluations()  # the predicted label is the group's Finding (TID 1501 row 3b)
        results.append({
            "sop_instance_uid": image.referenced_sop_instance_uid,
            "frame": (int(frames[0]) - 1) if frames else 0,
            "label": group.finding_type.meaning,
            "probabilities": {m.name.meaning.removeprefix("Probability of "): float(m.value)
                              for m in group.get_measurements()},
        })
    return sorted(results, key=lambda r: r["frame"])


def probabilities_of(results: Sequence[dict], labels: Sequence[str]) -> np.ndarray:
    """(frames, labels) from ``read_results``."""
    return np.array([[r["probabilities"][label] for label in labels] for r in results], dtype=np.float64)


def dciodvfy_errors(data: bytes, tmp_path: Path) -> list[str]:
    """dicom3tools' dciodvfy over an SR: its error lines (warnings are not errors)."""
    try:
        from tests.tools import require_tool
    except ImportError:  # tests/ is not a package: pytest puts it on sys.path
        from tools import require_tool

    tool = require_tool("dciodvfy", "apt-get install dicom3tools")
    path = tmp_path / f"{hashlib.sha1(data).hexdigest()}.dcm"
    path.write_bytes(data)
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


def library(ds: Dataset) -> list[tuple[str, str, dict[str, object]]]:
    """The image library's entries: (SOP Class UID, SOP Instance UID, {descriptor meaning: value})."""
    [lib] = [i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    entries = []
    for group in lib.ContentSequence:
        for item in group.ContentSequence:
            if item.ValueType != "IMAGE":
                continue
            ref = item.ReferencedSOPSequence[0]
            descriptors = {d.ConceptNameCodeSequence[0].CodeMeaning: (d.ConceptCodeSequence[0].CodeValue
                           if d.ValueType == "CODE" else int(d.MeasuredValueSequence[0].NumericValue))
                           for d in item.ContentSequence}
            entries.append((str(ref.ReferencedSOPClassUID), str(ref.ReferencedSOPInstanceUID), descriptors))
    return entries


def series_groups(ds: Dataset) -> list[dict]:
    """Each measurement group of an SR: its source instance (and frame), predicted label and values."""
    import highdicom as hd

    out = []
    for group in hd.sr.Comprehensive3DSR.from_dataset(ds).content.get_image_measurement_groups():
        [image] = group.source_images
        finding = group.finding_type  # the predicted label (TID 1501 row 3b); a regression model's "Image measurement"
        out.append({"sop_instance_uid": image.referenced_sop_instance_uid,
                    "frames": list(image.referenced_frame_numbers or []),
                    "label": None if finding.value == "REG" else finding.meaning,
                    "values": {m.name.meaning.removeprefix("Probability of "): float(m.value)
                               for m in group.get_measurements()}})
    return out


def comments(ds: Dataset) -> list[str]:
    return [str(i.TextValue) for i in ds.ContentSequence if i.ValueType == "TEXT"
            and i.ConceptNameCodeSequence[0].CodeValue == "121106"]
