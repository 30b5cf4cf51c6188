"""A real Orthanc (Debian's ``orthanc`` with ``orthanc-dicomweb``) as the PACS of the DICOM network tests.

Started as a plain process with a temporary configuration on free ports: HTTP (REST and
DICOMweb under ``/dicom-web/``) and DICOM. A Lua ``ReceivedInstanceFilter`` writes the SOP
Instance UID of every instance Orthanc receives, duplicates included, to ``received.log``
(Orthanc itself keeps one copy per UID, so its index cannot show a second delivery).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

try:
    from tests.live_server import free_port
except ImportError:  # tests/ is not a package: pytest puts it on sys.path
    from live_server import free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AET = "ORTHANC"
_LUA = """
function ReceivedInstanceFilter(dicom, origin, info)
  local f = io.open('{log}', 'a')
  f:write((dicom['SOPInstanceUID'] or '?') .. '\\n')
  f:close()
  return true
end
"""


@dataclass
class Orthanc:
    """One Orthanc process (``start``/``stop`` may be called again: the storage stays)."""

    binary: str
    root: Path
    http_port: int = 0
    dicom_port: int = 0
    proc: subprocess.Popen | None = None

    def __post_init__(self) -> None:
        self.http_port = self.http_port or free_port()
        self.dicom_port = self.dicom_port or free_port()
        self.received_log = self.root / "received.log"
        (self.root / "db").mkdir(parents=True, exist_ok=True)
        (self.root / "received.lua").write_text(_LUA.replace("{log}", str(self.received_log)))
        config = {
            "Name": "biomed-test-pacs", "StorageDirectory": str(self.root / "db"), "IndexDirectory": str(self.root / "db"),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AET, "RemoteAccessAllowed": True,
            "AuthenticationEnabled": False, "Plugins": [str(PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "LuaScripts": [str(self.root / "received.lua")], "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
            "StableAge": 1,
        }
        (self.root / "orthanc.json").write_text(json.dumps(config))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def peer(self) -> str:
        return f"{AET}@127.0.0.1:{self.dicom_port}"

    def start(self, timeout: float = 30.0) -> "Orthanc":
        log = (self.root / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([self.binary, str(self.root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited with {self.proc.returncode}:\n"
                                     f"{(self.root / 'orthanc.log').read_text(errors='replace')[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/system", timeout=2).status_code == 200:
                    return self
            time.sleep(0.1)
        raise AssertionError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def received(self) -> list[str]:
        """SOP Instance UIDs of every instance received so far, in order, duplicates included."""
        if not self.received_log.exists():
            return []
        return [line for line in self.received_log.read_text().splitlines() if line]

    def client(self):  # type: ignore[no-untyped-def]
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(url=self.dicomweb)

    def sr_uids(self, study: str) -> set[str]:
        """SOP Instance UIDs of the SR instances Orthanc holds in ``study`` (QIDO-RS)."""
        found = self.client().search_for_instances(study_instance_uid=study, search_filters={"Modality": "SR"})
        return {item["00080018"]["Value"][0] for item in found}

    def retrieve(self, study: str, sop_instance: str):  # type: ignore[no-untyped-def]
        """One instance (WADO-RS), found by QIDO-RS."""
        client = self.client()
        [item] = client.search_for_instances(study_instance_uid=study, search_filters={"SOPInstanceUID": sop_instance})
        return client.retrieve_instance(study, item["0020000E"]["Value"][0], sop_instance)
