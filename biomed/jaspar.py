"""The bundled JASPAR CORE vertebrates motifs: lookup and motif-to-motif matching.

Torch-free (numpy only) and lazy: nothing is read until the first call, then the
JSON written by ``scripts/extract_jaspar.py`` is parsed once and cached.

Matching scores two position probability matrices (PPMs, (4, W), rows A, C, G, T)
by the Pearson correlation of their probabilities over the overlapping columns,
taking the best offset on either strand. Columns are normalised to sum to 1, so
the mean of any set of overlapping columns is exactly 0.25 and the correlation is
``sum((a - .25) * (b - .25)) / sqrt(sum((a - .25)**2) * sum((b - .25)**2))``
over the flattened overlap. Nothing else is penalised: an alignment only needs
``min(min_overlap, W_a, W_b)`` overlapping columns.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

PSEUDO = 0.01  # added to every base frequency before renormalising, in probability units
MIN_OVERLAP = 5
_ID_RE = re.compile(r"^(MA\d{4})(?:\.(\d+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class Motif:
    """One JASPAR matrix."""

    id: str  # matrix ID with version, e.g. MA0139.2
    name: str  # TF name as JASPAR spells it, e.g. CTCF
    counts: np.ndarray = field(compare=False, repr=False)  # (4, W) float, rows A, C, G, T

    @property
    def width(self) -> int:
        """Number of columns."""
        return int(self.counts.shape[1])

    @property
    def ppm(self) -> np.ndarray:
        """(4, W) probabilities; every base gets ``PSEUDO`` before renormalising."""
        freq = self.counts / np.maximum(self.counts.sum(axis=0, keepdims=True), 1e-12)
        return (freq + PSEUDO) / (1.0 + 4 * PSEUDO)

    def log_odds(self, background: np.ndarray | None = None) -> np.ndarray:
        """(4, W) log2 odds of the PPM against ``background`` (4,), uniform by default."""
        bg = np.full(4, 0.25) if background is None else np.asarray(background, dtype=float)
        return np.log2(self.ppm / bg[:, None])


@dataclass(frozen=True)
class MotifMatch:
    """The best alignment of a query PPM with one bundled motif."""

    id: str
    name: str
    score: float  # Pearson correlation over the overlapping columns, in [-1, 1]
    strand: str  # '+' the motif as is, '-' its reverse complement
    offset: int  # start of the (possibly reverse-complemented) motif relative to the query
    overlap: int  # number of overlapping columns


@lru_cache(maxsize=1)
def load_bundle() -> dict[str, Any]:
    """The parsed JSON bundle: ``release``, ``citation``, ``license``, ``motifs``..."""
    text = files("biomed").joinpath("data", "jaspar_core_vertebrates.json").read_text("utf-8")
    return json.loads(text)


@lru_cache(maxsize=1)
def _motifs() -> tuple[Motif, ...]:
    motifs = []
    for entry in load_bundle()["motifs"]:
        counts = np.asarray(entry["counts"], dtype=np.float64)
        counts.setflags(write=False)
        motifs.append(Motif(entry["id"], entry["name"], counts))
    return tuple(motifs)


def load_motifs() -> dict[str, Motif]:
    """All bundled motifs keyed by matrix ID (a fresh dict; the motifs are shared)."""
    return {m.id: m for m in _motifs()}


def _id_key(motif: Motif) -> tuple[int, int]:
    base, version = motif.id[2:].split(".")
    return int(base), int(version)


@lru_cache(maxsize=1)
def _index() -> tuple[dict[str, Motif], dict[str, Motif], dict[str, Motif]]:
    """Lookups by upper-case full ID, base ID and name.

    A name shared by several matrices maps to the one with the lowest base ID (the
    oldest, canonical profile, e.g. CTCF -> MA0139, not its extended MA1929/MA1930).
    """
    by_id = {m.id.upper(): m for m in _motifs()}
    by_base = {m.id.split(".")[0].upper(): m for m in _motifs()}
    by_name: dict[str, Motif] = {}
    for motif in sorted(_motifs(), key=_id_key, reverse=True):
        by_name[motif.name.upper()] = motif  # the lowest ID is written last and wins
    return by_id, by_base, by_name


def find_motif(key: str) -> Motif:
    """Find a motif by matrix ID (``MA0139.2`` or ``MA0139``) or TF name, case-insensitive.

    Raises:
        ValueError: the key names no bundled motif; close names are suggested.
    """
    by_id, by_base, by_name = _index()
    wanted = key.strip().upper()
    id_match = _ID_RE.match(wanted)
    if id_match and id_match.group(2) is None and wanted in by_base:
        return by_base[wanted]
    if wanted in by_id or wanted in by_name:
        return by_id.get(wanted) or by_name[wanted]
    hint = "try a name like CTCF, GATA1 or a matrix ID like MA0139.2"
    if id_match and id_match.group(1) in by_base:
        hint = f"the bundled version is {by_base[id_match.group(1)].id}"
    else:
        close = difflib.get_close_matches(wanted, list(by_name), n=3, cutoff=0.6)
        if close:
            hint += f" (close names: {', '.join(by_name[c].name for c in close)})"
    raise ValueError(f"motif {key!r} is not in JASPAR CORE vertebrates; {hint}")


def information_content(ppm: np.ndarray) -> np.ndarray:
    """(W,) information content in bits of each column of a (4, W) PPM."""
    p = _normalise(ppm)
    return 2.0 + np.sum(p * np.log2(np.clip(p, 1e-12, None)), axis=0)


def reverse_complement_ppm(ppm: np.ndarray) -> np.ndarray:
    """Reverse complement of a (4, W) ACGT matrix: flip bases and columns."""
    return np.asarray(ppm)[::-1, ::-1]


def _normalise(ppm: np.ndarray) -> np.ndarray:
    """Check a (4, W) non-negative matrix and scale its columns to sum to 1."""
    p = np.asarray(ppm, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] != 4 or p.shape[1] < 1:
        raise ValueError(f"a PPM must have shape (4, W) with rows A, C, G, T; got {p.shape}")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("a PPM must hold finite, non-negative values")
    return p / np.maximum(p.sum(axis=0, keepdims=True), 1e-12)


@dataclass(frozen=True)
class _Library:
    """Motifs centred (p - 0.25) and zero-padded to one width, on one strand."""

    centred: np.ndarray  # (M, 4, Wmax)
    mask: np.ndarray  # (M, Wmax) 1 where a column exists
    widths: np.ndarray  # (M,)


def _library(ppms: list[np.ndarray]) -> _Library:
    widths = np.array([p.shape[1] for p in ppms])
    centred = np.zeros((len(ppms), 4, int(widths.max())))
    for i, p in enumerate(ppms):
        centred[i, :, : p.shape[1]] = p - 0.25
    mask = (np.arange(centred.shape[2])[None, :] < widths[:, None]).astype(np.float64)
    return _Library(centred, mask, widths)


@lru_cache(maxsize=1)
def _bundled_libraries() -> tuple[_Library, _Library]:
    ppms = [m.ppm for m in _motifs()]
    return _library(ppms), _library([reverse_complement_ppm(p) for p in ppms])


def _scan(query: np.ndarray, lib: _Library, min_overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson scores of a normalised (4, Wq) query against every motif at every offset.

    Returns:
        scores (M, O) with -inf where the overlap is too short, and offsets (O,): the
        start of the motif relative to the query for each column of ``scores``.
    """
    wq, wmax = query.shape[1], lib.centred.shape[2]
    pad = ((0, 0), (wmax - 1, wmax - 1))
    q_win = sliding_window_view(np.pad(query - 0.25, pad), wmax, axis=1)  # (4, O, Wmax)
    q_sq = sliding_window_view(np.pad(((query - 0.25) ** 2).sum(0), pad[1]), wmax)  # (O, Wmax)
    q_on = sliding_window_view(np.pad(np.ones(wq), pad[1]), wmax)  # (O, Wmax)
    cross = np.einsum("kow,mkw->mo", q_win, lib.centred, optimize=True)  # (M, O)
    norm_q = lib.mask @ q_sq.T  # (M, O)
    norm_m = (lib.centred**2).sum(1) @ q_on.T  # (M, O)
    overlap = lib.mask @ q_on.T  # (M, O)
    with np.errstate(divide="ignore", invalid="ignore"):
        scores = np.nan_to_num(cross / np.sqrt(norm_q * norm_m), nan=0.0, posinf=0.0)
    needed = np.minimum(min(min_overlap, wq), lib.widths)[:, None]
    scores[overlap < needed - 0.5] = -np.inf
    return scores, np.arange(scores.shape[1]) - (wmax - 1)


