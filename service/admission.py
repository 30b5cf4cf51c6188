"""Admission: the gates every door passes before work starts, HTTP or not (one object per worker).

- the token (``BIOMED_API_TOKEN`` or a named one of ``BIOMED_API_TOKENS_FILE``: ``service/tokens.py``),
  compared in constant time; ``authorised`` answers whose it is (the audit trail's client), and a
  refusal is written to the audit trail (``service/audit``);
- a concurrency slot: at most ``ceil(BIOMED_MAX_CONCURRENCY / workers)`` requests in flight in this
  worker, past it 429 at once;
- body bytes: what all request bodies (and received DICOM instances, and v2 answers being sent)
  held by this worker may take together (``BIOMED_MAX_BODIES_MB``), past it 429. Bytes count as
  they are received, never as declared (a client that declares 1 GB and trickles holds what it
  sent), and one peer address may hold at most half of the budget, or one whole upload
  (``BIOMED_MAX_UPLOAD_MB``) when that is more (``peer_cap``), so that one client cannot take it all;
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


PEER_SHARE = 0.5  # the share of BIOMED_MAX_BODIES_MB one peer address may hold
UPLOAD_SLACK = 64 * 1024  # what wraps an upload of BIOMED_MAX_UPLOAD_MB: a DICOM file meta, multipart headers


def peer_cap(config: ServiceConfig) -> int:
    """The most body bytes one peer address may hold in a worker: half of ``BIOMED_MAX_BODIES_MB``, or one whole
    upload (``BIOMED_MAX_UPLOAD_MB`` and a DICOM file meta's slack) when that is more, within the budget."""
    cap = config.max_body_bytes
    return min(cap, max(int(cap * PEER_SHARE), config.max_upload_bytes + UPLOAD_SLACK)) if cap else 0


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
        self.peer_cap = peer_cap(config)
        self._peers: dict[str, int] = {}  # bytes of bodies held, per peer address
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

    def hold(self, nbytes: int, peer: str | None = None) -> None:
        """Count ``nbytes`` more of bodies held by this worker, from ``peer`` (its address; None: not counted per
        peer); ``Overloaded`` (429) past ``BIOMED_MAX_BODIES_MB``, or past the peer's share of it (``peer_cap``)."""
        cap = self.config.max_body_bytes
        with self._lock:
            if cap and self.bodies + nbytes > cap:
                raise Overloaded(f"request bodies in this worker are at their limit ({cap / 2**20:g} MB, "
                                 f"{env('max_body_bytes')}); retry shortly")
            if cap and peer is not None:
                mine = self._peers.get(peer, 0) + nbytes
                if mine > self.peer_cap:
                    raise Overloaded(f"request bodies from your address are at their share of this worker's "
                                     f"{cap / 2**20:g} MB ({env('max_body_bytes')}): at most "
                                     f"{self.peer_cap / 2**20:g} MB from one address; retry shortly")
                self._peers[peer] = mine
            self.bodies += nbytes

    def release(self, nbytes: int, peer: str | None = None) -> None:
        with self._lock:
            self.bodies -= nbytes
            if peer is not None and self.config.max_body_bytes:
                left = self._peers.get(peer, 0) - nbytes
                if left > 0:
                    self._peers[peer] = left
                else:
                    self._peers.pop(peer, None)

    @contextlib.contextmanager
    def body(self, nbytes: int, peer: str | None = None) -> Iterator[None]:
        """``nbytes`` of body held for the duration of a block (``hold``/``release``)."""
        self.hold(nbytes, peer)
        try:
            yield
        finally:
            self.release(nbytes, peer)

