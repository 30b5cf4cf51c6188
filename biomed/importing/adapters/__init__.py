"""The adapters of the kinds that can be imported: a module per kind here defines ``ADAPTER`` (``base.Adapter``).

As ``biomed.kinds``: every module but ``base`` is found when the registry is first asked.
"""

from __future__ import annotations

import importlib
import pkgutil

from biomed.importing.adapters.base import Adapter

_REGISTRY: dict[str, type[Adapter]] = {}


def _discover() -> None:
    if _REGISTRY:
        return
    for module in pkgutil.iter_modules(__path__):
        if module.name != "base":
            adapter = importlib.import_module(f"{__name__}.{module.name}").ADAPTER
            _REGISTRY[adapter.kind] = adapter


def get(kind: str) -> type[Adapter]:
    """The adapter of models of ``kind``.

    Raises:
        ValueError: naming the kind and those that can be imported.
    """
    _discover()
    if kind not in _REGISTRY:
        raise ValueError(f"models of kind {kind!r} cannot be imported; accepted: {', '.join(_REGISTRY)}")
    return _REGISTRY[kind]


def names() -> tuple[str, ...]:
    _discover()
    return tuple(_REGISTRY)
