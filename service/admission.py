"""Admission: the gates every door passes before work starts, HTTP or not (one object per worker).

- the token (``BIOMED_API_TOKEN`` or a named one of ``BIOMED_API_TOKENS_FILE``: ``service/tokens.py``),
  compared in constant time; ``authorised`` answers whose it is (the audit trail's client), and a
  refusal is written to the audit trail (``service/audit``);
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
import math
import threading
from typing import Iterator

from biomed.errors import InputError, Overloaded
from biomed.preprocess.budget import DecodeBudget
from biomed.settings import env
from service import audit
from service.config import ServiceConfig
from service.tokens import Tokens


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
        self.tokens = Tokens(config.api_token, config.api_tokens_file)  # TokensError (a ValueError): a bad file
        self._lock = threading.Lock()

    @property
    def token_required(self) -> bool:
        return self.tokens.required

    def authorised(self, token: bytes | str | None, address: str = "", door: str = "") -> str | None:
        """Who ``token`` (the bearer credential a client presented; None: none) belongs to, when it opens the
        non-open doors: its name (``service/tokens.py``), or ``anonymous`` when no token is required; None when it
        opens nothing, which the audit trail records (a failed authentication from ``address`` through ``door``)."""
        if not self.tokens.required:
            return audit.ANONYMOUS
        given = token.encode("utf-8", "surrogateescape") if isinstance(token, str) else token or b""
        who = self.tokens.name_of(given)
        if who is None:
            audit.current().authentication_failed(address, door)
        return who

    def check_token(self, token: bytes | str | None, address: str = "", door: str = "") -> str:
        """Who ``token`` belongs to (``authorised``); raises ``Unauthorized`` (401) when it opens nothing."""
        who = self.authorised(token, address, door)
        if who is None:
            raise Unauthorized(f"send the bearer token ({env('api_token')} or one of {env('api_tokens_file')})")
        return who

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
