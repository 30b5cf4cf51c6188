"""PyTorch architectures: image CNNs and DNA sequence models, one family per module.

Each family module (every module here but ``layers``) declares its ``KIND``, ``OUTPUT_ARG`` (the
argument that sizes its output: ``num_classes`` for images, ``num_tasks`` for DNA) and ``ARCHS``, a
plain dict of names to builders; this package gathers them by kind, so a new family is a new module.
Builders are looked up by kind and name. Like torchvision's builders they take only their own
keyword arguments: a misspelt or foreign option raises ``TypeError`` naming it instead of being
dropped. Arguments saved by older runs go through :func:`saved_kwargs` before they reach a builder.
The first family module of a kind (in name order) lists its default architecture first
(:data:`DEFAULT_ARCH`).
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Mapping

from torch import nn

ARCHS: dict[str, dict[str, Callable[..., nn.Module]]] = {}
OUTPUT_ARG: dict[str, str] = {}  # the argument that sets the number of outputs, per kind
for _module in pkgutil.iter_modules(__path__):
    _family = importlib.import_module(f"{__name__}.{_module.name}")
    if hasattr(_family, "ARCHS"):
        ARCHS.setdefault(_family.KIND, {}).update(_family.ARCHS)
        OUTPUT_ARG[_family.KIND] = _family.OUTPUT_ARG
DEFAULT_ARCH = {kind: next(iter(archs)) for kind, archs in ARCHS.items()}


def build_model(kind: str, arch: str, **kwargs: object) -> nn.Module:
    """Build a model by kind (``image``/``dna``) and architecture name.

    Raises:
        ValueError: the kind or architecture is unknown; the message lists the choices.
        TypeError: an argument the builder does not take (named in the message).
    """
    if kind not in ARCHS:
        raise ValueError(f"kind {kind!r} is unknown; choose one of: {', '.join(ARCHS)}")
    if arch not in ARCHS[kind]:
        raise ValueError(f"arch {arch!r} is unknown for {kind}; choose one of: {', '.join(ARCHS[kind])}")
    return ARCHS[kind][arch](**kwargs)


def saved_kwargs(kind: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Builder arguments saved with a model (``best.pt``, ONNX metadata), fit for today's builders.

    Legacy: until builders rejected unknown arguments, training saved BOTH ``num_classes``
    and ``num_tasks`` (the same number) for every model, and each builder silently ignored
    the one it does not take. Existing runs, checkpoints and exported ONNX files still carry
    that pair, so when the kind's own output argument (:data:`OUTPUT_ARG`) is present, the
    other kind's one is dropped here. Nothing else is touched: any other unknown argument,
    or the other kind's one on its own, still reaches the builder and raises ``TypeError``.
    An unknown kind is passed through unchanged (``build_model`` names it).
    """
    out = dict(kwargs)
    own = OUTPUT_ARG.get(kind)
    if own in out:
        for other in set(OUTPUT_ARG.values()) - {own}:
            out.pop(other, None)
    return out
