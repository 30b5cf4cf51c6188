"""The kinds of model, each declared once: a module per kind in this package defines ``KIND`` (``base.Kind``).

The registry is what the package holds: every module here but ``base`` is a kind, found when the
registry is first asked (``get``, ``all_kinds``). A kind added at run time (a test's toy kind)
goes through ``register``. The serving and training parts of a kind live in their own layers
(``service/handlers/<kind>.py``, ``training/kinds/<kind>.py``), registered under the same name.
"""

from __future__ import annotations

import importlib
import pkgutil

from biomed.kinds.base import Kind, PersonInput

__all__ = ["Kind", "PersonInput", "all_kinds", "get", "names", "register"]

_REGISTRY: dict[str, Kind] = {}
_FOUND = False


def _discover() -> None:
    global _FOUND
    if _FOUND:
        return
    _FOUND = True
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            register(importlib.import_module(f"{__name__}.{module.name}").KIND)


def register(kind: Kind) -> Kind:
    """Add ``kind`` to the registry (a name already taken by another kind is refused)."""
    known = _REGISTRY.get(kind.name)
    if known is not None and known is not kind:
        raise ValueError(f"kind {kind.name!r} is declared twice")
    _REGISTRY[kind.name] = kind
    return kind


def get(name: str) -> Kind:
    """The kind called ``name``.

    Raises:
        ValueError: naming the unknown kind and the known ones.
    """
    _discover()
    kind = _REGISTRY.get(name)
    if kind is None:
        raise ValueError(f"kind {name!r} is unknown; known kinds: {', '.join(_REGISTRY)}")
    return kind


def all_kinds() -> tuple[Kind, ...]:
    """Every kind, in the order they were registered (the project's own in module order)."""
    _discover()
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(k.name for k in all_kinds())
