"""An explanation as JSON: the body of ``/explain_image`` (``format=json``) and ``biomed explain-image --json``, and of
``/explain_series`` (a volume's).

Built once here so that the door and the command line write the same document (docs/api.md
names every field). The map is at the model input's geometry, rounded to 7 decimals; ``peak``
is its largest value's (row, column) there. No patient data: ``input`` is the decoder's
``input`` block.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from biomed.occlusion import Occlusion, peak, peak_index
from biomed.outputs.semantics import PROBABILITIES, Semantics


def explanation_body(result: Occlusion, labels: Sequence[str], frame: int, presented: np.ndarray,
                     info: dict[str, Any], semantics: Semantics = PROBABILITIES) -> dict[str, Any]:
    """The explanation's fields, without the model's name and version (the caller puts them first).

    Args:
        result: the occlusion of frame ``frame``.
        labels: the model's labels, in output column order.
        presented: the presented frame, uint8 (rows, columns, samples).
        info: the decoder's ``input`` block of the file.
        semantics: the model's output: ``probabilities``, or ``values`` of a regression model (whose ``label`` is
            the explained value and ``predicted`` the largest).
    """
    grid = result.grid
    values = np.round(result.map, 7)
    row, column = peak(result.map)
    return {
        "method": "occlusion", "frame": frame, "label": labels[result.index],
        "predicted": labels[int(np.argmax(result.probabilities))],
        semantics.name: dict(zip(labels, map(float, result.probabilities))),
        "map": {"rows": grid.height, "columns": grid.width, "patch": grid.patch, "stride": grid.stride,
                "patches": grid.patches, "min": float(values.min()), "max": float(values.max()),
                "peak": {"row": row, "column": column}, "values": values.tolist()},
        "presented": {"rows": int(presented.shape[0]), "columns": int(presented.shape[1]),
                      "samples": int(presented.shape[2])},
        "input": info,
    }


def volume_explanation_body(result: Occlusion, labels: Sequence[str], info: dict[str, Any], affine: np.ndarray,
                            semantics: Semantics = PROBABILITIES) -> dict[str, Any]:
    """A volume's explanation fields, without the model's name and version: the map at the model's grid (depth,
    height, width), its peak as a voxel and as a point in the series' frame of reference (mm, LPS), and ``affine``,
    the grid's voxel-to-patient matrix (4x4), so the map can be placed over the series."""
    boxes = result.grid
    values = np.round(result.map, 7)
    index = peak_index(result.map)
    point = affine @ np.array([*index, 1.0])
    return {
        "method": "occlusion", "label": labels[result.index], "predicted": labels[int(np.argmax(result.probabilities))],
        semantics.name: dict(zip(labels, map(float, result.probabilities))),
        "map": {"shape": list(boxes.shape), "patch": list(boxes.patch), "stride": list(boxes.stride),
                "patches": boxes.patches, "min": float(values.min()), "max": float(values.max()),
                "peak": {"voxel": list(index), "position_mm": [round(float(v), 3) for v in point[:3]]},
                "affine": np.round(affine, 6).tolist(), "values": values.tolist()},
        "input": info,
    }
