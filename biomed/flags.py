"""On/off settings and form fields, read the same way everywhere (environment, CLI, HTTP fields)."""

from __future__ import annotations

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


def parse_flag(value: str | None, default: bool, name: str) -> bool:
    """``value`` as a boolean: ``default`` when absent or blank.

    Raises:
        ValueError: naming ``name`` and the accepted spellings, for anything else.
    """
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in TRUE:
        return True
    if text in FALSE:
        return False
    raise ValueError(f"{name}={value!r} must be true or false ({', '.join(TRUE)} / {', '.join(FALSE)})")
