"""Models at run time: onnxruntime sessions with the provider actually in use (kind-agnostic)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from biomed import metadata
from service.config import ServiceConfig

log = logging.getLogger("biomed.service")

PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


class StartupError(RuntimeError):
    """The service cannot start: names the model and what is wrong."""


def provider_options(config: ServiceConfig) -> list[tuple[str, dict[str, Any]]]:
    """The requested providers in preference order, with their options."""
    unknown = [p for p in config.providers if p not in PROVIDER_NAMES]
    if unknown:
        raise StartupError(f"BIOMED_PROVIDERS has unknown {unknown}; choose from: {', '.join(PROVIDER_NAMES)}")
    chosen = []
    for key in config.providers:
        options: dict[str, Any] = {}
        if key == "cuda":
            options = {"device_id": 0, "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"}
            if config.gpu_mem_limit_mb:
                options["gpu_mem_limit"] = config.gpu_mem_limit_mb * 2**20
        elif key == "tensorrt":
            Path(config.trt_cache_dir).mkdir(parents=True, exist_ok=True)
            options = {"device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                       "trt_engine_cache_path": config.trt_cache_dir, "trt_timing_cache_enable": True}
            if config.gpu_mem_limit_mb:
                options["trt_max_workspace_size"] = config.gpu_mem_limit_mb * 2**20
        chosen.append((PROVIDER_NAMES[key], options))
    if ("CPUExecutionProvider", {}) not in chosen and not config.require_gpu:
        chosen.append(("CPUExecutionProvider", {}))
    return chosen


@functools.lru_cache(maxsize=1)
def preload_cuda() -> None:
    """Load CUDA/cuDNN from the nvidia-* wheels of ``onnxruntime-gpu[cuda,cudnn]`` when they are installed."""
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            ort.preload_dlls(directory="")
    except Exception as err:  # noqa: BLE001 - no GPU libraries: the CPU provider takes over
        log.debug("CUDA libraries not preloaded (%s)", type(err).__name__)


def make_session(path: Path, config: ServiceConfig) -> tuple[ort.InferenceSession, str]:
    """Create a session and read back the provider onnxruntime actually chose."""
    available = set(ort.get_available_providers())
    wanted = [(name, opts) for name, opts in provider_options(config) if name in available]
    if any(n in GPU_PROVIDERS for n, _ in wanted) and hasattr(ort, "preload_dlls"):
        preload_cuda()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if config.intra_op_threads:
        options.intra_op_num_threads = config.intra_op_threads
    # Decoding and the event loop share this process: intra-op threads that spin-wait between
    # calls take their cores (2x requests/s at 32 connections on 2 cores; docs/benchmarks.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if any(n in GPU_PROVIDERS for n, _ in wanted):
        ort.set_default_logger_severity(4)  # a CPU-only host: our own warning below says it once, clearly
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=[n for n, _ in wanted],
                                       provider_options=[o for _, o in wanted])
    finally:
        ort.set_default_logger_severity(2)
    provider = session.get_providers()[0]
    if wanted and wanted[0][0] != provider:
        log.warning("%s: %s is not usable here (no GPU, or CUDA 13 / cuDNN 9 libraries missing); running on %s",
                    path.parent.name, wanted[0][0], provider)
    if config.require_gpu and provider not in GPU_PROVIDERS:
        raise StartupError(f"BIOMED_REQUIRE_GPU=1 but {path.parent.name} runs on {provider}: CUDA is not usable here "
                           "(check the NVIDIA driver, CUDA 13 and cuDNN 9 libraries, and the GPU resource limit)")
    return session, provider


@dataclass
class LoadedModel:
    """One served model: its metadata document, session and provider."""

    name: str
    version: str
    doc: dict
    path: Path
    sha256: str
    session: ort.InferenceSession
    provider: str
    input_name: str = field(init=False)
    # What loading it cost (service/footprint.py) and how the engine routes to it (service/lifecycle.py).
    memory: dict = field(default_factory=lambda: {"host_bytes": None, "device_bytes": None})
    serving: dict = field(default_factory=lambda: {"default": True, "canary_percent": 0.0})

    def __post_init__(self) -> None:
        self.input_name = self.session.get_inputs()[0].name

    @property
    def kind(self) -> str:
        return self.doc["kind"]

    @property
    def labels(self) -> list[str]:
        return self.doc["labels"]

    @property
    def row_bytes(self) -> int:
        """Bytes of one input row (one image frame, one DNA window)."""
        size = np.dtype(self.doc["input"]["dtype"]).itemsize
        for dim in self.doc["input"]["shape"][1:]:
            size *= int(dim)
        return size

    def run(self, x: np.ndarray) -> np.ndarray:
        """One synchronous inference call (the batcher's worker thread)."""
        return self.session.run(None, {self.input_name: x})[0]

    def describe(self) -> dict:
        """The ``GET /models`` entry."""
        d = self.doc
        return {
            "name": self.name, "version": self.version, "kind": d["kind"], "labels": d["labels"],
            "multilabel": d["multilabel"], "input": d["input"], "output": d["output"], "preprocess": d["preprocess"],
            "provider": self.provider, "sha256": self.sha256, "architecture": d.get("architecture", {}).get("arch"),
            "metrics": d["training"]["metrics"], "baseline": d["training"].get("baseline"),
            "export": d.get("export", {}), "intended_use": d["intended_use"],
            "default": self.serving["default"], "canary_percent": self.serving["canary_percent"],
            "memory": dict(self.memory),
        }


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(ref: str, config: ServiceConfig) -> LoadedModel:
    """Resolve ``name[:version]`` in the store, validate its metadata, create the session.

    Raises:
        StartupError: naming the model and the file when anything is missing or invalid.
    """
    from biomed.store import ModelNotFound, onnx_path, resolve

    try:
        stored = resolve(ref, config.model_store) if config.model_store else resolve(ref)
    except ModelNotFound as err:
        raise StartupError(str(err)) from None
    path = onnx_path(stored)
    if not path.is_file():
        raise StartupError(f"model {stored.tag}: file {path} is missing")
    try:
        doc = metadata.read(path)
    except metadata.MetadataError as err:
        raise StartupError(f"model {stored.tag}: {path}: {err}") from None
    try:
        session, provider = make_session(path, config)
    except StartupError:
        raise
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise StartupError(f"model {stored.tag}: onnxruntime cannot load {path} ({type(err).__name__})") from None
    model = LoadedModel(stored.tag.name, stored.tag.version or doc["version"], doc, path, sha256_of(path), session, provider)
    log.info("loaded %s:%s (%s) on %s", model.name, model.version, model.kind, provider)
    return model


def warm_up(model: LoadedModel, max_batch_size: int = 2) -> None:
    """Inference on zero inputs of the model's shape: batch 2 (catches shape or provider errors early), then the
    largest batch the server will run, so onnxruntime's memory arena reaches its serving size before ``/readyz``
    (a burst then leaves no growth behind, and the memory model's baseline includes it)."""
    shape = [2 if isinstance(s, str) else int(s) for s in model.doc["input"]["shape"]]
    x = np.zeros(shape, dtype=np.dtype(model.doc["input"]["dtype"]))
    out = model.run(x)
    if out.shape != (2, len(model.labels)):
        raise StartupError(f"model {model.name}:{model.version}: output shape {out.shape} does not match "
                           f"{len(model.labels)} labels")
    if max_batch_size > 2:
        model.run(np.zeros([max_batch_size, *shape[1:]], dtype=x.dtype))
