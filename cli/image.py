"""``biomed explain-image``: occlusion sensitivity of an image model, from the command line.

It runs an exported image model from the store with onnxruntime on the CPU (``biomed/runtime.py``)
through the very functions behind ``/explain_image`` (``biomed/occlusion.py``, and ``biomed/outputs/``:
``overlay.py``, ``dicom_maps.py``, ``explanation.py``), with the runtime's chunked synchronous predictor
(about 4 MiB of images a call) in place of the server's batcher. No torch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from biomed.runtime import LoadedModel

KIND = "image"  # the kind of model explain-image runs


def register(sub: argparse._SubParsersAction) -> None:
    from biomed.occlusion import PATCH_DIVISOR, STRIDE_DIVISOR
    from biomed.outputs.overlay import DEFAULT_OPACITY

    p = sub.add_parser("explain-image", help="occlusion map of an image's label, drawn over the image",
                       description="Slide a patch over the model input, fill it with the image's mean, and record "
                                   "how much the label's probability drops (as /explain_image); write the map over "
                                   "the presented image as PNG, and optionally as a DICOM object and JSON.")
    p.add_argument("file", metavar="FILE", help="DICOM, PNG or JPEG file")
    p.add_argument("--out", required=True, metavar="PNG", help="the overlay to write")
    p.add_argument("--model", default="demo-image", help="image model name[:version] in the store (default demo-image)")
    p.add_argument("--label", help="label to explain (default: the predicted one)")
    p.add_argument("--patch", type=int, help=f"patch side in model-input pixels (default: the shorter side / "
                                             f"{PATCH_DIVISOR})")
    p.add_argument("--stride", type=int,
                   help=f"patch step in model-input pixels (default: the patch / {STRIDE_DIVISOR})")
    p.add_argument("--frame", type=int, default=0, help="frame of a multi-frame DICOM (default 0)")
    p.add_argument("--opacity", type=float, default=DEFAULT_OPACITY,
                   help=f"heat map opacity 0-1 (default {DEFAULT_OPACITY})")
    p.add_argument("--dicom", metavar="DCM", help="also write the map as a DICOM object over the source (DICOM input)")
    p.add_argument("--json", metavar="JSON", help="also write the map and probabilities as JSON (as /explain_image)")
    p.set_defaults(func=cmd_explain_image)


def cmd_explain_image(args: argparse.Namespace) -> int:
    from biomed import occlusion, runtime
    from cli.local import load_local
    from biomed.errors import InputError
    from biomed.outputs import overlay
    from biomed.preprocess.image import ImageSpec, Limits, load_presented
    from biomed.preprocess.upload import Upload

    path = Path(args.file)
    model = load_local(args.model, KIND)
    spec = ImageSpec.from_dict(model.doc["preprocess"])
    try:
        grid = occlusion.plan(spec.size, args.patch, args.stride)
        if args.label and args.label not in model.labels:
            raise InputError(f"label {args.label!r} is not one of the model's labels: {', '.join(model.labels)}")
        upload = Upload(path.read_bytes())  # a DICOM's header stays parsed for --dicom
        x, info, presented = load_presented(upload, spec, Limits(), args.frame)
        predict = runtime.predictor(model)
        result = asyncio.run(occlusion.occlusion_map(predict, x[args.frame], grid, model.labels, args.label))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(overlay.overlay_png(presented, result.map, args.opacity))
        if args.dicom:
            _write_dicom(Path(args.dicom), upload, result, presented, info, model, args)
    except InputError as err:
        raise ValueError(f"{path.name}: {err.detail}") from None
    if args.json:
        _write_json(Path(args.json), result, model, args.frame, presented, info)
    label = model.labels[result.index]
    rows, columns = presented.shape[:2]
    r, c = occlusion.peak(occlusion.upsample(result.map, rows, columns))
    print(f"{path.name}: {label} p={result.probabilities[result.index]:.4f} "
          f"(predicted {model.labels[int(np.argmax(result.probabilities))]}); largest drop {result.map.max():.4f} "
          f"at row {r}, column {c} of {rows}x{columns}; {grid.patches} patches of {grid.patch} px, stride "
          f"{grid.stride} -> {args.out}")
    return 0


def _write_dicom(out: Path, upload, result, presented: np.ndarray, info: dict,  # type: ignore[no-untyped-def]
                 model: "LoadedModel", args: argparse.Namespace) -> None:
    from biomed import occlusion
    from biomed.outputs import overlay
    from biomed.outputs.dicom_maps import NoDicomSource, explanation_dicom, referable

    if info.get("format") != "dicom" or upload.header is None:
        raise NoDicomSource(f"--dicom needs a DICOM input to reference; this is a {str(info.get('format')).upper()}")
    rows, columns = presented.shape[:2]
    values = occlusion.upsample(result.map, rows, columns)
    rgb = overlay.overlay(presented, values, args.opacity)
    dicom, kind = explanation_dicom(referable(upload.header), values, rgb, model.labels[result.index], model.name,
                                    model.version, args.frame, int(info.get("frames", 1)))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(dicom)
    print(f"wrote a {kind.replace('_', ' ')} -> {out}")


def _write_json(out: Path, result, model: "LoadedModel", frame: int,  # type: ignore[no-untyped-def]
                presented: np.ndarray, info: dict) -> None:
    """The JSON answer of ``/explain_image`` (``biomed/outputs/explanation.py``)."""
    from biomed.outputs.explanation import explanation_body

    doc = {"model": model.name, "version": model.version,
           **explanation_body(result, model.labels, frame, presented, info)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc))
