"""DNA operations, torch-free: tiled prediction, reverse-complement averaging, variant effects, in-silico mutagenesis.

Shared by the service's DNA handler (``predict`` is the model's batcher) and the command line
(``predict`` runs onnxruntime directly). Every function turns its whole request into one array
of model windows and hands it to ``predict`` in a single call, so a 1 kb ISM (~3,000 mutants)
runs as a few large batches, never one call per variant.
"""

from __future__ import annotations

from typing import Awaitable, Callable

import numpy as np

from biomed.errors import InputError
from biomed.preprocess import dna
from biomed.outputs.semantics import PROBABILITIES, Semantics, finite_or_none
from biomed.outputs.semantics import logit as logit  # re-exported: the log-odds of the variant effects
from biomed.preprocess.dna import DnaSpec

Predict = Callable[[np.ndarray], Awaitable[np.ndarray]]  # (N, L) uint8 -> (N, T) probabilities or values


def sequence_rows(lengths: list[int], spec: DnaSpec, reverse_complement: bool) -> int:
    """Model rows ``predict_sequences`` submits for sequences of these lengths (before building any)."""
    strands = 2 if reverse_complement else 1
    return strands * sum(len(dna.window_starts(n, spec.length, spec.stride)) for n in lengths)


def variant_rows(count: int, spec: DnaSpec, reverse_complement: bool) -> int:
    """Model rows ``score_variants`` submits for ``count`` variants: ref and alt, each placement, each strand."""
    return count * 2 * len(variant_offsets(spec.length)) * (2 if reverse_complement else 1)


def explain_rows(length: int, spec: DnaSpec, reverse_complement: bool) -> int:
    """At most the model rows ``explain`` submits for a sequence of ``length`` bases."""
    windows = len(dna.window_starts(length, spec.length, spec.stride))
    return windows * (1 + 3 * min(length, spec.length)) * (2 if reverse_complement else 1)


async def score_windows(predict: Predict, windows: np.ndarray, reverse_complement: bool) -> np.ndarray:
    """Probabilities (N, T) of (N, L) windows; forward and reverse strands in one batch, averaged."""
    if not reverse_complement:
        return await predict(windows)
    out = await predict(np.concatenate([windows, dna.reverse_complement(windows)]))
    n = len(windows)
    return (out[:n] + out[n:]) / 2


async def predict_sequences(predict: Predict, labels: list[str], params: DnaSpec, items: list[tuple[str, str]],
                            reverse_complement: bool, semantics: Semantics = PROBABILITIES) -> list[dict]:
    """One prediction per sequence: the per-task max over its windows (the mean, for regression values; see
    ``Semantics.summarise``), and the windows when there are several; under ``semantics.name``.

    All sequences are encoded in one table lookup and those of one length tiled together, so ten thousand
    sequences cost a few array operations, not ten thousand.
    """
    names = [name for name, _ in items]
    codes, offsets = dna.encode_many([seq for _, seq in items], names)
    lengths = np.diff(offsets)
    if not lengths.all():
        raise InputError(f"sequence {names[int(np.argmin(lengths))]!r} is empty", code="empty_sequence")
    rows, firsts, starts_of = dna.tile_many(codes, offsets, params.length, params.stride)
    probs = await score_windows(predict, rows, reverse_complement)
    maxima = semantics.summarise(probs, np.asarray(firsts, dtype=np.int64)).tolist()
    key = semantics.name
    out = []
    for name, n, first, starts, top in zip(names, lengths.tolist(), firsts, starts_of, maxima):
        entry = {"id": name, "length": n, key: dict(zip(labels, top))}
        if n > params.length:
            entry["windows"] = [{"start": s, "end": s + params.length, key: dict(zip(labels, w))}
                                for s, w in zip(starts, probs[first : first + len(starts)].tolist())]
        out.append(entry)
    return out


