"""The training configuration: parsed once at the edge, then frozen."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    """Everything needed to reproduce a run; saved to ``config.json`` and into the ONNX metadata."""

    kind: str  # image | dna | volume
    data: str
    out: str
    arch: str
    epochs: int = 20
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    dropout: float = 0.2
    patience: int = 8
    monitor: str = "auto"  # val_loss | val_auroc; auto: AUROC for multi-label DNA, loss for images (calibrated argmax)
    seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    image_size: tuple[int, int] = (64, 64)
    window: tuple[float, float] | None = None  # a fixed VOI window for every image or volume (e.g. CT HU)
    volume_size: tuple[int, int, int] = (32, 64, 64)  # volumes: the model's (depth, height, width) in voxels
    spacing: tuple[float, float, float] = (4.0, 4.0, 4.0)  # volumes: its voxel spacing in mm
    resample: tuple[str, ...] = ()  # volumes: irregular series resampled, not refused ("gap", "tilt")
    stride: int | None = None  # DNA tiling stride at serving time; default half the length
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    amp: str = "auto"  # auto | off | bf16 | fp16 (auto: bf16 on CUDA, off on CPU)
    workers: int = 0
    reference: str | None = None  # reference FASTA for BED training data

    def to_json(self, launch: dict[str, Any] | None = None) -> str:
        """The fields as JSON; ``launch`` (how the run was started: world size, backend, device) is
        added under its own key for ``config.json``. ``from_dict`` ignores it, so ``--resume`` still loads such a file."""
        data = asdict(self)
        if launch is not None:
            data["launch"] = launch
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Rebuild from ``asdict`` output (JSON turns tuples into lists); unknown keys (``launch``) are ignored."""
        data = dict(data)
        data["image_size"] = tuple(data.get("image_size", (64, 64)))
        for name in ("volume_size", "spacing", "resample"):
            if name in data:
                data[name] = tuple(data[name])
        if data.get("window") is not None:
            data["window"] = tuple(data["window"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, run: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads((Path(run) / "config.json").read_text()))

    def with_(self, **changes: Any) -> "TrainConfig":
        return replace(self, **changes)


def recorded_data(config: TrainConfig, run: Path, flag: str) -> TrainConfig:
    """``config`` when the data (and reference) its run recorded are there; else FileNotFoundError saying where the
    path came from (``run``'s config.json, older runs: relative to where they were trained) and that ``flag`` points
    at it now."""
    for name in ("data", "reference"):
        path = getattr(config, name)
        if path and not Path(path).exists():
            raise FileNotFoundError(f"the {name} {path!r} recorded in {run / 'config.json'} is not there (moved, or a "
                                    f"relative path from another working directory); give where it is now with "
                                    f"{flag if name == 'data' else '--reference'} PATH")
    return config
