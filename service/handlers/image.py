"""Image models: a DICOM, PNG or JPEG file becomes one row per frame; each row gets a label and its probabilities."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from biomed.preprocess.image import ImageSpec, Limits, load_image
from service.config import ServiceConfig
from service.handlers.base import Handler, Shared
from service.runtime import LoadedModel


class ImageHandler(Handler):
    kind = "image"

    def __init__(self, model: LoadedModel, shared: Shared) -> None:
        super().__init__(model, shared)
        self.spec = ImageSpec.from_dict(model.doc["preprocess"])
        c = shared.config
        self.limits = Limits(max_pixels=c.max_pixels, max_frames=c.max_frames, max_bytes=c.max_upload_bytes,
                             max_decoded_bytes=c.max_decoded_bytes, max_elements=c.max_dicom_elements,
                             budget=shared.budget)

    @classmethod
    def max_batch_size(cls, config: ServiceConfig) -> int:
        return config.max_batch_size

    async def decode(self, data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
        """The file's frames as model rows (F, C, H, W) float32 and the ``input`` block that describes them."""
        started = time.perf_counter()
        with self.admitting():
            small = len(data) <= self.config.small_upload_bytes
            x, info = await self.in_thread(load_image, data, self.spec, self.limits, small=small)
        self.metrics.preprocess_seconds.labels(kind=info.get("format", "image")).observe(time.perf_counter() - started)
        return np.ascontiguousarray(x, dtype=np.float32), info

    def results(self, probs: np.ndarray) -> list[dict]:
        """One ``{frame, label, probabilities}`` per row, counted in ``biomed_predictions_total``."""
        labels = [self.labels[i] for i in probs.argmax(axis=1)]
        self.count_predictions(labels)
        return [{"frame": f, "label": label, "probabilities": dict(zip(self.labels, map(float, row)))}
                for f, (label, row) in enumerate(zip(labels, probs))]

    async def predict_file(self, data: bytes) -> dict:
        """``/predict_image``: decode, run every frame, label each."""
        x, info = await self.decode(data)
        with self.admit(len(x), f"an image of {len(x)} frame(s)"):
            probs = await self.run(x)
        return self.answer(predictions=self.results(probs), input=info)
