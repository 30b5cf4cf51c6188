"""`biomed import`: models no code of this project built, served with the project's preprocessing.

Four models (tests/import_models.py): a torchvision ResNet-18 made in ``.venv-vision`` (torch's own
exporter), a Keras-layout DNA classifier (TorchScript), a regression DNA model (ONNX, fixed batch
size 4, alphabet TGCA, N as zeros, one strand) and a MONAI bundle (DenseNet121, ScaleIntensityRange
+ Resize). Each served answer, native and v2, equals the original model on its original preprocessing
(torchvision's Normalize; a NumPy one-hot; MONAI's own transforms) within 1e-4, on DICOMs presented
without resampling and on sequences of the model's length and longer. Refusals write nothing. The
imported models then take part in versions, canary, promote, explanations, VCF, bigWig, SR and
metrics. Everything is imported into the session's store once, for the module.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

try:
    from tests import import_models as im
    from tests.conftest import ROOT, inprocess_client, metrics_text
    from tests.genomics import demo_genome, run_cli
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    import import_models as im
    from conftest import ROOT, inprocess_client, metrics_text
    from genomics import demo_genome, run_cli

TOL = 1e-4
TOKEN = "import-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
VISION = Path(os.environ.get("BIOMED_VISION_VENV", ROOT / ".venv-vision")) / "bin" / "python"


def _import(*args: str) -> str:
    rc, out, err = run_cli("import", *args)
    assert rc == 0, err
    return out.strip()


def _models_in_store() -> set[str]:
    from biomed.store import biomed_models

    return {str(m.tag) for m in biomed_models()}


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory, demo_models: dict[str, str]) -> Path:
    return tmp_path_factory.mktemp("import")


@pytest.fixture(scope="module")
def resnet(work: Path) -> dict:
    """The ResNet-18 made elsewhere, its reference outputs for two RGB images, and its tag."""
    if not VISION.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{VISION} is missing: run `make vision` (scripts/vision-venv.sh)")
        pytest.skip("no .venv-vision (scripts/vision-venv.sh): the torchvision model cannot be made")
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, size=(2, 64, 64, 3), dtype=np.uint8)
    np.save(work / "rgb.npy", (pixels.transpose(0, 3, 1, 2) / np.float32(255)).astype(np.float32))
    subprocess.run([str(VISION), str(ROOT / "tests" / "vision_model.py"), str(work), str(work / "rgb.npy")],
                   check=True, capture_output=True, timeout=300)
    (work / "resnet.yaml").write_text(json.dumps(im.RESNET))  # JSON is YAML: the .yaml path is read as YAML
    tag = _import(str(work / "resnet18.onnx"), "--name", "imp-resnet", "--description", str(work / "resnet.yaml"))
    return {"tag": tag, "files": [im.dicom(p, "RGB") for p in pixels], "reference": np.load(work / "reference.npy")}


@pytest.fixture(scope="module")
def imported(work: Path) -> dict:
    """The DNA models and the MONAI bundle, imported with `biomed import` (the regression model twice: two
    versions)."""
    (work / "keras.json").write_text(json.dumps(im.KERAS))
    (work / "signal.json").write_text(json.dumps(im.SIGNAL))
    (work / "signal-v2.json").write_text(json.dumps({**im.SIGNAL, "description": "the same model, described again"}))
    keras = _import(str(im.keras_dna(work)), "--name", "imp-keras", "--description", str(work / "keras.json"))
    signal_path, signal_model = im.signal_dna(work)
    first = _import(str(signal_path), "--name", "imp-signal", "--description", str(work / "signal.json"))
    second = _import(str(signal_path), "--name", "imp-signal", "--description", str(work / "signal-v2.json"))
    bundle = im.monai_bundle(work)
    monai = _import(str(bundle), "--name", "imp-monai")
    return {"keras": keras, "signal_v1": first, "signal": second, "signal_model": signal_model, "monai": monai,
            "bundle": bundle, "keras_path": work / "keras.ts"}


@pytest.fixture(scope="module")
def client(imported: dict, resnet: dict) -> Iterator["TestClient"]:  # noqa: F821
    v1 = imported["signal_v1"].split(":")[1]
    env = {"BIOMED_MODELS": "imp-resnet,imp-keras,imp-signal,imp-monai", "BIOMED_API_TOKEN": TOKEN,
           "BIOMED_MODEL_POLL_S": "0.5", "BIOMED_CANARY": f"imp-signal:{v1}=30"}
    yield from inprocess_client(env)


def _post(client, path: str, **kw) -> dict:  # type: ignore[no-untyped-def]
    r = client.post(path, headers=AUTH, **kw)
    assert r.status_code == 200, r.text
    return r.json()


def _v2(client, model: str, inputs: dict, outputs: list[str] | None = None) -> dict:  # type: ignore[no-untyped-def]
    body = {"inputs": [inputs], **({"outputs": [{"name": n} for n in outputs]} if outputs else {})}
    out = _post(client, f"/v2/models/{model}/infer", json=body)
    return {o["name"]: np.asarray(o["data"], dtype=np.float64).reshape(o["shape"]) for o in out["outputs"]}


def _close(served: np.ndarray, reference: np.ndarray) -> float:
    diff = float(np.abs(np.asarray(served, np.float64) - reference).max())
    print(f"served differs from the original by {diff:.2e}")  # shown with -s: the measured tolerance
    assert diff <= TOL, f"served differs from the original by {diff:.2e}"
    return diff


# ---------------------------------------------------------------- answers equal the original model


def test_resnet18_from_torchvision_equals_its_original(client, resnet: dict) -> None:  # type: ignore[no-untyped-def]
    ref = resnet["reference"]
    for i, data in enumerate(resnet["files"]):
        body = _post(client, "/predict_image", files={"file": ("x.dcm", data)}, data={"model": "imp-resnet"})
        probs = body["predictions"][0]["probabilities"]
        _close([probs[label] for label in im.RESNET["labels"]], ref[i])
    files = [base64.b64encode(f).decode() for f in resnet["files"]]
    out = _v2(client, "imp-resnet", {"name": "file", "datatype": "BYTES", "shape": [2], "data": files})
    _close(out["probabilities"], ref)
    raw = np.stack([np.frombuffer(f[-64 * 64 * 3:], np.uint8).reshape(64, 64, 3) for f in resnet["files"]])
    x = (raw.transpose(0, 3, 1, 2) / np.float32(255)).astype(np.float32)  # the v2 raw tensor: presented pixels
    out = _v2(client, "imp-resnet", {"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "data": x.ravel().tolist()})
    _close(out["probabilities"], ref)


def _dna_reference(model, sequences: list[str], length: int, stride: int, alphabet: str, n_value: float,  # type: ignore[no-untyped-def]
                   layout: str, both: bool, summary) -> np.ndarray:
    """The original model on a NumPy one-hot of the service's windows (``window_starts``), strands averaged when
    ``both``, summarised over windows by ``summary`` (max, or mean)."""
    import torch

    from biomed.preprocess.dna import window_starts

    out = []
    for seq in sequences:
        padded = "N" * length + seq + "N" * length
        starts = window_starts(len(seq), length, stride)
        windows = [padded[s + length : s + 2 * length] for s in starts]
        strands = [windows, [im.revcomp(w) for w in windows]] if both else [windows]
        rows = []
        for strand in strands:
            x = np.stack([im.onehot(w, alphabet, n_value) for w in strand]).astype(np.float32)  # (W, L, 4)
            x = x if layout == "NL4" else x.transpose(0, 2, 1)
            with torch.no_grad():
                rows.append(model(torch.from_numpy(np.ascontiguousarray(x))).double().numpy())
        out.append(summary(np.mean(rows, axis=0), axis=0))
    return np.stack(out)


SEQUENCES = ["ACGTTGCAACGGTACCATGGACTTGACCTTGGTCAACGTA",  # the model's length (40)
             "NNACGTACGGCTAGCTAGGATCGANNNCGTACGATCGATT",
             "GATTACAGATTACACCCTGGGAAATTTCGCGATATACGCGCGTTAACCGGTTAACGCGCATGCATGCAAATTTGGGCCCAGTCAGTCAGTACGATCG"]


def test_keras_layout_dna_model_equals_its_original(client, imported: dict) -> None:  # type: ignore[no-untyped-def]
    import torch

    model = torch.jit.load(str(imported["keras_path"]))
    p = im.KERAS["dna"]
    ref = _dna_reference(model, SEQUENCES, p["length"], p["stride"], "ACGT", 0.25, "NL4", True, np.max)
    body = _post(client, "/predict_dna", json={"sequences": SEQUENCES, "model": "imp-keras"})
    _close([[pred["probabilities"][t] for t in im.KERAS["labels"]] for pred in body["predictions"]], ref)
    assert len(body["predictions"][2]["windows"]) > 1  # the longer sequence was tiled
    out = _v2(client, "imp-keras", {"name": "sequence", "datatype": "BYTES", "shape": [3], "data": SEQUENCES})
    _close(out["probabilities"], ref)
    forward = _dna_reference(model, SEQUENCES[:1], p["length"], p["stride"], "ACGT", 0.25, "NL4", False, np.max)
    codes = ["ACGTN".index(b) for b in SEQUENCES[0]]
    out = _v2(client, "imp-keras", {"name": "input", "datatype": "UINT8", "shape": [1, 40], "data": codes})
    _close(out["probabilities"], forward)


def test_regression_dna_model_gives_values_at_its_fixed_batch(client, imported: dict) -> None:  # type: ignore[no-untyped-def]
    p, labels = im.SIGNAL["dna"], im.SIGNAL["labels"]
    seqs = [s[:32] for s in SEQUENCES] + [SEQUENCES[2]]  # 3 of the model's length (not a multiple of 4), 1 longer
    ref = _dna_reference(imported["signal_model"], seqs, 32, p["stride"], "TGCA", 0.0, "N4L", False, np.mean)
    body = _post(client, "/predict_dna", json={"sequences": seqs, "model": "imp-signal"})
    assert "probabilities" not in body["predictions"][0]
    _close([[pred["values"][t] for t in labels] for pred in body["predictions"]], ref)
    both = _dna_reference(imported["signal_model"], seqs, 32, p["stride"], "TGCA", 0.0, "N4L", True, np.mean)
    body = _post(client, "/predict_dna", json={"sequences": seqs, "model": "imp-signal", "reverse_complement": True})
    _close([[pred["values"][t] for t in labels] for pred in body["predictions"]], both)
    out = _v2(client, "imp-signal", {"name": "sequence", "datatype": "BYTES", "shape": [4], "data": seqs})
    assert set(out) == {"values"}
    _close(out["values"], ref)
    meta = client.get("/v2/models/imp-signal", headers=AUTH).json()
    assert meta["outputs"][0]["name"] == "values"
    listed = {f"{m['name']}:{m['version']}": m for m in client.get("/models", headers=AUTH).json()["models"]}
    entry = listed[imported["signal"]]
    assert entry["batch"] == im.SIGNAL_BATCH and entry["source"]["format"] == "onnx"
    assert entry["description"]["labels"] == labels and entry["checks"]["max_abs_diff"] <= TOL
    assert entry["output"] == {"name": "values", "activation": "none", "units": ["1", "{count}"]}


def test_score_variants_of_values_gives_diff_and_log2_fold_change(client, imported: dict) -> None:  # type: ignore[no-untyped-def]
    seq = SEQUENCES[2][:40]
    variants = [{"sequence": seq, "position": i, "ref": seq[i], "alt": "ACGT"[("ACGT".index(seq[i]) + 1) % 4]}
                for i in range(5, 35, 3)]
    body = _post(client, "/score_variants", json={"variants": variants, "model": "imp-signal"})
    nulls = 0
    for v in body["variants"]:
        assert set(v) == {"id", "ref", "alt", "diff", "log2_fold_change"}
        for t in im.SIGNAL["labels"]:
            assert abs(v["diff"][t] - (v["alt"][t] - v["ref"][t])) < 1e-6
            fold = v["log2_fold_change"][t]
            if v["alt"][t] <= 0 or v["ref"][t] <= 0:
                assert fold is None
                nulls += 1
            else:
                assert abs(fold - np.log2(v["alt"][t] / v["ref"][t])) < 1e-6
    assert nulls < 2 * len(variants)  # most values are positive (the model's offset)


def test_monai_bundle_equals_monai_transforms_and_network(client, imported: dict, work: Path) -> None:  # type: ignore[no-untyped-def]
    yy, xx = np.mgrid[0:64, 0:64]
    hu = (-600 + 14 * xx + 3 * yy + 400 * ((yy - 20) ** 2 + (xx - 40) ** 2 < 120)).astype(np.int16)  # not symmetric
    data = im.dicom((hu + 1024).astype(np.int16), "MONOCHROME2", rescale=(1.0, -1024.0))
    (work / "ct.dcm").write_bytes(data)
    ref = im.monai_reference(imported["bundle"], work / "ct.dcm")
    body = _post(client, "/predict_image", files={"file": ("ct.dcm", data)}, data={"model": "imp-monai"})
    _close([body["predictions"][0]["probabilities"][label] for label in im.MONAI_LABELS], ref)
    out = _v2(client, "imp-monai", {"name": "file", "datatype": "BYTES", "shape": [1],
                                    "data": [base64.b64encode(data).decode()]})
    _close(out["probabilities"][0], ref)
    transposed = im.monai_reference(imported["bundle"], _write(work / "ct-t.dcm", im.dicom(
        np.ascontiguousarray((hu + 1024).T).astype(np.int16), "MONOCHROME2", rescale=(1.0, -1024.0))))
    assert np.abs(transposed - ref).max() > 10 * TOL  # the axis order matters, and was reproduced


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ---------------------------------------------------------------- refusals


def _two_inputs(path: Path) -> Path:
    from onnx import TensorProto, helper, save

    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two",
                          [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 40, 4]) for n in ("a", "b")],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 40, 4])])
    save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _bundle_with(folder: Path, work: Path, transform: dict) -> Path:
    import shutil

    copy = work / f"bundle-{transform['_target_']}"
    shutil.copytree(folder, copy, dirs_exist_ok=True)
    config = json.loads((copy / "configs" / "inference.json").read_text())
    config["preprocessing"]["transforms"].insert(2, transform)
    (copy / "configs" / "inference.json").write_text(json.dumps(config))
    return copy


def test_unsupported_descriptions_are_refused_with_one_line_and_nothing_stored(imported: dict, work: Path) -> None:
    (work / "keras-n4l.json").write_text(json.dumps({**im.KERAS, "dna": {**im.KERAS["dna"], "layout": "N4L"}}))
    (work / "signal-nl4.json").write_text(json.dumps({**im.SIGNAL, "dna": {**im.SIGNAL["dna"], "layout": "NL4"}}))
    cases = [
        ((str(_two_inputs(work / "two.onnx")), "--description", str(work / "keras.json")), "2 inputs"),
        ((str(_bundle_with(imported["bundle"], work, {"_target_": "RandFlipd", "keys": "image"})),), "RandFlip"),
        ((str(_bundle_with(imported["bundle"], work, {"_target_": "Resized", "keys": "image", "spatial_size": [64, 64],
                                                       "mode": "bilinear"})),), "Resize mode 'bilinear'"),
        ((str(work / "signal.onnx"), "--description", str(work / "signal-nl4.json")), "layout does not match"),
        ((str(imported["keras_path"]), "--description", str(work / "keras-n4l.json")), "cannot be exported"),
    ]
    before = _models_in_store()
    for args, reason in cases:
        rc, out, err = run_cli("import", *args, "--name", "imp-refused")
        assert rc == 1 and out == "", (args, out, err)
        assert reason in err and err.count("\n") == 1, err
    assert _models_in_store() == before


# ---------------------------------------------------------------- everything else the project's own take part in


def test_versions_canary_promote_and_metrics(client, imported: dict) -> None:  # type: ignore[no-untyped-def]
    v1, v2 = imported["signal_v1"].split(":")[1], imported["signal"].split(":")[1]
    listed = {f"{m['name']}:{m['version']}": m for m in client.get("/models", headers=AUTH).json()["models"]}
    assert listed[imported["signal"]]["default"] and listed[imported["signal_v1"]]["canary_percent"] == 30
    pinned = _post(client, "/predict_dna", json={"sequences": ["ACGT" * 8], "model": f"imp-signal:{v1}"})
    assert pinned["version"] == v1
    r = _post(client, "/admin/models/promote", json={"model": f"imp-signal:{v1}"})
    assert r["serving"] == v1 and r["previous"] == v2
    assert _post(client, "/predict_dna", json={"sequences": ["ACGT" * 8], "model": "imp-signal"})["version"] == v1
    _post(client, "/admin/models/promote", json={"model": "imp-signal:latest"})
    text = metrics_text(client)
    assert 'label="value"' in text and 'model="imp-signal"' in text and 'model="imp-monai"' in text


def test_explanations_of_imported_models(client, imported: dict) -> None:  # type: ignore[no-untyped-def]
    yy, xx = np.mgrid[0:64, 0:64]
    data = im.dicom((300 + 10 * xx + yy).astype(np.int16), "MONOCHROME2", rescale=(1.0, -1024.0))
    body = _post(client, "/explain_image", files={"file": ("ct.dcm", data)},
                 data={"model": "imp-monai", "patch": "16", "stride": "16"})
    assert set(body["probabilities"]) == set(im.MONAI_LABELS) and body["map"]["patches"] == 16
    body = _post(client, "/explain_dna", json={"sequence": SEQUENCES[0][:32], "model": "imp-signal", "task": "coverage"})
    assert body["task"] == "coverage" and "value" in body and len(body["scores"]) == 32


def test_sr_of_an_imported_model_and_a_regression_measurement(client) -> None:  # type: ignore[no-untyped-def]
    import pydicom

    from biomed.outputs import Producer, sr
    from biomed.outputs.semantics import Semantics

    data = im.dicom(np.full((64, 64), 1100, np.int16), "MONOCHROME2", rescale=(1.0, -1024.0))
    r = client.post("/predict_image", files={"file": ("ct.dcm", data)}, data={"model": "imp-monai", "output": "sr"},
                    headers=AUTH)
    assert r.status_code == 200 and "Probability of cyst" in str(pydicom.dcmread(io.BytesIO(r.content)))
    header = pydicom.dcmread(io.BytesIO(data))
    values = Producer("imp-volume", "v1", "ab" * 32, ("volume", "density"),
                      output=Semantics("values", "none", ("mL", "[hnsf'U]")))
    text = str(sr.build_sr(header, np.array([[12.5, 40.0]]), values, identity="0" * 64))
    assert "volume" in text and "mL" in text and "[hnsf'U]" in text and "Predicted label" not in text


def test_vcf_and_bigwig_of_a_regression_model(imported: dict, work: Path) -> None:
    import pyBigWig
    import pysam

    genome = demo_genome(work / "genome", length=1500, variants=20)
    out = work / "scored.vcf.gz"
    rc, _, err = run_cli("score-variants", "--model", "imp-signal", "--vcf", str(genome / "variants.vcf.gz"),
                         "--fasta", str(genome / "genome.fa"), "--out", str(out))
    assert rc == 0, err
    vcf = pysam.VariantFile(str(out))
    assert {"KV_biomed_imp_signal_DIFF", "KV_biomed_imp_signal_LOG2FC"} <= set(vcf.header.info)
    assert "KV_biomed_imp_signal_LOGIT_DIFF" not in vcf.header.info
    assert any("KV_biomed_imp_signal_LOG2FC" in rec.info for rec in vcf)
    source = next(r for r in vcf.header.records if r.key == "biomed_model")
    assert dict(source.items())["ReverseComplement"] == "false"  # the model's description, as the service reads it
    rc, _, err = run_cli("predict-regions", "--model", "imp-signal", "--bed", str(genome / "regions.bed"), "--fasta",
                         str(genome / "genome.fa"), "--out", str(work / "tracks"), "--step", "16")
    assert rc == 0, err
    for track in ("signal", "coverage"):
        bw = pyBigWig.open(str(work / "tracks" / f"{track}.bw"))
        assert bw.header()["nBasesCovered"] > 0


def test_biomed_models_shows_source_and_checks(imported: dict) -> None:
    rc, out, err = run_cli("models")
    assert rc == 0, err
    row = next(line for line in out.splitlines() if line.startswith("imp-monai"))
    assert "monai_bundle" in row and "imported from ct_bundle" in out
    rc, out, _ = run_cli("models", "--json")
    entry = next(m for m in json.loads(out) if m["name"] == "imp-keras")
    assert entry["source"]["format"] == "torchscript" and entry["checks"]["export_parity_max_abs_diff"] <= TOL
    assert entry["description"]["dna"]["layout"] == "NL4"
