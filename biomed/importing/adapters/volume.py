"""Volume models: presented voxels (N, 1, D, H, W) in [0, 1] to the user's input (axis order, value mapping, dtype).

The service assembles every series as it does for its own volume models (``biomed.preprocess.volume``:
caps, geometry checks, Modality LUT per slice, resampling to ``spacing`` and ``size``, the window), in
its canonical axes: depth towards the head (S), height towards the back (P), width towards the
patient's left (L). The description's ``axes`` says where the graph's three spatial axes run, as
MONAI's Orientation (and nibabel) write it: ``RAS`` (MONAI's usual: x towards the right, y towards the
front, z towards the head), ``LPS``, ``SPL`` (the service's own). The adapter applies one affine map
(``b_min + y (b_max - b_min)``, then ``(v - mean) / std``), the transpose and the flips to the graph's
axes, and the dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper

from biomed.importing.adapters.base import ADAPTED, Adapter
from biomed.importing.adapters.image import _affine, _window
from biomed.importing.errors import ImportRefused
from biomed.importing.graph import INPUT, Graph, const, elem, model
from biomed.kinds.volume import KIND
from biomed.preprocess.volume import VolumeSpec

# A letter of ``axes``: the service's array axis it runs along, and whether it runs the other way.
_LETTERS = {"S": (2, False), "I": (2, True), "P": (3, False), "A": (3, True), "L": (4, False), "R": (4, True)}


def axis_map(axes: str) -> tuple[list[int], list[int]]:
    """For the graph's spatial axes 2, 3, 4: the service's axis each comes from, and the graph axes flipped.

    Raises:
        ImportRefused: ``axes`` is not three letters naming z (S/I), y (P/A) and x (L/R) once each.
    """
    picked = [_LETTERS.get(letter) for letter in axes.upper()]
    if len(axes) != 3 or None in picked or len({p[0] for p in picked if p}) != 3:
        raise ImportRefused(f"volume.axes {axes!r} is not an orientation; accepted: three letters, one of S/I, P/A and "
                            "L/R each (MONAI's axcodes, e.g. RAS, LPS)")
    return [p[0] for p in picked if p], [i + 2 for i, p in enumerate(picked) if p and p[1]]


class VolumeAdapter(Adapter):
    kind = KIND.name

    def __init__(self, description: dict[str, Any], graph: Graph) -> None:
        super().__init__(description, graph)
        p = self.part
        self.source, self.flips = axis_map(p.get("axes", "SPL"))
        graph_size = [int(v) for v in p["size"]]
        self.rank(5, "NCDHW")
        self.match(1, 1, "channels")
        for i, size in enumerate(graph_size):
            self.match(i + 2, size, f"size[{i}]")
        self.graph_size = graph_size
        size, spacing = [0, 0, 0], [0.0, 0.0, 0.0]
        for i, src in enumerate(self.source):
            size[src - 2], spacing[src - 2] = graph_size[i], float(p["spacing"][i])
        if "window" in p and "intensity_range" in p:
            raise ImportRefused("volume.window and volume.intensity_range both map values; give one")
        self.scale, self.offset = _affine(p, 1)
        try:
            self.spec = VolumeSpec(tuple(size), tuple(spacing), _window(p), tuple(p.get("resample", ())))  # type: ignore[arg-type]
        except ValueError as err:
            raise ImportRefused(f"the description's volume part: {err}") from None

    def preprocess(self) -> dict[str, Any]:
        return self.spec.to_dict()

    def input(self) -> tuple[list[int], str]:
        return [1, *self.spec.size], "float32"

    def pre(self) -> onnx.ModelProto:
        g = self.graph
        batch = g.batch if g.batch is not None else "batch"
        inits = [const("pre.scale", self.scale.reshape(1, 1, 1, 1, 1)),
                 const("pre.offset", self.offset.reshape(1, 1, 1, 1, 1))]
        nodes = [helper.make_node("Mul", [INPUT, "pre.scale"], ["pre.scaled"]),
                 helper.make_node("Add", ["pre.scaled", "pre.offset"], ["pre.mapped"]),
                 helper.make_node("Transpose", ["pre.mapped"], ["pre.ordered"], perm=[0, 1, *self.source])]
        last = "pre.ordered"
        for axis in self.flips:  # a reversed axis: Slice with step -1
            names = [f"pre.flip{axis}.{k}" for k in ("start", "end", "axis", "step")]
            inits += [const(n, np.array([v], dtype=np.int64)) for n, v in zip(names, (-1, -(2**62), axis, -1))]
            nodes.append(helper.make_node("Slice", [last, *names], [f"pre.flipped{axis}"]))
            last = f"pre.flipped{axis}"
        nodes.append(helper.make_node("Cast", [last], [ADAPTED], to=elem(g.input_dtype)))
        return model(g, "biomed_volume_adapter", nodes, inits,
                     [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [batch, 1, *self.spec.size])],
                     [helper.make_tensor_value_info(ADAPTED, elem(g.input_dtype), [batch, 1, *self.graph_size])])

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The same mapping step by step, as the description says it: range, mean/std, axes, flips, dtype."""
        p, v = self.part, x.astype(np.float64)
        if "intensity_range" in p:
            r = p["intensity_range"]
            v = r["b_min"] + v * (r["b_max"] - r["b_min"])
        v = (v - float(p.get("mean", [0.0])[0])) / float(p.get("std", [1.0])[0])
        v = v.transpose([0, 1, *self.source])
        for axis in self.flips:
            v = np.flip(v, axis=axis)
        return np.ascontiguousarray(v).astype(self.graph.input_dtype)

    def samples(self, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
        d, h, w = self.spec.size
        zz, yy, xx = np.mgrid[0:d, 0:h, 0:w].astype(np.float32)
        demo = []
        for i in range(rows):  # a bright ball somewhere off-centre, on a ramp: every axis and its direction matter
            cz, cy, cx = d * (0.3 + 0.05 * i), h * 0.4, w * (0.6 - 0.03 * i)
            ball = ((zz - cz) / max(d / 5, 1)) ** 2 + ((yy - cy) / max(h / 5, 1)) ** 2 + ((xx - cx) / max(w / 5, 1)) ** 2
            demo.append((0.8 * (ball < 1) + 0.2 * zz / max(d - 1, 1) * yy / max(h - 1, 1))[None])
        return {"random": rng.random((rows, 1, d, h, w), dtype=np.float32), "demo": np.stack(demo).astype(np.float32)}


ADAPTER = VolumeAdapter
