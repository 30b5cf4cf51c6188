"""What a loaded model costs: the worker's resident memory and, on a GPU, this process's device memory.

Measured as the growth across loading the model and warming it up at its largest batch (the
onnxruntime arena then holds its serving size), so ``GET /models`` and ``biomed_model_memory_bytes``
tell an operator what a second version will cost before it is loaded. Host memory comes from
``/proc/self/statm`` (Linux; elsewhere ``None``). onnxruntime has no API for a session's device
memory, so on the CUDA and TensorRT providers it is read from the driver with ``nvidia-smi``: this
process's memory on the GPU, or, where the container's PID namespace hides the process from the
driver, the whole device's used memory; ``None`` on the CPU provider or without ``nvidia-smi``.
Other work in the process while a model loads (requests, under a reload) adds noise; a negative
growth counts as 0.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def host_rss() -> int | None:
    """This process's resident memory in bytes (``None`` where ``/proc`` is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def parse_compute_apps(text: str, pid: int) -> int | None:
    """Bytes of GPU memory ``pid`` uses, from ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,
    noheader,nounits`` (MiB per line); ``None`` when the process is not listed."""
    total, seen = 0, False
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) == pid and parts[1].isdigit():
            total += int(parts[1]) * 2**20
            seen = True
    return total if seen else None


def parse_used_memory(text: str, device: int = 0) -> int | None:
    """Bytes used on GPU ``device`` from ``nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits``."""
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and int(parts[0]) == device and parts[1].isdigit():
            return int(parts[1]) * 2**20
    return None


def _smi(*query: str) -> str | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, *query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def device_used() -> tuple[str, int] | None:
    """("process" or "device", bytes): this process's GPU memory, else GPU 0's used memory; None without a driver."""
    text = _smi("--query-compute-apps=pid,used_memory")
    if text is not None:
        mine = parse_compute_apps(text, os.getpid())
        if mine is not None:
            return "process", mine
    text = _smi("--query-gpu=index,memory.used")
    used = parse_used_memory(text) if text is not None else None
    return None if used is None else ("device", used)


@dataclass
class Footprint:
    """Memory readings before a load; ``cost`` reads them again after it."""

    host: int | None
    device: tuple[str, int] | None

    @classmethod
    def before(cls, on_gpu: bool) -> "Footprint":
        return cls(host_rss(), device_used() if on_gpu else None)

    def cost(self, provider: str) -> dict[str, int | None]:
        """``{"host_bytes", "device_bytes"}`` grown since ``before`` (device: None off the GPU providers)."""
        host = host_rss()
        device = None
        if provider in GPU_PROVIDERS:
            now = device_used()
            if now is not None:
                # Compare like with like; when the process became visible only after the load, its whole use is the cost.
                base = self.device[1] if self.device is not None and self.device[0] == now[0] else 0
                device = max(0, now[1] - base)
        return {"host_bytes": None if host is None or self.host is None else max(0, host - self.host),
                "device_bytes": device}
