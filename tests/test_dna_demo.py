"""The synthetic DNA data set: determinism, labels, planted instances, background."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from training.demo.dna_demo import background, generate_dna
from biomed.jaspar import find_motif
from biomed.preprocess.dna import encode, reverse_complement

MOTIFS = ("CTCF", "REST", "TP53")  # the defaults of generate_dna


Demo = tuple[list[str], np.ndarray, list[str], list[dict[str, str]]]  # tasks, labels, seqs, planted


def _read(table: Path) -> Demo:
    with table.open() as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    sequences = [r[0] for r in body]
    labels = np.array([[int(x) for x in r[1:]] for r in body])
    with table.with_name(f"{table.stem}.planted.csv").open() as handle:
        planted = list(csv.DictReader(handle))
    return header[1:], labels, sequences, planted


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    return _read(generate_dna(tmp_path_factory.mktemp("dna"), n=600, seed=3))


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    first = generate_dna(tmp_path / "a", n=50, seed=7)
    again = generate_dna(tmp_path / "b.csv", n=50, seed=7)
    other = generate_dna(tmp_path / "c", n=50, seed=8)
    assert first == tmp_path / "a" / "sequences.csv" and again == tmp_path / "b.csv"
    assert first.read_bytes() == again.read_bytes()
    sidecar = (tmp_path / "a" / "sequences.planted.csv").read_bytes()
    assert sidecar == (tmp_path / "b.planted.csv").read_bytes()
    assert first.read_bytes() != other.read_bytes()


def test_table_shape_and_labels_match_the_sidecar(demo: Demo) -> None:
    tasks, labels, sequences, planted = demo
    assert tasks == list(MOTIFS)
    assert labels.shape == (600, 3) and set(np.unique(labels)) <= {0, 1}
    assert all(len(s) == 200 and set(s) <= set("ACGT") for s in sequences)
    assert 0.2 < labels.mean() < 0.4
    from_sidecar = np.zeros_like(labels)
    for p in planted:
        from_sidecar[int(p["row"]), tasks.index(p["task"])] += 1
    assert np.array_equal(from_sidecar, labels)  # exactly one instance per positive label


def test_planted_instances_fit_and_do_not_overlap(demo: Demo) -> None:
    _, _, _, planted = demo
    by_row: dict[str, list[tuple[int, int]]] = {}
    for p in planted:
        start, end = int(p["start"]), int(p["end"])
        assert end - start == find_motif(p["motif_id"]).width and 0 <= start < end <= 200
        assert p["strand"] in "+-" and find_motif(p["task"]).id == p["motif_id"]
        by_row.setdefault(p["row"], []).append((start, end))
    for spans in by_row.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:]))
    assert {p["strand"] for p in planted} == {"+", "-"}


@pytest.mark.parametrize("task", MOTIFS)
def test_planted_instances_score_above_background(demo: Demo, task: str) -> None:
    _, _, sequences, planted = demo
    motif = find_motif(task)
    pwm = motif.log_odds(np.array([0.29, 0.21, 0.21, 0.29]))  # (4, W)
    columns = np.arange(motif.width)

    def score(codes: np.ndarray) -> float:
        return float(pwm[codes, columns].sum())

    hits = []
    for p in (p for p in planted if p["task"] == task):
        codes = encode(sequences[int(p["row"])])[int(p["start"]) : int(p["end"])]
        hits.append(score(reverse_complement(codes) if p["strand"] == "-" else codes))
    rng = np.random.default_rng(0)
    random_windows = background(rng, 2000, motif.width, 0.42)
    null = [score(w) for w in random_windows]
    assert np.median(hits) > np.percentile(null, 99)
    assert np.mean(hits) > np.mean(null) + 3 * np.std(null)


def test_background_gc_is_near_the_request(tmp_path: Path) -> None:
    for gc in (0.3, 0.6):
        _, labels, sequences, _ = _read(generate_dna(tmp_path / str(gc), n=400, gc=gc, seed=1))
        negatives = "".join(s for s, y in zip(sequences, labels) if not y.any())
        observed = (negatives.count("G") + negatives.count("C")) / len(negatives)
        assert observed == pytest.approx(gc, abs=0.01)


def test_crowded_sequences_hold_every_motif(tmp_path: Path) -> None:
    width = sum(find_motif(m).width for m in MOTIFS)
    _, labels, _, planted = _read(generate_dna(tmp_path, length=width, n=20, p_positive=1.0))
    assert labels.all() and len(planted) == 60


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"length": 10}, "length 10 is shorter than motif REST"),
        ({"length": 20}, "cannot hold all motifs"),
        ({"n": 0}, "n must be at least 1"),
        ({"gc": 0.0}, "gc must be strictly between 0 and 1"),
        ({"gc": 1.0}, "gc must be strictly between 0 and 1"),
        ({"p_positive": 1.5}, "p_positive must be between 0 and 1"),
        ({"motifs": ["FOO"]}, "motif 'FOO' is not in JASPAR CORE vertebrates"),
        ({"motifs": []}, "motifs must be a non-empty list"),
        ({"motifs": ["CTCF", "MA1930"]}, "motifs must name distinct TFs"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_dna(tmp_path, **kwargs)
    assert not list(tmp_path.iterdir())


def test_default_size(tmp_path: Path) -> None:
    """3,000 sequences and a header by default (how long it takes: python -m bench.timings)."""
    table = generate_dna(tmp_path)
    assert sum(1 for _ in table.open()) == 3001
