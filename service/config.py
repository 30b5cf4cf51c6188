"""Service settings, read from the environment into a frozen dataclass.

``ServiceConfig.from_env()`` is the only reader of ``BIOMED_*`` variables in the server: the
engine reads it once at start-up and hands it to everything else.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Mapping

from biomed.flags import parse_flag
from biomed.runtime import RuntimeOptions
from biomed.store import DEMO_MODELS


BASELINE_BYTES = 400 * 2**20  # a worker at rest: Python, BentoML, onnxruntime, two demo-sized models (measured ~340 MB)
SLACK_BYTES = 128 * 2**20  # responses being written, parsed JSON within its value cap, allocator overhead


def _share(value: float, name: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value:g} must be between 0 and 1")
    return float(value)


def _list(value: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    items = tuple(v.strip() for v in (value or "").split(",") if v.strip())
    return items or default


_AET = re.compile(r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
DICOM_PEER = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


def _port(value: int) -> int:
    if not 0 <= value <= 65535:
        raise ValueError(f"BIOMED_DICOM_PORT={value} is not a TCP port (1-65535, or 0 for off)")
    return value


def _aet(value: str, name: str) -> str:
    """A DICOM AE title: 1-16 printable ASCII characters, no backslash, no leading or trailing space."""
    if not _AET.match(value):
        raise ValueError(f"{name}: {value!r} is not an AE title (1-16 printable ASCII characters, no backslash)")
    return value


def _destination(value: str) -> str:
    """``""``, a DICOMweb base URL (http/https) or a DIMSE peer ``AET@host:port``; anything else stops start-up."""
    if not value or re.match(r"^https?://[^\s/]+", value):
        return value
    peer = DICOM_PEER.match(value)
    if peer is None or not 0 < int(peer["port"]) <= 65535:
        raise ValueError("BIOMED_DICOM_DESTINATION is neither a DICOMweb base URL (http:// or https://) nor a DICOM "
                         "peer AET@host:port")
    _aet(peer["aet"], "BIOMED_DICOM_DESTINATION")
    return value


def _canary(value: str) -> tuple[tuple[str, str, float], ...]:
    """``BIOMED_CANARY``: comma list of ``name:version=percent`` (the share of the requests for ``name``)."""
    out, shares = [], {}
    for item in _list(value, ()):
        ref, _, share = item.rpartition("=")
        name, _, version = ref.strip().partition(":")
        try:
            percent = float(share)
        except ValueError:
            percent = float("nan")
        if not name or not version or version == "latest" or not 0 <= percent <= 100:
            raise ValueError(f"BIOMED_CANARY: {item!r} is not name:version=percent (a version of name and a "
                             "percentage from 0 to 100)")
        shares[name] = shares.get(name, 0.0) + percent
        if shares[name] > 100:
            raise ValueError(f"BIOMED_CANARY: the canary shares of {name} add up to {shares[name]:g}%, over 100")
        out.append((name, version, percent))
    return tuple(out)


@dataclass(frozen=True)
class ServiceConfig:
    """Everything the service reads from its environment (documented in docs/api.md)."""

    models: tuple[str, ...] = DEMO_MODELS
    model_store: str = ""  # a model store folder to load from and watch (""; BentoML's store)
    model_poll_s: float = 10.0  # seconds between looks at the store for new versions and rollouts (0: never)
    canary: tuple[tuple[str, str, float], ...] = ()  # (name, version, percent of the requests for name)
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
    max_occlusion_rows: int = 4_096  # model rows of one /explain_image (1 + patches)
    max_batch_size: int = 32  # images per inference call
    max_dna_batch_size: int = 1024  # DNA windows per inference call
    max_latency_ms: float = 5.0  # longest wait for a batch to fill while more requests are on their way
    intra_op_threads: int = 0  # 0: onnxruntime's default (all cores)
    preprocess_threads: int = 4
    cors_origins: tuple[str, ...] = ()  # CORS is off unless origins are named
    workers: int = 1  # BentoML worker processes
    request_timeout_s: float = 60.0  # 504 when no response has started by then
    max_concurrency: int = 256  # requests in flight per worker; 429 past it
    trace_sample_rate: float = 0.0  # OpenTelemetry traces sampled (0: BentoML's tracing middleware is skipped)
    max_decoded_bytes: int = 256 * 2**20  # decoded pixel bytes of one file (samples x bits x frames)
    max_decoding_bytes: int = 1024 * 2**20  # what all decodes in flight may hold together (429 past it)
    max_dicom_elements: int = 100_000  # data elements of one DICOM dataset
    max_request_rows: int = 131_072  # model rows one request may queue
    max_queued_bytes: int = 64 * 2**20  # bytes of model rows one model's queue may hold (429 past it)
    max_body_bytes: int = 256 * 2**20  # request bodies one worker holds at once (429 past it)
    body_timeout_s: float = 30.0  # the whole request body must arrive within this (408)
    body_min_rate: int = 16 * 1024  # bytes/s a body must keep up after its first 2 s (408)
    small_upload_bytes: int = 256 * 1024  # uploads up to this decode on their own threads (the fast lane)
    inline_decode_bytes: int = 1024 * 1024  # uploads up to this decode on the event loop, within caps (0: never)
    # DICOM network (service/dicom/): the C-STORE receiver, STOW-RS and where results go as DICOM SR.
    dicom_port: int = 0  # 0: the C-STORE receiver is off
    dicom_host: str = "0.0.0.0"
    dicom_aet: str = "BIOMED"
    dicom_allowed_aets: tuple[str, ...] = ()  # calling AE titles allowed; ("*",): any; (): none
    dicom_max_associations: int = 10
    dicom_destination: str = ""  # a DICOMweb base URL or AET@host:port; "": SRs are not sent
    dicom_spool: str = ""  # durable spool of SRs on their way to the destination
    dicom_retry_max_s: float = 300.0  # the longest wait between delivery attempts (exponential backoff)
    max_stow_bytes: int = 1024 * 2**20  # one STOW-RS request (a study), streamed part by part

    def __post_init__(self) -> None:
        if self.dicom_port and not self.dicom_allowed_aets:
            raise ValueError("BIOMED_DICOM_PORT is set but BIOMED_DICOM_ALLOWED_AETS is empty: list the calling AE titles "
                             "allowed to send (comma-separated), or * for any")

    def runtime_options(self) -> RuntimeOptions:
        """How this server makes its sessions (``biomed/runtime.py``): providers, GPU settings, threads."""
        return RuntimeOptions(providers=self.providers, require_gpu=self.require_gpu,
                              gpu_mem_limit_mb=self.gpu_mem_limit_mb, trt_cache_dir=self.trt_cache_dir,
                              intra_op_threads=self.intra_op_threads)

    def memory_bound(self, models: int | None = None) -> int:
        """The worst-case resident memory of one worker under these limits (docs/reliability.md, "Memory model").

        Each term is a bound the service enforces: request bodies held at once (each also parsed
        into a multipart part and the file read from it), what all image decodes may reserve, and
        per model a queue of model rows with the copies made while building them (strands,
        placements, ISM mutants) and their outputs. With the C-STORE receiver on, the instances it holds
        (``BIOMED_MAX_BODIES_MB`` of them, parsed like bodies) come on top.
        """
        # Models loaded at once: each entry of BIOMED_MODELS and canary version not among them, and while the store
        # is watched one more (a reload warms the new version up beside the old one, which drains before it goes).
        canaries = {f"{name}:{version}" for name, version, _ in self.canary} - set(self.models)
        n = len(self.models) + len(canaries) + (1 if self.model_poll_s > 0 else 0) if models is None else models
        received = 3 * self.max_body_bytes if self.dicom_port else 0  # instances the C-STORE receiver holds
        return BASELINE_BYTES + 3 * self.max_body_bytes + self.max_decoding_bytes + n * 3 * self.max_queued_bytes \
            + SLACK_BYTES + received

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServiceConfig":
        """Read every ``BIOMED_*`` setting (``env`` defaults to ``os.environ``).

        Raises:
            ValueError: naming the variable whose value is not a number or not a flag.
        """
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
            models=_list(e.get("BIOMED_MODELS"), DEMO_MODELS),
            model_store=e.get("BIOMED_MODEL_STORE", "").strip(),
            model_poll_s=float(num("BIOMED_MODEL_POLL_S", 10.0, float)),
            canary=_canary(e.get("BIOMED_CANARY", "")),
            providers=tuple(p.lower() for p in _list(e.get("BIOMED_PROVIDERS"), ("cuda", "cpu"))),
            require_gpu=parse_flag(e.get("BIOMED_REQUIRE_GPU"), False, "BIOMED_REQUIRE_GPU"),
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
            max_occlusion_rows=int(num("BIOMED_MAX_OCCLUSION_ROWS", 4_096)),
            max_batch_size=int(num("BIOMED_MAX_BATCH_SIZE", 32)),
            max_dna_batch_size=int(num("BIOMED_MAX_DNA_BATCH_SIZE", 1024)),
            max_latency_ms=float(num("BIOMED_MAX_LATENCY_MS", 5.0, float)),
            intra_op_threads=int(num("BIOMED_INTRA_OP_THREADS", 0)),
            preprocess_threads=int(num("BIOMED_PREPROCESS_THREADS", 4)),
            cors_origins=_list(e.get("BIOMED_CORS_ORIGINS"), ()),
            workers=int(num("BIOMED_WORKERS", 1)),
            request_timeout_s=float(num("BIOMED_REQUEST_TIMEOUT_S", 60.0, float)),
            max_concurrency=int(num("BIOMED_MAX_CONCURRENCY", 256)),
            trace_sample_rate=_share(num("BIOMED_TRACE_SAMPLE_RATE", 0.0, float), "BIOMED_TRACE_SAMPLE_RATE"),
            max_decoded_bytes=int(num("BIOMED_MAX_DECODED_MB", 256, float) * 2**20),
            max_decoding_bytes=int(num("BIOMED_MAX_DECODING_MB", 1024, float) * 2**20),
            max_dicom_elements=int(num("BIOMED_MAX_DICOM_ELEMENTS", 100_000)),
            max_request_rows=int(num("BIOMED_MAX_REQUEST_ROWS", 131_072)),
            max_queued_bytes=int(num("BIOMED_MAX_QUEUED_MB", 64, float) * 2**20),
            max_body_bytes=int(num("BIOMED_MAX_BODIES_MB", 256, float) * 2**20),
            body_timeout_s=float(num("BIOMED_BODY_TIMEOUT_S", 30.0, float)),
            body_min_rate=int(num("BIOMED_BODY_MIN_KBPS", 16, float) * 1024),
            small_upload_bytes=int(num("BIOMED_SMALL_UPLOAD_KB", 256, float) * 1024),
            inline_decode_bytes=int(num("BIOMED_INLINE_DECODE_KB", 1024, float) * 1024),
            dicom_port=_port(int(num("BIOMED_DICOM_PORT", 0))),
            dicom_host=e.get("BIOMED_DICOM_HOST", "").strip() or "0.0.0.0",
            dicom_aet=_aet(e.get("BIOMED_DICOM_AET", "").strip() or "BIOMED", "BIOMED_DICOM_AET"),
            dicom_allowed_aets=tuple(a if a == "*" else _aet(a, "BIOMED_DICOM_ALLOWED_AETS")
                                     for a in _list(e.get("BIOMED_DICOM_ALLOWED_AETS"), ())),
            dicom_max_associations=int(num("BIOMED_DICOM_MAX_ASSOCIATIONS", 10)),
            dicom_destination=_destination(e.get("BIOMED_DICOM_DESTINATION", "").strip()),
            dicom_spool=e.get("BIOMED_DICOM_SPOOL", "").strip() or os.path.join(
                e.get("BENTOML_HOME") or os.path.expanduser("~/bentoml"), "dicom-spool"),
            dicom_retry_max_s=float(num("BIOMED_DICOM_RETRY_MAX_S", 300.0, float)),
            max_stow_bytes=int(num("BIOMED_MAX_STOW_MB", 1024, float) * 2**20),
        )
