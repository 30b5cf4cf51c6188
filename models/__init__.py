"""PyTorch architectures: image CNNs and DNA sequence models.

Builders are looked up by kind and name in a plain dict; every builder takes
the same keyword arguments so a model can be rebuilt from its saved config.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from models.dna_cnn import deepbind
from models.dna_rnn import danq
from models.image import cnn, resnet

ARCHS: dict[str, dict[str, Callable[..., nn.Module]]] = {
    "image": {"cnn": cnn, "resnet": resnet},
    "dna": {"deepbind": deepbind, "danq": danq},
}
DEFAULT_ARCH = {"image": "cnn", "dna": "deepbind"}


def build_model(kind: str, arch: str, **kwargs: object) -> nn.Module:
    """Build a model by kind (``image``/``dna``) and architecture name.

    Raises:
        ValueError: the kind or architecture is unknown; the message lists the choices.
    """
    if kind not in ARCHS:
        raise ValueError(f"kind {kind!r} is unknown; choose one of: {', '.join(ARCHS)}")
    if arch not in ARCHS[kind]:
        raise ValueError(f"arch {arch!r} is unknown for {kind}; choose one of: {', '.join(ARCHS[kind])}")
    return ARCHS[kind][arch](**kwargs)