def _best(query: np.ndarray, libs: tuple[_Library, _Library], min_overlap: int) -> tuple:
    """Per motif: best score, strand, offset and overlap over both strands."""
    fwd, fwd_off = _scan(query, libs[0], min_overlap)
    rev, rev_off = _scan(query, libs[1], min_overlap)
    both = np.concatenate([fwd, rev], axis=1)  # '+' first, so ties go to '+'
    col = both.argmax(axis=1)
    rows = np.arange(both.shape[0])
    offsets = np.concatenate([fwd_off, rev_off])[col]
    strands = np.where(col < fwd.shape[1], "+", "-")
    starts, ends = np.maximum(offsets, 0), np.minimum(offsets + libs[0].widths, query.shape[1])
    return both[rows, col], strands, offsets, ends - starts


def compare(
    ppm_a: np.ndarray, ppm_b: np.ndarray, min_overlap: int = MIN_OVERLAP
) -> tuple[float, str, int, int]:
    """Best alignment of ``ppm_b`` (or its reverse complement) against ``ppm_a``.

    Args:
        ppm_a: (4, Wa) query; columns are rescaled to sum to 1.
        ppm_b: (4, Wb) target.
        min_overlap: alignments need ``min(min_overlap, Wa, Wb)`` shared columns.

    Returns:
        ``(score, strand, offset, overlap)``: the Pearson correlation, '+' or '-',
        the start of (the reverse complement of) b relative to a's first column,
        and the number of overlapping columns.
    """
    a, b = _normalise(ppm_a), _normalise(ppm_b)
    libs = (_library([b]), _library([reverse_complement_ppm(b)]))
    score, strand, offset, overlap = (x[0] for x in _best(a, libs, min_overlap))
    return float(score), str(strand), int(offset), int(overlap)


def match(ppm: np.ndarray, top: int = 5, min_overlap: int = MIN_OVERLAP) -> list[MotifMatch]:
    """The ``top`` bundled motifs most similar to ``ppm`` (4, W), best first.

    Ties are broken by matrix ID so the order is deterministic. See :func:`compare`
    for the score.
    """
    if top < 1:
        raise ValueError(f"top must be at least 1; got {top}")
    scores, strands, offsets, overlaps = _best(_normalise(ppm), _bundled_libraries(), min_overlap)
    motifs = _motifs()
    order = sorted(range(len(motifs)), key=lambda i: (-scores[i], motifs[i].id))[:top]
    return [
        MotifMatch(motifs[i].id, motifs[i].name, float(scores[i]), str(strands[i]),
                   int(offsets[i]), int(overlaps[i]))
        for i in order
    ]
