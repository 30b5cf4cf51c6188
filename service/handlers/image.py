"""Image models: a DICOM, PNG or JPEG file becomes one row per frame; each row gets a label and its probabilities."""

from __future__ import annotations

import base64
import contextlib
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, TypeVar

import numpy as np

from biomed import occlusion
from biomed.errors import InputError, TooLarge
from biomed.kinds.image import KIND as IMAGE
from biomed.outputs import overlay
from biomed.outputs.dicom_maps import NoDicomSource, explanation_dicom, referable
from biomed.outputs.explanation import explanation_body
from biomed.preprocess.budget import reserve
from biomed.preprocess.image import ImageSpec, Limits, load_image, load_presented
from biomed.preprocess.upload import Upload
from biomed.preprocess.dicom_read import is_uid
from biomed.runtime import LoadedModel
from biomed.series import Collected, Member, Result, aggregate_of, combine
from biomed.settings import env
from service import audit
from service.handlers.base import Handler, SeriesCollector, Shared

T = TypeVar("T")

# What an upload decoded on the event loop may hold (see ``ImageHandler.decode``): a 512x512 CT slice, uncompressed or
# RLE, decodes in ~2 ms; JPEG, JPEG-LS and JPEG 2000 cost several times more per pixel (16 ms for a lossless 512x512).
INLINE_PIXELS = 512 * 512  # decoded pixels, all frames
INLINE_COMPRESSED_PIXELS = 256 * 256  # the same in a JPEG, JPEG-LS or JPEG 2000 transfer syntax
INLINE_DECODED_BYTES = 2**20  # decoded pixel bytes (a 512x512 16-bit slice is 0.5 MB)
INLINE_ELEMENTS = 2_000  # DICOM data elements
# What one request may decode on the event loop in all: many small files in one request (v2's ``file`` input) would
# otherwise hold the loop for their sum. Past it, the request's next files decode on threads.
INLINE_REQUEST_S = 0.01


class InlineBudget:
    """The event-loop time one request's inline decodes may still take (``INLINE_REQUEST_S`` in all)."""

    def __init__(self, seconds: float = INLINE_REQUEST_S) -> None:
        self.left = seconds

    def spend(self, seconds: float) -> None:
        self.left -= seconds


