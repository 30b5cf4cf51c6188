"""Volume models: the files of one CT or MR series become one 3D row; the row gets a label and its probabilities.

Decoding a series is always a thread's work (``biomed.preprocess.volume``: its caps from the headers
first, then slice by slice within the decode budget). One series is one model row, admitted to the
model's queue like any other (``BIOMED_MAX_QUEUED_MB`` counts its bytes). An explanation occludes
boxes of the model's grid (``biomed.occlusion.plan_boxes``), their copies built a chunk at a time.

A series comes as the files of one request (``/predict_series``, v2's ``file`` input, ``/explain_series``:
every file held until the last is in, in the body budget) or, through the DICOM doors, one instance at
a time: each checked and decoded on arrival (``receive_instance``: a bad one is refused at once) and
kept in its series' group, the volume assembled from the group's files when it closes
(``service/dicom/closer.py``), before they are emptied. Either way the answer is the series' one row.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from biomed import occlusion
from biomed.errors import InputError
from biomed.kinds.volume import KIND as VOLUME
from biomed.outputs.dicom_maps import volume_parametric_map
from biomed.outputs.explanation import volume_explanation_body
from biomed.preprocess.budget import Limits
from biomed.preprocess.upload import Upload
from biomed.preprocess.dicom_read import is_uid
from biomed.preprocess.volume import Grid, VolumeLimits, VolumeSpec, check_member, load_volume
from biomed.runtime import LoadedModel
from biomed.series import WHOLE, Member, Result, combine, with_row
from service.handlers.base import Handler, SeriesCollector, Shared

UIDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID")


@dataclass
class VolumeExplanation:
    """One explained series: the occlusion result, the ``input`` block, the model's grid in the series, and for
    DICOM output the files' headers (without pixel data)."""

    result: occlusion.Occlusion
    info: dict[str, Any]
    grid: Grid
    headers: list[Any] | None = None


