#!/usr/bin/env python
"""GPU runtime benchmark: onnxruntime CUDA EP fp32/fp16, with and without I/O binding, against a FLOP-bound ceiling.

For a machine with an NVIDIA GPU (onnxruntime-gpu with CUDA 13 / cuDNN 9 wheels):

    .venv/bin/python scripts/bench_gpu.py --models demo-image,demo-dna --batches 1,32,256 --out gpu.json

Each model is run as stored (fp32, TF32 tensor cores allowed by the CUDA EP's default) and
converted to fp16 (``onnxruntime.transformers.float16``, I/O kept fp32 as ``biomed export --fp16``
does), each once with host numpy arrays (the copy to and from the GPU counted in every call) and
once with I/O binding (input and output as device OrtValues: compute only); PyTorch eager on CUDA
beside them when torch sees a GPU; TensorRT fp16 with ``--tensorrt``. Samples/s are set against
the ceiling ``peak FLOP/s / FLOPs per sample`` (FLOPs counted from the ONNX graph, peak from
``bench.flops.GPU_PEAKS`` for the GPU nvidia-smi names, or ``--gpu NAME``).

Without a GPU, ``--dry-run`` runs the same code on the CPU provider with tiny timings (``--gpu``
still picks the peaks the ceiling column uses), which is what CI and ``--help`` check.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from biomed import metadata  # noqa: E402
from biomed.runtime import preload_cuda  # noqa: E402
from bench.flops import count_flops, peak_for  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="demo-image,demo-dna", help="store references or paths to model.onnx files")
    p.add_argument("--batches", default="1,8,32,256", help="comma list of batch sizes")
    p.add_argument("--seconds", type=float, default=2.0, help="timed seconds per point (after a warm-up)")
    p.add_argument("--gpu", help="GPU name for the peak table (default: nvidia-smi's first GPU)")
    p.add_argument("--tensorrt", action="store_true", help="add the TensorRT EP with fp16")
    p.add_argument("--dry-run", action="store_true", help="no GPU: CPU provider, tiny timings, same code paths")
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError:
        p.error(f"--batches {args.batches!r} must be a comma list of integers")
    if args.dry_run:
        args.seconds = min(args.seconds, 0.05)
    return args


def gpu_name(override: str | None) -> str:
    if override:
        return override
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20)
        return out.stdout.splitlines()[0].strip() if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def model_path(ref: str) -> Path:
    """An ONNX file as given, or a store reference's file (``biomed.runtime.locate``: its metadata checked)."""
    if ref.endswith(".onnx"):
        return Path(ref)
    from biomed.runtime import locate

    return locate(ref).path


