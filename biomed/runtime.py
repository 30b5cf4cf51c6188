"""Models at run time: an ONNX file from the store, its onnxruntime session and the provider actually in use.

The one loader of the project: the service, the command line, the benchmarks and the GPU kit
all load models through ``load_model`` (or ``locate`` where only the file and its metadata are
wanted), so a model is resolved, validated and run the same way everywhere. Kind-agnostic: the
kind comes from the model's own metadata. Settings come in as ``RuntimeOptions``: the service
builds them from its environment (``ServiceConfig.runtime_options()``), tools take the CPU defaults.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable

import numpy as np
import onnxruntime as ort

from biomed import metadata
from biomed.settings import env

log = logging.getLogger("biomed.runtime")

PROVIDER_NAMES = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider",
                  "cpu": "CPUExecutionProvider"}
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
CHUNK_BYTES = 4 * 2**20  # input bytes per session call of ``chunked`` when no row count is given
MAX_CHUNK_ROWS = 1024  # and at most this many rows (the server's DNA batch: BIOMED_MAX_DNA_BATCH_SIZE)

Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]  # what biomed/dna_ops.py and biomed/occlusion.py call


class StartupError(RuntimeError):
    """A model cannot be loaded or run here: names the model and what is wrong."""


@dataclass(frozen=True)
class RuntimeOptions:
    """How sessions are made. The defaults suit a command-line tool: the CPU, onnxruntime's threads."""

    providers: tuple[str, ...] = ("cpu",)  # preference order, keys of PROVIDER_NAMES
    require_gpu: bool = False  # refuse a session that would run on the CPU
    gpu_mem_limit_mb: int = 0  # 0: no cap
    trt_cache_dir: str = "/tmp/biomed-trt"
    intra_op_threads: int = 0  # 0: onnxruntime's default (all cores)


def check_providers(providers: tuple[str, ...]) -> None:
    """Raises StartupError naming the provider names (``BIOMED_PROVIDERS``) that are not known, and the known ones."""
    unknown = [p for p in providers if p not in PROVIDER_NAMES]
    if unknown:
        raise StartupError(f"{env('providers')} has unknown {unknown}; choose from: {', '.join(PROVIDER_NAMES)}")


def provider_options(options: RuntimeOptions) -> list[tuple[str, dict[str, Any]]]:
    """The requested providers in preference order, with their options."""
    check_providers(options.providers)
    chosen = []
    for key in options.providers:
        opts: dict[str, Any] = {}
        if key == "cuda":
            opts = {"device_id": 0, "arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"}
            if options.gpu_mem_limit_mb:
                opts["gpu_mem_limit"] = options.gpu_mem_limit_mb * 2**20
        elif key == "tensorrt":
            Path(options.trt_cache_dir).mkdir(parents=True, exist_ok=True)
            opts = {"device_id": 0, "trt_fp16_enable": True, "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": options.trt_cache_dir, "trt_timing_cache_enable": True}
            if options.gpu_mem_limit_mb:
                opts["trt_max_workspace_size"] = options.gpu_mem_limit_mb * 2**20
        chosen.append((PROVIDER_NAMES[key], opts))
    if ("CPUExecutionProvider", {}) not in chosen and not options.require_gpu:
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


def make_session(path: Path, options: RuntimeOptions) -> tuple[ort.InferenceSession, str]:
    """Create a session and read back the provider onnxruntime actually chose."""
    available = set(ort.get_available_providers())
    wanted = [(name, opts) for name, opts in provider_options(options) if name in available]
    if any(n in GPU_PROVIDERS for n, _ in wanted) and hasattr(ort, "preload_dlls"):
        preload_cuda()
    session_options = ort.SessionOptions()
    session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if options.intra_op_threads:
        session_options.intra_op_num_threads = options.intra_op_threads
    # Decoding and the event loop share this process: intra-op threads that spin-wait between
    # calls take their cores (2x requests/s at 32 connections on 2 cores; docs/benchmarks.md).
    session_options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if any(n in GPU_PROVIDERS for n, _ in wanted):
        ort.set_default_logger_severity(4)  # a CPU-only host: our own warning below says it once, clearly
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options, providers=[n for n, _ in wanted],
                                       provider_options=[o for _, o in wanted])
    finally:
        ort.set_default_logger_severity(2)
    provider = session.get_providers()[0]
    if wanted and wanted[0][0] != provider:
        log.warning("%s: %s is not usable here (no GPU, or CUDA 13 / cuDNN 9 libraries missing); running on %s",
                    path.parent.name, wanted[0][0], provider)
    if options.require_gpu and provider not in GPU_PROVIDERS:
        raise StartupError(f"{env('require_gpu')}=1 but {path.parent.name} runs on {provider}: CUDA is not usable here "
                           "(check the NVIDIA driver, CUDA 13 and cuDNN 9 libraries, and the GPU resource limit)")
    return session, provider


@dataclass(frozen=True)
class ModelFile:
    """A stored model before it runs: its tag, ONNX file and validated metadata document."""

    name: str
    version: str
    path: Path
    doc: dict

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"

    @property
    def kind(self) -> str:
        return self.doc["kind"]


