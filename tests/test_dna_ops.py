"""biomed.dna_ops with a fake numpy model: tiling, strands, variant windows, variant effects and ISM."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from biomed.errors import InputError
from biomed.preprocess import dna
from biomed import dna_ops

L, STRIDE = 40, 20
PARAMS = dna_ops.DnaSpec(L, STRIDE)
LABELS = ["a_rich", "gata", "left_g"]
MOTIF = "GATA"  # reverse complement TATC: the fake model sees one strand only
_MOTIF = dna.encode(MOTIF)


def fake_model(x: np.ndarray) -> np.ndarray:
    """(N, L) codes -> (N, 3) probabilities, strand-asymmetric on purpose.

    a_rich: share of A (A and T swap under reverse complement); gata: best 4-mer match to GATA,
    forward strand only, sharply peaked; left_g: position-dependent, G in the window's first half.
    """
    x = np.asarray(x)
    a_rich = (x == 0).mean(axis=1)
    k = np.lib.stride_tricks.sliding_window_view(x, len(_MOTIF), axis=1)  # (N, L-3, 4)
    match = (k == _MOTIF).sum(axis=2).max(axis=1) / len(_MOTIF)
    gata = 0.02 + 0.96 * match**4
    left_g = 0.1 + 0.8 * (x[:, : x.shape[1] // 2] == 2).mean(axis=1)
    return np.stack([a_rich, gata, left_g], axis=1).astype(np.float32)


class FakePredictor:
    """The batcher's ``submit`` stand-in: records every submission."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    async def __call__(self, rows: np.ndarray) -> np.ndarray:
        assert rows.dtype == np.uint8 and rows.ndim == 2 and rows.shape[1] == L
        self.calls.append(rows.copy())
        return fake_model(rows)


def run(coro):  # type: ignore[no-untyped-def]
    return asyncio.run(coro)


def random_seq(n: int, seed: int, avoid: str = MOTIF) -> str:
    rng = np.random.default_rng(seed)
    while True:
        s = "".join(rng.choice(list("ACGT"), n))
        if avoid not in s:
            return s


def rc(seq: str) -> str:
    return dna.decode(dna.reverse_complement(dna.encode(seq)))


def predict(items: list[tuple[str, str]], reverse_complement: bool = False, pred: FakePredictor | None = None) -> list[dict]:
    return run(dna_ops.predict_sequences(pred or FakePredictor(), LABELS, PARAMS, items, reverse_complement))


# --- tiling and the per-task max -------------------------------------------------------------