class ImageHandler(Handler):
    kind = IMAGE.name
    operations = frozenset({"predict_file", "classify", "explain_file", "predict_series"})
    batch_setting = "max_batch_size"

    def __init__(self, model: LoadedModel, shared: Shared) -> None:
        super().__init__(model, shared)
        self.spec = ImageSpec.from_dict(model.doc["preprocess"])
        c = shared.config
        self.limits = Limits(max_pixels=c.max_pixels, max_frames=c.max_frames, max_bytes=c.max_upload_bytes,
                             max_decoded_bytes=c.max_decoded_bytes, max_elements=c.max_dicom_elements,
                             budget=shared.budget)
        self.file_limits = self.limits  # a DICOM door's parse of one instance (``service/dicom/pipeline.py``)
        # What a small upload may need to decode on the event loop (see ``decode``): past these, it goes to a thread.
        self.inline_limits = replace(self.limits, max_pixels=min(c.max_pixels, INLINE_PIXELS),
                                     max_compressed_pixels=min(c.max_pixels, INLINE_COMPRESSED_PIXELS),
                                     max_decoded_bytes=min(c.max_decoded_bytes, INLINE_DECODED_BYTES),
                                     max_elements=min(c.max_dicom_elements, INLINE_ELEMENTS))

    async def decode(self, data: bytes | Upload, inline: InlineBudget | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """The file's frames as model rows (F, C, H, W) float32 and the ``input`` block that describes them.

        An ``Upload`` keeps the DICOM header the decode parsed (``Upload.header``), for an SR over the same file.
        ``inline``: the request's budget of decoding on the event loop (one file alone: within the inline caps);
        once spent, the file decodes on a thread.
        """
        started = time.perf_counter()
        upload = Upload.of(data)
        with self.admitting():
            x, info = None, None
            if len(upload.data) <= self.config.inline_decode_bytes and (inline is None or inline.left > 0):
                # Decoding is mostly Python holding the GIL: on a thread it competes with the event loop for the GIL,
                # and the handoffs cost more than they save (a 512x512 slice at 16 connections: 257 req/s on threads,
                # 335 here). Files within caps that bound the time to a few ms decode here, on the loop; past the
                # caps (pixels, decoded bytes, DICOM elements) the file is decoded again on a thread, under the real
                # limits.
                with contextlib.suppress(TooLarge):
                    x, info = load_image(upload, self.spec, self.inline_limits)
                if inline is not None:
                    inline.spend(time.perf_counter() - started)
            if x is None:
                small = len(upload.data) <= self.config.small_upload_bytes
                x, info = await self.in_thread(load_image, upload, self.spec, self.limits, small=small)
        self.metrics.preprocess_seconds.labels(kind=info.get("format", "image")).observe(time.perf_counter() - started)
        audit.noted(upload.header)  # the request's audit event names the DICOM instance it read
        return np.ascontiguousarray(x, dtype=np.float32), info

    def results(self, probs: np.ndarray) -> list[dict]:
        """One ``{frame, label, probabilities}`` per row (``{frame, values}`` for a regression model), counted in
        ``biomed_predictions_total``."""
        counted = self.row_labels(probs)
        self.count_predictions(counted)
        key, regression = self.semantics.name, self.semantics.regression
        return [{"frame": f, **({} if regression else {"label": label}), key: dict(zip(self.labels, map(float, row)))}
                for f, (label, row) in enumerate(zip(counted, probs))]

    def class_labels(self, probs: np.ndarray) -> list[str]:
        return [self.labels[i] for i in probs.argmax(axis=1)]

    def check_rows(self, x: np.ndarray) -> None:
        super().check_rows(x)
        if not np.isfinite(x).all():
            raise InputError("the pixel values must be finite numbers (presented pixels are in [0, 1])",
                             code="invalid_pixels")

    async def predict_files(self, files: list[bytes], door: str = "native") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Several whole files, each decoded and presented as ``/predict_image`` does, run as one request.

        Returns the outputs (rows, labels), and for each row the index of its file and its frame in that file.
        Rows are counted file by file against ``BIOMED_MAX_REQUEST_ROWS`` and ``BIOMED_MAX_QUEUED_MB`` while
        decoding, so a request of many files stops at the first one past the caps.
        """
        c = self.config
        if len(files) > c.max_frames:
            raise TooLarge(f"{len(files)} files in one request; the limit is {c.max_frames} ({env('max_frames')})")
        parts: list[np.ndarray] = []
        total = 0
        inline = InlineBudget()  # the first few small files decode on the loop, the rest on threads
        for i, data in enumerate(files):
            try:
                x, _ = await self.decode(data, inline)
            except InputError as err:
                err.detail = f"file element {i}: {err.detail}"
                err.args = (err.detail,)
                raise
            total += len(x)
            if c.max_request_rows and total > c.max_request_rows:
                raise TooLarge(f"the files up to element {i} hold {total} frames; one request may queue at most "
                               f"{c.max_request_rows} rows ({env('max_request_rows')}): send them in smaller parts")
            if c.max_queued_bytes and total * self.row_bytes > c.max_queued_bytes:
                raise TooLarge(f"the files up to element {i} hold {total} frames of {self.row_bytes} bytes, over what "
                               f"a model's queue holds ({c.max_queued_bytes / 2**20:g} MB, {env('max_queued_bytes')})")
            parts.append(x)
        x = parts[0] if len(parts) == 1 else np.concatenate(parts)
        element = np.repeat(np.arange(len(parts), dtype=np.int32), [len(p) for p in parts])
        frame = np.concatenate([np.arange(len(p), dtype=np.int32) for p in parts])
        del parts
        with self.admit(len(x), f"{len(files)} file(s) of {len(x)} frame(s)"):
            probs = await self.run(x)
        self.count_predictions(self.row_labels(probs), door)
        return probs, element, frame

    async def predict_items(self, items: list[bytes], parameters: dict[str, Any],
                            door: str = "native") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """v2's ``file`` input: ``predict_files``, with each row's file (``element``) and frame (``frame``)."""
        probs, element, frame = await self.predict_files(items, door)
        return probs, {"element": element, "frame": frame}

    def series_collector(self, door: str = "native") -> SeriesCollector:
        """A series in one request, each instance run as it arrives (``series_member``) and dropped."""
        return _InstanceSeries(self, door)

    async def receive_instance(self, upload: Upload, door: str) -> np.ndarray:
        """An instance from a DICOM door: classified as ``/predict_image`` classifies it, (frames, labels)."""
        probs, _ = await self.classify(upload, door)
        return probs

    async def series_member(self, data: bytes, element: int, door: str = "native") -> Member:
        """One instance of a series, decoded and run as ``predict_file`` runs it (``element``: its place in the
        request, for messages); 422 for a file that is not a DICOM image with its UIDs."""
        upload = Upload(data, identify=True)
        del data
        try:
            probs, _ = await self.classify(upload, door)
        except InputError as err:
            err.detail = f"file element {element}: {err.detail}"
            err.args = (err.detail,)
            raise
        header, identity = upload.header, upload.identity
        if header is None or identity is None:
            raise InputError(f"file element {element} is not DICOM: a series is made of DICOM instances (a PNG or "
                             "JPEG has no series; use /predict_image)", code="series_needs_dicom")
        if not all(is_uid(str(header.get(k, "") or "")) for k in ("SOPInstanceUID", "SeriesInstanceUID",
                                                                  "StudyInstanceUID")):
            raise InputError(f"file element {element} lacks a valid SOP Instance, Series Instance or Study Instance "
                             "UID", code="missing_uids")
        return Member.of(header, identity, probs)

    def series_result(self, collected: Collected) -> Result:
        """The series' one result (``biomed.series.combine``), as the DICOM doors' groups make it."""
        if not len(collected):
            raise InputError("the request holds no 'file' field: send the instances of one series", code="missing_file",
                             status=400)
        how = aggregate_of(self.config.series_aggregate, self.semantics)
        return combine((m for m, _ in collected.members.values()), how, self.semantics)

    async def predict_file(self, data: bytes) -> dict:
        """``/predict_image``: decode, run every frame, label each."""
        x, info = await self.decode(data)
        with self.admit(len(x), f"an image of {len(x)} frame(s)"):
            probs = await self.run(x)
        return self.answer(predictions=self.results(probs), input=info)

    async def classify(self, data: bytes | Upload, door: str = "native") -> tuple[np.ndarray, dict[str, Any]]:
        """One whole file as ``predict_file`` reads and runs it, for the DICOM doors and SR output (service/dicom/):
        its per-frame outputs (frames, labels) and the ``input`` block; the predictions are counted under ``door``.
        Given an ``Upload``, its header is left there (``decode``)."""
        x, info = await self.decode(data)
        with self.admit(len(x), f"an image of {len(x)} frame(s)"):
            probs = await self.run(x)
        self.count_predictions(self.row_labels(probs), door)
        return probs, info

    def plan_explanation(self, label: str | None, patch: int | None, stride: int | None) -> occlusion.Grid:
        """The occlusion's patches, counted before anything is decoded or built (400 for bad fields, 422 for an
        unknown label, 413 past ``BIOMED_MAX_OCCLUSION_ROWS``)."""
        self.check_explained_label(label)
        grid = occlusion.plan(self.spec.size, patch, stride)
        self.check_occlusion_rows(grid.rows, f"patch {grid.patch} and stride {grid.stride} over the "
                                             f"{grid.height}x{grid.width} model input")
        return grid

    async def explain_file(self, data: bytes, label: str | None = None, patch: int | None = None,
                           stride: int | None = None, frame: int = 0, dicom_header: bool = False) -> Explanation:
        """``/explain_image``: occlusion sensitivity of one frame, its occluded copies through the batcher.

        The copies are built ``occlusion.chunk_rows`` at a time; the queue room admitted is one chunk,
        since a chunk's outputs arrive before the next chunk is built.
        """
        grid = self.plan_explanation(label, patch, stride)
        started = time.perf_counter()
        upload = Upload(data)
        del data
        with self.admitting():
            small = len(upload.data) <= self.config.small_upload_bytes
            x, info, presented = await self.in_thread(load_presented, upload, self.spec, self.limits, frame,
                                                      small=small)
        self.metrics.preprocess_seconds.labels(kind=info.get("format", "image")).observe(time.perf_counter() - started)
        audit.noted(upload.header)
        header = None
        if dicom_header:
            if info.get("format") != "dicom" or upload.header is None:
                raise NoDicomSource(f"format=dicom needs a DICOM upload to reference; this one is a "
                                    f"{str(info.get('format', 'image')).upper()}: use format=json or format=png")
            header = referable(upload.header)  # the header the decode parsed, without its pixel data
        del upload
        row = np.ascontiguousarray(x[frame], dtype=np.float32)
        del x
        step = occlusion.chunk_rows(self.row_bytes)
        with self.admit(min(grid.rows, step), f"explaining one image with {grid.patches} patches"):
            result = await occlusion.occlusion_map(self.run, row, grid, self.labels, label, step)
        return Explanation(result, frame, info, presented, header)

    def _reserved(self, e: Explanation, build: Callable[[], T], png: bool = True) -> Callable[[], T]:
        """``build``, holding what drawing needs from the decode budget (413/429): at the PNG's bounded geometry
        (``overlay.drawn_shape``), or for a DICOM object at the presented one."""

        def run() -> T:
            rows, columns = e.presented.shape[:2]
            if png:
                rows, columns = overlay.drawn_shape(rows, columns)
            with reserve(self.shared.budget, overlay.output_bytes(rows, columns)):
                return build()

        return run

    async def explanation_json(self, e: Explanation, include_image: bool = False) -> dict:
        """The JSON answer: the explained label, every probability of the frame, the map at the model input's
        geometry and the presented frame's geometry (and, when asked, the presented frame as a base64 PNG)."""
        body = self.answer(**explanation_body(e.result, self.labels, e.frame, e.presented, e.info, self.semantics))
        if include_image:
            png = await self.in_thread(self._reserved(e, lambda: overlay.presented_png(e.presented)))
            body["image_png"] = base64.b64encode(png).decode("ascii")
        return body

    async def explanation_png(self, e: Explanation, opacity: float) -> bytes:
        """The map upsampled to the presented frame's geometry, drawn over it, as PNG (at most
        ``overlay.MAX_DRAWN_SIDE`` pixels on its longer side)."""
        return await self.in_thread(self._reserved(e, lambda: overlay.overlay_png(e.presented, e.result.map, opacity)))

    async def explanation_dicom(self, e: Explanation, opacity: float) -> bytes:
        """The map as a DICOM object over the source instance (``biomed/outputs/dicom_maps.py``)."""

        def build() -> bytes:
            rows, columns = e.presented.shape[:2]
            values = occlusion.upsample(e.result.map, rows, columns)
            rgb = overlay.overlay(e.presented, values, opacity)
            out, _ = explanation_dicom(e.header, values, rgb, self.labels[e.result.index], self.model.name,
                                       self.model.version, e.frame, int(e.info.get("frames", 1)))
            return out

        return await self.in_thread(self._reserved(e, build, png=False))


@dataclass
class Explanation:
    """One explained frame: the occlusion result, the file's ``input`` block, the presented frame (uint8) and,
    for DICOM output, the source's header."""

    result: occlusion.Occlusion
    frame: int
    info: dict[str, Any]
    presented: np.ndarray
    header: Any = None


class _InstanceSeries(SeriesCollector):
    """An image model's series: each instance classified as it arrives; the result combines their rows."""

    handler: ImageHandler

    async def add(self, data: bytes, element: int) -> None:
        self.collected.add(await self.handler.series_member(data, element, self.door), element)

    async def result(self) -> tuple[Result, dict[str, Any]]:
        return self.handler.series_result(self.collected), {}
