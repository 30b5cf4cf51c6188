"""One home for what the project writes, shared by the doors, the CLI and the PACS forwarder.

- ``sr.py``: classification results as a DICOM Comprehensive 3D SR (TID 1500);
- ``dicom_maps.py``: an image explanation as a DICOM Parametric Map or Secondary Capture;
- ``overlay.py``: an image explanation drawn over the presented image (colour map, PNG);
- ``explanation.py``: an image explanation as the JSON of ``/explain_image`` and ``biomed explain-image --json``;
- ``vcf.py``: variant effects as an annotated VCF or a TSV (``biomed score-variants``);
- ``bigwig.py``: model tracks over regions, one bigWig per task (``biomed predict-regions``).

Here: ``Producer``, the model version every output names, and ``DICOM_STORAGE``, the storage SOP
classes of the DICOM objects written here (what the forwarder asks a PACS to take).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from biomed.outputs.semantics import Semantics

# The DICOM storage SOP classes the modules above write (pydicom.uid's names; kept as strings so that importing
# biomed.outputs, for a VCF, does not import pydicom). tests/test_dicom_parts.py checks each against what is built.
DICOM_STORAGE = (
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR Storage (sr.py)
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map Storage (dicom_maps.py)
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image Storage (dicom_maps.py)
)


@dataclass(frozen=True)
class Producer:
    """The model version an output names: from the store, a loaded model or ``GET /models``.

    Attributes:
        sha256: of the model's ONNX file.
        labels: the model's labels (image classes, DNA tasks), in output column order.
        length: a sequence model's input length in bases (the VCF header's ``Window``); None for images.
        output: what the outputs are (probabilities, or regression values with units).
    """

    name: str
    version: str
    sha256: str
    labels: tuple[str, ...]
    length: int | None = None
    output: Semantics = field(default_factory=Semantics)
