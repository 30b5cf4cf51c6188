"""Volume models: the files of one CT or MR series (single-frame instances or one Enhanced multi-frame object)
become one 3D row on the model's grid (``biomed.preprocess.volume``)."""

from __future__ import annotations

from biomed.kinds.base import Kind, PersonInput
from biomed.preprocess.slices import IRREGULAR
from biomed.preprocess.volume import VolumeSpec

KIND = Kind(
    name="volume",
    summary="CT and MR series as 3D volumes (the files of one series, or one Enhanced multi-frame file), one "
            "prediction per series",
    spec=VolumeSpec,
    # A request's files are one series: their count is bounded by its voxels (each file holds at least one).
    person=PersonInput(name="file", items="files", base64_in_json=True, cap="max_voxels",
                       outputs=(("element", "INT32"), ("frame", "INT32")),  # the series' first file in series order
                       parameters={"group": "series"}),  # the only grouping a volume takes: one row per series
    preprocess_schema={
        "type": "object",
        "required": ["type", "size", "spacing"],
        "properties": {
            "type": {"const": "volume"},
            "size": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 3, "maxItems": 3},
            "spacing": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 3,
                        "maxItems": 3},
            "window": {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            "resample": {"type": "array", "items": {"enum": list(IRREGULAR)}, "uniqueItems": True},
            "axes": {"const": "zyx"},
        },
    },
    row="volume",
)
