"""Verified ONNX export into the BentoML model store.

Like timm's ``onnx_export`` and MONAI's ``convert_to_onnx(verify=True)``: fixed
input/output names, a dynamic batch axis, a pinned opset, ``onnx.checker``, and
onnxruntime compared with PyTorch under explicit tolerances. The ``biomed``
metadata document travels inside the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

import biomed
from biomed import metadata
from models import build_model, saved_kwargs
from training import checkpoint, kinds, metrics
from training.config import TrainConfig
from training.engine import predict
from training.model_card import write_model_card

log = logging.getLogger(__name__)

OPSET = 18
RTOL, ATOL = 1e-4, 1e-4
PARITY_BATCHES = (1, 7)
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"


class ExportError(RuntimeError):
    """The exported graph is invalid or does not reproduce PyTorch."""


class BelowBaseline(ExportError):
    """The run's held-out metric is below its baseline's (exported only with ``force``)."""


def check_baseline(summary: dict, force: bool) -> None:
    """Refuse a run whose held-out macro AUROC is below the baseline to beat (``metrics.json``), unless ``force``."""
    ours, base = summary["test"]["auroc_macro"], summary["baseline"]["auroc_macro"]
    if not force and np.nan_to_num(ours, nan=-1.0) < np.nan_to_num(base, nan=-1.0):
        raise BelowBaseline(f"the run's held-out AUROC {ours:.3f} is below its baseline's {base:.3f} "
                            f"({summary['baseline'].get('model', 'baseline')}): train longer or better, or pass "
                            "--force to export it anyway")


class WithActivation(nn.Module):
    """The network plus its output activation, so the graph returns probabilities."""

    def __init__(self, model: nn.Module, multilabel: bool) -> None:
        super().__init__()
        self.model = model
        self.multilabel = multilabel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)  # (N, T)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=1)


@dataclass(frozen=True)
class Exported:
    tag: str
    path: Path
    doc: dict


def load_run_model(run: Path) -> tuple[nn.Module, dict]:
    """Rebuild the best model of a run from its checkpoint."""
    if not (run / checkpoint.BEST).exists():
        raise FileNotFoundError(f"{run} has no {checkpoint.BEST}; train first with `biomed train`")
    best = checkpoint.load(run / checkpoint.BEST)
    config = TrainConfig.from_dict(best["config"])
    model = build_model(config.kind, config.arch, **saved_kwargs(config.kind, best["model_kwargs"]))
    model.load_state_dict(best["model"])
    return model.eval(), best


def to_onnx(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """Export with the dynamo exporter to one self-contained proto (no external-data side file)."""
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # "torchvision not installed"
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.export internals, not ours
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=OPSET,
            dynamo=True, external_data=False, verbose=False,
            optimize=False,  # the full optimiser renames initializers; rebuild_from_onnx reads them by state-dict name
        )
        proto = fold_constants(onnx.load(str(path), load_external_data=True))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    return proto


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Fold the exporter's shape arithmetic into initializers, keeping the weights' names.

    The dynamo exporter computes a bias-free convolution's zero bias at run time (Shape, Expand,
    CastLike); onnxruntime fuses Conv + BatchNormalization + ReLU only when every Conv input is
    an initializer, so unfolded graphs run BatchNorm and ReLU as separate passes (~20 % of
    DeepBind's time at batch 32).
    """
    import onnx_ir as ir
    from onnxscript.optimizer import fold_constants as fold, remove_unused_nodes

    def shape_arithmetic_only(node: ir.Node) -> bool | None:
        # Leave every node that reads a weight's values (an LSTM's gate reordering, say): onnxruntime
        # folds those at load, and the weights stay under their state-dict names.
        reads_weights = any(v is not None and v.name.startswith("model.") for v in node.inputs)
        return False if reads_weights and node.op_type != "Shape" else None

    model = ir.serde.deserialize_model(proto)
    fold(model, should_fold=shape_arithmetic_only)
    remove_unused_nodes(model)
    return ir.serde.serialize_model(model)