def example(doc: dict, batch: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    shape = [batch if isinstance(s, str) else int(s) for s in doc["input"]["shape"]]
    return rng.integers(0, 4, size=shape).astype(np.uint8) if doc["kind"] == "dna" else rng.random(shape, dtype=np.float32)


def sessions(proto: onnx.ModelProto, dry_run: bool, tensorrt: bool) -> dict[str, tuple[ort.InferenceSession, str]]:
    """name -> (session, device for I/O binding)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    fp16 = convert_float_to_float16(proto, keep_io_types=True)
    if dry_run:
        eps, device = [("CPUExecutionProvider", {})], "cpu"
    else:
        preload_cuda()
        eps, device = [("CUDAExecutionProvider", {"device_id": 0}), ("CPUExecutionProvider", {})], "cuda"
    made = {}
    for label, graph in (("fp32", proto), ("fp16", fp16)):
        s = ort.InferenceSession(graph.SerializeToString(), providers=[e for e, _ in eps],
                                 provider_options=[o for _, o in eps])
        if not dry_run and s.get_providers()[0] != "CUDAExecutionProvider":
            raise SystemExit("bench_gpu: the CUDA execution provider is not usable here; use --dry-run on a CPU host")
        made[f"ort-{device}-{label}"] = (s, device)
    if tensorrt and not dry_run:
        trt = [("TensorrtExecutionProvider", {"trt_fp16_enable": True, "trt_engine_cache_enable": True,
                                              "trt_engine_cache_path": "/tmp/biomed-trt"}), *eps]
        s = ort.InferenceSession(proto.SerializeToString(), providers=[e for e, _ in trt], provider_options=[o for _, o in trt])
        made["ort-tensorrt-fp16"] = (s, "cuda")
    return made


def plain(session: ort.InferenceSession, x: np.ndarray) -> Callable[[], object]:
    name = session.get_inputs()[0].name
    return lambda: session.run(None, {name: x})


def bound(session: ort.InferenceSession, x: np.ndarray, device: str) -> Callable[[], object]:
    """I/O binding: the input copied to the device once, the output left there."""
    binding = session.io_binding()
    binding.bind_ortvalue_input(session.get_inputs()[0].name, ort.OrtValue.ortvalue_from_numpy(x, device, 0))
    binding.bind_output(session.get_outputs()[0].name, device)

    def call() -> None:
        session.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return call


def torch_eager(path: Path, x: np.ndarray) -> Callable[[], object] | None:
    try:
        import torch

        from training.export import WithActivation, rebuild_from_onnx
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    doc = metadata.read(path)
    net = WithActivation(rebuild_from_onnx(path), doc["multilabel"]).eval().cuda()
    xt = torch.from_numpy(x).cuda()

    def call() -> None:
        with torch.inference_mode():
            net(xt)
        torch.cuda.synchronize()

    return call


def timed(fn: Callable[[], object], seconds: float) -> float:
    """Median seconds per call after a warm-up, over at least 5 calls and ``seconds``."""
    for _ in range(3):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < 5 or time.perf_counter() - start < seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_model(ref: str, args: argparse.Namespace, peaks: dict[str, float] | None) -> list[dict]:
    path = model_path(ref)
    doc, proto = metadata.read(path), onnx.load(str(path))
    flops = count_flops(proto, 1)
    rows = []
    made = sessions(proto, args.dry_run, args.tensorrt)
    for batch in args.batches:
        x = example(doc, batch)
        runs: dict[str, Callable[[], object]] = {}
        for label, (session, device) in made.items():
            runs[label] = plain(session, x)
            runs[f"{label}+iobinding"] = bound(session, x, device)
        eager = None if args.dry_run else torch_eager(path, x)
        if eager is not None:
            runs["torch-eager-cuda-fp32"] = eager
        for label, fn in runs.items():
            per_call = timed(fn, args.seconds)
            precision = "fp16" if "fp16" in label else "tf32"
            ceiling = peaks[precision] * 1e12 / flops if peaks and flops else float("nan")
            rows.append({"model": doc["name"], "engine": label, "batch": batch, "ms": per_call * 1e3,
                         "samples_per_s": batch / per_call, "gflop_per_sample": flops / 1e9,
                         "ceiling_samples_per_s": ceiling, "of_ceiling": batch / per_call / ceiling,
                         "ceiling_precision": precision})
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    name = gpu_name(args.gpu)
    found = peak_for(name) if name else None
    peaks = found[1] if found else None
    print(f"GPU: {name or 'none'}; peaks (TFLOP/s): {peaks or 'unknown, no ceiling'}"
          f"{'; DRY RUN on the CPU provider' if args.dry_run else ''}")
    rows = [row for ref in args.models.split(",") if ref.strip() for row in bench_model(ref.strip(), args, peaks)]
    print(f"{'model':<12} {'engine':<28} {'batch':>5} {'ms':>9} {'samples/s':>11} {'of ceiling':>10}")
    for r in rows:
        print(f"{r['model']:<12} {r['engine']:<28} {r['batch']:>5} {r['ms']:>9.3f} {r['samples_per_s']:>11.0f} "
              f"{r['of_ceiling']:>10.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"gpu": name, "peaks_tflops": peaks, "dry_run": args.dry_run,
                                              "ort": ort.__version__, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
