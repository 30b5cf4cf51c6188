"""The error body of each door, built in one place: the native ``{"error", "detail"}`` and v2's ``{"error"}``."""

from __future__ import annotations

from typing import Callable

from service.protocol import v2

ErrorBody = Callable[[str, str], dict]


def native(code: str, detail: str) -> dict:
    """The native form: a short code and the message (docs/api.md, "Errors")."""
    return {"error": code, "detail": detail}


FORMS: dict[str, ErrorBody] = {"native": native, "v2": v2.error_body}


def error_body(door: str, code: str, detail: str) -> dict:
    """The error body in ``door``'s form (``native`` or ``v2``)."""
    return FORMS[door](code, detail)