def run_onnx(proto_or_path: onnx.ModelProto | str | Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    data = proto_or_path.SerializeToString() if isinstance(proto_or_path, onnx.ModelProto) else str(proto_or_path)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {INPUT_NAME: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def check_parity(proto: onnx.ModelProto, model: nn.Module, x: np.ndarray, multilabel: bool) -> float:
    """Max |onnxruntime - torch| on held-out inputs at batch sizes 1 and 7; raises when over tolerance."""
    worst = 0.0
    for size in PARITY_BATCHES:
        sample = x[:size] if len(x) >= size else np.resize(x, (size, *x.shape[1:]))
        ours = run_onnx(proto, sample)
        theirs = predict(model, sample, multilabel, torch.device("cpu"))
        worst = max(worst, float(np.abs(ours - theirs).max()))
        if not np.allclose(ours, theirs, rtol=RTOL, atol=ATOL):
            raise ExportError(f"onnxruntime differs from PyTorch by {worst:.2e} at batch {size} (rtol={RTOL}, atol={ATOL})")
    return worst


def _variant(proto: onnx.ModelProto, quantize: str | None, fp16: bool) -> tuple[onnx.ModelProto, str]:
    if quantize == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            clean = onnx.ModelProto()
            clean.CopyFrom(proto)
            del clean.graph.value_info[:]  # the exporter's intermediate shapes trip the quantizer's inference
            onnx.save(clean, str(src))
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
            return onnx.load(str(dst)), "int8"
    if quantize is not None:
        raise ValueError(f"--quantize {quantize!r} is unknown; choose: int8")
    if fp16:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        return convert_float_to_float16(proto, keep_io_types=True), "fp16"
    return proto, "fp32"


def code_version() -> str:
    """Package version plus the git commit, when run from a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{biomed.__version__}+{sha}" if sha else biomed.__version__


def build_metadata(name: str, version: str, best: dict, summary: dict, x: np.ndarray, export_info: dict) -> dict:
    """The ``biomed`` document (docs/api.md, "The model artifact"), from the checkpoint and the run's metrics."""
    config = TrainConfig.from_dict(best["config"])
    preprocess = kinds.get(config.kind).preprocess(config, x)  # the block the server rebuilds its preprocessing from
    doc = {
        "schema": metadata.SCHEMA_VERSION, "name": name, "version": version, "kind": config.kind,
        "labels": list(best["labels"]), "multilabel": bool(best["multilabel"]),
        "input": {"name": INPUT_NAME, "shape": ["batch", *map(int, x.shape[1:])], "dtype": str(x.dtype)},
        "output": {"name": OUTPUT_NAME, "activation": "sigmoid" if best["multilabel"] else "softmax"},
        "preprocess": preprocess,
        "architecture": {"arch": config.arch, "kwargs": best["model_kwargs"]},
        "training": {"data": Path(config.data).name, "epochs": summary["epochs_run"], "best_epoch": summary["best_epoch"],
                     "seed": config.seed, "split": summary["split"], "metrics": summary["test"],
                     "baseline": summary["baseline"], "baselines": summary.get("baselines", [summary["baseline"]]),
                     "config": best["config"], "code_version": code_version()},
        "export": export_info,
        "intended_use": metadata.INTENDED_USE,
    }
    if summary.get("modalities"):
        doc["modalities"] = list(summary["modalities"])  # the DICOM doors route these modalities to this model
    return metadata.validate(doc)


def embed(proto: onnx.ModelProto, doc: dict) -> None:
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = metadata.METADATA_KEY, json.dumps(doc, sort_keys=True)
    proto.producer_name = "biomed-serve"
    proto.doc_string = f"{doc['name']}:{doc['version']} ({doc['kind']}); {doc['intended_use']}"


def motif_section(run: Path, top: int = 12) -> list[str]:
    """The model card's table of first-layer filters matched to JASPAR (from ``biomed motifs RUN``), if any."""
    table = run / "motifs.tsv"
    if not table.exists():
        return []
    rows = [line.split("\t") for line in table.read_text().splitlines() if line.strip()]
    header, body = rows[0], rows[1 : top + 1]
    return ["## Learned motifs (first-layer filters vs JASPAR)", "",
            "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in body), ""]


def rebuild_from_onnx(path: str | Path) -> nn.Module:
    """A PyTorch model rebuilt from an exported file alone: architecture from the metadata, weights from the graph."""
    from onnx import numpy_helper

    doc = metadata.read(path)
    model = build_model(doc["kind"], doc["architecture"]["arch"], **saved_kwargs(doc["kind"], doc["architecture"]["kwargs"]))
    proto = onnx.load(str(path))
    weights = {i.name.removeprefix("model."): torch.from_numpy(numpy_helper.to_array(i).copy())
               for i in proto.graph.initializer if i.name.startswith("model.")}
    buffers = {name for name, _ in model.named_buffers()}  # includes non-persistent ones (the one-hot table)
    state = set(model.state_dict())
    unexpected = [k for k in weights if k not in state and k not in buffers]
    missing, _ = model.load_state_dict({k: v for k, v in weights.items() if k in state}, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise ExportError(f"{Path(path).name}: weights do not fit {doc['architecture']['arch']} "
                          f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


def export_run(run: str | Path, name: str, quantize: str | None = None, fp16: bool = False,
               force: bool = False) -> Exported:
    """Export a run's best model, verify it, and save it into the BentoML model store.

    Raises:
        BelowBaseline: the run's held-out AUROC is below its baseline's and ``force`` is not given.
        ExportError: the graph does not reproduce PyTorch.
    """
    import bentoml

    from biomed.store import check_kind

    run = Path(run)
    model, best = load_run_model(run)
    check_kind(name, best["config"]["kind"])  # before the work: a name holds one kind of model
    summary = json.loads((run / "metrics.json").read_text())
    check_baseline(summary, force)
    held = np.load(run / "heldout.npz")
    x, y = held["x"], held["y"]
    proto = to_onnx(WithActivation(model, best["multilabel"]).eval(), torch.from_numpy(x[:2]))
    parity = check_parity(proto, model, x, best["multilabel"])
    fp32_metrics = metrics.score(y, run_onnx(proto, x), best["labels"], best["multilabel"])
    proto, variant = _variant(proto, quantize, fp16)
    if variant != "fp32":
        del proto.graph.value_info[:]  # stale intermediate shapes from before the rewrite
    ours = metrics.score(y, run_onnx(proto, x), best["labels"], best["multilabel"])
    info = {"opset": OPSET, "variant": variant, "parity_max_abs_diff": parity, "rtol": RTOL, "atol": ATOL,
            "parity_batches": list(PARITY_BATCHES), "torch": torch.__version__, "onnx": onnx.__version__,
            "heldout_auroc_macro": ours["auroc_macro"],
            "heldout_auroc_change_vs_fp32": ours["auroc_macro"] - fp32_metrics["auroc_macro"]}
    digest = hashlib.sha256(proto.SerializeToString()).hexdigest()[:8]
    version = time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{digest}"
    doc = build_metadata(name, version, best, summary, x, info)
    embed(proto, doc)
    onnx.checker.check_model(proto, full_check=True)
    labels = {"biomed": "1", "kind": doc["kind"], "arch": doc["architecture"]["arch"], "variant": variant}
    store_meta = {"biomed_schema": metadata.SCHEMA_VERSION, "kind": doc["kind"], "labels": doc["labels"],
                  "auroc_macro": ours["auroc_macro"], "variant": variant}
    with bentoml.models.create(f"{name}:{version}", labels=labels, metadata=store_meta) as stored:
        onnx.save(proto, stored.path_of("model.onnx"))
        for plot in ("curves.png", "roc.png", "confusion.png", "motifs.png"):
            if (run / plot).exists():
                shutil.copy(run / plot, stored.path_of(plot))
        write_model_card(Path(stored.path_of("README.md")), doc, motif_section(run))
        tag = str(stored.tag)
    return Exported(tag, Path(bentoml.models.get(tag).path_of("model.onnx")), doc)
