"""The server's settings: ``biomed.settings.Settings`` (every ``BIOMED_*`` variable, declared once) plus what
only the server derives from them, its memory model.

``ServiceConfig.from_env()`` is the only reader of ``BIOMED_*`` variables in the server: the engine
reads it once at start-up and hands it to everything else.
"""

from __future__ import annotations

from dataclasses import dataclass

from biomed.runtime import RuntimeOptions
from biomed.settings import DICOM_PEER, Settings

__all__ = ["DICOM_PEER", "ServiceConfig"]

BASELINE_BYTES = 400 * 2**20  # a worker at rest: Python, BentoML, onnxruntime, two demo-sized models (measured ~340 MB)
SLACK_BYTES = 128 * 2**20  # responses being written, parsed JSON within its value cap, allocator overhead
AUDIT_MESSAGE_BYTES = 4 * 2**10  # an audit event waiting in the buffer: its values, studies counted (~0.9 KB measured)
# One connection to the C-STORE receiver: a P-DATA-TF PDU (at most 256 KiB + 6) as read, joined and decoded, a dataset
# fragment on its way to the temporary file, and the stacks its three threads touch.
DICOM_CONNECTION_BYTES = 2**20
# One instance in a group's result while its SR is built (service/dicom/groups.py): its member record, its image
# library entry and evidence item as datasets, the SR's bytes (measured 25 KiB; 75 KiB with BIOMED_SR_PER_INSTANCE).
GROUP_MEMBER_BYTES = 32 * 2**10
GROUP_MEMBER_PER_INSTANCE_BYTES = 96 * 2**10


@dataclass(frozen=True)
class ServiceConfig(Settings):
    """The settings, as the server reads them (docs/api.md, "Settings and limits")."""

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
        (``BIOMED_MAX_BODIES_MB`` of them, parsed like bodies) come on top, and its connections
        (``BIOMED_DICOM_MAX_CONNECTIONS``, each at most one PDU in memory; the incoming datasets,
        ``BIOMED_DICOM_TEMP_MB``, are on disk, not in memory); with the gRPC door on, the request
        messages it has read but not yet admitted into the bodies' budget (``BIOMED_GRPC_MAX_STREAMS`` of at most
        ``BIOMED_MAX_UPLOAD_MB`` each; once admitted they count among the bodies); with the audit trail on, the events
        waiting for its target (``BIOMED_AUDIT_BUFFER`` of them); with results per series (``BIOMED_DICOM_GROUP_BY``
        series or study, and a destination), the one result the worker's closer builds at a time, of at most
        ``BIOMED_DICOM_GROUP_MAX_INSTANCES`` instances.
        """
        # Models loaded at once: each entry of BIOMED_MODELS and canary version not among them, and while the store
        # is watched one more (a reload warms the new version up beside the old one, which drains before it goes).
        canaries = {f"{name}:{version}" for name, version, _ in self.canary} - set(self.models)
        n = len(self.models) + len(canaries) + (1 if self.model_poll_s > 0 else 0) if models is None else models
        received = 3 * self.max_body_bytes + self.dicom_max_connections * DICOM_CONNECTION_BYTES \
            if self.dicom_port else 0  # instances the C-STORE receiver holds, and its connections
        messages = self.grpc_max_streams * self.max_upload_bytes if self.grpc_port else 0  # gRPC messages being read
        audit = self.audit_buffer * AUDIT_MESSAGE_BYTES if self.audit else 0  # audit events waiting for the target
        return BASELINE_BYTES + 3 * self.max_body_bytes + self.max_decoding_bytes + n * 3 * self.max_queued_bytes \
            + SLACK_BYTES + received + messages + audit + self.group_bytes()

    def group_bytes(self) -> int:
        """What the worker's group closer holds while it builds a result's SR (0 without grouping)."""
        if not self.dicom_destination or self.dicom_group_by == "instance":
            return 0
        each = GROUP_MEMBER_PER_INSTANCE_BYTES if self.sr_per_instance else GROUP_MEMBER_BYTES
        return self.dicom_group_max_instances * each
