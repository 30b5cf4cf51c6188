"""A real syslog receiver for the audit tests: Debian's rsyslogd on a local port with a configuration of its own, and
a reader of what it wrote.

rsyslogd listens on one port over TCP (RFC 6587 framing, octet counting) and UDP (RFC 5426) and writes each
message it parsed as RFC 5424 on a line: the input, PRI, version, APP-NAME, PROCID, MSGID and the MSG (JSON
string escaped). ``messages`` gives them back with the MSG parsed as a DICOM audit message.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

CONFIG = """global(workDirectory="{work}")
module(load="imtcp")
module(load="imudp")
input(type="imtcp" port="{port}")
input(type="imudp" port="{port}" address="127.0.0.1")
template(name="audit" type="list") {{
  property(name="inputname") constant(value="\\t")
  property(name="pri") constant(value="\\t")
  property(name="protocol-version") constant(value="\\t")
  property(name="app-name") constant(value="\\t")
  property(name="procid") constant(value="\\t")
  property(name="msgid") constant(value="\\t")
  property(name="msg" format="json") constant(value="\\n")
}}
action(type="omfile" file="{out}" template="audit")
"""


@dataclass(frozen=True)
class Received:
    """One message as rsyslogd parsed it."""

    input: str  # imtcp or imudp
    pri: int
    version: str
    app: str
    procid: str
    msgid: str
    xml: ET.Element

    @property
    def event(self) -> str:
        return self.xml.find("EventIdentification/EventID").get("csd-code")

    @property
    def action(self) -> str:
        return self.xml.find("EventIdentification").get("EventActionCode")

    @property
    def outcome(self) -> str:
        return self.xml.find("EventIdentification").get("EventOutcomeIndicator")

    def types(self) -> list[str]:
        return [t.get("csd-code") for t in self.xml.findall("EventIdentification/EventTypeCode")]

    def participants(self) -> list[dict]:
        return [{**p.attrib, "roles": [r.get("csd-code") for r in p.findall("RoleIDCode")]}
                for p in self.xml.findall("ActiveParticipant")]

    def objects(self) -> list[dict]:
        return [{"id": o.get("ParticipantObjectID"), "type": o.find("ParticipantObjectIDTypeCode").get("csd-code"),
                 "name": o.findtext("ParticipantObjectName"),
                 "classes": {c.get("UID"): int(c.get("NumberOfInstances")) for c in o.findall("SOPClass")},
                 "details": {d.get("type"): d.get("value") for d in o.findall("ParticipantObjectDetail")}}
                for o in self.xml.findall("ParticipantObjectIdentification")]


def parse_line(line: str) -> Received:
    fields = line.rstrip("\n").split("\t", 6)
    text = json.loads(f'"{fields[6]}"').lstrip("\ufeff")
    return Received(fields[0], int(fields[1]), fields[2], fields[3], fields[4], fields[5], ET.fromstring(text))


class Rsyslog:
    """rsyslogd in the foreground (``-n``) in its own folder; ``start``/``stop`` as often as needed."""

    def __init__(self, rsyslogd: str, folder: Path, port: int) -> None:
        self.rsyslogd, self.folder, self.port = rsyslogd, folder, port
        self.out = folder / "received.log"
        self.config = folder / "rsyslog.conf"
        self.config.write_text(CONFIG.format(work=folder, port=port, out=self.out))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        log = (self.folder / "rsyslogd.out").open("ab")
        self.proc = subprocess.Popen([self.rsyslogd, "-n", "-f", str(self.config), "-i", str(self.folder / "pid")],
                                     stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"rsyslogd did not listen on {self.port}: {(self.folder / 'rsyslogd.out').read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.wait(15)
        self.proc = None

    def messages(self) -> list[Received]:
        if not self.out.is_file():
            return []
        return [parse_line(line) for line in self.out.read_text(encoding="utf-8").splitlines() if line]
