"""Reading the project's TID 1500 SRs back with highdicom: what each measurement group says (tests only)."""

from __future__ import annotations

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
