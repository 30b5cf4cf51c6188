"""The serving part of each kind of model: a module per kind here defines its ``Handler`` subclass (``kind`` names it).

Like ``biomed.kinds``, the registry is what the package holds: every module but ``base`` is found when
the registry is first asked; ``register`` adds a handler at run time (a test's toy kind). Doors never
name a handler class: they ask the engine for a handler that serves an operation
(``Engine.pick(ref, "predict_file")``), and each handler lists the operations it serves.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from service.handlers.base import Handler, Shared

__all__ = ["Handler", "Shared", "handler_class", "kinds_serving", "register"]

_REGISTRY: dict[str, type[Handler]] = {}
_FOUND = False


def _discover() -> None:
    global _FOUND
    if _FOUND:
        return
    _FOUND = True
    for module in pkgutil.iter_modules(__path__):
        if module.name == "base":
            continue
        loaded = importlib.import_module(f"{__name__}.{module.name}")
        for _, value in inspect.getmembers(loaded, inspect.isclass):
            if issubclass(value, Handler) and value is not Handler and value.__module__ == loaded.__name__:
                register(value)


def register(handler: type[Handler]) -> type[Handler]:
    """Serve models of ``handler.kind`` with ``handler`` (a kind served twice is refused)."""
    known = _REGISTRY.get(handler.kind)
    if known is not None and known is not handler:
        raise ValueError(f"kind {handler.kind!r} already has a handler ({known.__name__})")
    _REGISTRY[handler.kind] = handler
    return handler


def handler_class(kind: str) -> type[Handler] | None:
    """The handler of models of ``kind`` (None: no handler serves that kind)."""
    _discover()
    return _REGISTRY.get(kind)


def kinds_serving(operation: str) -> list[str]:
    """The kinds whose handler serves ``operation``."""
    _discover()
    return [kind for kind, handler in _REGISTRY.items() if operation in handler.operations]


def served_kinds() -> list[str]:
    _discover()
    return list(_REGISTRY)
