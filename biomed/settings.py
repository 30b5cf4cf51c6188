"""Every ``BIOMED_*`` setting, declared once: its field, environment variable, default and documentation.

``Settings`` is a frozen dataclass whose fields are declared with :func:`setting`: the environment
variable, the default as a user writes it (``"64"`` for 64 MiB), how the text is read, and the line
docs/api.md shows. Everything else derives from the declaration: the field's default, ``from_env``,
the name a message quotes (:func:`env`, so ``env("max_upload_bytes")`` is ``"BIOMED_MAX_UPLOAD_MB"``),
the defaults of the core's own caps (``biomed.preprocess.budget.Limits``) and the settings table of
docs/api.md (``python -m biomed.settings`` prints it; a test compares the two).

The server reads these once, at start-up (``service.config.ServiceConfig`` adds what only the server
needs); a value that cannot be read stops it with a message naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from biomed.flags import parse_flag

DEMO_MODELS = ("demo-image", "demo-dna", "demo-volume")
MB, KB = 2**20, 1024
_AET = re.compile(r"^[\x21-\x5b\x5d-\x7e](?:[\x20-\x5b\x5d-\x7e]{0,14}[\x21-\x5b\x5d-\x7e])?$")
DICOM_PEER = re.compile(r"^(?P<aet>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})$")


@dataclass(frozen=True)
class Declared:
    """One setting as declared: where it comes from, its default as written, and how its text becomes a value."""

    env: str
    default: str  # as a user writes it in the environment ("" for empty)
    doc: str  # the meaning, as docs/api.md's table shows it
    read: Callable[[str], Any]  # text -> value; ValueError with what is accepted (the variable is added)
    shown: str = ""  # the default as the docs show it, when not the text itself ("off", "empty (auth off)")
    computed: Callable[[Mapping[str, str]], str] | None = None  # a default that depends on the environment

    def value(self, env: Mapping[str, str]) -> Any:
        raw = env.get(self.env)
        if raw is None or raw.strip() == "":
            raw = self.computed(env) if self.computed is not None else self.default
        try:
            return self.read(raw)
        except ValueError as err:
            raise ValueError(f"{self.env}={raw!r} {err}") from None


def setting(env: str, default: str, doc: str, read: Callable[[str], Any], shown: str = "",
            computed: Callable[[Mapping[str, str]], str] | None = None) -> Any:
    """A ``Settings`` field declared with its environment variable (see the module docstring)."""
    declared = Declared(env, default, doc, read, shown, computed)
    value = declared.read(default) if computed is None else declared.read(computed({}))
    if isinstance(value, (list, dict, set)):
        raise TypeError(f"{env}: a setting's value must be immutable")
    return field(default=value, metadata={"setting": declared}, repr="TOKEN" not in env)


# ---------------------------------------------------------------- how text becomes a value


def as_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("is not a number (an integer)") from None


def as_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("is not a number") from None
    if value != value:  # NaN
        raise ValueError("is not a number")
    return value


def as_mb(text: str) -> int:
    return int(as_float(text) * MB)


def as_kb(text: str) -> int:
    return int(as_float(text) * KB)


def as_flag(text: str) -> bool:
    try:
        return parse_flag(text, False, "")
    except ValueError:
        raise ValueError("must be true or false (1, true, yes, on / 0, false, no, off)") from None


def as_text(value: str) -> str:
    return value.strip()


def as_secret(value: str) -> str:
    return value


def as_list(value: str) -> tuple[str, ...]:
    """A comma list (blank items dropped)."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def as_lower_list(value: str) -> tuple[str, ...]:
    return tuple(v.lower() for v in as_list(value))


def as_share(value: str) -> float:
    x = as_float(value)
    if not 0.0 <= x <= 1.0:
        raise ValueError("must be between 0 and 1")
    return x


def as_port(value: str) -> int:
    x = as_int(value)
    if not 0 <= x <= 65535:
        raise ValueError("is not a TCP port (1-65535, or 0 for off)")
    return x


