"""The arguments of ``biomed train`` (and of ``torchrun -m training.train``), parsed once into a ``TrainConfig``."""

from __future__ import annotations

import argparse
from typing import Callable
from pathlib import Path

from models import ARCHS, DEFAULT_ARCH
from training import kinds
from training.config import TrainConfig, recorded_data

# Flags copied into TrainConfig when given (argparse dest == field name).
_FIELDS = ("epochs", "seed", "batch_size", "lr", "weight_decay", "dropout", "patience", "image_size", "window", "stride",
           "amp", "reference", "volume_size", "spacing", "resample")


def _window(text: str) -> tuple[float, float]:
    try:
        center, width = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window {text!r} must be CENTER,WIDTH, e.g. -600,1500") from None
    return center, width


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be N or H,W") from None
    return (parts[0], parts[0]) if len(parts) == 1 else (parts[0], parts[1])


def _triple(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        try:
            parts = [kind(v) for v in text.lower().replace("x", ",").split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} must be N or D,H,W") from None
        if len(parts) not in (1, 3):
            raise argparse.ArgumentTypeError(f"{text!r} must be N or D,H,W")
        return tuple(parts * 3) if len(parts) == 1 else tuple(parts)

    return parse


def _irregular(text: str) -> tuple[str, ...]:
    chosen = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = set(chosen) - {"gap", "tilt"}
    if unknown:
        raise argparse.ArgumentTypeError(f"resample {sorted(unknown)} is unknown; choose from gap, tilt")
    return chosen


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of a training run (shared by ``biomed train`` and ``python -m training.train``)."""
    p.add_argument("kind", nargs="?", choices=kinds.names())
    p.add_argument("--data", help="; ".join(f"{name}: {kinds.get(name).data_help}" for name in kinds.names()))
    p.add_argument("--out", help="run folder for checkpoints, metrics and plots")
    p.add_argument("--arch", help="; ".join(f"{kind}: {', '.join(archs)}" for kind, archs in ARCHS.items()))
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument("--image-size", type=_size, help="H,W the images are resized to (default 64)")
    p.add_argument("--window", type=_window, help="fixed VOI window CENTER,WIDTH for every image or volume (default: each "
                   "file's own; a volume's own min/max)")
    p.add_argument("--volume-size", type=_triple(int), help="volumes: the model's D,H,W in voxels (default 32,64,64)")
    p.add_argument("--spacing", type=_triple(float), help="volumes: the voxel spacing D,H,W in mm (default 4,4,4)")
    p.add_argument("--resample", type=_irregular, help="volumes: irregular series to resample rather than refuse: "
                   "gap, tilt or gap,tilt (default: refuse both)")
    p.add_argument("--stride", type=int, help="DNA: tiling stride for long sequences at serving time")
    p.add_argument("--reference", metavar="REF.fa", help="DNA: reference FASTA the BED intervals of --data are read from")
    p.add_argument("--amp", choices=["auto", "off", "bf16", "fp16"], help="mixed precision on CUDA (off on CPU)")
    p.add_argument("--nproc", type=int, default=1, help="processes for DistributedDataParallel (torchrun)")
    p.add_argument("--resume", metavar="RUN", help="continue an interrupted run from its last checkpoint (with --data: "
                   "where its data is now, when it moved)")


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def config_from(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration: the saved one for ``--resume`` (``--data``/``--reference`` say where its data is now,
    when it moved), else the flags over the defaults. Paths are made absolute, so the run folder can be used from
    any working directory (``--resume``, ``biomed motifs``)."""
    if args.resume:
        config = TrainConfig.load(args.resume)
        moved = {k: _absolute(getattr(args, k)) for k in ("data", "reference") if getattr(args, k)}
        return recorded_data(config.with_(out=_absolute(args.resume), **moved), Path(args.resume), "--data")
    if not args.kind or not args.data or not args.out:
        raise ValueError(f"train needs KIND ({' or '.join(kinds.names())}), --data and --out, or --resume RUN")
    values = {"kind": args.kind, "data": _absolute(args.data), "out": _absolute(args.out),
              "arch": args.arch or DEFAULT_ARCH[args.kind]}
    values.update({name: getattr(args, name) for name in _FIELDS if getattr(args, name) is not None})
    values["reference"] = _absolute(values.get("reference"))
    return TrainConfig(**values)


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` (torchrun's own flag takes its place)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def print_summary(out: str, summary: dict) -> None:
    test, base = summary["test"], summary["baseline"]
    print(f"run: {out}")
    print(f"held-out test ({summary['split']['test']} samples): AUROC {test['auroc_macro']:.3f}  AUPRC {test['auprc_macro']:.3f}  "
          f"accuracy {test['accuracy']:.3f}")
    for other in summary.get("baselines", [base]):
        mark = "  <- the baseline to beat" if other["model"] == base.get("model") else ""
        print(f"{other.get('model', 'baseline') + ' baseline:':<38} AUROC {other['auroc_macro']:.3f}  AUPRC "
              f"{other['auprc_macro']:.3f}  accuracy {other['accuracy']:.3f}{mark}")
    for label, value in test["auroc"].items():
        print(f"  {label:<12} AUROC {value:.3f} (baseline {base['auroc'].get(label, float('nan')):.3f})")
    if test.get("too_small"):
        fewest = ", ".join(f"{k} {v}" for k, v in test["small_classes"].items())
        print(f"TOO SMALL: the held-out set has fewer than {test['min_per_class']} samples of some class ({fewest}); "
              "its metrics mean little: use more data")
    if test["auroc_macro"] < base["auroc_macro"]:
        print(f"BELOW BASELINE: the model's AUROC is under the {base.get('model', 'baseline')}'s; `biomed export` "
              "refuses it without --force")
    if summary.get("skipped"):
        print(f"skipped unreadable inputs: {sum(summary['skipped'].values())} ({summary['skipped']})")
