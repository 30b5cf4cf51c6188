"""An image explanation as a DICOM object that files with its source study (highdicom), torch-free.

Which object, and why:

- **Parametric Map** (float32 values, one frame) when the source is a single-frame image with a
  patient frame of reference: Frame of Reference UID, Image Position and Orientation (Patient)
  and Pixel Spacing, as CT and MR images carry them. The map keeps the quantity itself (the drop
  of the label's probability, signed, unit 1) with a Real World Value Mapping whose quantity is
  DCM 130402 "Class activation", on the source's own pixel grid and geometry, so a viewer that
  overlays derived images (by frame of reference) draws it over the source. A fractional
  Segmentation would have to squeeze a signed drop into [0, 1] as "probability of belonging",
  which it is not.
- **Secondary Capture** (RGB, the heat map drawn over the presented image, as ``?format=png``)
  otherwise: projection radiographs (CR, DX) have no patient frame of reference, so no viewer
  can place a derived map over them, and highdicom refuses a Parametric Map or Segmentation
  over a CT or MR image that lacks one (the IOD requires it). A secondary capture needs no
  geometry; it shows the same picture as the PNG, next to the source in the study.

A volume's explanation (``volume_parametric_map``) is a multi-frame **Parametric Map** over the whole
series: one frame per slice of the model's grid, each placed in the series' Frame of Reference by its
Plane Position, with the grid's orientation and spacing (highdicom's ``Volume``), every instance of the
series referenced as a source. A viewer that overlays by frame of reference draws it over the series.

Both reference the source instance (the Parametric Map in its Referenced Series Sequence and
per-frame Derivation Image Sequence, the Secondary Capture in its Source Image Sequence, with
the frame number for a multi-frame source), copy the patient and study modules from the
source (that is the point: the object files with the study), get new series and instance UIDs,
and say "research use only, not for diagnostic use" in their content and series descriptions.
Nothing here logs, and no error message carries a value read from the source.
"""

from __future__ import annotations

import warnings
from io import BytesIO

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import biomed
from biomed.errors import InputError
from biomed.metadata import INTENDED_USE

CLASS_ACTIVATION = Code("130402", "DCM", "Class activation")
UNITY = Code("1", "UCUM", "no units")
MANUFACTURER = "biomed-serve"
REFERENCE_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID", "StudyDate",
          "StudyTime", "ReferringPhysicianName")
_GEOMETRY = ("FrameOfReferenceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")


class NoDicomSource(InputError):
    """``format=dicom`` without a DICOM source that can be referenced (422 ``no_dicom_source``)."""

    code = "no_dicom_source"


def referable(ds: Dataset) -> Dataset:
    """``ds``, the source's header as the decoder parsed it (``Upload.header``), when it names what a DICOM object
    needs to reference it; else 422 ``no_dicom_source``."""
    missing = [k for k in REFERENCE_KEYWORDS if not str(ds.get(k, "") or "").strip()]
    if missing:
        raise NoDicomSource(f"the DICOM file has no {', '.join(missing)}, so no DICOM object can reference it; "
                            "use format=json or format=png")
    return ds


def has_patient_geometry(ds: Dataset, frames: int) -> bool:
    """True for a single-frame image with a frame of reference, position, orientation and pixel spacing."""
    return frames == 1 and all(k in ds and ds.get(k) not in (None, "") for k in _GEOMETRY)


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _prepared(ds: Dataset) -> Dataset:
    """A copy highdicom accepts: empty type-2 patient and study attributes where the source has none."""
    src = ds.copy()
    for keyword in _TYPE2:
        if keyword not in src:
            setattr(src, keyword, "")
    return src