@pytest.mark.parametrize("n", [L, 25, 24, 1, 100, 95, 41, 137])
def test_tiling_reports_windows_and_per_task_max(n: int) -> None:
    seq = random_seq(n, seed=n)
    codes = dna.encode(seq)
    pred = FakePredictor()
    [out] = predict([("s", seq)], pred=pred)
    assert out["id"] == "s" and out["length"] == n
    assert len(pred.calls) == 1  # the whole request is one submission
    starts = dna.window_starts(n, L, STRIDE)
    padded = np.concatenate([np.full(L, dna.N_CODE), codes, np.full(L, dna.N_CODE)]).astype(np.uint8)
    direct = fake_model(np.stack([padded[L + s : L + s + L] for s in starts]))  # N outside the sequence
    np.testing.assert_allclose(list(out["probabilities"].values()), direct.max(axis=0), rtol=1e-6)
    if n <= L:  # padded with N, centred (two placements when the padding is odd); no windows reported
        assert "windows" not in out
        pad = L - n
        assert starts == ([-(pad // 2)] if pad % 2 == 0 else [-(pad // 2) - 1, -(pad // 2)])
        if pad % 2 == 0:
            np.testing.assert_array_equal(padded[L + starts[0] : 2 * L + starts[0]], dna.pad_centre(codes, L))
        return
    assert starts[0] == 0 and starts[-1] == n - L and starts == sorted(set(starts))
    assert all(0 < b - a <= STRIDE for a, b in zip(starts, starts[1:]))
    assert sorted(n - L - s for s in starts) == starts  # the reverse strand's windows are the same set
    assert [w["start"] for w in out["windows"]] == starts
    assert all(w["end"] == w["start"] + L for w in out["windows"])
    for w, row in zip(out["windows"], direct):
        np.testing.assert_allclose(list(w["probabilities"].values()), row, rtol=1e-6)


def test_max_takes_each_task_from_its_own_best_window() -> None:
    seq = list(random_seq(100, seed=3))
    seq[85:89] = MOTIF  # only in the last window (60..100)
    seq[0:10] = "G" * 10  # left_g is best in the first window
    [out] = predict([("x", "".join(seq))])
    windows = out["windows"]
    best = {t: max(range(len(windows)), key=lambda i: windows[i]["probabilities"][t]) for t in LABELS}
    assert best["gata"] == len(windows) - 1 and best["left_g"] == 0
    assert out["probabilities"]["gata"] == pytest.approx(0.98)
    for t in LABELS:
        assert out["probabilities"][t] == max(w["probabilities"][t] for w in windows)


def test_several_sequences_in_one_request_keep_their_order_and_ids() -> None:
    items = [("short", "ACGT"), ("long", random_seq(90, 1)), ("exact", random_seq(L, 2)), ("lower", "acgtn" * 3)]
    out = predict(items)
    assert [o["id"] for o in out] == ["short", "long", "exact", "lower"]
    assert [o["length"] for o in out] == [4, 90, L, 15]
    assert [("windows" in o) for o in out] == [False, True, False, False]
    # the same sequence alone gives the same answer
    alone = predict([items[1]])[0]
    assert alone == out[1]


@pytest.mark.parametrize("seq, name, position, char", [
    ("ACGTXACGT", "bad", 4, "X"),
    ("ACGU", "rna", 3, "U"),
    ("AC GT", "space", 2, " "),
    ("ACGTÄ", "umlaut", 4, "Ä"),
])
def test_invalid_base_names_sequence_position_and_character(seq: str, name: str, position: int, char: str) -> None:
    with pytest.raises(InputError) as err:
        predict([("ok", "ACGT"), (name, seq)])
    assert err.value.status == 422 and err.value.code == "invalid_sequence"
    assert repr(name) in err.value.detail and f"position {position}" in err.value.detail and repr(char) in err.value.detail


def test_empty_sequence_is_refused() -> None:
    with pytest.raises(InputError) as err:
        predict([("e", "")])
    assert err.value.status == 422 and err.value.code == "empty_sequence"


# --- reverse-complement averaging ------------------------------------------------------------


@pytest.mark.parametrize("n", [L, L - 2, L - 1, L - 7, 100, L + STRIDE, 95, 41, 137])
def test_reverse_complement_averaging_is_strand_symmetric(n: int) -> None:
    seq = list(random_seq(n, seed=7 + n))
    seq[n // 3 : n // 3 + 4] = MOTIF
    seq = "".join(seq)
    fwd_only = predict([("f", seq)], reverse_complement=False)[0]["probabilities"]
    rev_only = predict([("r", rc(seq))], reverse_complement=False)[0]["probabilities"]
    # the fake model is strand-asymmetric: one strand alone gives another answer
    assert any(fwd_only[t] != pytest.approx(rev_only[t], abs=1e-4) for t in LABELS)
    fwd = predict([("f", seq)], reverse_complement=True)[0]
    rev = predict([("r", rc(seq))], reverse_complement=True)[0]
    for t in LABELS:
        assert fwd["probabilities"][t] == pytest.approx(rev["probabilities"][t], abs=1e-6), t
    if n <= L and (L - n) % 2 == 0:  # one window: the mean of the two strands
        for t in LABELS:
            assert fwd["probabilities"][t] == pytest.approx((fwd_only[t] + rev_only[t]) / 2, abs=1e-6)


def test_reverse_complement_doubles_one_submission() -> None:
    pred = FakePredictor()
    predict([("a", random_seq(100, 1)), ("b", "ACGT")], reverse_complement=True, pred=pred)
    [rows] = pred.calls
    k = len(dna.window_starts(100, L, STRIDE)) + len(dna.window_starts(4, L, STRIDE))
    assert len(rows) == 2 * k
    np.testing.assert_array_equal(rows[k:], dna.reverse_complement(rows[:k]))


# --- variants ------------------------------------------------------------------------------


@pytest.mark.parametrize("n, position, length", [(10, 1, 6), (10, 9, 6), (10, 0, 7), (100, 50, 40), (3, 1, 8), (1, 0, 5)])
def test_variant_window_centres_the_variant_and_pads_with_n(n: int, position: int, length: int) -> None:
    codes = dna.encode(random_seq(n, seed=n + position))
    window, at = dna_ops.variant_window(codes, position, length)
    assert window.shape == (length,) and window.dtype == np.uint8
    assert at == length // 2 and window[at] == codes[position]
    for i in range(length):  # every window base is the sequence base at the same offset, or N outside it
        j = position - at + i
        assert window[i] == (codes[j] if 0 <= j < n else dna.N_CODE)


def test_variant_window_pads_both_ends() -> None:
    window, at = dna_ops.variant_window(dna.encode("ACG"), 1, 9)
    assert dna.decode(window) == "NNNACGNNN" and at == 4


def test_a_variant_scores_the_same_given_on_either_strand() -> None:
    """An even model length has no centre base: both middle placements are scored and averaged."""
    assert dna_ops.variant_offsets(L) == [L // 2 - 1, L // 2] and dna_ops.variant_offsets(41) == [20]
    seq = random_seq(90, seed=5)
    params = dna_ops.DnaSpec(L, L // 2)
    comp = str.maketrans("ACGT", "TGCA")
    for position in (0, 7, 44, 89):
        ref = seq[position]
        alt = "ACGT"[("ACGT".index(ref) + 1) % 4]
        forward = {"sequence": seq, "position": position, "ref": ref, "alt": alt}
        reverse = {"sequence": seq.translate(comp)[::-1], "position": 89 - position, "ref": ref.translate(comp),
                   "alt": alt.translate(comp)}
        a, b = run(dna_ops.score_variants(FakePredictor(), LABELS, params, [forward, reverse], True))
        for t in LABELS:
            assert a["ref"][t] == pytest.approx(b["ref"][t], abs=1e-9) and a["alt"][t] == pytest.approx(b["alt"][t], abs=1e-9)


def variants(items: list[dict], reverse_complement: bool = False) -> list[dict]:
    return run(dna_ops.score_variants(FakePredictor(), LABELS, PARAMS, items, reverse_complement))


def test_score_variants_sign_and_log_odds() -> None:
    seq = list(random_seq(60, seed=11))
    seq[30:34] = "GATC"  # one substitution from the motif
    seq = "".join(seq)
    gain = {"id": "gain", "sequence": seq, "position": 33, "ref": "C", "alt": "a"}
    loss_seq = seq[:33] + "A" + seq[34:]
    loss = {"sequence": loss_seq, "position": 31, "ref": "a", "alt": "T"}
    out = variants([gain, loss])
    assert [o["id"] for o in out] == ["gain", "1"]
    for o in out:
        for t in LABELS:
            assert o["diff"][t] == pytest.approx(o["alt"][t] - o["ref"][t], abs=1e-6)
            expected = dna_ops.logit(np.array(o["alt"][t])) - dna_ops.logit(np.array(o["ref"][t]))
            assert o["log_odds_diff"][t] == pytest.approx(float(expected), abs=1e-4)
    assert out[0]["diff"]["gata"] > 0 and out[0]["log_odds_diff"]["gata"] > 0
    assert out[1]["diff"]["gata"] < 0 and out[1]["log_odds_diff"]["gata"] < 0
    assert out[0]["ref"]["gata"] == pytest.approx(out[1]["alt"]["gata"])  # the same 4-mer score
    window, _ = dna_ops.variant_window(dna.encode(seq), 33, L)
    np.testing.assert_allclose(list(out[0]["ref"].values()), fake_model(window[None])[0], rtol=1e-6)


def test_score_variants_builds_the_windows_a_variant_at_a_time_would() -> None:
    """The batched windows equal ``variant_window`` applied variant by variant, placement by placement: sequences
    shorter and longer than the model, variants at both ends, odd and even model lengths."""
    rng = np.random.default_rng(3)
    for length in (L, 41):
        params = dna_ops.DnaSpec(length, length // 2)
        items, expected_ref, expected_alt = [], [], []
        for i in range(60):
            n = int(rng.integers(1, 3 * length))
            seq = random_seq(n, seed=100 + i)
            pos = int(rng.choice([0, n - 1, int(rng.integers(0, n))]))
            alt = "ACGT"[("ACGT".index(seq[pos]) + 1 + i % 3) % 4]
            items.append({"sequence": seq.lower() if i % 5 == 0 else seq, "position": pos, "ref": seq[pos], "alt": alt})
            for offset in dna_ops.variant_offsets(length):
                window, at = dna_ops.variant_window(dna.encode(seq), pos, length, offset)
                mutant = window.copy()
                mutant[at] = dna.encode(alt)[0]
                expected_ref.append(window)
                expected_alt.append(mutant)
        recorded: list[np.ndarray] = []

        async def predict(rows: np.ndarray) -> np.ndarray:
            recorded.append(rows.copy())
            return np.zeros((len(rows), len(LABELS)), dtype=np.float32) + 0.5

        run(dna_ops.score_variants(predict, LABELS, params, items, False))
        [rows] = recorded
        np.testing.assert_array_equal(rows, np.concatenate([np.stack(expected_ref), np.stack(expected_alt)]))


def test_score_variants_names_the_first_bad_variant_in_order() -> None:
    good = {"sequence": "ACGTACGT", "position": 2, "ref": "G", "alt": "T"}
    cases = [({"ref": "A"}, "ref_mismatch"), ({"position": 8}, "position_out_of_range"), ({"ref": "N"}, "invalid_ref"),
             ({"alt": "G"}, "invalid_alt"), ({"alt": "X"}, "invalid_sequence"), ({"sequence": "ACGZ"}, "invalid_sequence")]
    for change, code in cases:
        later_bad = {**good, "id": "later", "sequence": "ACG!"}
        batch = [good, {**good, "id": "bad", **change}, later_bad]
        with pytest.raises(dna_ops.InputError) as err:
            variants(batch)
        assert err.value.code == code and "bad" in err.value.detail, (change, err.value.detail)


def test_score_variants_with_reverse_complement_is_strand_symmetric() -> None:
    seq = random_seq(21, seed=5)  # odd, shorter than L: the same bases are in the window on both strands
    pos = 10
    alt = "ACGT"[("ACGT".index(seq[pos]) + 1) % 4]
    fwd = variants([{"sequence": seq, "position": pos, "ref": seq[pos], "alt": alt}], True)[0]
    comp = {"A": "T", "C": "G", "G": "C", "T": "A"}
    rev = variants([{"sequence": rc(seq), "position": len(seq) - 1 - pos, "ref": comp[seq[pos]], "alt": comp[alt]}], True)[0]
    for key in ("ref", "alt", "diff"):
        for t in ("a_rich", "gata"):
            assert fwd[key][t] == pytest.approx(rev[key][t], abs=1e-6)


@pytest.mark.parametrize("variant, code, status", [
    ({"sequence": "ACGTACGT", "position": 2, "ref": "A", "alt": "T"}, "ref_mismatch", 422),
    ({"sequence": "ACGTACGT", "position": 8, "ref": "A", "alt": "T"}, "position_out_of_range", 422),
    ({"sequence": "ACGTACGT", "position": 0, "ref": "A", "alt": "A"}, "invalid_alt", 422),
    ({"sequence": "ACGTACGT", "position": 0, "ref": "A", "alt": "N"}, "invalid_alt", 422),
    ({"sequence": "ACGTXCGT", "position": 0, "ref": "A", "alt": "C"}, "invalid_sequence", 422),
    ({"sequence": "ACGTACGT", "position": 0, "ref": "A", "alt": "Z"}, "invalid_sequence", 422),
])
def test_score_variants_refusals(variant: dict, code: str, status: int) -> None:
    with pytest.raises(InputError) as err:
        variants([{"sequence": "ACGT", "position": 0, "ref": "A", "alt": "C"}, variant])
    assert err.value.code == code and err.value.status == status
    if code == "ref_mismatch":
        assert "'G'" in err.value.detail and "position 2" in err.value.detail and "'1'" in err.value.detail


# --- in-silico mutagenesis -------------------------------------------------------------------


def explain(seq: str, task: str | None = "gata", reverse_complement: bool = False, pred: FakePredictor | None = None) -> dict:
    return run(dna_ops.explain(pred or FakePredictor(), LABELS, PARAMS, seq, task, reverse_complement))


def score_of(seq_codes: np.ndarray, t: int, reverse_complement: bool) -> float:
    """The sequence score the way the service defines it: the max over its windows (strands averaged)."""
    windows = dna.tile(seq_codes, L, STRIDE).codes
    p = fake_model(windows)
    if reverse_complement:
        p = (p + fake_model(dna.reverse_complement(windows))) / 2
    return float(p[:, t].max())


def brute_force_ism(seq: str, task: str, reverse_complement: bool) -> np.ndarray:
    """Mutate the full sequence at every base, re-score it as a whole (max over windows)."""
    codes = dna.encode(seq)
    t = LABELS.index(task)
    reference = score_of(codes, t, reverse_complement)
    out = np.zeros((len(codes), 4))
    for i, ref in enumerate(codes):
        if ref == dna.N_CODE:
            continue
        for b in range(4):
            if b != ref:
                mutant = codes.copy()
                mutant[i] = b
                out[i, b] = score_of(mutant, t, reverse_complement) - reference
    return out


def test_explain_shape_zero_at_reference_and_importance_at_the_motif() -> None:
    seq = list(random_seq(L - 4, seed=21))
    seq[14:18] = MOTIF
    seq = "".join(seq)
    pred = FakePredictor()
    out = explain(seq, pred=pred)
    scores = np.array(out["scores"])
    assert out["task"] == "gata" and scores.shape == (len(seq), 4) and len(out["importance"]) == len(seq)
    codes = dna.encode(seq)
    assert (scores[np.arange(len(seq)), codes] == 0).all()
    assert len(pred.calls) == 1 and len(pred.calls[0]) == 1 + 3 * len(seq)
    importance = np.array(out["importance"])
    assert 14 <= int(importance.argmax()) <= 17
    assert importance[14:18].min() > importance[np.r_[0:14, 18:len(seq)]].max()
    np.testing.assert_allclose(importance, np.abs(scores).sum(axis=1) / 3, atol=1e-6)
    assert out["probability"] == pytest.approx(0.98)


@pytest.mark.parametrize("n, reverse_complement, task", [
    (L, False, "gata"),
    (L - 7, True, "gata"),  # padded, odd
    (95, False, "gata"),  # windows 0, 20, 40, 55
    (95, True, "left_g"),  # position-dependent task: window offsets matter
    (130, True, "a_rich"),
])
def test_explain_matches_brute_force_over_windows(n: int, reverse_complement: bool, task: str) -> None:
    seq = list(random_seq(n, seed=100 + n))
    seq[n // 4 : n // 4 + 4] = MOTIF
    seq[n - 12 : n - 8] = "GATC"
    seq[n // 2] = "N"
    seq = "".join(seq)
    out = explain(seq, task=task, reverse_complement=reverse_complement)
    np.testing.assert_allclose(np.array(out["scores"]), brute_force_ism(seq, task, reverse_complement), atol=2e-6)
    assert out["probability"] == pytest.approx(score_of(dna.encode(seq), LABELS.index(task), reverse_complement), abs=1e-6)
    assert out["scores"][n // 2] == [0.0, 0.0, 0.0, 0.0]  # N: nothing to substitute


def test_explain_default_task_is_the_highest_scoring() -> None:
    seq = random_seq(30, seed=4)[:10] + MOTIF + random_seq(30, seed=5)[:16]
    assert explain(seq, task=None)["task"] == "gata"


def test_explain_unknown_task() -> None:
    with pytest.raises(InputError) as err:
        explain("ACGTACGT", task="nope")
    assert err.value.status == 422 and err.value.code == "unknown_task" and "gata" in err.value.detail
