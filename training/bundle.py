"""MONAI bundles for ``biomed import``: ``configs/metadata.json``, ``configs/inference.json`` and the network.

The bundle's description is read from its own files: labels, channels and shape from
``network_data_format``; the value mapping, size and axis order from the preprocessing's transforms;
the activation from the postprocessing's. A transform is mapped only where the service reproduces it
exactly; anything else (another transform, a Resize mode, a ``$`` expression) is refused with a
message naming it, never dropped. A 3D bundle (a ``spatial_shape`` of three) is a volume model: its
transforms are read by ``training/bundle_volume.py``. The network is ``models/model.onnx``,
``models/model.ts`` (TorchScript) or ``models/model.pt`` (a state dict for ``network_def``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable

from biomed.importing.build import import_graph
from biomed.importing.description import check
from biomed.importing.errors import ImportRefused
from training.bundle_volume import VolumeReader

NO_OPS = {"EnsureChannelFirst", "ToTensor", "EnsureType", "CastToType", "Identity", "AsDiscrete"}
RESIZE_MODES = {"area": "area", "nearest-exact": "nearest"}  # MONAI's mode -> the service's exact equivalent
_MAPPED = ("LoadImage, EnsureChannelFirst, ScaleIntensity, ScaleIntensityRange, NormalizeIntensity, Resize "
           "(area, nearest-exact), CenterSpatialCrop and SpatialPad (to the Resize size), ToTensor, EnsureType, "
           "CastToType; postprocessing: Activations, AsDiscrete")


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ImportRefused(f"the bundle's {path.parent.name}/{path.name} cannot be read as JSON "
                            f"({type(err).__name__}); a MONAI bundle has configs/metadata.json and "
                            "configs/inference.json") from None


def _name(transform: dict[str, Any]) -> str:
    """A transform's class name without its module and the dictionary form's ``d``/``D``/``Dict``."""
    target = str(transform.get("_target_", "?")).rsplit(".", 1)[-1]
    for suffix in ("Dict", "d", "D"):
        if target.endswith(suffix) and target[: -len(suffix)]:
            return target[: -len(suffix)]
    return target


def _expressions(value: Any, where: str) -> None:
    """Refuse ``$`` expressions: a bundle's configs are read as data here, never run as code."""
    if isinstance(value, str) and value.startswith("$"):
        raise ImportRefused(f"{where} holds the expression {value[:60]!r}; accepted: plain values (expressions are "
                            "not evaluated)")
    if isinstance(value, dict):
        for k, v in value.items():
            _expressions(v, f"{where}.{k}")
    if isinstance(value, list):
        for i, v in enumerate(value):
            _expressions(v, f"{where}[{i}]")


