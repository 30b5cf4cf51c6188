"""Image models: presented pixels (N, C, H, W) in [0, 1] to the user's input (layout, value mapping, dtype).

The service presents every file as it does for its own models (``biomed.preprocess.image``: Modality
LUT, VOI, resizing to ``size``), with the description's window, or the window that is MONAI's
ScaleIntensityRange with clipping (``(x - a_min) / (a_max - a_min)`` clipped to [0, 1] is the
LINEAR_EXACT window of centre ``(a_min + a_max) / 2`` and width ``a_max - a_min``). The adapter then
applies one affine map per channel (``b_min + y (b_max - b_min)``, or ``y`` scaled to 0-255; then
``(v - mean) / std``), the axis order (NHWC; rows and columns swapped for MONAI's PydicomReader) and
the dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from biomed.importing.adapters.base import ADAPTED, Adapter
from biomed.importing.errors import ImportRefused
from biomed.importing.graph import INPUT, Graph, const, elem, model
from biomed.kinds.image import KIND
from biomed.preprocess.image import ImageSpec

# (N, C, H, W) presented -> the graph's axes: by (layout, transpose)
_PERM = {("NCHW", False): None, ("NCHW", True): [0, 1, 3, 2], ("NHWC", False): [0, 2, 3, 1], ("NHWC", True): [0, 3, 2, 1]}


class ImageAdapter(Adapter):
    kind = KIND.name

    def __init__(self, description: dict[str, Any], graph: Graph) -> None:
        super().__init__(description, graph)
        p = self.part
        self.layout, self.channels, self.transpose = p["layout"], int(p["channels"]), bool(p.get("transpose", False))
        size = tuple(int(v) for v in p["size"])
        self.rank(4, self.layout)
        c_axis, h_axis, w_axis = (1, 2, 3) if self.layout == "NCHW" else (3, 1, 2)
        self.match(c_axis, self.channels, "channels")
        self.match(h_axis, size[0], "size[0]")
        self.match(w_axis, size[1], "size[1]")
        self.presented = (size[1], size[0]) if self.transpose else size  # rows x columns the service presents
        if "window" in p and "intensity_range" in p:
            raise ImportRefused("image.window and image.intensity_range both map values; give one")
        if "intensity_range" in p and p.get("scale", "unit") != "unit":
            raise ImportRefused("image.scale applies to presented 0-1 pixels; image.intensity_range gives its own "
                                "output range (b_min to b_max): give one")
        self.scale, self.offset = _affine(p, self.channels)
        self.spec = ImageSpec(size=self.presented, channels=self.channels, window=_window(p),
                              interpolation=p.get("interpolation", "bilinear"))

    def preprocess(self) -> dict[str, Any]:
        return self.spec.to_dict()

    def input(self) -> tuple[list[int], str]:
        return [self.channels, *self.presented], "float32"

    def pre(self) -> onnx.ModelProto:
        g = self.graph
        batch = g.batch if g.batch is not None else "batch"
        shape = [batch, self.channels, *self.presented]
        inits = [const("pre.scale", self.scale.reshape(1, -1, 1, 1)), const("pre.offset", self.offset.reshape(1, -1, 1, 1))]
        nodes = [helper.make_node("Mul", [INPUT, "pre.scale"], ["pre.scaled"]),
                 helper.make_node("Add", ["pre.scaled", "pre.offset"], ["pre.mapped"])]
        last = "pre.mapped"
        perm = _PERM[(self.layout, self.transpose)]
        if perm is not None:
            nodes.append(helper.make_node("Transpose", [last], ["pre.ordered"], perm=perm))
            last = "pre.ordered"
        nodes.append(helper.make_node("Cast", [last], [ADAPTED], to=elem(g.input_dtype)))
        out_shape = [shape[i] for i in (perm or [0, 1, 2, 3])]
        return model(g, "biomed_image_adapter", nodes, inits,
                     [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, shape)],
                     [helper.make_tensor_value_info(ADAPTED, elem(g.input_dtype), out_shape)])

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The same mapping step by step, as the description says it: range, scale, mean/std, axes, dtype."""
        p, v = self.part, x.astype(np.float64)
        if "intensity_range" in p:
            r = p["intensity_range"]
            v = r["b_min"] + v * (r["b_max"] - r["b_min"])
        elif p.get("scale") == "byte":
            v = v * 255.0
        mean = np.broadcast_to(np.asarray(p.get("mean", [0.0]), np.float64), (self.channels,))
        std = np.broadcast_to(np.asarray(p.get("std", [1.0]), np.float64), (self.channels,))
        v = (v - mean[None, :, None, None]) / std[None, :, None, None]
        perm = _PERM[(self.layout, self.transpose)]
        if perm is not None:
            v = v.transpose(perm)
        return v.astype(self.graph.input_dtype)

    def samples(self, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
        shape = (rows, self.channels, *self.presented)
        h, w = self.presented
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        disc = ((yy - h / 3) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2).astype(np.float32)
        ramps = [(yy / max(h - 1, 1)), (xx / max(w - 1, 1)), disc, 0.5 * disc + 0.25 * yy / max(h - 1, 1)]
        demo = np.stack([np.stack([ramps[(i + c) % len(ramps)] for c in range(self.channels)]) for i in range(rows)])
        return {"random": rng.random(shape, dtype=np.float32), "demo": demo.astype(np.float32)}


def _window(p: dict[str, Any]) -> tuple[float, float] | None:
    """The model window the service presents with: the description's, or its intensity range's."""
    if "window" in p:
        return float(p["window"][0]), float(p["window"][1])
    if "intensity_range" in p:
        r = p["intensity_range"]
        if not r["a_max"] > r["a_min"]:
            raise ImportRefused(f"image.intensity_range needs a_max > a_min; got {r['a_min']} and {r['a_max']}")
        return (r["a_min"] + r["a_max"]) / 2, r["a_max"] - r["a_min"]
    return None


def _affine(p: dict[str, Any], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per channel (scale, offset) with ``adapted = presented * scale + offset``."""
    if "intensity_range" in p:
        r = p["intensity_range"]
        a, b = r["b_max"] - r["b_min"], r["b_min"]
    else:
        a, b = (255.0 if p.get("scale") == "byte" else 1.0), 0.0
    stats = {}
    for key, default in (("mean", 0.0), ("std", 1.0)):
        values = p.get(key, [default])
        if len(values) not in (1, channels):
            raise ImportRefused(f"image.{key} has {len(values)} values; accepted: one, or one per channel ({channels})")
        stats[key] = np.broadcast_to(np.asarray(values, np.float64), (channels,))
    scale = a / stats["std"]
    offset = (b - stats["mean"]) / stats["std"]
    return scale.astype(np.float32), offset.astype(np.float32)


ADAPTER = ImageAdapter