def as_aet(value: str) -> str:
    """A DICOM AE title: 1-16 printable ASCII characters, no backslash, no leading or trailing space."""
    if not _AET.match(value.strip()):
        raise ValueError("is not an AE title (1-16 printable ASCII characters, no backslash)")
    return value.strip()


def as_aets(value: str) -> tuple[str, ...]:
    """Calling AE titles, or ``*`` for any."""
    return tuple(a if a == "*" else as_aet(a) for a in as_list(value))


def as_destination(value: str) -> str:
    """``""``, a DICOMweb base URL (http/https) or a DIMSE peer ``AET@host:port``."""
    value = value.strip()
    if not value or re.match(r"^https?://[^\s/]+", value):
        return value
    peer = DICOM_PEER.match(value)
    if peer is None or not 0 < int(peer["port"]) <= 65535:
        raise ValueError("is neither a DICOMweb base URL (http:// or https://) nor a DICOM peer AET@host:port")
    as_aet(peer["aet"])
    return value


def as_audit(value: str) -> str:
    """``""`` (off), ``file:PATH``, ``udp://HOST:PORT`` or ``tcp://HOST:PORT``."""
    value = value.strip()
    if not value:
        return value
    if value.startswith("file:"):
        if not value[5:].strip():
            raise ValueError("names no file (file:PATH)")
        return value
    found = re.match(r"^(udp|tcp)://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):([0-9]{1,5})$", value)
    if found is None or not 0 < int(found[3]) <= 65535:
        raise ValueError("is not file:PATH, udp://HOST:PORT (RFC 5426) or tcp://HOST:PORT (RFC 6587)")
    return value


def as_canary(value: str) -> tuple[tuple[str, str, float], ...]:
    """A comma list of ``name:version=percent`` (the share of the requests for ``name``)."""
    out, shares = [], {}
    for item in as_list(value):
        ref, _, given = item.rpartition("=")
        name, _, version = ref.strip().partition(":")
        try:
            percent = float(given)
        except ValueError:
            percent = float("nan")
        if not name or not version or version == "latest" or not 0 <= percent <= 100:
            raise ValueError(f"has {item!r}, which is not name:version=percent (a version of name and a percentage "
                             "from 0 to 100)")
        shares[name] = shares.get(name, 0.0) + percent
        if shares[name] > 100:
            raise ValueError(f"gives {name} canary shares that add up to {shares[name]:g}%, over 100")
        out.append((name, version, percent))
    return tuple(out)


def as_choice(*choices: str) -> Callable[[str], str]:
    """One of ``choices``, compared in lower case; an empty text is the first."""

    def read(value: str) -> str:
        value = value.strip().lower()
        if value not in choices:
            raise ValueError(f"is not one of: {', '.join(c or 'empty' for c in choices)}")
        return value

    return read


def as_positive_number(value: str) -> float:
    x = as_float(value)
    if not x > 0:
        raise ValueError("must be a positive number")
    return x


def as_count(value: str) -> int:
    x = as_int(value)
    if x < 1:
        raise ValueError("must be at least 1")
    return x


def _spool_default(env: Mapping[str, str]) -> str:
    return os.path.join(env.get("BENTOML_HOME") or os.path.expanduser("~/bentoml"), "dicom-spool")


