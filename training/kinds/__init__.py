"""The training part of each kind of model: a module per kind here defines ``KIND`` (``base.TrainingKind``).

As ``biomed.kinds`` declares a kind and ``service.handlers`` serves it, this package trains it: every
module but ``base`` is a kind's training part, found when first asked (``get``); ``register`` adds
one at run time. The training loop, metrics and export ask the kind, never test its name.
"""

from __future__ import annotations

import importlib
import pkgutil

from training.kinds.base import TrainingKind

__all__ = ["TrainingKind", "get", "names", "register"]

_REGISTRY: dict[str, TrainingKind] = {}
_FOUND = False


def _discover() -> None:
    global _FOUND
    if _FOUND:
        return
    _FOUND = True
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            register(importlib.import_module(f"{__name__}.{module.name}").KIND)


def register(kind: TrainingKind) -> TrainingKind:
    known = _REGISTRY.get(kind.name)
    if known is not None and known is not kind:
        raise ValueError(f"kind {kind.name!r} already has a training part")
    _REGISTRY[kind.name] = kind
    return kind


def get(name: str) -> TrainingKind:
    """The training part of kind ``name``.

    Raises:
        ValueError: naming the kind and the ones that can be trained.
    """
    _discover()
    kind = _REGISTRY.get(name)
    if kind is None:
        raise ValueError(f"kind {name!r} cannot be trained here; choose one of: {', '.join(_REGISTRY)}")
    return kind


def names() -> tuple[str, ...]:
    _discover()
    return tuple(_REGISTRY)
