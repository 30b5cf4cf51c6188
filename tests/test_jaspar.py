"""The bundled JASPAR motifs: the data file, lookup and PPM matching."""

from __future__ import annotations

import json
from importlib.resources import files

import numpy as np
import pytest

from biomed import jaspar
from biomed.jaspar import compare, find_motif, information_content, match, reverse_complement_ppm

DATA = files("biomed").joinpath("data", "jaspar_core_vertebrates.json")


def test_bundle_has_the_collection_and_its_citation() -> None:
    raw = DATA.read_bytes()
    bundle = json.loads(raw)
    assert len(raw) < 1_000_000
    assert len(bundle["motifs"]) > 800
    assert (bundle["collection"], bundle["tax_group"]) == ("CORE", "vertebrates")
    assert bundle["release"].startswith("JASPAR20")
    assert "Nucleic Acids Res" in bundle["citation"] and "doi:10.1093/nar/" in bundle["citation"]
    assert "CC BY 4.0" in bundle["license"]
    assert bundle["source"].startswith("pyjaspar ")
    citation_md = files("biomed").joinpath("data", "JASPAR_CITATION.md").read_text("utf-8")
    assert bundle["citation"] in citation_md


def test_one_latest_version_per_matrix() -> None:
    motifs = jaspar.load_motifs()
    bases = [key.split(".")[0] for key in motifs]
    assert len(bases) == len(set(bases))
    for motif in motifs.values():
        assert motif.counts.shape == (4, motif.width) and motif.width >= 1
        assert np.allclose(motif.ppm.sum(axis=0), 1.0) and motif.ppm.min() > 0


@pytest.mark.parametrize(
    "key, expected_id_prefix, expected_name",
    [
        ("CTCF", "MA0139.", "CTCF"),  # a name shared by MA0139, MA1929, MA1930: lowest base ID
        ("ctcf", "MA0139.", "CTCF"),
        (" Gata1 ", "MA0035.", "GATA1"),
        ("MA0139", "MA0139.", "CTCF"),
        ("ma0035", "MA0035.", "GATA1"),
        ("HNF4A", "MA0114.", "HNF4A"),
    ],
)
def test_find_motif(key: str, expected_id_prefix: str, expected_name: str) -> None:
    motif = find_motif(key)
    assert motif.id.startswith(expected_id_prefix) and motif.name == expected_name
    assert find_motif(motif.id) is motif and find_motif(motif.id.lower()) is motif


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("FOO", "try a name like CTCF, GATA1 or a matrix ID like MA0139.2"),
        ("GATA", "close names: GATA"),
        ("MA9999.1", "try a name like CTCF"),
        ("MA0139.99", "the bundled version is MA0139."),
        ("", "is not in JASPAR CORE vertebrates"),
    ],
)
def test_find_motif_unknown(key: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=f"motif {key!r} is not in JASPAR CORE vertebrates") as err:
        find_motif(key)
    assert fragment in str(err.value)


def test_compare_with_itself_and_its_reverse_complement() -> None:
    ppm = find_motif("CTCF").ppm
    assert compare(ppm, ppm) == pytest.approx((1.0, "+", 0, ppm.shape[1]))
    assert compare(ppm, reverse_complement_ppm(ppm)) == pytest.approx((1.0, "-", 0, ppm.shape[1]))


@pytest.mark.parametrize("strand", ["+", "-"])
def test_compare_finds_the_offset_of_a_sub_window(strand: str) -> None:
    ppm = find_motif("CTCF").ppm
    window = ppm[:, 3:10]
    target = window if strand == "+" else reverse_complement_ppm(window)
    score, found_strand, offset, overlap = compare(ppm, target)
    assert (found_strand, offset, overlap) == (strand, 3, 7)
    assert score == pytest.approx(1.0)


def test_compare_needs_min_overlap_and_valid_shapes() -> None:
    a, b = np.eye(4)[:, [0, 1, 2, 3, 0, 1]], np.eye(4)[:, [0, 1]]
    _, _, _, overlap = compare(a, b, min_overlap=5)
    assert overlap == 2  # capped by the narrower matrix
    with pytest.raises(ValueError, match=r"shape \(4, W\)"):
        compare(np.ones((3, 5)), a)
    with pytest.raises(ValueError, match="non-negative"):
        compare(-a, a)


@pytest.mark.parametrize("key", ["CTCF", "GATA1", "HNF4A", "MA1930"])
@pytest.mark.parametrize("flip", [False, True])
def test_match_ranks_a_motif_first_against_itself(key: str, flip: bool) -> None:
    motif = find_motif(key)
    query = reverse_complement_ppm(motif.ppm) if flip else motif.ppm
    best = match(query, top=3)
    assert len(best) == 3 and best[0].id == motif.id
    assert best[0].score == pytest.approx(1.0) and best[0].strand == ("-" if flip else "+")
    assert [m.score for m in best] == sorted((m.score for m in best), reverse=True)


@pytest.mark.parametrize("seed", range(5))
def test_match_noisy_and_partial_gata1(seed: int) -> None:
    rng = np.random.default_rng(seed)
    gata1 = find_motif("GATA1")
    noisy = gata1.ppm + rng.uniform(0, 0.2, gata1.ppm.shape)
    partial = gata1.ppm[:, 1:6] + rng.uniform(0, 0.1, (4, 5))
    flanked = np.hstack([rng.dirichlet(np.ones(4), 3).T, gata1.ppm, rng.dirichlet(np.ones(4), 3).T])
    for query in (noisy, partial, flanked):
        top = match(query, top=5)
        assert top[0].id == gata1.id, [(m.name, m.score) for m in top]
    assert match(flanked)[0].offset == 3


def test_a_longer_query_still_finds_its_motif() -> None:
    """A 19-column query (CTCF and 4 more columns) matches CTCF at offset 0 (how long it takes: bench.timings)."""
    ctcf = find_motif("CTCF")
    top = match(np.hstack([ctcf.ppm, ctcf.ppm[:, :4]]))[0]
    assert (top.id, top.offset) == (ctcf.id, 0)


def test_match_rejects_bad_top() -> None:
    with pytest.raises(ValueError, match="top must be at least 1"):
        match(find_motif("CTCF").ppm, top=0)


@pytest.mark.parametrize(
    "ppm, expected",
    [
        (np.full((4, 3), 0.25), [0.0, 0.0, 0.0]),
        (np.eye(4), [2.0] * 4),
        ([[0.5], [0.5], [0], [0]], [1.0]),
    ],
)
def test_information_content(ppm: np.ndarray, expected: list[float]) -> None:
    assert information_content(np.asarray(ppm, dtype=float)) == pytest.approx(expected, abs=1e-6)