def variant_offsets(length: int) -> list[int]:
    """Where the variant sits in its window: the centre, or both middle bases for an even length.

    Both placements of an even-length window make the set mirror itself, so a variant scores the
    same given on either strand (with reverse-complement averaging).
    """
    return [length // 2] if length % 2 else [length // 2 - 1, length // 2]


def variant_window(codes: np.ndarray, position: int, length: int, offset: int | None = None) -> tuple[np.ndarray, int]:
    """The model window with ``position`` at ``offset`` (default: the centre), N-padded, and the variant's index."""
    start = position - (length // 2 if offset is None else offset)
    window = np.full(length, dna.N_CODE, dtype=np.uint8)
    lo, hi = max(start, 0), min(start + length, len(codes))
    window[lo - start : hi - start] = codes[lo:hi]
    return window, position - start


async def score_variants(predict: Predict, labels: list[str], params: DnaSpec, variants: list[dict],
                         reverse_complement: bool, semantics: Semantics = PROBABILITIES) -> list[dict]:
    """Ref and alt outputs of SNVs and their effects (``semantics.effect_names``: the difference, and the log-odds
    difference of probabilities or the log2 fold change of values), all in one batch.

    Every variant is encoded, checked and windowed in a few array operations; when any check fails, the
    variants are checked again one by one so the error names the first bad one, as a loop would.
    """
    names = [v.get("id") or str(i) for i, v in enumerate(variants)]
    try:
        codes, offsets = dna.encode_many([v["sequence"] for v in variants], names)
        ref = dna.encode_many([v["ref"] for v in variants], names)[0]  # one base each (the request's schema)
        alt = dna.encode_many([v["alt"] for v in variants], names)[0]
    except InputError:
        ref = alt = None
    if ref is None or len(ref) != len(variants) or len(alt) != len(variants):
        _first_bad_variant(variants, names)
    lengths = np.diff(offsets)
    position = np.fromiter((v["position"] for v in variants), dtype=np.int64, count=len(variants))
    inside = position < lengths
    at = np.minimum(offsets[:-1] + np.where(inside, position, 0), max(len(codes) - 1, 0))
    base = codes[at] if len(codes) else np.full(len(variants), dna.N_CODE, dtype=np.uint8)
    bad = ~inside | (ref == dna.N_CODE) | (ref != base) | (alt == dna.N_CODE) | (alt == ref)
    if bad.any():
        _first_bad_variant(variants, names)
    # Each variant's context (its base at the centre, N outside its sequence), then the windows the streaming
    # VCF scorer builds from the same contexts.
    half = params.length // 2
    local = position[:, None] + np.arange(-half, half + 1)[None, :]
    valid = (local >= 0) & (local < lengths[:, None])
    contexts = np.where(valid, codes[offsets[:-1, None] + np.clip(local, 0, None) * valid], dna.N_CODE)
    ref_rows, alt_rows = context_windows(contexts.astype(np.uint8), alt, params.length)
    p_ref, p_alt, diff, scaled = await variant_effects(predict, ref_rows, alt_rows,
                                                       len(variant_offsets(params.length)), reverse_complement,
                                                       semantics)
    first, second = semantics.effect_names
    rows = zip(names, p_ref.tolist(), p_alt.tolist(), diff.tolist(), scaled.tolist())
    return [{"id": name, "ref": dict(zip(labels, r)), "alt": dict(zip(labels, a)), first: dict(zip(labels, d)),
             second: dict(zip(labels, finite_or_none(o)))} for name, r, a, d, o in rows]


def _first_bad_variant(variants: list[dict], names: list[str]) -> None:
    """Raise the error of the first variant, in order, that cannot be scored."""
    for name, v in zip(names, variants):
        codes = dna.encode(v["sequence"], name=name)
        pos = v["position"]
        if pos >= len(codes):
            raise InputError(f"variant {name!r}: position {pos} is outside its sequence of {len(codes)} bases (0-based)",
                             code="position_out_of_range")
        ref, alt = dna.encode(v["ref"], name=f"{name} ref"), dna.encode(v["alt"], name=f"{name} alt")
        if len(ref) != 1 or ref[0] == dna.N_CODE:
            raise InputError(f"variant {name!r}: ref must be A, C, G or T (an N base has no allele to score against)",
                             code="invalid_ref")
        if ref[0] != codes[pos]:
            raise InputError(f"variant {name!r}: ref {v['ref'].upper()!r} does not match the sequence base "
                             f"{dna.decode(codes[pos:pos + 1])!r} at position {pos}", code="ref_mismatch")
        if len(alt) != 1 or alt[0] == dna.N_CODE or alt[0] == ref[0]:
            raise InputError(f"variant {name!r}: alt must be A, C, G or T and differ from ref", code="invalid_alt")
    raise AssertionError("a variant failed the batch checks but none failed one by one")


async def variant_effects(predict: Predict, ref_rows: np.ndarray, alt_rows: np.ndarray, placements: int,
                          reverse_complement: bool, semantics: Semantics = PROBABILITIES
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(ref, alt, *semantics.effects(ref, alt))``, each (n, T), of n variants' ref and alt windows
    ((n * placements, L) each, a variant's placements consecutive): all rows in one ``predict`` call, the placements
    averaged. For probabilities the effects are ``diff`` and ``log_odds_diff``; for values ``diff`` and
    ``log2_fold_change`` (NaN where a value is <= 0).

    The one computation behind ``/score_variants`` and the streaming VCF scorer (``biomed/variant_stream.py``).
    """
    n = len(ref_rows) // placements
    probs = await score_windows(predict, np.concatenate([ref_rows, alt_rows]), reverse_complement)
    p_ref = probs[: n * placements].reshape(n, placements, -1).mean(axis=1)  # mean over the placements
    p_alt = probs[n * placements :].reshape(n, placements, -1).mean(axis=1)
    return (p_ref, p_alt, *semantics.effects(p_ref, p_alt))


def context_windows(contexts: np.ndarray, alts: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Ref and alt windows, (n * placements, L) each, of n SNVs given as contexts centred on them.

    ``contexts`` is (n, 2 * (L // 2) + 1) uint8 codes with the variant at index ``L // 2``;
    ``alts`` its (n,) alt codes. The rows are exactly those ``score_variants`` builds for
    ``{sequence: context, position: L // 2}``, in the same order.
    """
    half, offsets = length // 2, variant_offsets(length)
    n, k = len(contexts), len(offsets)
    ref = np.empty((n, k, length), dtype=np.uint8)
    for j, offset in enumerate(offsets):
        ref[:, j] = contexts[:, half - offset : half - offset + length]
    alt = ref.copy()
    for j, offset in enumerate(offsets):
        alt[:, j, offset] = alts
    return ref.reshape(n * k, length), alt.reshape(n * k, length)


def _mutants(window: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All three substitutions at each window position: (3P, L) mutants and their alt codes (P, 3)."""
    ref = window[positions]
    alts = (ref[:, None].astype(np.int64) + np.arange(1, 4)[None, :]) % 4  # (P, 3); N positions are skipped upstream
    mutants = np.repeat(window[None, :], 3 * len(positions), axis=0)
    mutants[np.arange(3 * len(positions)), np.repeat(positions, 3)] = alts.reshape(-1)
    return mutants, alts


async def explain(predict: Predict, labels: list[str], params: DnaSpec, sequence: str, task: str | None,
                  reverse_complement: bool, semantics: Semantics = PROBABILITIES) -> dict:
    """In-silico mutagenesis: the change in one task's probability (or value) for every base substitution.

    The sequence's score is the max over its windows; a substitution re-scores only
    the windows that contain it. ``importance`` is the mean absolute change over the
    three substitutions at each position.
    """
    codes = dna.encode(sequence, name="sequence")
    windows = dna.tile(codes, params.length, params.stride)
    n = len(codes)
    rows, index = [windows.codes], []  # index: (window, seq positions, alt codes, first mutant row)
    offset = len(windows.codes)
    for w, start in enumerate(windows.starts):
        seq_pos = np.arange(max(start, 0), min(start + params.length, n))
        seq_pos = seq_pos[codes[seq_pos] != dna.N_CODE]
        mutants, alts = _mutants(windows.codes[w], seq_pos - start)
        rows.append(mutants)
        index.append((w, seq_pos, alts, offset))
        offset += len(mutants)
    probs = await score_windows(predict, np.concatenate(rows), reverse_complement)
    t = _task_index(labels, task, probs[: len(windows.codes)])
    base = probs[: len(windows.codes), t]
    scored = np.full((n, 4), -np.inf)  # best mutated score over the windows that contain each position
    contains = np.zeros((len(base), n), dtype=bool)
    for w, seq_pos, alts, first in index:
        contains[w, seq_pos] = True
        mutant = probs[first : first + 3 * len(seq_pos), t]
        np.maximum.at(scored, (np.repeat(seq_pos, 3), alts.reshape(-1)), mutant)
    others = np.where(contains, -np.inf, base[:, None]).max(axis=0)  # unchanged windows, per position
    scored = np.where(np.isfinite(scored), np.maximum(scored, others[:, None]), scored)
    reference = float(base.max())
    deltas = np.where(np.isfinite(scored), scored - reference, 0.0)
    importance = np.abs(deltas).sum(axis=1) / 3
    return {"task": labels[t], semantics.one: reference, "scores": deltas.round(7).tolist(),
            "importance": importance.round(7).tolist()}


def _task_index(labels: list[str], task: str | None, window_probs: np.ndarray) -> int:
    if task is None:
        return int(window_probs.max(axis=0).argmax())
    if task not in labels:
        raise InputError(f"task {task!r} is not one of this model's tasks: {', '.join(labels)}", code="unknown_task")
    return labels.index(task)
