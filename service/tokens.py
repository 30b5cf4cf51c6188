"""The API tokens: ``BIOMED_API_TOKEN`` and the named ones of ``BIOMED_API_TOKENS_FILE``, and whose a token is.

The file holds one ``name:token`` a line (blank lines and ``#`` comments skipped), as a mounted
Kubernetes Secret does. It is read at start-up (a file that cannot be read or parsed stops it) and
again whenever it changes (its inode, size or modification time; looked at once a second at most,
so a Secret's update, a new symlink, is taken up), then swapped in whole: a file that no longer
parses keeps the tokens in force and logs the line at fault. A token is compared with every token
known in constant time each (``hmac.compare_digest``). Nothing here logs a token or quotes one in
an error; a name may be logged and is what the audit trail writes (``BIOMED_API_TOKEN``'s name is
the variable's own).
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import threading
import time

from biomed.settings import env

log = logging.getLogger("biomed.service")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
LOOK_S = 1.0  # the most often the file's status is looked at


class TokensError(ValueError):
    """The tokens file cannot be used; the message names the line, never a token."""


def parse(text: str, where: str) -> dict[str, bytes]:
    """``name -> token`` of a tokens file's text (see the module docstring)."""
    tokens: dict[str, bytes] = {}
    seen: dict[bytes, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, token = (part.strip() for part in line.partition(":"))
        if not colon or not NAME.match(name) or not token or any(c.isspace() for c in token):
            raise TokensError(f"{where}: line {number} is not name:token (a name of letters, digits and ._@-, up to "
                              "64 characters; a token without spaces)")
        if name in tokens:
            raise TokensError(f"{where}: line {number} names {name!r} again; each name once")
        secret = token.encode("utf-8", "surrogateescape")
        if secret in seen:
            raise TokensError(f"{where}: line {number} ({name!r}) has the token of {seen[secret]!r}; each token once")
        tokens[name], seen[secret] = secret, name
    return tokens


class Tokens:
    """The tokens in force (see the module docstring)."""

    def __init__(self, token: str, path: str) -> None:
        self.path = path
        self.shared = token.encode("utf-8", "surrogateescape")
        self.named: dict[str, bytes] = {}
        self._status: tuple[int, int, int] | None = None
        self._looked = 0.0
        self._lock = threading.Lock()
        if path:
            self._read(starting=True)

    @property
    def required(self) -> bool:
        """Whether a token is needed: one is set, or a tokens file is (even an empty one: auth stays on)."""
        return bool(self.shared) or bool(self.path)

    def _read(self, starting: bool = False) -> None:
        where = f"{env('api_tokens_file')} ({os.path.basename(self.path)})"
        try:
            st = os.stat(self.path)
            status = (st.st_ino, st.st_size, st.st_mtime_ns)
            if status == self._status:
                return
            with open(self.path, encoding="utf-8") as f:
                named = parse(f.read(), where)
        except (OSError, UnicodeDecodeError, TokensError) as err:
            reason = str(err) if isinstance(err, TokensError) else f"{where} cannot be read ({type(err).__name__})"
            if starting:
                raise TokensError(reason) from None
            log.error("%s; the tokens read before stay in force", reason)
            return
        self.named, self._status = named, status
        log.info("%d named API tokens read from %s", len(named), where)

    def _refresh(self) -> None:
        now = time.monotonic()
        if not self.path or now - self._looked < LOOK_S:
            return
        with self._lock:
            if now - self._looked >= LOOK_S:
                self._looked = now
                self._read()

    def name_of(self, token: bytes) -> str | None:
        """The name of ``token``'s owner: a named token's name, or ``BIOMED_API_TOKEN`` for the shared one; None
        for any other (every known token is compared, in constant time each)."""
        self._refresh()
        token = token.strip()
        found = None
        for name, known in self.named.items():
            if hmac.compare_digest(token, known) and found is None:
                found = name
        if self.shared and hmac.compare_digest(token, self.shared) and found is None:
            found = env("api_token")
        return found
