"""DNA models: base codes (N, L) uint8 (A=0, C=1, G=2, T=3, N=4) to the user's float one-hot.

One Gather from a (5, 4) table does the encoding: row ``code`` is that base's one-hot in the
description's alphabet order (an N is 0.25 in each column, or zeros), in the graph's dtype; a
Transpose (and Unsqueeze) gives the layout: (N, 4, L), (N, L, 4) or (N, 1, 4, L). Tiling, padding
and strand averaging are the service's, as for its own models (``biomed.preprocess.dna``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from biomed.importing.adapters.base import ADAPTED, Adapter
from biomed.importing.errors import ImportRefused
from biomed.importing.graph import INPUT, Graph, const, elem, model, unsqueeze
from biomed.kinds.dna import KIND
from biomed.preprocess.dna import ALPHABET, N_CODE, DnaSpec

_SHAPES = {"N4L": (3, 1, 2), "NL4": (3, 2, 1), "N14L": (4, 2, 3)}  # layout: (rank, axis of the 4 bases, axis of L)


class DnaAdapter(Adapter):
    kind = KIND.name

    def __init__(self, description: dict[str, Any], graph: Graph) -> None:
        super().__init__(description, graph)
        p = self.part
        self.layout, self.length = p["layout"], int(p["length"])
        rank, bases, length = _SHAPES[self.layout]
        self.rank(rank, self.layout)
        self.match(bases, 4, "layout (4 bases on that axis)")
        self.match(length, self.length, "length")
        if self.layout == "N14L":
            self.match(1, 1, "layout (1 on axis 1)")
        self.alphabet = p.get("alphabet", "ACGT")
        if sorted(self.alphabet) != sorted("ACGT"):
            raise ImportRefused(f"dna.alphabet {self.alphabet!r} is not an order of A, C, G and T")
        self.n_value = float(p.get("n_value", 0.25))
        self.spec = DnaSpec(self.length, int(p.get("stride", max(1, self.length // 2))),
                            bool(p.get("reverse_complement", True)))

    def table(self) -> np.ndarray:
        """(5, 4): the one-hot of each code (A, C, G, T, N) in the description's alphabet order and dtype."""
        table = np.zeros((len(ALPHABET), 4), dtype=self.graph.input_dtype)
        for code, base in enumerate(ALPHABET[:4]):
            table[code, self.alphabet.index(base)] = 1.0
        table[N_CODE] = self.n_value
        return table

    def preprocess(self) -> dict[str, Any]:
        return self.spec.to_dict()

    def input(self) -> tuple[list[int], str]:
        return [self.length], "uint8"

    def pre(self) -> onnx.ModelProto:
        g = self.graph
        batch = g.batch if g.batch is not None else "batch"
        nodes = [helper.make_node("Cast", [INPUT], ["pre.index"], to=TensorProto.INT64),
                 helper.make_node("Gather", ["pre.table", "pre.index"], ["pre.onehot" if self.layout != "NL4" else ADAPTED],
                                  axis=0)]  # (N, L, 4)
        inits = [const("pre.table", self.table())]
        if self.layout != "NL4":
            last = ADAPTED if self.layout == "N4L" else "pre.channels_first"
            nodes.append(helper.make_node("Transpose", ["pre.onehot"], [last], perm=[0, 2, 1]))  # (N, 4, L)
            if self.layout == "N14L":
                unsqueeze(g.opset, last, ADAPTED, [1], nodes, inits)  # (N, 1, 4, L)
        out = {"N4L": [batch, 4, self.length], "NL4": [batch, self.length, 4], "N14L": [batch, 1, 4, self.length]}
        return model(g, "biomed_dna_adapter", nodes, inits,
                     [helper.make_tensor_value_info(INPUT, TensorProto.UINT8, [batch, self.length])],
                     [helper.make_tensor_value_info(ADAPTED, elem(g.input_dtype), out[self.layout])])

    def reference(self, x: np.ndarray) -> np.ndarray:
        """A NumPy one-hot of the codes, written out base by base."""
        onehot = np.zeros((*x.shape, 4), dtype=np.float64)  # (N, L, 4)
        for code, base in enumerate(ALPHABET[:4]):
            onehot[..., self.alphabet.index(base)] = x == code
        onehot[x == N_CODE] = self.n_value
        if self.layout == "N4L":
            onehot = onehot.transpose(0, 2, 1)
        elif self.layout == "N14L":
            onehot = onehot.transpose(0, 2, 1)[:, None]
        return onehot.astype(self.graph.input_dtype)

    def samples(self, rng: np.random.Generator, rows: int) -> dict[str, np.ndarray]:
        random = rng.integers(0, N_CODE + 1, size=(rows, self.length), dtype=np.uint8)
        motif = np.frombuffer(b"\x01\x01\x02\x01\x02\x02\x00\x03\x03\x02", dtype=np.uint8)  # a CTCF-like core
        demo = np.resize(np.arange(4, dtype=np.uint8), (rows, self.length)).copy()
        for i in range(rows):
            demo[i] = np.roll(demo[i], i)
            at = (i * 7) % max(1, self.length - len(motif))
            demo[i, at : at + len(motif)] = motif[: self.length - at]
        demo[0, : self.length // 4] = N_CODE  # padding, as a short sequence's window has
        return {"random": random, "demo": demo}


ADAPTER = DnaAdapter