# ---------------------------------------------------------------- the settings


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from its environment (docs/api.md, "Settings and limits")."""

    port: int = setting("PORT", "3000", "HTTP port of `biomed serve` / `make serve`", as_port)
    host: str = setting("BIOMED_HOST", "127.0.0.1", "bind address of `biomed serve` (use `0.0.0.0` to listen on all "
                        "interfaces)", as_text)
    models: tuple[str, ...] = setting(
        "BIOMED_MODELS", ",".join(DEMO_MODELS), "comma list of models to load from the model store: `name` (the newest "
        "export, followed as new ones appear) or `name:version` (kept loaded). A name may appear with several versions; "
        "its first entry is its default ([Choosing a model](#choosing-a-model)). The same entry twice stops start-up",
        as_list)
    canary: tuple[tuple[str, str, float], ...] = setting(
        "BIOMED_CANARY", "", "comma list of `name:version=percent`: that share (0 to 100) of the requests for `name` goes "
        "to `version` (`name` must be in `BIOMED_MODELS`; `version` is loaded if it does not list it). A name's shares "
        "add up to at most 100. The store's rollout file (`biomed models canary`) overrides it per name", as_canary)
    model_store: str = setting(
        "BIOMED_MODEL_STORE", "", "a model store folder to load from and watch (the folder of `<name>/<version>/` "
        "entries, e.g. `$BENTOML_HOME/models` of another home, or a volume several pods share). Empty: "
        "`$BENTOML_HOME/models`, or inside a bento image its own bundled store", as_text, shown="empty (BentoML's store)")
    model_poll_s: float = setting(
        "BIOMED_MODEL_POLL_S", "10", "seconds between each worker's looks at the model store for new exports and rollout "
        "changes (two small files per name). `0`: never; versions change only at a restart, and `POST "
        "/admin/models/promote` answers 409", as_float)
    providers: tuple[str, ...] = setting(
        "BIOMED_PROVIDERS", "cuda,cpu", "onnxruntime execution providers in order of preference: `tensorrt`, `cuda`, "
        "`cpu`. Unknown names stop start-up. The CPU provider is always added as the last fallback unless "
        "`BIOMED_REQUIRE_GPU` is on. TensorRT runs with FP16 and an engine cache", as_lower_list)
    require_gpu: bool = setting(
        "BIOMED_REQUIRE_GPU", "0", "on: start-up fails when a model would run on the CPU instead of CUDA/TensorRT, and "
        "`biomed_gpu_required` is 1", as_flag, shown="off")
    gpu_mem_limit_mb: int = setting(
        "BIOMED_GPU_MEM_LIMIT_MB", "0", "GPU memory cap: the CUDA provider's arena limit, and the TensorRT workspace "
        "size", as_int, shown="`0` (no cap)")
    trt_cache_dir: str = setting("BIOMED_TRT_CACHE_DIR", "/tmp/biomed-trt", "TensorRT engine cache directory (created "
                                 "when `tensorrt` is requested)", as_text)
    api_token: str = setting("BIOMED_API_TOKEN", "", "when set, every non-open path needs `Authorization: Bearer "
                             "<token>`", as_secret, shown="empty (auth off)")
    api_tokens_file: str = setting(
        "BIOMED_API_TOKENS_FILE", "", "a file of named API tokens, one `name:token` a line (`#` comments; e.g. a mounted "
        "Kubernetes Secret), read again when it changes: each opens the non-open paths like `BIOMED_API_TOKEN` (beside "
        "it), and the [audit trail](#the-audit-trail) names the client by its token's name. Set, it turns auth on even "
        "when it holds no token", as_text, shown="empty (none)")
    audit: str = setting(
        "BIOMED_AUDIT", "", "where the [audit trail](#the-audit-trail) goes: `file:PATH` (created with mode 0600), "
        "`udp://HOST:PORT` (syslog, RFC 5426) or `tcp://HOST:PORT` (syslog, RFC 6587 octet counting); RFC 5424 "
        "messages holding DICOM audit messages (PS3.15 A.5). The only place patient and study identifiers are written",
        as_audit, shown="empty (off)")
    audit_buffer: int = setting(
        "BIOMED_AUDIT_BUFFER", "10000", "audit messages one worker holds while its target is slow or down; past it "
        "they are dropped and counted (`biomed_audit_dropped_total`), never making a request wait", as_count)
    cors_origins: tuple[str, ...] = setting(
        "BIOMED_CORS_ORIGINS", "", "comma list of allowed origins. When set, CORS allows methods `GET`, `POST` and "
        "headers `Authorization`, `Content-Type`, `X-Request-ID`", as_list, shown="empty (CORS off)")
    max_upload_bytes: int = setting(
        "BIOMED_MAX_UPLOAD_MB", "64", "the cap on any request body, in MiB (fractions allowed). It also caps an inflated "
        "deflated DICOM dataset", as_mb)
    body_timeout_s: float = setting(
        "BIOMED_BODY_TIMEOUT_S", "30", "a request body must arrive whole within this many seconds; else 408 "
        "`request_timeout`", as_float)
    body_min_rate: int = setting(
        "BIOMED_BODY_MIN_KBPS", "16", "after its first 2 s, a body must keep arriving at this average rate in KiB/s or "
        "faster; else 408. `0` turns the rate check off", as_kb)
    max_body_bytes: int = setting(
        "BIOMED_MAX_BODIES_MB", "256", "the most MiB of request bodies (and received DICOM instances, and v2 answers "
        "being sent) one worker holds at once, counted as the bytes arrive; one peer address may hold at most half of "
        "it, or one whole upload when that is more. Past either, 429 `too_many_requests`. `0`: no limit", as_mb)
    max_pixels: int = setting(
        "BIOMED_MAX_PIXELS", "100000000", "the most pixels per image file, rows × columns × frames, checked from the "
        "header (and from each compressed frame's codestream)", as_int)
    max_frames: int = setting("BIOMED_MAX_FRAMES", "256", "the most frames per image file, checked from the header",
                              as_int)
    max_decoded_bytes: int = setting(
        "BIOMED_MAX_DECODED_MB", "256", "the most MiB one image file may decode to (rows × columns × frames × samples × "
        "bytes per sample), checked from the header and each compressed frame's codestream; past it, 413", as_mb)
    max_decoding_bytes: int = setting(
        "BIOMED_MAX_DECODING_MB", "1024", "the MiB that all image decodes in flight in one worker may reserve together "
        "(each reserves its estimated working set). An image that alone needs more gets 413; one that does not fit "
        "beside the others, 429. Must be positive", as_mb)
    max_dicom_elements: int = setting(
        "BIOMED_MAX_DICOM_ELEMENTS", "100000", "the most data elements of one DICOM dataset, counted before parsing (a "
        "sequence item counts as 5, a pixel-data fragment as 1); past it, 413", as_int)
    max_voxels: int = setting(
        "BIOMED_MAX_VOXELS", "268435456", "the most voxels of one series a [volume model](#volume-models) takes, rows × "
        "columns × frames over its files, counted from their headers before any is decoded (512 × 512 × 1024 at the "
        "default); past it, 413", as_int)
    small_upload_bytes: int = setting(
        "BIOMED_SMALL_UPLOAD_KB", "256", "image uploads up to this many KiB decode on a pool of their own (half of "
        "`BIOMED_PREPROCESS_THREADS`, at least 1), so they never wait behind large ones", as_kb)
    inline_decode_bytes: int = setting(
        "BIOMED_INLINE_DECODE_KB", "1024", "image uploads up to this many KiB decode on the event loop itself, without a "
        "handoff to a thread (decoding is mostly Python holding the GIL, so a thread competes with the event loop and "
        "the handoffs cost more than they save: a 512×512 CT slice at 16 connections, 257 req/s on threads, 330 on the "
        "loop); only within 512×512 decoded pixels (256×256 in a JPEG, JPEG-LS or JPEG 2000 transfer syntax), 1 MiB of "
        "decoded pixels and 2,000 DICOM elements, so one such decode takes a few milliseconds; a file past those caps "
        "is decoded on a thread under the full limits. `0`: every upload decodes on a thread", as_kb)
    max_sequences: int = setting(
        "BIOMED_MAX_SEQUENCES", "10000", "the most sequences (or FASTA records, counted while parsing, or variants) per "
        "request", as_int)
    max_bases: int = setting(
        "BIOMED_MAX_BASES", "2000000", "the most bases per request, summed over its sequences (`/predict_dna`, "
        "`/predict_fasta`, `/score_variants`)", as_int)
    max_variants: int = setting("BIOMED_MAX_VARIANTS", "10000", "the most variants per `/score_variants` request",
                                as_int)
    max_explain_bases: int = setting("BIOMED_MAX_EXPLAIN_BASES", "5000", "the longest sequence `/explain_dna` takes",
                                     as_int)
    max_occlusion_rows: int = setting(
        "BIOMED_MAX_OCCLUSION_ROWS", "4096", "the most model rows one `/explain_image` may run: 1 + its patches (226 at "
        "the default patch and stride); past it, 413 before the file is decoded", as_int)
    max_request_rows: int = setting(
        "BIOMED_MAX_REQUEST_ROWS", "131072", "the most model rows one request may queue ([how rows are "
        "counted](#limits-and-overload)); past it, 413. `0`: no limit", as_int)
    max_queued_bytes: int = setting(
        "BIOMED_MAX_QUEUED_MB", "64", "the most MiB of model rows one model's queue may hold in one worker, counted from "
        "admission to the answer. A request that would pass it gets 429; one that alone needs more gets 413. `0`: no "
        "limit", as_mb)
    max_batch_size: int = setting(
        "BIOMED_MAX_BATCH_SIZE", "32", "the most rows per inference call for image models (one row per frame). Larger "
        "submissions are split across calls", as_int)
    max_dna_batch_size: int = setting(
        "BIOMED_MAX_DNA_BATCH_SIZE", "1024", "the same for DNA models (one row per window and strand)", as_int)
    max_latency_ms: float = setting(
        "BIOMED_MAX_LATENCY_MS", "5", "the longest time a forming batch waits for more rows, only while other requests "
        "are still being decoded. A lone request never waits", as_float)
    intra_op_threads: int = setting(
        "BIOMED_INTRA_OP_THREADS", "0", "onnxruntime intra-op threads per session; `0` uses onnxruntime's default (all "
        "cores)", as_int)
    preprocess_threads: int = setting(
        "BIOMED_PREPROCESS_THREADS", "4", "threads per worker that decode and preprocess images larger than "
        "`BIOMED_SMALL_UPLOAD_KB`", as_int)
    workers: int = setting("BIOMED_WORKERS", "1", "worker processes. Each loads every model; `biomed serve --workers "
                           "N` sets it", as_int)
    request_timeout_s: float = setting(
        "BIOMED_REQUEST_TIMEOUT_S", "60", "504 `timeout` when a request's response has not started by then", as_float)
    max_concurrency: int = setting(
        "BIOMED_MAX_CONCURRENCY", "256", "the most requests in flight for the whole service, shared out among the "
        "workers (`ceil(N / workers)` each); past that, 429 `too_many_requests` with `Retry-After: 1`. A request counts "
        "once its body is in (STOW-RS, streamed: once its headers are); the probes, `/metrics` and the page do not "
        "count", as_int)
    trace_sample_rate: float = setting(
        "BIOMED_TRACE_SAMPLE_RATE", "0", "the share of requests BentoML traces with OpenTelemetry. At `0` (the default: "
        "no traces would be kept anyway) BentoML's tracing middleware is skipped for every path, which saves ~8 % of a "
        "small request's CPU; above `0` it runs and samples at that rate (configure the exporter with "
        "`BENTOML_CONFIG_OPTIONS`, e.g. `services.biomed-serve.tracing.exporter_type=otlp`)", as_share)
    max_stow_bytes: int = setting(
        "BIOMED_MAX_STOW_MB", "1024", "the cap on one [STOW-RS](#post-dicomwebstudies) body (a study, read part by part; "
        "each part within `BIOMED_MAX_UPLOAD_MB`); past it, 413", as_mb)
    dicom_port: int = setting(
        "BIOMED_DICOM_PORT", "0", "the [C-STORE receiver](#the-dicom-network-c-store-sr-forwarding)'s TCP port; every "
        "worker listens on it (`SO_REUSEPORT`). `biomed serve --dicom-port P` sets it; needs an image model and "
        "`BIOMED_DICOM_ALLOWED_AETS`", as_port, shown="`0` (off)")
    dicom_host: str = setting(
        "BIOMED_DICOM_HOST", "0.0.0.0", "the receiver's bind address. Unset under `biomed serve --dicom-port`, it is "
        "`biomed serve`'s `--host` (by default `127.0.0.1`: this machine only); a modality on another host needs "
        "`--host 0.0.0.0` or this set to `0.0.0.0`", as_text,
        shown="`biomed serve`: its `--host` (`127.0.0.1`); else `0.0.0.0`")
    dicom_aet: str = setting(
        "BIOMED_DICOM_AET", "BIOMED", "the receiver's AE title, and the calling AE title of C-STOREs to a DIMSE "
        "destination (1-16 printable ASCII characters, no backslash)", as_aet)
    dicom_allowed_aets: tuple[str, ...] = setting(
        "BIOMED_DICOM_ALLOWED_AETS", "", "comma list of the calling AE titles allowed to open associations; `*` allows "
        "any (logged as a warning at start-up). Must be set when `BIOMED_DICOM_PORT` is", as_aets)
    dicom_max_associations: int = setting(
        "BIOMED_DICOM_MAX_ASSOCIATIONS", "10", "associations one worker's receiver serves at once (more are rejected, "
        "\"local limit exceeded\"); a connection that has not asked for one does not count", as_int)
    dicom_max_connections: int = setting(
        "BIOMED_DICOM_MAX_CONNECTIONS", "32", "TCP connections one worker's receiver keeps open, at most half of them (or "
        "`BIOMED_DICOM_MAX_ASSOCIATIONS`, when more) from one peer address; at a cap the oldest connection that has not yet sent its A-ASSOCIATE-RQ is closed to admit "
        "the new one (when all have, the new one is closed). At least `BIOMED_DICOM_MAX_ASSOCIATIONS`", as_int)
    dicom_associate_timeout_s: float = setting(
        "BIOMED_DICOM_ASSOCIATE_TIMEOUT_S", "10", "seconds a new connection to the receiver has to send its whole "
        "A-ASSOCIATE-RQ; else it is closed", as_float)
    dicom_temp_bytes: int = setting(
        "BIOMED_DICOM_TEMP_MB", "1024", "the most MiB of incoming datasets in the receiver's temporary folder (shared out "
        "among the workers); an association whose dataset would pass it is aborted. A dataset cut by an abort or a "
        "reset is removed when its association ends. `0`: no cap", as_mb)
    dicom_destination: str = setting(
        "BIOMED_DICOM_DESTINATION", "", "where result SRs go: a DICOMweb base URL (`http(s)://host/dicom-web`, STOW-RS "
        "to `{url}/studies`) or a DICOM peer `AET@host:port` (C-STORE). Anything else stops start-up", as_destination,
        shown="empty (no SRs)")
    dicom_model: str = setting(
        "BIOMED_DICOM_MODEL", "", "the model the DICOM doors (C-STORE, STOW-RS) send every instance to, `name` or "
        "`name:version` (it must serve them, or start-up stops). Empty: [by modality](#which-model-a-dicom-instance-"
        "reaches), the first model whose metadata lists the instance's Modality, else the first that lists none",
        as_text, shown="empty (by modality)")
    dicom_spool: str = setting(
        "BIOMED_DICOM_SPOOL", "", "the durable spool of SRs on their way to the destination (created if missing; keep it "
        "on persistent storage)", as_text, shown="`$BENTOML_HOME/dicom-spool`", computed=_spool_default)
    dicom_group_by: str = setting(
        "BIOMED_DICOM_GROUP_BY", "series", "how instances received over C-STORE and STOW-RS are [grouped into one "
        "result](#one-result-per-series): `series` (one SR per series), `study` (one per study) or `instance` (one SR per "
        "instance, as they arrive). Groups live in the spool, shared by the workers and the pods that share it",
        as_choice("series", "study", "instance"))
    dicom_group_timeout_s: float = setting(
        "BIOMED_DICOM_GROUP_TIMEOUT_S", "10", "seconds without a new instance after which a group is closed and its SR "
        "made (the quiet period; it resumes after a restart)", as_positive_number)
    dicom_group_max_instances: int = setting(
        "BIOMED_DICOM_GROUP_MAX_INSTANCES", "2000", "a group holding this many instances not yet in a result is closed at "
        "once; the next instances of the series make a new SR naming that one", as_count)
    series_aggregate: str = setting(
        "BIOMED_SERIES_AGGREGATE", "", "how the instances' results make the series' one: `max` (any slice shows it) or "
        "`mean`, for probabilities and regression values alike. Empty: the model's `output.aggregate` metadata (`max` "
        "for probabilities, `mean` for values when it has none)", as_choice("", "max", "mean"),
        shown="empty (the model's)")
    sr_per_instance: bool = setting(
        "BIOMED_SR_PER_INSTANCE", "0", "on: a series SR also holds one measurement group per instance and frame (the "
        "instance SR's groups) after the series' own", as_flag, shown="off")
    max_series_bytes: int = setting(
        "BIOMED_MAX_SERIES_MB", "1024", "the cap on one series: a [`/predict_series`](#post-predict_series) or "
        "[`/explain_series`](#post-explain_series) body (read part by part; each part within `BIOMED_MAX_UPLOAD_MB`), "
        "and the files of a [volume model](#volume-models)'s series together, checked before they are parsed; past it, "
        "413", as_mb)
    dicom_retry_max_s: float = setting(
        "BIOMED_DICOM_RETRY_MAX_S", "300", "the longest wait between delivery attempts; waits double from 1 s up to it "
        "while the destination fails", as_float)

    grpc_port: int = setting(
        "BIOMED_GRPC_PORT", "0", "the [Open Inference Protocol v2 over gRPC](#open-inference-protocol-v2-over-grpc)'s TCP "
        "port; every worker listens on it (`SO_REUSEPORT`). `biomed serve --grpc-port P` sets it", as_port,
        shown="`0` (off)")
    grpc_host: str = setting(
        "BIOMED_GRPC_HOST", "0.0.0.0", "the gRPC server's bind address (`biomed serve --grpc-port` uses its `--host` when "
        "this is unset)", as_text)
    grpc_max_streams: int = setting(
        "BIOMED_GRPC_MAX_STREAMS", "16", "gRPC calls per worker whose request message is read at once (each may be up "
        "to `BIOMED_MAX_UPLOAD_MB`: a term of the memory model); more wait their turn, unread, within the worker's "
        "share of `BIOMED_MAX_CONCURRENCY`. Must be positive", as_int)

    def __post_init__(self) -> None:
        if self.grpc_max_streams < 1:
            raise ValueError(f"{env('grpc_max_streams')}={self.grpc_max_streams} must be at least 1")
        if self.dicom_port and not self.dicom_allowed_aets:
            raise ValueError(f"{env('dicom_port')} is set but {env('dicom_allowed_aets')} is empty: list the calling AE "
                             "titles allowed to send (comma-separated), or * for any")
        if self.dicom_port and self.dicom_max_connections < self.dicom_max_associations:
            raise ValueError(f"{env('dicom_max_connections')}={self.dicom_max_connections} is below "
                             f"{env('dicom_max_associations')}={self.dicom_max_associations}: every association is a "
                             "connection; raise it")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Any:
        """Every setting from ``environ`` (default ``os.environ``).

        Raises:
            ValueError: naming the variable whose value cannot be read, and what it accepts.
        """
        e = os.environ if environ is None else environ
        return cls(**{f.name: f.metadata["setting"].value(e) for f in dataclasses.fields(cls)
                      if "setting" in f.metadata})


def declared() -> tuple[tuple[str, Declared], ...]:
    """(field name, declaration) of every setting, in declaration order."""
    return tuple((f.name, f.metadata["setting"]) for f in dataclasses.fields(Settings))


_BY_FIELD = dict(declared())


def env(name: str) -> str:
    """The environment variable of the setting ``name`` (a field of ``Settings``), for messages and docs."""
    return _BY_FIELD[name].env


def default(name: str) -> Any:
    """The default value of the setting ``name``, in the field's unit (bytes, seconds...)."""
    return Settings.__dataclass_fields__[name].default


def markdown_table() -> str:
    """The settings table of docs/api.md, from the declarations."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for _, d in declared():
        shown = d.shown or (f"`{d.default}`" if d.default else "empty")
        rows.append(f"| `{d.env}` | {shown} | {d.doc} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
