"""PyTorch architectures: image CNNs and DNA sequence models.

Builders are looked up by kind and name in a plain dict. Like torchvision's
builders they take only their own keyword arguments: a misspelt or foreign
option raises ``TypeError`` naming it instead of being dropped. Image builders
size their output with ``num_classes``, DNA builders with ``num_tasks``
(:data:`OUTPUT_ARG`). Arguments saved by older runs go through
:func:`saved_kwargs` before they reach a builder.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from torch import nn

from models.dna_cnn import deepbind
from models.dna_rnn import danq
from models.image import cnn, resnet, resnet18

ARCHS: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "image": {"cnn": cnn, "resnet": resnet, "resnet18": resnet18},
    "dna": {"deepbind": deepbind, "danq": danq},
}
DEFAULT_ARCH = {"image": "cnn", "dna": "deepbind"}
# The argument that sets the number of outputs, per kind: one logit per class or per task.
OUTPUT_ARG = {"image": "num_classes", "dna": "num_tasks"}


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
