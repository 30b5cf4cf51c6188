"""Image models: a DICOM, PNG or JPEG file, presented as a viewer shows it, becomes one row per frame."""

from __future__ import annotations

from biomed.kinds.base import Kind, PersonInput
from biomed.preprocess.image import ImageSpec

KIND = Kind(
    name="image",
    summary="medical images (DICOM, PNG, JPEG), classified frame by frame",
    spec=ImageSpec,
    person=PersonInput(name="file", items="files", base64_in_json=True, cap="max_frames",
                       outputs=(("element", "INT32"), ("frame", "INT32")),
                       parameters={"group": "instance"}),  # or "series": the files as one series, one row
    preprocess_schema={
        "type": "object",
        "required": ["type", "size", "channels"],
        "properties": {
            "type": {"const": "image"},
            "size": {"type": "array", "items": {"type": "integer", "minimum": 1}, "minItems": 2, "maxItems": 2},
            "channels": {"enum": [1, 3]},
            "window": {"type": ["array", "null"], "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
            "interpolation": {"type": "string"},
        },
    },
    row="frame",
)
