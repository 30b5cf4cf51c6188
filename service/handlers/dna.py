"""DNA models: sequences become model-length windows (both strands); outputs become per-task results.

The sequence operations themselves (tiling, variant windows, ISM rows) are the core's
(``biomed/dna_ops.py``); this handler adds the request caps, the batcher and the metrics.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from biomed import dna_ops
from biomed.errors import InputError, TooLarge
from biomed.kinds.dna import KIND as DNA
from biomed.preprocess import dna
from biomed.preprocess.dna import DnaSpec
from biomed.runtime import LoadedModel
from biomed.settings import env
from service.handlers.base import Handler, Shared


class DnaHandler(Handler):
    kind = DNA.name
    operations = frozenset({"predict_sequences", "score_variants", "explain"})
    batch_setting = "max_dna_batch_size"

    def __init__(self, model: LoadedModel, shared: Shared) -> None:
        super().__init__(model, shared)
        self.spec = DnaSpec.from_dict(model.doc["preprocess"])

    def _predictor(self, started: float) -> Callable[[np.ndarray], Any]:
        """The batcher's submit, recording the request's encoding time on its first call."""
        seen = False

        async def predict(rows: np.ndarray) -> np.ndarray:
            nonlocal seen
            if not seen:
                self.metrics.preprocess_seconds.labels(kind="dna").observe(time.perf_counter() - started)
                seen = True
            return await self.run(rows)

        return predict

    def check_caps(self, items: list[tuple[str, str]]) -> None:
        """Refuse (413) more sequences or bases than ``BIOMED_MAX_SEQUENCES`` / ``BIOMED_MAX_BASES``."""
        cfg = self.config
        if len(items) > cfg.max_sequences:
            raise TooLarge(f"{len(items)} sequences in one request; the limit is {cfg.max_sequences} "
                           f"({env('max_sequences')})")
        bases = sum(len(s) for _, s in items)
        if bases > cfg.max_bases:
            raise TooLarge(f"{bases} bases in one request; the limit is {cfg.max_bases} ({env('max_bases')})")

    def strands(self, reverse_complement: bool | None) -> bool:
        """Whether both strands are averaged: as the request says, else as the model's metadata says."""
        return self.spec.reverse_complement if reverse_complement is None else reverse_complement

    def parameters(self, defaults: dict[str, Any]) -> dict[str, Any]:
        return {**defaults, "reverse_complement": self.spec.reverse_complement}

    async def _predictions(self, items: list[tuple[str, str]], reverse_complement: bool | None, started: float,
                           door: str) -> list[dict]:
        """Per sequence the per-task max over its windows (``dna_ops.predict_sequences``; the mean of regression
        values), counted under ``door``."""
        self.check_caps(items)
        rc = self.strands(reverse_complement)
        rows = dna_ops.sequence_rows([len(s) for _, s in items], self.spec, rc)
        with self.admit(rows, f"{len(items)} sequence(s)"):
            predictions = await dna_ops.predict_sequences(self._predictor(started), self.labels, self.spec, items,
                                                          rc, self.semantics)
        self.count_predictions(self.row_labels(self.table(predictions)), door)
        return predictions

    def table(self, predictions: list[dict]) -> np.ndarray:
        """(sequences, labels) of ``predict_sequences``' answers, in label order."""
        key = self.semantics.name
        return np.array([[p[key][t] for t in self.labels] for p in predictions], dtype=np.float32)

    async def predict_sequences(self, items: list[tuple[str, str]], reverse_complement: bool | None,
                                started: float) -> dict:
        """``/predict_dna``, ``/predict_fasta``: per sequence the per-task max over its windows."""
        return self.answer(predictions=await self._predictions(items, reverse_complement, started, "native"))

    def class_labels(self, probs: np.ndarray) -> list[str]:
        return [t for row in probs for t in _positive(dict(zip(self.labels, row)))]

    def check_rows(self, x: np.ndarray) -> None:
        super().check_rows(x)
        if x.size and int(x.max()) > dna.N_CODE:
            raise InputError(f"base codes must be 0 to {dna.N_CODE} (A=0, C=1, G=2, T=3, N=4); found {int(x.max())}",
                             code="invalid_codes")

    async def predict_items(self, items: list[bytes], parameters: dict[str, Any],
                            door: str = "native") -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """v2's ``sequence`` input: one row per sequence, exactly ``/predict_dna``'s probabilities."""
        sequences = [(str(i), _text(str(i), s)) for i, s in enumerate(items)]
        predictions = await self._predictions(sequences, parameters.get("reverse_complement"), time.perf_counter(),
                                              door)
        return self.table(predictions), {}

    async def score_variants(self, variants: list[dict], reverse_complement: bool | None, started: float) -> dict:
        """``/score_variants``: ref and alt outputs of SNVs and their effects (``Semantics.effect_names``)."""
        if len(variants) > self.config.max_variants:
            raise TooLarge(f"{len(variants)} variants in one request; the limit is {self.config.max_variants} "
                           f"({env('max_variants')})")
        self.check_caps([(str(i), v["sequence"]) for i, v in enumerate(variants)])
        rc = self.strands(reverse_complement)
        rows = dna_ops.variant_rows(len(variants), self.spec, rc)
        with self.admit(rows, f"{len(variants)} variant(s)"):
            scores = await dna_ops.score_variants(self._predictor(started), self.labels, self.spec, variants, rc,
                                                  self.semantics)
        return self.answer(variants=scores)

    async def explain(self, sequence: str, task: str | None, reverse_complement: bool | None, started: float) -> dict:
        """``/explain_dna``: in-silico mutagenesis of one sequence."""
        limit = self.config.max_explain_bases
        if len(sequence) > limit:
            raise TooLarge(f"sequence of {len(sequence)} bases; explain takes at most {limit} "
                           f"({env('max_explain_bases')})")
        rc = self.strands(reverse_complement)
        rows = dna_ops.explain_rows(len(sequence), self.spec, rc)
        with self.admit(rows, f"explaining {len(sequence)} bases"):
            result = await dna_ops.explain(self._predictor(started), self.labels, self.spec, sequence, task, rc,
                                           self.semantics)
        return self.answer(**result)


def _positive(probabilities: dict[str, float]) -> list[str]:
    return [t for t, p in probabilities.items() if p >= 0.5] or ["none"]


def _text(name: str, item: bytes) -> str:
    """A BYTES element as text: UTF-8 (a lone surrogate kept as itself, so the error names it as sent); 422 naming
    the byte when it is not UTF-8 at all."""
    try:
        return item.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as err:
        raise InputError(f"sequence {name!r} is not UTF-8 text (byte 0x{item[err.start]:02x} at byte {err.start}); "
                         "accepted: A, C, G, T, N (any case)", code="invalid_sequence") from None