class VolumeHandler(Handler):
    kind = VOLUME.name
    operations = frozenset({"explain_series", "predict_series"})
    batch_setting = "max_batch_size"
    series_whole = True

    def __init__(self, model: LoadedModel, shared: Shared) -> None:
        super().__init__(model, shared)
        self.spec = VolumeSpec.from_dict(model.doc["preprocess"])
        c = shared.config
        # Each file's own caps: its elements and bytes as for an image; its frames and pixels bounded by the series'
        # voxel cap (an Enhanced multi-frame file is a whole series), decoded frame by frame within the decode budget.
        files = Limits(max_pixels=c.max_voxels, max_frames=c.max_voxels, max_bytes=c.max_upload_bytes,
                       max_decoded_bytes=8 * c.max_voxels, max_elements=c.max_dicom_elements, budget=shared.budget)
        self.limits = VolumeLimits(c.max_voxels, c.max_series_bytes, files)
        self.inline_limits = self.file_limits = files  # a DICOM door's parse of one instance (service/dicom/pipeline.py)

    async def decode(self, files: Sequence[bytes | Upload]) -> tuple[np.ndarray, dict[str, Any], Grid]:
        """The series as one model row (1, 1, D, H, W) float32, its ``input`` block and the model's grid in it."""
        started = time.perf_counter()
        with self.admitting():
            x, info, grid = await self.in_thread(load_volume, list(files), self.spec, self.limits)
        self.metrics.preprocess_seconds.labels(kind="volume").observe(time.perf_counter() - started)
        return np.ascontiguousarray(x, dtype=np.float32), info, grid

    def class_labels(self, probs: np.ndarray) -> list[str]:
        return [self.labels[i] for i in probs.argmax(axis=1)]

    def check_rows(self, x: np.ndarray) -> None:
        super().check_rows(x)
        if not np.isfinite(x).all():
            raise InputError("the voxel values must be finite numbers (presented voxels are in [0, 1])",
                             code="invalid_pixels")

    async def classify_series(self, files: Sequence[bytes | Upload], door: str = "native"
                              ) -> tuple[np.ndarray, dict[str, Any]]:
        """One series' outputs (1, labels) and its ``input`` block; counted under ``door``."""
        x, info, _ = await self.decode(files)
        with self.admit(1, "a series"):
            probs = await self.run(x)
        self.count_predictions(self.row_labels(probs), door)
        return probs, info

    async def predict_items(self, items: list[bytes], parameters: dict[str, Any],
                            door: str = "native") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """v2's ``file`` input with ``parameters.group`` = ``instance``: refused, a volume is a whole series (its
        default, ``series``, is ``predict_group``)."""
        raise InputError("a volume model takes the files of one series as one row: parameters.group is 'series' (its "
                         "default); accepted: series", code="malformed", status=400)

    def series_collector(self, door: str = "native") -> SeriesCollector:
        """A series in one request: its files checked as they come and held, then assembled as one volume."""
        return _VolumeSeries(self, door)

    def group_aggregate(self) -> str:
        return WHOLE

    async def receive_instance(self, upload: Upload, door: str) -> np.ndarray:
        """An instance from a DICOM door (``check_member``): checked and decoded, nothing run; its values for the
        group are placeholders (zeros, one row per frame) until the group's volume is assembled."""
        frames = await self.in_thread(check_member, upload, self.limits)
        return np.zeros((frames, len(self.labels)))

    async def assemble(self, files: list[bytes], door: str = "dimse") -> np.ndarray:
        """A DICOM door's group, closed: its files as one volume, the series' one row (labels)."""
        probs, _ = await self.classify_series(files, door)
        return probs[0]

    def plan_explanation(self, label: str | None, patch: int | None, stride: int | None) -> occlusion.Boxes:
        """The occlusion's boxes, counted before anything is decoded (400 for bad fields, 422 for an unknown label,
        413 past ``BIOMED_MAX_OCCLUSION_ROWS``)."""
        self.check_explained_label(label)
        boxes = occlusion.plan_boxes(self.spec.size, patch, stride)
        self.check_occlusion_rows(boxes.rows, f"patch {list(boxes.patch)} and stride {list(boxes.stride)} over the "
                                              f"{'x'.join(map(str, boxes.shape))} model input")
        return boxes

    async def explain_series(self, files: list[bytes], label: str | None = None, patch: int | None = None,
                             stride: int | None = None, dicom_header: bool = False) -> VolumeExplanation:
        """``/explain_series``: 3D occlusion sensitivity of the series' label, its occluded copies through the batcher
        a chunk at a time (the queue room admitted is one chunk)."""
        boxes = self.plan_explanation(label, patch, stride)
        uploads = [Upload(f) for f in files]
        x, info, grid = await self.decode(uploads)
        headers = [u.header for u in uploads] if dicom_header else None  # parsed by the decode, pixel data dropped
        del uploads
        row = x[0]
        step = occlusion.chunk_rows(self.row_bytes)
        with self.admit(min(boxes.rows, step), f"explaining one series with {boxes.patches} boxes"):
            result = await occlusion.occlusion_map(self.run, row, boxes, self.labels, label, step)
        return VolumeExplanation(result, info, grid, headers)

    def explanation_json(self, e: VolumeExplanation) -> dict:
        """The JSON answer: the explained label, every probability, the map at the model's grid and where it lies."""
        return self.answer(**volume_explanation_body(e.result, self.labels, e.info, e.grid.affine(), self.semantics))

    async def explanation_dicom(self, e: VolumeExplanation) -> bytes:
        """The map as a multi-frame Parametric Map in the series' frame of reference (``biomed/outputs/``)."""
        if not e.headers:
            raise InputError("format=dicom needs the series' headers", code="no_dicom_source")
        values = e.result.map.astype(np.float32)
        return await self.in_thread(volume_parametric_map, e.headers, values, e.grid.affine(),
                                    self.labels[e.result.index], self.model.name, self.model.version)


class _VolumeSeries(SeriesCollector):
    """A volume model's series: each file's header read as it comes (its UIDs, its series), the file held; the
    result is the volume of them all, its one row given to every instance (``biomed.series.with_row``)."""

    handler: VolumeHandler

    def __init__(self, handler: VolumeHandler, door: str) -> None:
        super().__init__(handler, door)
        self.uploads: list[Upload] = []

    async def add(self, data: bytes, element: int) -> None:
        upload = Upload(data)
        try:
            header = await self.handler.in_thread(upload.dataset, self.handler.limits.files)
        except InputError as err:
            err.detail = f"file element {element}: {err.detail}"
            err.args = (err.detail,)
            raise
        if not all(is_uid(str(header.get(k, "") or "")) for k in UIDS):
            raise InputError(f"file element {element} lacks a valid SOP Instance, Series Instance or Study Instance "
                             "UID", code="missing_uids")
        frames = max(int(header.get("NumberOfFrames", 1) or 1), 1)
        member = Member.of(header, hashlib.sha256(data).hexdigest(), np.zeros((frames, len(self.handler.labels))))
        if self.collected.add(member, element):  # the same file twice counts once
            self.uploads.append(upload)

    async def result(self) -> tuple[Result, dict[str, Any]]:
        if not self.uploads:
            raise InputError("the request holds no 'file' field: send the files of one series", code="missing_file",
                             status=400)
        probs, info = await self.handler.classify_series(self.uploads, self.door)
        self.uploads = []
        members = with_row((m for m, _ in self.collected.members.values()), probs[0])
        return combine(members, WHOLE, self.handler.semantics), {"input": info}
