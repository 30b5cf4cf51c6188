#!/usr/bin/env python3
"""The GPU benchmark in one command, on a machine with an NVIDIA GPU and nothing but Python.

Such a machine (a lent GPU host, a cloud VM) may reach no package registry and take files in
pieces of at most 64 MiB a call, while onnxruntime-gpu's wheel alone is 256 MB. So:

    # here, with the project's venv: wheels for the target's Python, the models, cut into parts
    .venv/bin/python scripts/gpu/kit.py pack --out gpu-kit          # gpu-kit/manifest.json, part-00 ...
    # there, one call per part (each carrying gpu-kit/manifest.json and that part), then one run
    python3 scripts/gpu/kit.py receive gpu-kit/part-00              # ... part-05
    python3 scripts/gpu/kit.py run --out "$OUT"                     # setup (once) + every case; < 8 minutes

``receive`` and ``setup`` use the standard library only. ``setup`` joins the parts, checks the
whole kit's sha256, and installs the wheels into a venv of its own that also sees the system's
packages (torch) but puts its own onnxruntime-gpu first: a preinstalled CPU onnxruntime would
otherwise shadow the GPU build. ``run`` measures in this order, writing results.json and
results.md after each step: onnxruntime (CUDA fp32, fp16, I/O binding, TensorRT with its engine
cache when its libraries are present; batches 1-256; the demo models, a ResNet-18 at 224x224,
DanQ and a 3D ResNet at 64x128x128), the roofline of the ResNet-18 at batch 64 in fp16, then the service under load (wrk when
installed, else ``bench/loadgen.py``) beside the in-process pipeline. State lives in
``$BIOMED_GPU_DIR`` (default /tmp/biomed-gpu). ``--dry-run`` does all of it on the CPU provider
with tiny timings: the test of this script on machines without a GPU (tests/test_gpu_kit.py).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import venv
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("BIOMED_GPU_DIR", "/tmp/biomed-gpu"))
ONNXRUNTIME_GPU = "onnxruntime-gpu==1.31.1"  # the build the kit installs: CUDA 13 and cuDNN 9 on the target


def serving_wheels() -> list[str]:
    """The service's dependencies as pyproject.toml lists them (its one list), with the kit's onnxruntime-gpu build in
    place of the platform-dependent onnxruntime entries: what the target's venv needs to serve."""
    import re
    import tomllib

    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = [ONNXRUNTIME_GPU]
    for requirement in listed:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()
        if name not in ("onnxruntime", "onnxruntime-gpu"):
            wanted.append(requirement.split(";")[0].strip())
    return wanted


PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "linux_x86_64"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- pack (here)

def _models(out: Path, quick: bool) -> list[str]:
    """The demo models from the store, a ResNet-18 at 224x224 and DanQ at 1,000 bp (random weights: speed only)."""
    sys.path.insert(0, str(REPO))
    import torch

    from biomed import metadata
    from biomed.runtime import locate
    from models import build_model
    from training.export import INPUT_NAME, OUTPUT_NAME, WithActivation, embed, to_onnx

    out.mkdir(parents=True, exist_ok=True)
    names = []
    for ref in ("demo-image", "demo-dna", "demo-volume"):
        shutil.copy(locate(ref).path, out / f"{ref}.onnx")
        names.append(ref)
    size, length, depth = (64, 200, 16) if quick else (224, 1000, 64)
    volume = (depth, 2 * depth, 2 * depth)  # a CT volume at 4 mm: 64x128x128 voxels (the 3D case)
    presets = {"image": {"type": "image", "size": [size, size], "channels": 1, "window": None,
                         "interpolation": "bilinear"},
               "dna": {"type": "dna", "alphabet": "ACGTN", "length": length, "stride": length // 2,
                       "reverse_complement": True, "padding": "N, centred"},
               "volume": {"type": "volume", "size": list(volume), "spacing": [4.0, 4.0, 4.0], "window": [40.0, 400.0],
                          "resample": [], "axes": "zyx"}}
    for kind, arch, shape, labels in (("image", "resnet18", (2, 1, size, size), ["normal", "lesion"]),
                                      ("dna", "danq", (2, length), ["TF1", "TF2", "TF3"]),
                                      ("volume", "resnet3d", (2, 1, *volume), ["normal", "lesion"])):
        torch.manual_seed(0)
        n = len(labels)
        net = build_model(kind, arch, **({"num_tasks": n} if kind == "dna" else {"num_classes": n})).eval()
        example = torch.zeros(shape, dtype=torch.uint8) if kind == "dna" else torch.zeros(shape)
        proto = to_onnx(WithActivation(net, kind == "dna").eval(), example)
        pre = presets[kind]
        doc = metadata.validate({
            "schema": metadata.SCHEMA_VERSION, "name": f"bench-{arch}", "version": "random-init", "kind": kind,
            "labels": labels, "multilabel": kind == "dna",
            "input": {"name": INPUT_NAME, "shape": ["batch", *shape[1:]], "dtype": str(example.numpy().dtype)},
            "output": {"name": OUTPUT_NAME, "activation": "sigmoid" if kind == "dna" else "softmax"}, "preprocess": pre,
            "architecture": {"arch": arch, "kwargs": {}},
            "training": {"data": "none (random weights: a speed benchmark)", "epochs": 0, "seed": 0, "metrics": {}},
            "intended_use": "benchmark only"})
        embed(proto, doc)
        import onnx

        onnx.save(proto, out / f"bench-{arch}.onnx")
        names.append(f"bench-{arch}")
    return names


