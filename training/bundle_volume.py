"""3D MONAI bundles (a CT or MR volume in, classes out) for ``biomed import``: their configs read as a volume model.

A 3D bundle's preprocessing is mapped onto the service's own assembly of a series
(``biomed.preprocess.volume``): ``Orientation`` gives the graph's axes (its ``axcodes``, required:
without it the axes are each file's own), ``Spacing`` the voxel spacing (``pixdim``, bilinear),
``ScaleIntensityRange`` (clipped) the window, ``SpatialPad``, ``CenterSpatialCrop`` and
``ResizeWithPadOrCrop`` to the input's ``spatial_shape`` the centred grid. The service's resampling
is its own (linear, antialiased where it shrinks, every slice at its own position), close to MONAI's
bilinear ``Spacing`` but not bit-exact; ``Resize`` (which changes the spacing per volume) and any
other transform are refused with a message naming them, never dropped.
"""

from __future__ import annotations

from typing import Any, Callable

from biomed.importing.errors import ImportRefused

MAPPED = ("LoadImage, EnsureChannelFirst, Orientation (axcodes), Spacing (pixdim, bilinear), ScaleIntensityRange "
          "(clip), NormalizeIntensity (fixed), SpatialPad, CenterSpatialCrop and ResizeWithPadOrCrop (to the input's "
          "spatial_shape), ToTensor, EnsureType, CastToType")


def _triple(value: Any, what: str, kind: type) -> list:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value or [])
    if len(values) != 3 or any(not isinstance(v, (int, float)) or v <= 0 for v in values):
        raise ImportRefused(f"{what} {value!r} is not three positive numbers (a 3D bundle's)")
    return [kind(v) for v in values]


class VolumeReader:
    """A 3D bundle's preprocessing, mapped transform by transform onto the description's volume part."""

    def __init__(self, shape: list[int], no_ops: set[str], name: Callable[[dict], str]) -> None:
        self.volume: dict[str, Any] = {"size": shape}
        self.no_ops, self.name = no_ops, name

    def read(self, transform: dict[str, Any]) -> None:
        name = self.name(transform)
        if name in self.no_ops or name == "LoadImage":  # the service reads the series itself (any DICOM reader's)
            return
        step = getattr(self, f"_{name}", None)
        if step is None:
            raise ImportRefused(f"the bundle's preprocessing uses {name}, which biomed-serve does not reproduce for "
                                f"volumes; mapped: {MAPPED}")
        step(transform)

    def finish(self) -> dict[str, Any]:
        for needed, by in (("axes", "Orientation"), ("spacing", "Spacing")):
            if needed not in self.volume:
                raise ImportRefused(f"a 3D bundle needs {by} in its preprocessing: without it the volume's "
                                    f"{needed} is each file's own; mapped: {MAPPED}")
        if min(self.volume["size"]) < 1:
            raise ImportRefused("the bundle gives no fixed input size: add ResizeWithPadOrCrop, or a numeric "
                                "spatial_shape")
        return self.volume

    def _Orientation(self, t: dict[str, Any]) -> None:  # noqa: N802 - named after the transform
        axcodes = str(t.get("axcodes", ""))
        if len(axcodes) != 3:
            raise ImportRefused(f"Orientation axcodes {axcodes!r}: accepted three letters (RAS, LPS, ...)")
        self.volume["axes"] = axcodes.upper()

    def _Spacing(self, t: dict[str, Any]) -> None:  # noqa: N802
        if "axes" not in self.volume:
            raise ImportRefused("Spacing before Orientation: its pixdim follows each file's own axes; accepted: "
                                "Orientation first")
        mode = t.get("mode", "bilinear")
        if mode not in ("bilinear", ["bilinear"]):
            raise ImportRefused(f"Spacing mode {mode!r} is not the service's linear resampling; accepted: bilinear")
        self.volume["spacing"] = _triple(t.get("pixdim"), "Spacing pixdim", float)

    def _ScaleIntensityRange(self, t: dict[str, Any]) -> None:  # noqa: N802
        if not t.get("clip", False):
            raise ImportRefused("ScaleIntensityRange with clip=false is not reproduced; accepted: clip=true")
        self.volume["intensity_range"] = {k: float(t.get(k, d)) for k, d in
                                          (("a_min", None), ("a_max", None), ("b_min", 0.0), ("b_max", 1.0))}

    def _NormalizeIntensity(self, t: dict[str, Any]) -> None:  # noqa: N802
        if t.get("subtrahend") is None or t.get("divisor") is None or t.get("nonzero"):
            raise ImportRefused("NormalizeIntensity without a fixed subtrahend and divisor normalises each volume by "
                                "its own statistics, which is not reproduced; accepted: subtrahend and divisor")
        self.volume["mean"], self.volume["std"] = [float(t["subtrahend"])], [float(t["divisor"])]

    def _grid(self, name: str, size: Any) -> None:
        wanted = _triple(size, f"{name} size", int)
        known = self.volume["size"]
        if min(known) >= 1 and wanted != known:
            raise ImportRefused(f"{name} to {wanted} differs from the input's spatial_shape {known}; accepted: the "
                                "same size (a centred grid)")
        self.volume["size"] = wanted

    def _SpatialPad(self, t: dict[str, Any]) -> None:  # noqa: N802
        self._grid("SpatialPad", t.get("spatial_size"))

    def _CenterSpatialCrop(self, t: dict[str, Any]) -> None:  # noqa: N802
        self._grid("CenterSpatialCrop", t.get("roi_size"))

    def _ResizeWithPadOrCrop(self, t: dict[str, Any]) -> None:  # noqa: N802
        self._grid("ResizeWithPadOrCrop", t.get("spatial_size"))
