"""Input errors shared by preprocessing, training and the service.

Each error carries a short machine code and an HTTP status, so the service can
turn it into the contract's ``{"error", "detail"}`` body without guessing.
Messages must never contain patient data.
"""

from __future__ import annotations


def with_article(word: str) -> str:
    """``word`` after "a" or "an" as it is read ("an image", "a dna"): for messages that name a kind or a format."""
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"


class InputError(ValueError):
    """Bad input from a user: what was wrong and what is accepted."""

    status: int = 422
    code: str = "invalid_input"

    def __init__(self, detail: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class MalformedInput(InputError):
    """The request could not be parsed at all (400)."""

    status = 400
    code = "malformed"


class TooLarge(InputError):
    """The input is over a configured cap (413)."""

    status = 413
    code = "too_large"


class UnsupportedMedia(InputError):
    """The input's type or encoding is not one we handle (415)."""

    status = 415
    code = "unsupported_media_type"


class Overloaded(InputError):
    """The server is busy with other work right now; the same request may succeed shortly (429)."""

    status = 429
    code = "too_many_requests"
