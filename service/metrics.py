"""The service's Prometheus metrics (docs/api.md), safe under BentoML's multi-worker mode.

prometheus_client is imported on first use, inside the worker, after BentoML has
set ``PROMETHEUS_MULTIPROC_DIR``; otherwise the values would never reach ``/metrics``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from biomed.settings import env

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
GROUP_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 300, 600, 1800)  # seconds: the quiet period, then more


@dataclass(frozen=True)
class Metrics:
    inference_seconds: Any
    batch_size: Any
    predictions: Any
    rejected: Any
    preprocess_seconds: Any
    model_info: Any
    gpu_required: Any
    queue_rows: Any
    queue_seconds: Any
    dicom_received: Any
    dicom_forwarded: Any
    dicom_spool_depth: Any
    dicom_groups_open: Any
    dicom_group_instances: Any
    dicom_group_seconds: Any
    dicom_group_overdue: Any
    model_memory: Any
    model_requests: Any
    model_reloads: Any
    audit_dropped: Any


@functools.lru_cache(maxsize=1)
def metrics() -> Metrics:
    """Create the metrics once per process."""
    from prometheus_client import Counter, Gauge, Histogram

    return Metrics(
        inference_seconds=Histogram("biomed_inference_seconds", "onnxruntime time per batch",
                                    ["model", "version", "provider"], buckets=LATENCY_BUCKETS),
        batch_size=Histogram("biomed_batch_size", "rows per inference call (adaptive batching)", ["model", "version"],
                             buckets=BATCH_BUCKETS),
        predictions=Counter("biomed_predictions_total", "predictions returned: the top label per image frame; each task with p >= 0.5 (or none) per DNA sequence (door: native, v2 or grpc, the API that returned them)", ["model", "version", "label", "door"]),
        rejected=Counter("biomed_rejected_requests_total", "requests refused with a 4xx", ["endpoint", "reason"]),
        preprocess_seconds=Histogram("biomed_preprocess_seconds", "decode and preprocessing time per request", ["kind"],
                                     buckets=LATENCY_BUCKETS),
        model_info=Gauge("biomed_model_info", "loaded models (value 1)", ["model", "version", "provider", "sha256"],
                         multiprocess_mode="livemax"),
        gpu_required=Gauge("biomed_gpu_required", f"1 when {env('require_gpu')} is set", [],
                           multiprocess_mode="livemax"),
        queue_rows=Gauge("biomed_queue_rows", "model rows waiting for an inference call", ["model", "version"],
                         multiprocess_mode="livesum"),
        queue_seconds=Histogram("biomed_queue_seconds", "time from a request's rows joining the queue to the start of "
                                "their first batch", ["model", "version"], buckets=LATENCY_BUCKETS),
        dicom_received=Counter("biomed_dicom_received_total", "DICOM instances received (door: dimse or stow; outcome: "
                               "ok or the error code)", ["door", "outcome"]),
        dicom_forwarded=Counter("biomed_dicom_forwarded_total",
                                f"result SRs on their way to {env('dicom_destination')} (outcome: delivered, retried, "
                                "rejected, duplicate)", ["outcome"]),
        dicom_spool_depth=Gauge("biomed_dicom_spool_depth", "result SRs in the spool, not yet confirmed by the destination",
                                [], multiprocess_mode="livemax"),
        dicom_groups_open=Gauge("biomed_dicom_groups_open", "groups of instances (series or studies) with instances "
                                 "no result covers yet, in the spool", [], multiprocess_mode="livemax"),
        dicom_group_instances=Histogram("biomed_dicom_group_instances", "instances a group's result (its SR) covers",
                                        [], buckets=BATCH_BUCKETS),
        dicom_group_seconds=Histogram("biomed_dicom_group_seconds", "from a group's last instance to the destination's "
                                      "confirmation of its SR", [], buckets=GROUP_BUCKETS),
        dicom_group_overdue=Gauge("biomed_dicom_group_overdue_seconds", "how long the open group waiting longest has "
                                  f"waited past its quiet period ({env('dicom_group_timeout_s')}); 0 when none has",
                                  [], multiprocess_mode="livemax"),
        model_memory=Gauge("biomed_model_memory_bytes", "memory a loaded model version takes, summed over the workers "
                           "(device: host, or gpu for the accelerator's memory)", ["model", "version", "device"],
                           multiprocess_mode="livesum"),
        model_requests=Histogram("biomed_model_request_seconds", "requests a model version served, from the endpoint's "
                                 "start to its answer (route: default, canary, or named: the request named the version)",
                                 ["model", "version", "route"], buckets=LATENCY_BUCKETS),
        model_reloads=Counter("biomed_model_reloads_total", "model versions loaded, unloaded or failing to load while "
                              "serving (outcome: loaded, unloaded, failed)", ["model", "outcome"]),
        audit_dropped=Counter("biomed_audit_dropped_total", f"audit messages lost ({env('audit')}): reason full (the "
                              "buffer was full: the target slow or down), unreachable (not written before the worker "
                              "stopped), error (a message that could not be made)", ["reason"]),
    )


def remove_series(metric: Any, **labels: str) -> None:
    """Remove one labelled series from ``metric``, also from this worker's multi-process file (a gauge only).

    prometheus_client cannot remove a series in multi-process mode (BentoML's, with workers): ``/metrics`` reads
    every worker's mmapped file, where the series stays. This rewrites the worker's file of that gauge without
    it, into a new file renamed over the old one, so a concurrent scrape reads one or the other. Meant for the
    event loop (where the other gauges of the file are set); a value set meanwhile from another thread (the SR
    spool's depth) may be lost until it is next set.
    """
    import contextlib
    import os
    import warnings

    values = tuple(str(labels[n]) for n in metric._labelnames)  # noqa: SLF001 - prometheus_client has no public view
    child = metric._metrics.get(values)  # noqa: SLF001
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not implemented in multi-process mode": done below
        metric.remove(*values)
    value = getattr(child, "_value", None)
    mmap = getattr(value, "_file", None)
    if mmap is None or not getattr(value, "_multiprocess", False):
        return
    from prometheus_client.mmap_dict import MmapedDict

    key, path = value._key, mmap._fname  # noqa: SLF001
    kept = [(k, v, ts) for k, v, ts in mmap.read_all_values() if k != key]
    fresh = path + ".new"  # not *.db: the collector never reads it
    with contextlib.suppress(FileNotFoundError):
        os.unlink(fresh)
    new = MmapedDict(fresh)
    for k, v, ts in kept:
        new.write_value(k, v, ts)
    new.close()
    os.replace(fresh, path)
    mmap.close()
    mmap.__init__(path)  # the same object, which every other value of the file holds, now on the new file
