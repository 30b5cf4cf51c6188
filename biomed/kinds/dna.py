"""DNA sequence models: a sequence of any length becomes model-length windows on both strands."""

from __future__ import annotations

from biomed.kinds.base import Kind, PersonInput
from biomed.preprocess.dna import ALPHABET, DnaSpec

KIND = Kind(
    name="dna",
    summary="DNA sequences (A, C, G, T, N) of any length, tiled into windows, both strands averaged",
    spec=DnaSpec,
    person=PersonInput(name="sequence", items="sequences", base64_in_json=False, cap="max_sequences",
                       parameters={"reverse_complement": True}),  # both strands averaged, or the forward one
    preprocess_schema={
        "type": "object",
        "required": ["type", "alphabet", "length", "stride", "reverse_complement"],
        "properties": {
            "type": {"const": "dna"},
            "alphabet": {"const": ALPHABET},
            "length": {"type": "integer", "minimum": 1},
            "stride": {"type": "integer", "minimum": 1},
            "reverse_complement": {"type": "boolean"},
            "padding": {"type": "string"},
        },
    },
    row="window",
)
