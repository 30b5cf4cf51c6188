"""Admission: the gates every door passes before work starts, HTTP or not (one object per worker).

- the token (``BIOMED_API_TOKEN``), compared in constant time;
- a concurrency slot: at most ``ceil(BIOMED_MAX_CONCURRENCY / workers)`` requests in flight in this
  worker, past it 429 at once;
- body bytes: what all request bodies (and received DICOM instances) held by this worker may take
  together (``BIOMED_MAX_BODIES_MB``), past it 429;
- decode bytes: the shared ``DecodeBudget`` of image decodes (``BIOMED_MAX_DECODING_MB``), reserved by
  the decoders themselves.

The HTTP guard (``service/guard.py``) calls it from the event loop, the C-STORE receiver from its
threads: every count is under one lock.
"""

from __future__ import annotations

import contextlib
import hmac
import math
import threading
from typing import Iterator

from biomed.errors import InputError, Overloaded
from biomed.preprocess.budget import DecodeBudget
from biomed.settings import env
from service.config import ServiceConfig


class Unauthorized(InputError):
    status = 401
    code = "unauthorized"


class Admission:
    """This worker's gates (see the module docstring)."""

    def __init__(self, config: ServiceConfig, decode: DecodeBudget) -> None:
        self.config = config
        self.decode = decode
        self.slot_limit = math.ceil(config.max_concurrency / max(config.workers, 1))
        self.slots = 0  # requests in flight
        self.bodies = 0  # bytes of bodies held
        self._token = config.api_token.encode()
        self._lock = threading.Lock()

    @property
    def token_required(self) -> bool:
        return bool(self._token)

    def authorised(self, token: bytes | str | None) -> bool:
        """Whether ``token`` (the bearer credential a client presented; None: none) opens the non-open doors."""
        if not self._token:
            return True
        given = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token or b""
        return hmac.compare_digest(given.strip(), self._token)

    def check_token(self, token: bytes | str | None) -> None:
        """Raises ``Unauthorized`` (401) unless ``token`` opens the non-open doors."""
        if not self.authorised(token):
            raise Unauthorized(f"send the bearer token ({env('api_token')})")

    def enter(self) -> None:
        """Take a concurrency slot; ``Overloaded`` (429) when this worker's are all in use."""
        with self._lock:
            if self.slots >= self.slot_limit:
                raise Overloaded(f"{self.slot_limit} requests are in flight in this worker "
                                 f"({env('max_concurrency')}); retry shortly")
            self.slots += 1

    def leave(self) -> None:
        with self._lock:
            self.slots -= 1

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """A concurrency slot for the duration of a request (``enter``/``leave``)."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def hold(self, nbytes: int) -> None:
        """Count ``nbytes`` more of bodies held by this worker; ``Overloaded`` (429) past ``BIOMED_MAX_BODIES_MB``."""
        cap = self.config.max_body_bytes
        with self._lock:
            if cap and self.bodies + nbytes > cap:
                raise Overloaded(f"request bodies in this worker are at their limit ({cap / 2**20:g} MB, "
                                 f"{env('max_body_bytes')}); retry shortly")
            self.bodies += nbytes

    def release(self, nbytes: int) -> None:
        with self._lock:
            self.bodies -= nbytes

    @contextlib.contextmanager
    def body(self, nbytes: int) -> Iterator[None]:
        """``nbytes`` of body held for the duration of a block (``hold``/``release``)."""
        self.hold(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)
