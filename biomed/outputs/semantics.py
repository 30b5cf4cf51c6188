"""What a model's output means, read once from its metadata: probabilities (softmax or sigmoid) or regression values.

Every answer and output format asks this object instead of branching on it: the JSON field and v2
output name (``probabilities`` or ``values``), how a long sequence's windows are summarised, what
variant effects are reported (``diff`` and ``log_odds_diff``, or ``diff`` and ``log2_fold_change``),
the VCF tags, the SR's measurement names and units, what ``biomed_predictions_total`` counts, and how
the instances of a series combine into its result (``aggregate``: ``biomed.series``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

EPS = 1e-7
REGRESSION = "none"  # the metadata's output activation of regression values
AGGREGATES = ("max", "mean")  # how a series' instances combine (``Semantics.aggregate``)


@dataclass(frozen=True)
class Semantics:
    """A model's output.

    Attributes:
        name: the output's name: the ONNX output, the v2 output and the JSON field (``probabilities``, ``values``).
        activation: ``softmax``, ``sigmoid`` (probabilities) or ``none`` (regression values).
        units: regression only: each value's UCUM unit, in label order (``1``: no unit).
        aggregate: how a series' instances combine: ``max`` (any slice shows it) or ``mean``; the metadata's
            ``output.aggregate``, else ``max`` for probabilities and ``mean`` for values.
    """

    name: str = "probabilities"
    activation: str = "softmax"
    units: tuple[str, ...] = ()
    aggregate: str = "max"

    @classmethod
    def of(cls, doc: Mapping[str, Any]) -> "Semantics":
        """From a model's metadata document (its ``output`` block)."""
        return cls.of_output(doc["output"], len(doc["labels"]))

    @classmethod
    def of_output(cls, output: Mapping[str, Any], width: int) -> "Semantics":
        """From an ``output`` block (the metadata's, or ``GET /models``') of a model with ``width`` labels."""
        activation = str(output.get("activation", "softmax"))
        units = tuple(output.get("units") or ())
        if activation == REGRESSION and not units:
            units = ("1",) * width
        aggregate = str(output.get("aggregate") or ("mean" if activation == REGRESSION else "max"))
        if aggregate not in AGGREGATES:
            raise ValueError(f"output.aggregate {aggregate[:20]!r} is unknown; accepted: {', '.join(AGGREGATES)}")
        return cls("values" if activation == REGRESSION else "probabilities", activation, units, aggregate)

    @property
    def regression(self) -> bool:
        return self.activation == REGRESSION

    @property
    def one(self) -> str:
        """One entry of the output, for messages and single-value fields (``probability``, ``value``)."""
        return "value" if self.regression else "probability"

    @property
    def effect_names(self) -> tuple[str, str]:
        """The two variant effects beside ref and alt: the difference, and its log-scale form."""
        return ("diff", "log2_fold_change") if self.regression else ("diff", "log_odds_diff")

    def effects(self, ref: np.ndarray, alt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The variant effects of ``effect_names``: alt - ref, and logit(alt) - logit(ref) for probabilities or
        log2(alt / ref) for values (NaN where either value is <= 0: no fold change exists there)."""
        diff = alt - ref
        if not self.regression:
            return diff, logit(alt) - logit(ref)
        a, r = alt.astype(np.float64), ref.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            fold = np.where((a > 0) & (r > 0), np.log2(np.where(a > 0, a, 1.0) / np.where(r > 0, r, 1.0)), np.nan)
        return diff, fold

    def summarise(self, rows: np.ndarray, firsts: np.ndarray) -> np.ndarray:
        """One row per segment of ``rows`` (segment i starts at row ``firsts[i]``; the segments cover every row
        once, in any order): the column-wise max of probabilities (a sequence holds the feature if a window
        does), the mean of regression values (the sequence's average signal)."""
        order = np.argsort(firsts, kind="stable")
        starts = firsts[order]
        out = np.empty((len(firsts), rows.shape[1]), dtype=rows.dtype)
        if self.regression:
            ends = np.append(starts[1:], len(rows))
            out[order] = np.add.reduceat(rows, starts, axis=0) / (ends - starts)[:, None]
        else:
            out[order] = np.maximum.reduceat(rows, starts, axis=0)
        return out

    def counted(self, rows: np.ndarray) -> list[str]:
        """What ``biomed_predictions_total`` counts for regression rows: one ``value`` per row (there is no label)."""
        return ["value"] * len(rows)


PROBABILITIES = Semantics()


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p.astype(np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def finite_or_none(values: list[float]) -> list[float | None]:
    """JSON has no NaN: a value that does not exist (a fold change of a value <= 0) is ``null``."""
    return [v if v == v else None for v in values]
