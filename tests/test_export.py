"""Export: verified single-file ONNX, parity with PyTorch for every architecture, metadata, variants."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from biomed import metadata
from training.config import TrainConfig
from training.engine import predict
from training.export import ExportError, check_parity, export_run, load_run_model, rebuild_from_onnx, run_onnx, to_onnx, WithActivation
from training.train import fit


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from training.demo.dicom_demo import generate_images
    from training.demo.dna_demo import generate_dna

    root = tmp_path_factory.mktemp("export-data")
    return {"image": generate_images(root / "img", n=45, seed=5), "dna": generate_dna(root / "dna", n=200, seed=5, length=100)}


@pytest.fixture(scope="module")
def runs(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for kind, arch in (("image", "cnn"), ("image", "resnet"), ("dna", "deepbind"), ("dna", "danq")):
        run = tmp_path_factory.mktemp(f"run-{arch}")
        fit(TrainConfig(kind=kind, data=str(data[kind]), out=str(run), arch=arch, epochs=1, image_size=(32, 32)))
        out[arch] = run
    return out


@pytest.fixture(scope="module")
def exported(runs: dict[str, Path]) -> dict:
    return {arch: export_run(run, f"test-{arch}", force=True) for arch, run in runs.items()}


@pytest.mark.parametrize("arch", ["cnn", "resnet", "deepbind", "danq"])
def test_parity_single_file_and_dynamic_batch(arch: str, exported: dict, runs: dict[str, Path]) -> None:
    result = exported[arch]
    assert result.tag.startswith(f"test-{arch}:")
    assert not list(result.path.parent.glob("*.data")), "weights must stay inside model.onnx"
    proto = onnx.load(str(result.path))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert proto.opset_import[0].version == 18
    model, best = load_run_model(runs[arch])
    x = np.load(runs[arch] / "heldout.npz")["x"]
    for size in (1, 7, len(x)):
        batch = np.resize(x, (size, *x.shape[1:]))
        diff = np.abs(run_onnx(result.path, batch) - predict(model, batch, best["multilabel"], torch.device("cpu"))).max()
        assert diff <= 1e-4, (arch, size, diff)
    assert result.doc["export"]["parity_max_abs_diff"] <= 1e-4


@pytest.mark.parametrize("arch", ["cnn", "resnet", "deepbind", "danq"])
def test_metadata_validates_and_rebuilds_the_model(arch: str, exported: dict, runs: dict[str, Path]) -> None:
    doc = metadata.read(exported[arch].path)
    assert doc == exported[arch].doc
    assert doc["intended_use"] == "research use only, not for diagnostic use"
    assert doc["input"]["dtype"] == ("uint8" if doc["kind"] == "dna" else "float32")
    assert doc["training"]["metrics"]["auroc"]
    rebuilt = rebuild_from_onnx(exported[arch].path)
    x = np.load(runs[arch] / "heldout.npz")["x"]
    ours = predict(rebuilt, x, doc["multilabel"], torch.device("cpu"))
    assert np.abs(ours - run_onnx(exported[arch].path, x)).max() <= 1e-5


@pytest.mark.parametrize("arch", ["cnn", "resnet", "deepbind"])
def test_onnxruntime_fuses_batchnorm_and_relu_into_the_convolutions(arch: str, exported: dict, tmp_path: Path) -> None:
    import onnxruntime as ort

    stored = onnx.load(str(exported[arch].path))
    convs = [n for n in stored.graph.node if n.op_type == "Conv"]
    initializers = {i.name for i in stored.graph.initializer}
    assert convs and all(i in initializers for n in convs for i in n.input[1:]), "conv weights and biases must be initializers"
    assert not {"Expand", "CastLike", "GatherND"} & {n.op_type for n in stored.graph.node}  # folded or never made
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(exported[arch].path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert "BatchNormalization" not in ops, ops
    if arch != "resnet":  # a residual Add sits between a ResNet block's last BatchNorm and its ReLU
        assert "Relu" not in ops and ops.count("FusedConv") == len(convs), ops


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda d: d.pop("labels"), "(top level)"),
        (lambda d: d.update(kind="audio"), "kind"),
        (lambda d: d["input"].update(shape=[0, 200]), "input/shape/0"),  # "batch" or a fixed size >= 1
        (lambda d: d.update(schema="biomed/0"), "schema"),
    ],
)
def test_schema_rejects_broken_documents(mutate, where: str, exported: dict) -> None:
    doc = json.loads(json.dumps(exported["deepbind"].doc))
    mutate(doc)
    with pytest.raises(metadata.MetadataError, match=where):
        metadata.validate(doc)


def test_model_card_has_metrics_and_intended_use(exported: dict) -> None:
    card = (exported["cnn"].path.parent / "README.md").read_text()
    assert "research use only" in card and "baseline" in card and "AUROC" in card
    assert (exported["cnn"].path.parent / "roc.png").exists()


@pytest.mark.parametrize(("option", "tolerance"), [({"quantize": "int8"}, 5e-3), ({"fp16": True}, 5e-4)],
                         ids=["int8", "fp16"])
def test_variants_stay_close_to_the_fp32_outputs(option: dict, tolerance: float, exported: dict,
                                                 runs: dict[str, Path]) -> None:
    """The variant's probabilities on the held-out inputs against the fp32 export's (not the export's own word), and
    the AUROC change it reports recomputed from both with sklearn."""
    from sklearn.metrics import roc_auc_score

    result = export_run(runs["deepbind"], "test-variant", force=True, **option)
    info = result.doc["export"]
    assert info["variant"] == ("int8" if "quantize" in option else "fp16")
    held = np.load(runs["deepbind"] / "heldout.npz")
    ours, fp32 = run_onnx(result.path, held["x"]), run_onnx(exported["deepbind"].path, held["x"])
    assert ours.dtype == np.float32 and ours.shape == fp32.shape
    assert 0 < np.abs(ours - fp32).max() <= tolerance, np.abs(ours - fp32).max()  # changed, and only a little
    for t in range(fp32.shape[1]):  # and the ranking the AUROC reads is kept
        assert np.corrcoef(ours[:, t], fp32[:, t])[0, 1] > 0.99

    def macro(p: np.ndarray) -> float:
        return float(np.mean([roc_auc_score(held["y"][:, t], p[:, t]) for t in range(p.shape[1])]))

    assert info["heldout_auroc_change_vs_fp32"] == pytest.approx(macro(ours) - macro(fp32), abs=1e-6)
    assert abs(info["heldout_auroc_change_vs_fp32"]) < 0.1


def test_parity_failure_stops_the_export(runs: dict[str, Path]) -> None:
    model, best = load_run_model(runs["deepbind"])
    x = np.load(runs["deepbind"] / "heldout.npz")["x"]
    proto = to_onnx(WithActivation(model, True), torch.from_numpy(x[:2]))
    with torch.no_grad():
        model.conv.weight.add_(0.5)  # the graph no longer matches the model
    with pytest.raises(ExportError, match="differs from PyTorch"):
        check_parity(proto, model, x, True)


@pytest.mark.parametrize("arch", ["cnn", "resnet", "deepbind", "danq"])
def test_new_runs_save_only_their_kinds_output_size(arch: str, exported: dict, runs: dict[str, Path]) -> None:
    from models import OUTPUT_ARG

    doc = exported[arch].doc
    own = OUTPUT_ARG[doc["kind"]]
    kwargs = doc["architecture"]["kwargs"]
    assert kwargs[own] == len(doc["labels"]) and set(OUTPUT_ARG.values()) & set(kwargs) == {own}
    assert load_run_model(runs[arch])[1]["model_kwargs"] == kwargs


def _with_kwargs(path: Path, out: Path, kwargs: dict) -> Path:
    """A copy of an exported file whose metadata names other builder arguments."""
    from training.export import embed

    proto = onnx.load(str(path))
    doc = metadata.read(path)
    doc["architecture"]["kwargs"] = kwargs
    embed(proto, doc)
    onnx.save(proto, str(out))
    return out


@pytest.mark.parametrize("arch", ["cnn", "resnet", "deepbind", "danq"])
def test_legacy_onnx_metadata_with_both_output_names_still_rebuilds(arch: str, exported: dict, runs: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    n = len(exported[arch].doc["labels"])
    legacy = {**exported[arch].doc["architecture"]["kwargs"], "num_classes": n, "num_tasks": n}  # as exports used to be
    path = _with_kwargs(exported[arch].path, tmp_path / "legacy.onnx", legacy)
    assert metadata.read(path)["architecture"]["kwargs"] == legacy
    x = np.load(runs[arch] / "heldout.npz")["x"]
    ours = predict(rebuild_from_onnx(path), x, exported[arch].doc["multilabel"], torch.device("cpu"))
    assert np.abs(ours - run_onnx(path, x)).max() <= 1e-5
    broken = _with_kwargs(exported[arch].path, tmp_path / "broken.onnx", {**legacy, "dropuot": 0.1})
    with pytest.raises(TypeError, match="'dropuot'"):
        rebuild_from_onnx(broken)


def _legacy_preprocess(config: TrainConfig, x: np.ndarray) -> dict:
    """The block as build_metadata wrote it before it used the core specs."""
    if config.kind == "image":
        return {"type": "image", "size": list(config.image_size), "channels": int(x.shape[1]),
                "window": list(config.window) if config.window else None, "interpolation": "bilinear"}
    length = int(x.shape[1])
    return {"type": "dna", "alphabet": "ACGTN", "length": length, "stride": config.stride or max(1, length // 2),
            "reverse_complement": True, "padding": "N, centred"}


@pytest.mark.parametrize(("config", "shape"), [
    (TrainConfig(kind="image", data="d", out="o", arch="cnn"), (4, 1, 64, 64)),
    (TrainConfig(kind="image", data="d", out="o", arch="resnet", image_size=(48, 32), window=(-600.0, 1500.0)), (4, 1, 48, 32)),
    (TrainConfig(kind="image", data="d", out="o", arch="cnn", image_size=(32, 32)), (4, 3, 32, 32)),
    (TrainConfig(kind="dna", data="d.csv", out="o", arch="deepbind"), (4, 101)),
    (TrainConfig(kind="dna", data="d.fa", out="o", arch="danq", stride=25), (4, 200)),
    (TrainConfig(kind="dna", data="d.bed", out="o", arch="deepbind"), (4, 1)),
])
def test_preprocess_block_is_the_same_document_as_before(config: TrainConfig, shape: tuple[int, ...]) -> None:
    from training.export import build_metadata

    x = np.zeros(shape, dtype=np.uint8 if config.kind == "dna" else np.float32)
    best = {"config": json.loads(config.to_json()), "labels": ["a", "b"], "multilabel": config.kind == "dna",
            "model_kwargs": {"num_tasks" if config.kind == "dna" else "num_classes": 2}}
    summary = {"epochs_run": 1, "best_epoch": 1, "split": {"train": 2, "val": 1, "test": 1}, "test": {"auroc": {}},
               "baseline": {}}
    doc = build_metadata("m", "1", best, summary, x, {})  # validates against the schema
    expected = _legacy_preprocess(config, x)
    assert json.dumps(doc["preprocess"]) == json.dumps(expected)  # keys, order, values and types
    assert doc["input"]["shape"] == ["batch", *shape[1:]]


def test_a_name_holds_one_kind_of_model(exported: dict, runs: dict[str, Path]) -> None:
    """An image run under a DNA model's name is refused before the export (servers following the name would load it
    as its newest version); the store is unchanged."""
    from biomed.store import biomed_models, import_onnx

    before = {str(m.tag) for m in biomed_models()}
    with pytest.raises(ValueError, match="model 'test-deepbind' holds dna models in the store; this is an image model"):
        export_run(runs["cnn"], "test-deepbind")
    with pytest.raises(ValueError, match="holds image models in the store; this is a dna model"):
        import_onnx(exported["deepbind"].path, "test-cnn")
    assert {str(m.tag) for m in biomed_models()} == before


def test_export_says_what_the_servers_following_the_name_will_do(runs: dict[str, Path],
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from biomed import store
    from cli.main import _export_note, main

    for old in store.biomed_models():  # a reused test store may hold an earlier run's test-live and its promote
        if old.tag.name == "test-live":
            (Path(old.path).parent / store.ROLLOUT_FILE).unlink(missing_ok=True)
    assert main(["export", str(runs["deepbind"]), "--name", "test-live", "--force"]) == 0  # tiny: below its baseline
    out, err = capsys.readouterr()
    tag = out.strip()  # stdout: the tag alone, for scripts
    assert re.fullmatch(r"test-live:[\w.-]+", tag), out
    assert f"biomed: {tag} is now the newest version of test-live: servers following test-live" in err
    assert "within BIOMED_MODEL_POLL_S" in err
    store.promote(tag)
    later = "test-live:99990101-000000-later"
    assert _export_note(later) == (f"biomed: {later} is in the store; servers following test-live keep serving {tag}, "
                                   f"the promoted version, until `biomed models promote {later}`")