def _transforms(config: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The transforms of ``config[key]`` (a Compose, or a list), ``@`` references to other keys followed."""
    block = config.get(key)
    if block is None:
        return []
    if isinstance(block, str) and block.startswith("@"):
        return _transforms(config, block[1:])
    items = block.get("transforms", []) if isinstance(block, dict) else block
    out = []
    for item in items:
        if isinstance(item, str) and item.startswith("@"):
            out.extend(_transforms(config, item[1:]))
        elif isinstance(item, dict):
            out.append(item)
        else:
            raise ImportRefused(f"inference.json {key}: a transform {str(item)[:60]!r} is not a {{'_target_': ...}} "
                                "mapping")
    return out


def _pair(value: Any, what: str) -> list[int]:
    values = [value, value] if isinstance(value, int) else list(value)
    if len(values) != 2 or any(not isinstance(v, int) or v < 1 for v in values):
        raise ImportRefused(f"{what} {value!r} is not a 2D size; accepted: two positive integers")
    return values


class _Reader:
    """The preprocessing's transforms, mapped one by one onto the description's image part."""

    def __init__(self, channels: int, shape: list[int]) -> None:
        self.image: dict[str, Any] = {"layout": "NCHW", "channels": channels, "size": shape, "transpose": True}
        self.resized: list[int] | None = None

    def read(self, transform: dict[str, Any]) -> None:
        name = _name(transform)
        step: Callable[[dict[str, Any]], None] | None = getattr(self, f"_{name}", None)
        if name in NO_OPS:
            return
        if step is None:
            raise ImportRefused(f"the bundle's preprocessing uses {name}, which biomed-serve does not reproduce; "
                                f"mapped: {_MAPPED}")
        step(transform)

    def _LoadImage(self, t: dict[str, Any]) -> None:  # noqa: N802 - named after the transform
        reader = t.get("reader")
        if reader not in (None, "PydicomReader") and not (isinstance(reader, dict) and _name(reader) == "PydicomReader"):
            raise ImportRefused(f"LoadImage with reader {reader!r}: only pydicom's reader semantics are reproduced; "
                                "accepted: reader PydicomReader (or none)")
        self.image["transpose"] = bool(reader.get("swap_ij", True)) if isinstance(reader, dict) else \
            bool(t.get("swap_ij", True))

    def _ScaleIntensityRange(self, t: dict[str, Any]) -> None:  # noqa: N802
        if not t.get("clip", False):
            raise ImportRefused("ScaleIntensityRange with clip=false: values outside a_min..a_max are not reproduced "
                                "(the service presents within the window); accepted: clip=true")
        self._value_once("ScaleIntensityRange")
        self.image["intensity_range"] = {k: float(t.get(k, d)) for k, d in
                                         (("a_min", None), ("a_max", None), ("b_min", 0.0), ("b_max", 1.0))}

    def _ScaleIntensity(self, t: dict[str, Any]) -> None:  # noqa: N802
        if t.get("factor") is not None or t.get("channel_wise"):
            raise ImportRefused("ScaleIntensity with factor or channel_wise is not reproduced; accepted: minv and maxv")
        self._value_once("ScaleIntensity")
        lo, hi = float(t.get("minv", 0.0)), float(t.get("maxv", 1.0))
        if (lo, hi) != (0.0, 1.0):
            self.image["mean"], self.image["std"] = [-lo / (hi - lo)], [1.0 / (hi - lo)]

    def _NormalizeIntensity(self, t: dict[str, Any]) -> None:  # noqa: N802
        if t.get("subtrahend") is None or t.get("divisor") is None or t.get("nonzero"):
            raise ImportRefused("NormalizeIntensity without a fixed subtrahend and divisor (or with nonzero) "
                                "normalises each image by its own statistics, which is not reproduced; accepted: "
                                "subtrahend and divisor given")
        if "mean" in self.image:
            raise ImportRefused("NormalizeIntensity after ScaleIntensity with minv/maxv is not reproduced; accepted: "
                                "one of them, or ScaleIntensity to 0-1 first")
        as_list = (lambda v: list(v) if isinstance(v, (list, tuple)) else [v])  # noqa: E731
        self.image["mean"], self.image["std"] = as_list(t["subtrahend"]), as_list(t["divisor"])

    def _Resize(self, t: dict[str, Any]) -> None:  # noqa: N802
        mode = t.get("mode", "area")
        if mode not in RESIZE_MODES:
            raise ImportRefused(f"Resize mode {mode!r} is not reproduced exactly; accepted: {', '.join(RESIZE_MODES)}")
        if t.get("size_mode", "all") != "all":
            raise ImportRefused(f"Resize size_mode {t['size_mode']!r} is not reproduced; accepted: all")
        self.resized = _pair(t.get("spatial_size"), "Resize spatial_size")
        self.image["size"], self.image["interpolation"] = self.resized, RESIZE_MODES[mode]

    def _CenterSpatialCrop(self, t: dict[str, Any]) -> None:  # noqa: N802
        self._same_size("CenterSpatialCrop", t.get("roi_size"))

    def _SpatialPad(self, t: dict[str, Any]) -> None:  # noqa: N802
        self._same_size("SpatialPad", t.get("spatial_size"))

    def _same_size(self, name: str, size: Any) -> None:
        if self.resized is None or _pair(size, f"{name} size") != self.resized:
            raise ImportRefused(f"{name} to {size!r} changes the image geometry, which is not reproduced; accepted: "
                                f"only after a Resize to the same size ({self.resized})")

    def _value_once(self, name: str) -> None:
        if any(k in self.image for k in ("intensity_range", "mean")):
            raise ImportRefused(f"{name} follows another intensity transform; accepted: one of ScaleIntensity, "
                                "ScaleIntensityRange, then NormalizeIntensity")


def _output(post: list[dict[str, Any]]) -> dict[str, Any]:
    """The description's output from the postprocessing: Activations (softmax or sigmoid) on logits."""
    output: dict[str, Any] = {"type": "probabilities", "activation": "softmax"}
    for transform in post:
        name = _name(transform)
        if name == "Activations":
            if transform.get("other") is not None:
                raise ImportRefused("Activations with other= is not reproduced; accepted: softmax or sigmoid")
            chosen = [a for a in ("softmax", "sigmoid") if transform.get(a)]
            if len(chosen) == 1:
                output = {"type": "logits", "activation": chosen[0]}
        elif name not in NO_OPS:
            raise ImportRefused(f"the bundle's postprocessing uses {name}, which biomed-serve does not reproduce; "
                                "mapped: Activations, AsDiscrete, EnsureType")
    return output


def describe(folder: Path) -> dict[str, Any]:
    """The description of a 2D (image) or 3D (volume) classification bundle, from its own configs."""
    meta = _json(folder / "configs" / "metadata.json")
    config = _json(folder / "configs" / "inference.json")
    fmt = meta.get("network_data_format", {})
    image = (fmt.get("inputs") or {}).get("image") or next(iter((fmt.get("inputs") or {}).values()), {})
    pred = (fmt.get("outputs") or {}).get("pred") or next(iter((fmt.get("outputs") or {}).values()), {})
    shape = image.get("spatial_shape") or []
    if len(shape) not in (2, 3):
        raise ImportRefused(f"network_data_format's input spatial_shape is {shape!r}: a {len(shape)}D bundle; "
                            "accepted: 2D images or 3D volumes")
    defs = pred.get("channel_def") or {}
    count = int(pred.get("num_channels", len(defs) or 0))
    labels = [str(defs.get(str(i), defs.get(i, f"class{i}"))) for i in range(count)]
    about = {"labels": labels, "output": _output(_transforms(config, "postprocessing")),
             "description": str(meta.get("description") or meta.get("name") or "")}
    if len(shape) == 3:  # a volume: one channel, the series assembled by the service (training/bundle_volume.py)
        if int(image.get("num_channels", 1)) != 1:
            raise ImportRefused("a 3D bundle's input has one channel here; accepted: num_channels 1")
        volume = VolumeReader([s if isinstance(s, int) and s > 0 else 0 for s in shape], NO_OPS, _name)
        for transform in _transforms(config, "preprocessing"):
            _expressions(transform, f"preprocessing {_name(transform)}")
            volume.read(transform)
        return check({"kind": "volume", **about, "volume": volume.finish()})
    channels = int(image.get("num_channels", 1))
    reader = _Reader(channels, [s if isinstance(s, int) and s > 0 else 0 for s in shape])  # "16*n": from a Resize
    for transform in _transforms(config, "preprocessing"):
        _expressions(transform, f"preprocessing {_name(transform)}")
        reader.read(transform)
    if min(reader.image["size"]) < 1:
        raise ImportRefused("the bundle gives no fixed input size: add a Resize, or a numeric spatial_shape")
    return check({"kind": "image", **about, "image": reader.image})


def _network(folder: Path, config: dict[str, Any]) -> tuple[Any, str]:
    """The bundle's network (an ONNX proto, or a torch module) and the file it came from."""
    models = folder / "models"
    if (models / "model.onnx").is_file():
        import onnx

        return onnx.load(str(models / "model.onnx")), "model.onnx"
    import torch

    if (models / "model.ts").is_file():
        return torch.jit.load(str(models / "model.ts"), map_location="cpu").eval(), "model.ts"
    if (models / "model.pt").is_file():
        if "network_def" not in config:
            raise ImportRefused("models/model.pt needs inference.json's network_def to build the network")
        _expressions(config["network_def"], "network_def")
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(folder / "configs" / "inference.json"))
        net = parser.get_parsed_content("network_def")
        state = torch.load(str(models / "model.pt"), map_location="cpu", weights_only=True)
        net.load_state_dict(state.get("model", state) if isinstance(state, dict) and "model" in state else state)
        return net.eval(), "model.pt"
    raise ImportRefused(f"{folder.name}/models has none of model.onnx, model.ts, model.pt")


def import_bundle(folder: Path, name: str, description: dict[str, Any] | None = None, store: str | None = None) -> str:
    """A MONAI bundle into the store: its description from its configs (or ``description``), its network exported
    and checked (``training/importing.py``), composed and verified (``biomed.importing``)."""
    from training.torchscript import to_onnx  # torch, only for a network that is not ONNX yet

    found = describe(folder) if description is None else description
    network, file_name = _network(folder, _json(folder / "configs" / "inference.json"))
    import onnx

    checks: dict[str, Any] = {}
    if not isinstance(network, onnx.ModelProto):  # a torch module (a TorchScript one has a ``graph`` too)
        network, checks = to_onnx(network, found)
    digest = hashlib.sha256()
    for part in (folder / "configs" / "metadata.json", folder / "configs" / "inference.json", folder / "models" / file_name):
        digest.update(part.read_bytes())
    source = {"format": "monai_bundle", "file": folder.name, "sha256": digest.hexdigest(), "network": file_name,
              "sha256_of": "configs/metadata.json, configs/inference.json and the network file, in that order"}
    return import_graph(network, found, name, source, store, checks)
