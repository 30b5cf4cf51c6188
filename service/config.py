"""Service settings, read from the environment once at start-up into a frozen dataclass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

DEFAULT_MODELS = ("demo-image", "demo-dna")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _list(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    items = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    return items or default


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service reads from its environment (documented in the README)."""

    models: tuple[str, ...] = DEFAULT_MODELS
    providers: tuple[str, ...] = ("cuda", "cpu")  # preference order; "tensorrt" is opt-in
    require_gpu: bool = False
    gpu_mem_limit_mb: int = 0  # 0: no cap
    trt_cache_dir: str = "/tmp/biomed-trt"
    api_token: str = field(default="", repr=False)
    max_upload_bytes: int = 64 * 2**20
    max_pixels: int = 100_000_000
    max_frames: int = 256
    max_sequences: int = 10_000
    max_bases: int = 2_000_000
    max_variants: int = 10_000
    max_explain_bases: int = 5_000
    max_batch_size: int = 32  # images per inference call
    max_dna_batch_size: int = 1024  # DNA windows per inference call
    max_latency_ms: float = 5.0  # longest wait for a batch to fill while more requests are on their way
    intra_op_threads: int = 0  # 0: onnxruntime's default (all cores)
    preprocess_threads: int = 4
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are named

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> "ServiceConfig":
        e = os.environ if env is None else env

        def num(name: str, default: float, kind: type = int) -> float:
            raw = e.get(name)
            if raw is None or raw.strip() == "":
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number") from None

        return cls(
            models=_list(e.get("BIOMED_MODELS"), DEFAULT_MODELS),
            providers=tuple(p.lower() for p in _list(e.get("BIOMED_PROVIDERS"), ("cuda", "cpu"))),
            require_gpu=_flag(e.get("BIOMED_REQUIRE_GPU")),
            gpu_mem_limit_mb=int(num("BIOMED_GPU_MEM_LIMIT_MB", 0)),
            trt_cache_dir=e.get("BIOMED_TRT_CACHE_DIR", "/tmp/biomed-trt"),
            api_token=e.get("BIOMED_API_TOKEN", ""),
            max_upload_bytes=int(num("BIOMED_MAX_UPLOAD_MB", 64, float) * 2**20),
            max_pixels=int(num("BIOMED_MAX_PIXELS", 100_000_000)),
            max_frames=int(num("BIOMED_MAX_FRAMES", 256)),
            max_sequences=int(num("BIOMED_MAX_SEQUENCES", 10_000)),
            max_bases=int(num("BIOMED_MAX_BASES", 2_000_000)),
            max_variants=int(num("BIOMED_MAX_VARIANTS", 10_000)),
            max_explain_bases=int(num("BIOMED_MAX_EXPLAIN_BASES", 5_000)),
            max_batch_size=int(num("BIOMED_MAX_BATCH_SIZE", 32)),
            max_dna_batch_size=int(num("BIOMED_MAX_DNA_BATCH_SIZE", 1024)),
            max_latency_ms=float(num("BIOMED_MAX_LATENCY_MS", 5.0, float)),
            intra_op_threads=int(num("BIOMED_INTRA_OP_THREADS", 0)),
            preprocess_threads=int(num("BIOMED_PREPROCESS_THREADS", 4)),
            cors_origins=_list(e.get("BIOMED_CORS_ORIGINS"), ()),
        )
