"""The PACS the benchmark's series SRs go to, and when each arrived: a real Orthanc when installed (Debian's
``orthanc``), else a pynetdicom storage SCP standing in for one.

Either takes C-STORE on a free loopback port (``peer``: ``AET@127.0.0.1:port``, the service's
``BIOMED_DICOM_DESTINATION``); ``arrivals`` is how many objects it has stored, and ``wait`` the
monotonic time at which their count first reached a number (Orthanc's ``/statistics``, polled every
20 ms; the SCP's own clock as it answers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

from bench.server import free_port

POLL_S = 0.02


class Orthanc:
    """Orthanc with a temporary configuration: DICOM and HTTP on free loopback ports."""

    name = "Orthanc"

    def __init__(self, binary: str, root: Path) -> None:
        self.binary, self.root = binary, root
        self.http, self.dicom = free_port(), free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def peer(self) -> str:
        return f"ORTHANC@127.0.0.1:{self.dicom}"

    def start(self) -> "Orthanc":
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        config = {"Name": "bench-pacs", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
                  "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
                  "AuthenticationEnabled": False, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False}
        (self.root / "orthanc.json").write_text(json.dumps(config))
        with (self.root / "orthanc.log").open("ab") as log:
            self.proc = subprocess.Popen([self.binary, str(self.root / "orthanc.json")], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                self.arrivals()
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"Orthanc did not start; see {self.root / 'orthanc.log'}")

    def arrivals(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}/statistics", timeout=2) as r:
            return int(json.load(r)["CountInstances"])

    def wait(self, count: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.arrivals() >= count:
                return time.monotonic()
            time.sleep(POLL_S)
        raise TimeoutError(f"Orthanc held fewer than {count} objects after {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the group this Popen started
            self.proc.wait(20)
        self.proc = None


class StorageScp:
    """A pynetdicom storage SCP in this process, keeping the time each object arrived."""

    name = "a pynetdicom storage SCP"

    def __init__(self) -> None:
        self.times: list[float] = []
        self.arrived = threading.Condition()
        self.server = None
        self.port = 0

    @property
    def peer(self) -> str:
        return f"PACS@127.0.0.1:{self.port}"

    def start(self) -> "StorageScp":
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self.server.server_address[1])
        return self

    def _store(self, event: object) -> int:
        with self.arrived:
            self.times.append(time.monotonic())
            self.arrived.notify_all()
        return 0x0000

    def arrivals(self) -> int:
        return len(self.times)

    def wait(self, count: int, timeout: float) -> float:
        with self.arrived:
            if not self.arrived.wait_for(lambda: len(self.times) >= count, timeout):
                raise TimeoutError(f"the storage SCP held fewer than {count} objects after {timeout:.0f} s")
            return self.times[count - 1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()


def start(root: Path) -> Orthanc | StorageScp:
    """Orthanc when installed, else the storage SCP; started."""
    binary = shutil.which("Orthanc")
    return Orthanc(binary, root).start() if binary else StorageScp().start()
