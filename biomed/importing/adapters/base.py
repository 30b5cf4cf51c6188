"""What an adapter is: the ONNX graph from a kind's standard input to the user's input, and its NumPy twin."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import onnx

from biomed.importing.errors import ImportRefused
from biomed.importing.graph import Graph

ADAPTED = "adapted"  # the adapter graph's output, joined to the user's input


class Adapter:
    """The front adapter of one kind (subclasses: one per kind, in this package; ``kind`` names it).

    Built from the description and the user's graph; refuses (``ImportRefused``) a description whose layout does
    not match the graph's input. ``pre`` is the ONNX graph from the standard input (``input``) to the user's
    input; ``reference`` the same mapping in NumPy, written independently, that the import verifies it against.
    """

    kind: ClassVar[str]

    def __init__(self, description: dict[str, Any], graph: Graph) -> None:
        self.description = description
        self.part = description[self.kind]
        self.graph = graph

    def preprocess(self) -> dict[str, Any]:
        """The metadata's ``preprocess`` block: what the service does before the stored graph."""
        raise NotImplementedError

    def input(self) -> tuple[list[int], str]:
        """The stored graph's input: its dims after the batch, and its dtype (the kind's standard input)."""
        raise NotImplementedError

    def pre(self) -> onnx.ModelProto:
        raise NotImplementedError

    def reference(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def samples(self, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
        """Standard inputs to verify with, by name: ``random`` and ``demo`` (structured inputs), ``rows`` each."""
        raise NotImplementedError

    def match(self, axis: int, wanted: int, what: str) -> None:
        """Refuse a graph whose input has a fixed size other than ``wanted`` on ``axis``."""
        shape = self.graph.input_shape
        have = shape[axis] if axis < len(shape) else None
        if have is not None and have != wanted:
            raise ImportRefused(f"the description's {self.kind}.{what} says {wanted}, but the graph's input "
                                f"{self.graph.input!r} has shape {_shape(shape)}; the layout does not match the graph")

    def rank(self, wanted: int, layout: str) -> None:
        if self.graph.input_shape and len(self.graph.input_shape) != wanted:  # () : not known yet (a TorchScript file)
            raise ImportRefused(f"the description's {self.kind}.layout {layout} needs a rank-{wanted} input, but the "
                                f"graph's input {self.graph.input!r} has shape {_shape(self.graph.input_shape)}")


def _shape(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"