def locate(ref: str, store: str | Path | None = None, kind: str | None = None) -> ModelFile:
    """Resolve ``name[:version]`` in the store (BentoML's unless ``store``) and validate its metadata. A bare name is
    the version servers following it serve by default (``biomed.store.default_ref``: promoted, else the newest).

    Raises:
        StartupError: naming the model and the file when anything is missing or invalid.
        ValueError: when ``kind`` is given and the model is of another kind.
    """
    from biomed.store import ModelNotFound, default_ref, onnx_path, resolve

    try:
        stored = resolve(default_ref(ref, store).ref, store)
    except ModelNotFound as err:
        raise StartupError(str(err)) from None
    path = onnx_path(stored)
    if not path.is_file():
        raise StartupError(f"model {stored.tag}: file {path} is missing")
    try:
        doc = metadata.read(path)
    except metadata.MetadataError as err:
        raise StartupError(f"model {stored.tag}: {path}: {err}") from None
    if kind is not None and doc["kind"] != kind:
        raise ValueError(f"model {stored.tag} is of kind {doc['kind']!r}; a model of kind {kind!r} is needed here")
    return ModelFile(stored.tag.name, stored.tag.version or doc["version"], path, doc)


@dataclass
class LoadedModel:
    """One model ready to run: its metadata document, session and provider."""

    name: str
    version: str
    doc: dict
    path: Path
    sha256: str
    session: ort.InferenceSession
    provider: str
    input_name: str = field(init=False)
    # What loading it cost and how requests are routed to it: set by the service (footprint, lifecycle).
    memory: dict = field(default_factory=lambda: {"host_bytes": None, "device_bytes": None})
    serving: dict = field(default_factory=lambda: {"default": True, "canary_percent": 0.0})

    def __post_init__(self) -> None:
        self.input_name = self.session.get_inputs()[0].name

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the graph was made for, when it has one (an imported model's; see ``run``)."""
        first = self.doc["input"]["shape"][0]
        return first if isinstance(first, int) else None

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
        """One synchronous inference call (the batcher's worker thread, or a tool's loop).

        A graph of a fixed batch size B runs in calls of exactly B rows, the last one padded with zeros (whose
        outputs are dropped), so any number of rows can be asked of it.
        """
        fixed = self.fixed_batch
        if fixed is None or len(x) == fixed:
            return self.session.run(None, {self.input_name: x})[0]
        outputs = []
        for i in range(0, len(x), fixed):
            part = x[i : i + fixed]
            if len(part) < fixed:
                part = np.concatenate([part, np.zeros((fixed - len(part), *x.shape[1:]), dtype=x.dtype)])
            outputs.append(self.session.run(None, {self.input_name: part})[0])
        return np.concatenate(outputs)[: len(x)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_model(ref: str, options: RuntimeOptions, store: str | Path | None = None,
               kind: str | None = None) -> LoadedModel:
    """``locate`` the model, then create its session with ``options``.

    Raises:
        StartupError: naming the model and the file when anything is missing, invalid or not loadable.
        ValueError: when ``kind`` is given and the model is of another kind.
    """
    found = locate(ref, store, kind)
    try:
        session, provider = make_session(found.path, options)
    except StartupError:
        raise
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
        raise StartupError(f"model {found.ref}: onnxruntime cannot load {found.path} ({type(err).__name__})") from None
    model = LoadedModel(found.name, found.version, found.doc, found.path, sha256_of(found.path), session, provider)
    log.info("loaded %s:%s (%s) on %s", model.name, model.version, model.kind, provider)
    return model


def warm_up(model: LoadedModel, max_batch_size: int = 2) -> None:
    """Inference on zero inputs of the model's shape: batch 2 (catches shape or provider errors early), then the
    largest batch the server will run, so onnxruntime's memory arena reaches its serving size before ``/readyz``
    (a burst then leaves no growth behind, and the memory model's baseline includes it)."""
    shape = [2, *(int(s) for s in model.doc["input"]["shape"][1:])]
    x = np.zeros(shape, dtype=np.dtype(model.doc["input"]["dtype"]))
    out = model.run(x)
    if out.shape != (2, len(model.labels)):
        raise StartupError(f"model {model.name}:{model.version}: output shape {out.shape} does not match "
                           f"{len(model.labels)} labels")
    if max_batch_size > 2:
        model.run(np.zeros([max_batch_size, *shape[1:]], dtype=x.dtype))


def default_chunk_rows(model: LoadedModel) -> int:
    """Rows per session call when a tool names none: about CHUNK_BYTES of input, 1 to MAX_CHUNK_ROWS rows
    (1,024 short DNA windows; 256 frames of 64 x 64 float32)."""
    return max(1, min(MAX_CHUNK_ROWS, CHUNK_BYTES // model.row_bytes))


def chunked(model: LoadedModel, rows: np.ndarray, chunk_rows: int | None = None) -> np.ndarray:
    """The model's outputs for ``rows``, in synchronous session calls of at most ``chunk_rows`` rows
    (``default_chunk_rows(model)`` unless given)."""
    n = default_chunk_rows(model) if chunk_rows is None else chunk_rows
    if n < 1:
        raise ValueError(f"rows per session call must be at least 1; got {n}")
    return np.concatenate([model.run(rows[i : i + n]) for i in range(0, len(rows), n)])


def predictor(model: LoadedModel, chunk_rows: int | None = None) -> Predict:
    """The ``predict`` callable of ``biomed/dna_ops.py`` and ``biomed/occlusion.py`` for a tool without a batcher:
    ``chunked`` session calls in place of the server's queue."""

    async def predict(rows: np.ndarray) -> np.ndarray:
        return chunked(model, rows, chunk_rows)

    return predict
