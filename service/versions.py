"""The loaded versions of each model name, which one a request gets, and who is still using one.

- ``Versions``: a name's loaded versions (``version -> handler``), its default and its canary shares.
  ``route`` picks the version for a request that names only the model: a canary with its share of
  the requests, else the default. With a request id (``X-Request-ID``) the choice is a hash of the id,
  so the same id always gets the same version (and keeps it when a share grows); without one it is random.
- ``Scope``: one request's picks. The doors' endpoint wrapper opens a scope around every request;
  ``Engine.pick`` records the handler it hands out there, and the engine counts it as in use until
  the scope closes, so a version is unloaded only once no request holds it.
"""

from __future__ import annotations

import contextvars
import hashlib
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.handlers import Handler

MAX_REQUEST_ID = 256  # characters of X-Request-ID used for the canary choice


def share_point(name: str, request_id: str | None) -> float:
    """Where a request falls in [0, 100): a hash of the model name and its id, or random without an id."""
    if not request_id:
        return random.random() * 100  # noqa: S311 - a traffic split, not a secret
    digest = hashlib.blake2b(f"{name}\0{request_id[:MAX_REQUEST_ID]}".encode("utf-8", "surrogatepass"),
                             digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 * 100


@dataclass
class Versions:
    """One model name: its loaded versions in load order, the default, and the canaries (version, percent)."""

    name: str
    handlers: dict[str, "Handler"] = field(default_factory=dict)
    default: str = ""
    canary: tuple[tuple[str, float], ...] = ()

    @property
    def default_handler(self) -> "Handler":
        return self.handlers[self.default]

    def route(self, request_id: str | None) -> tuple["Handler", str]:
        """The handler for a request that names the model only, and how it was chosen (``canary`` or ``default``)."""
        if self.canary:
            point, edge = share_point(self.name, request_id), 0.0
            for version, percent in self.canary:
                edge += percent
                if point < edge and version in self.handlers:
                    return self.handlers[version], "canary"
        return self.handlers[self.default], "default"

    def share(self, version: str) -> float:
        """The canary share of ``version`` (0 when it has none)."""
        return sum(p for v, p in self.canary if v == version)


@dataclass
class Scope:
    """One request: its id, when it started, the handlers picked for it (with how each was chosen), and the DICOM
    instances its handlers read (``service.audit.noted``: for its audit event only)."""

    request_id: str | None
    started: float = field(default_factory=time.perf_counter)
    picked: list[tuple["Handler", str]] = field(default_factory=list)
    subjects: list = field(default_factory=list)


current_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar("biomed_request_scope", default=None)