def parametric_map(ds: Dataset, values: np.ndarray, label: str, model: str, version: str) -> Dataset:
    """A one-frame Parametric Map of ``values`` (rows x columns, the source's grid) over the source ``ds``."""
    import highdicom as hd

    values = np.ascontiguousarray(values, dtype=np.float32)
    low, high = float(values.min()), float(values.max())
    if high <= low:
        high = low + 1e-6
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="P_DROP", lut_explanation=_truncate(f"drop of p({label}) when occluded", 64), unit=UNITY,
        value_range=(low, high), slope=1.0, intercept=0.0, quantity_definition=CLASS_ACTIVATION)
    top = max(high, 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # highdicom's notes on optional attributes
        pm = hd.pm.ParametricMap(
            [_prepared(ds)], values, generate_uid(), 9901, generate_uid(), 1, MANUFACTURER, _truncate(model, 64),
            _truncate(f"{biomed.__version__} {version}", 64), _truncate(version, 64),
            contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
            # LINEAR_EXACT: the window is exact for any width (the map's is often < 1, which LINEAR would clamp to a flat
            # image; PS3.3 C.11.2.1.3.2).
            voi_lut_transformations=[hd.VOILUTTransformation(window_center=top / 2, window_width=top,
                                                             voi_lut_function="LINEAR_EXACT")],
            content_label="OCCLUSION",
            content_description=_truncate(f"occlusion map, {label}; {INTENDED_USE}", 64),
            content_creator_name=None, series_description=_truncate(f"{model} explanation ({INTENDED_USE})", 64))
    _laterality(pm, ds)
    return pm


def volume_parametric_map(sources: list[Dataset], values: np.ndarray, affine: np.ndarray, label: str, model: str,
                          version: str) -> bytes:
    """A multi-frame Parametric Map of ``values`` (depth, height, width: the model's grid, placed in the series' frame
    of reference by ``affine``, voxel index to patient mm) over the series' ``sources`` (their headers), as Part-10
    bytes.

    Raises:
        InputError: 422 ``no_dicom_source`` when the series lacks what the object needs (highdicom's checks).
    """
    import highdicom as hd

    try:
        values = np.ascontiguousarray(values, dtype=np.float32)
        low, high = float(values.min()), float(values.max())
        high = max(high, low + 1e-6)
        mapping = hd.pm.RealWorldValueMapping(
            lut_label="P_DROP", lut_explanation=_truncate(f"drop of p({label}) when occluded", 64), unit=UNITY,
            value_range=(low, high), slope=1.0, intercept=0.0, quantity_definition=CLASS_ACTIVATION)
        volume = hd.Volume(values, affine, "PATIENT", frame_of_reference_uid=str(sources[0].FrameOfReferenceUID))
        top = max(high, 1e-6)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pm = hd.pm.ParametricMap(
                [_prepared(ds) for ds in sources], volume, generate_uid(), 9902, generate_uid(), 1, MANUFACTURER,
                _truncate(model, 64), _truncate(f"{biomed.__version__} {version}", 64), _truncate(version, 64),
                contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
                voi_lut_transformations=[hd.VOILUTTransformation(window_center=top / 2, window_width=top,
                                                                 voi_lut_function="LINEAR_EXACT")],
                content_label="OCCLUSION", content_description=_truncate(f"3D occlusion map, {label}; {INTENDED_USE}", 64),
                content_creator_name=None, series_description=_truncate(f"{model} explanation ({INTENDED_USE})", 64))
        buffer = BytesIO()
        pm.save_as(buffer, enforce_file_format=True)
    except Exception as exc:  # highdicom's checks of the sources' attributes; no value of them is quoted
        raise NoDicomSource(f"no DICOM explanation can be built over this series ({type(exc).__name__} from "
                            "highdicom: its patient, study or image attributes are not valid); use format=json") from None
    return buffer.getvalue()


def secondary_capture(ds: Dataset, rgb: np.ndarray, label: str, model: str, version: str, frame: int,
                      frames: int) -> Dataset:
    """An RGB Secondary Capture of ``rgb`` (the overlay) referencing frame ``frame`` of the source ``ds``."""
    import highdicom as hd

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # highdicom wants a patient orientation; the source's (type 2, often empty) replaces the placeholder below.
        sc = hd.sc.SCImage.from_ref_dataset(
            _prepared(ds), np.ascontiguousarray(rgb, dtype=np.uint8), "RGB", 8, "PATIENT", generate_uid(), 9901,
            generate_uid(), 1, MANUFACTURER, patient_orientation=("L", "F"), transfer_syntax_uid=ExplicitVRLittleEndian)
    sc.PatientOrientation = ds.get("PatientOrientation", "") or ""
    sc.SeriesDescription = _truncate(f"{model} explanation ({INTENDED_USE})", 64)
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = _truncate(
        f"occlusion map of {label} by {model}:{version} drawn over the presented image; {INTENDED_USE}", 1024)
    sc.ImageComments = sc.DerivationDescription
    sc.BurnedInAnnotation = "NO"
    sc.ManufacturerModelName = _truncate(model, 64)
    sc.SoftwareVersions = _truncate(f"{biomed.__version__} {version}", 64)
    reference = Dataset()
    reference.ReferencedSOPClassUID = ds.SOPClassUID
    reference.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if frames > 1:
        reference.ReferencedFrameNumber = frame + 1
    reference.PurposeOfReferenceCodeSequence = [_code(Code("121322", "DCM", "Source image for image processing "
                                                                                "operation"))]
    sc.SourceImageSequence = [reference]
    _laterality(sc, ds)
    return sc


def _laterality(out: Dataset, ds: Dataset) -> None:
    """The source's Body Part Examined and Laterality (General Series; Laterality is Type 2C: required for a paired
    body part). Laterality R or L is copied; without it, a source that names its body part leaves Laterality
    absent (had the part been paired, the source would have said which side), and one that names neither gets it
    empty: unknown (PS3.3 C.7.3.1)."""
    part, side = str(ds.get("BodyPartExamined", "") or "").strip(), ds.get("Laterality", "")
    if part:
        out.BodyPartExamined = part[:16]
    if side in ("R", "L"):
        out.Laterality = side
    elif not part:
        out.Laterality = ""


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme_designator, code.meaning
    return item


def explanation_dicom(ds: Dataset, values: np.ndarray, overlay_rgb: np.ndarray, label: str, model: str, version: str,
                      frame: int, frames: int) -> tuple[bytes, str]:
    """The explanation over the source ``ds`` as Part-10 bytes, and which object it is (``parametric_map`` or
    ``secondary_capture``; see the module docstring).

    Args:
        values: the map at the presented image's geometry (rows x columns), float32.
        overlay_rgb: the same map drawn over the presented image, uint8 (rows, columns, 3).

    Raises:
        InputError: 422 ``no_dicom_source`` when highdicom cannot build the object over this source.
    """
    try:
        if has_patient_geometry(ds, frames):
            out, kind = parametric_map(ds, values, label, model, version), "parametric_map"
        else:
            out, kind = secondary_capture(ds, overlay_rgb, label, model, version, frame, frames), "secondary_capture"
        buffer = BytesIO()
        out.save_as(buffer, enforce_file_format=True)
    except InputError:
        raise
    except Exception as exc:  # highdicom's checks of the source's attributes; no value of them is quoted
        raise NoDicomSource(f"no DICOM explanation can be built over this file ({type(exc).__name__} from highdicom: "
                            "its patient, study or image attributes are not valid); use format=json or format=png") \
            from None
    return buffer.getvalue(), kind