def pack(args: argparse.Namespace) -> int:
    out = Path(args.out)
    build = out / "build"
    wheels = build / "wheels"
    requirements = serving_wheels()
    if not args.no_wheels:
        wheels.mkdir(parents=True, exist_ok=True)
        platforms = [f"--platform={p}" for p in PLATFORMS]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:",
                        f"--python-version={args.python}", *platforms, "-d", str(wheels), *requirements], check=True)
    names = _models(build / "models", args.quick)
    (build / "kit.json").write_text(json.dumps({"models": names, "python": args.python, "requirements": requirements,
                                                "wheels": sorted(p.name for p in wheels.glob("*.whl"))}, indent=1))
    bundle = out / "kit.tar"
    with tarfile.open(bundle, "w") as tar:  # wheels are compressed already
        tar.add(build, arcname="kit")
    chunk = int(args.chunk_mb * 2**20)
    for old in out.glob("part-*"):
        old.unlink()
    parts = []
    with bundle.open("rb") as f:
        for i, block in enumerate(iter(lambda: f.read(chunk), b"")):
            part = out / f"part-{i:02d}"
            part.write_bytes(block)
            parts.append({"name": part.name, "bytes": len(block), "sha256": hashlib.sha256(block).hexdigest()})
    manifest = {"parts": parts, "sha256": _sha256(bundle), "bytes": bundle.stat().st_size}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    bundle.unlink()
    print(f"{len(parts)} parts of at most {args.chunk_mb:g} MiB in {out} ({manifest['bytes'] / 2**20:.0f} MiB in all); "
          f"carry {out}/manifest.json with each part, run `python3 scripts/gpu/kit.py receive {out}/part-NN`, then `run`")
    return 0


# ------------------------------------------------------------------------------------- receive and setup (there)

def receive(args: argparse.Namespace) -> int:
    part = Path(args.part)
    manifest = json.loads((part.parent / "manifest.json").read_text())
    entry = next((p for p in manifest["parts"] if p["name"] == part.name), None)
    if entry is None or _sha256(part) != entry["sha256"]:
        raise SystemExit(f"kit: {part} is not a part of this kit or is damaged (sha256)")
    (STATE / "parts").mkdir(parents=True, exist_ok=True)
    shutil.copy(part.parent / "manifest.json", STATE / "parts" / "manifest.json")
    shutil.copy(part, STATE / "parts" / part.name)
    have = {p.name for p in (STATE / "parts").glob("part-*")}
    missing = [p["name"] for p in manifest["parts"] if p["name"] not in have]
    print(f"kit: received {part.name}; {'missing: ' + ', '.join(missing) if missing else 'all parts here'}")
    return 0


def _venv_python() -> Path:
    """The kit's venv; a kit without wheels (a dry run) uses the interpreter that runs this script."""
    chosen = STATE / "python"
    return Path(chosen.read_text().strip()) if chosen.exists() else STATE / "venv" / "bin" / "python"


