"""One handler per kind of model. A new kind: a handler module here, its entry below, its preprocessing in the core."""

from __future__ import annotations

from service.handlers.base import Handler, Shared
from service.handlers.dna import DnaHandler
from service.handlers.image import ImageHandler

HANDLERS: dict[str, type[Handler]] = {h.kind: h for h in (ImageHandler, DnaHandler)}

__all__ = ["HANDLERS", "DnaHandler", "Handler", "ImageHandler", "Shared"]