def setup(dry_run: bool) -> Path:
    """Join, check, extract and install the kit once (a warm machine keeps it in $BIOMED_GPU_DIR)."""
    kit = STATE / "kit"
    if (STATE / "ready").exists():
        return kit
    manifest = json.loads((STATE / "parts" / "manifest.json").read_text())
    bundle = STATE / "kit.tar"
    with bundle.open("wb") as out:
        for p in manifest["parts"]:
            out.write((STATE / "parts" / p["name"]).read_bytes())
    if _sha256(bundle) != manifest["sha256"]:
        raise SystemExit("kit: the joined parts do not match the kit's sha256; receive them again")
    with tarfile.open(bundle) as tar:
        tar.extractall(STATE, filter="data")
    bundle.unlink()
    wheels = sorted((kit / "wheels").glob("*.whl"))
    if wheels:  # --no-index: nothing from the network; the venv's packages come before the system's
        venv.EnvBuilder(system_site_packages=True, with_pip=True, clear=True).create(STATE / "venv")
        requirements = json.loads((kit / "kit.json").read_text())["requirements"]
        subprocess.run([str(_venv_python()), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                        str(kit / "wheels"), "--ignore-installed", *requirements], check=True)
    else:
        (STATE / "python").write_text(sys.executable + "\n")
    code = "import onnxruntime as ort; print(ort.__version__, ort.get_available_providers())"
    found = subprocess.run([str(_venv_python()), "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    print(f"kit: onnxruntime in the venv: {found}")
    if not dry_run and "CUDAExecutionProvider" not in found:
        raise SystemExit("kit: the venv's onnxruntime has no CUDA provider; is onnxruntime-gpu among the wheels?")
    (STATE / "ready").write_text(found + "\n")
    return kit


# ------------------------------------------------------------------------------------------------ run (there)

class Report:
    """results.json and results.md, rewritten after every step so a cut-short run keeps what it measured."""

    def __init__(self, out: Path, dry_run: bool) -> None:
        self.out, self.data = out, {"dry_run": dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                    "steps": {}}
        out.mkdir(parents=True, exist_ok=True)

    def add(self, step: str, value: object) -> None:
        self.data["steps"][step] = value
        (self.out / "results.json").write_text(json.dumps(self.data, indent=1) + "\n")
        (self.out / "results.md").write_text(self.markdown())

    def markdown(self) -> str:
        lines = [f"# GPU benchmark ({'DRY RUN on the CPU provider' if self.data['dry_run'] else 'GPU'}, "
                 f"{self.data['started']})", ""]
        ort_rows = self.data["steps"].get("onnxruntime", {}).get("rows", [])
        if ort_rows:
            lines += ["| model | engine | batch | ms | samples/s | of FLOP ceiling |", "|---|---|---:|---:|---:|---:|"]
            lines += [f"| {r['model']} | {r['engine']} | {r['batch']} | {r['ms']:.3f} | {r['samples_per_s']:,.0f} | "
                      f"{r['of_ceiling']:.3f} |" for r in ort_rows]
            lines.append("")
        roof = self.data["steps"].get("roofline")
        if roof:
            lines += [f"Roofline, {roof['model']} at batch {roof['batch']} in fp16: bound {roof['bound']:,.0f} samples/s "
                      f"(FLOP {roof['flop_bound']:,.0f}, memory {roof['memory_bound']:,.0f}); measured "
                      f"{roof['measured']:,.0f} = **{roof['fraction']:.2f}** of the bound (goal ≥ 0.40)", ""]
        service = self.data["steps"].get("service", [])
        if service:
            lines += ["| model | concurrency | service req/s | p99 ms | pipeline req/s | service ÷ pipeline |",
                      "|---|---:|---:|---:|---:|---:|"]
            lines += [f"| {s['model']} | {s['concurrency']} | {s['rps']:,.1f} | {s['p99_ms']:.1f} | "
                      f"{s['pipeline_rps']:,.1f} | {s['ratio']:.2f} |" for s in service]
        return "\n".join(lines) + "\n"


def _gpu_name(dry_run: bool) -> str:
    if dry_run:
        return "NVIDIA H200"  # the peaks the dry run's ceiling columns are computed with
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""


def _onnxruntime_cases(kit: Path, args: argparse.Namespace, report: Report) -> list[dict]:
    python = _venv_python()
    models = json.loads((kit / "kit.json").read_text())["models"]
    tensorrt = not args.dry_run and subprocess.run(
        [str(python), "-c", "import onnxruntime as o; assert 'TensorrtExecutionProvider' in o.get_available_providers();"
                            "import ctypes; ctypes.CDLL('libnvinfer.so.10')"], capture_output=True).returncode == 0
    rows = []
    for name in models:
        out = STATE / f"ort-{name}.json"
        cmd = [str(python), str(REPO / "scripts" / "bench_gpu.py"), "--models", str(kit / "models" / f"{name}.onnx"),
               "--batches", args.batches, "--seconds", str(args.seconds), "--gpu", _gpu_name(args.dry_run), "--out", str(out)]
        cmd += ["--dry-run"] if args.dry_run else []
        cmd += ["--tensorrt"] if tensorrt else []
        subprocess.run(cmd, check=True, cwd=REPO)
        rows += json.loads(out.read_text())["rows"]
        report.add("onnxruntime", {"tensorrt": tensorrt, "rows": rows})
    return rows


def _roofline(kit: Path, rows: list[dict], args: argparse.Namespace, report: Report) -> None:
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import json; from bench.flops import roofline, peak_for, "
            f"bandwidth_for; n = {_gpu_name(args.dry_run)!r}; "
            f"print(json.dumps(roofline({str(kit / 'models' / 'bench-resnet18.onnx')!r}, 64, peak_for(n)[1]['fp16'], "
            f"bandwidth_for(n))))")
    bound = json.loads(subprocess.run([str(_venv_python()), "-c", code], capture_output=True, text=True,
                                      check=True).stdout)
    fp16 = [r for r in rows if r["model"] == "bench-resnet18" and r["batch"] == 64 and "fp16" in r["engine"]]
    measured = max((r["samples_per_s"] for r in fp16), default=float("nan"))
    report.add("roofline", {"model": "bench-resnet18", "batch": 64, "bound": bound["samples_per_s"],
                            "flop_bound": bound["flop_bound_samples_per_s"],
                            "memory_bound": bound["memory_bound_samples_per_s"], "measured": measured,
                            "fraction": measured / bound["samples_per_s"]})


def _service(kit: Path, args: argparse.Namespace, report: Report) -> None:
    """The service under load beside the in-process pipeline, on the GPU (each model, c1 and c16)."""
    python = _venv_python()
    subprocess.run([str(python), str(REPO / "scripts" / "gpu" / "serve_case.py"), "--kit", str(kit), "--state",
                    str(STATE), "--seconds", str(args.load_seconds), "--out", str(STATE / "service.json"),
                    *(["--dry-run"] if args.dry_run else [])], check=True, cwd=REPO)
    report.add("service", json.loads((STATE / "service.json").read_text()))


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    kit = setup(args.dry_run)
    report = Report(Path(args.out), args.dry_run)
    rows = _onnxruntime_cases(kit, args, report)
    _roofline(kit, rows, args, report)
    _service(kit, args, report)
    report.add("seconds", round(time.monotonic() - started, 1))
    print(report.markdown())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="here: wheels for the target's Python and the models, cut into parts")
    p.add_argument("--out", default="gpu-kit")
    p.add_argument("--python", default="3.12", help="the target machine's Python (wheels are chosen for it)")
    p.add_argument("--chunk-mb", type=float, default=56, help="part size (with the repository, under 64 MiB a call)")
    p.add_argument("--no-wheels", action="store_true", help="models only (a dry run on this machine)")
    p.add_argument("--quick", action="store_true", help="small bench models (a dry run)")
    p.set_defaults(func=pack)
    p = sub.add_parser("receive", help="there: keep one part in $BIOMED_GPU_DIR")
    p.add_argument("part")
    p.set_defaults(func=receive)
    p = sub.add_parser("run", help="there: set up once, then every case; results.md/json in --out")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-results"))
    p.add_argument("--batches", default="1,8,32,64,128,256")
    p.add_argument("--seconds", type=float, default=1.0, help="timed seconds per onnxruntime point")
    p.add_argument("--load-seconds", type=float, default=8.0, help="seconds per service load point")
    p.add_argument("--dry-run", action="store_true", help="the CPU provider and tiny timings (no GPU)")
    p.set_defaults(func=lambda a: run(a))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
