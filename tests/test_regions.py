"""`biomed predict-regions`: bigWig tracks that read back with pyBigWig, whose zoom records (decoded from the bytes)
hold the exact means, that peak at the planted motifs, equal /predict_dna window by window, and come out the same
through --server (slow); BED handling, contig names of the other convention, regions on contigs the FASTA lacks.

One small model trained here (seconds) on the demo motifs and the few-kb demo genome of `biomed demo-data genome`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from bigwig_zoom import zoom_levels
from conftest import inprocess_client
from genomics import demo_genome, run_cli, train_small_dna

from biomed.genome import GenomeError, Reference
from biomed.regions import read_regions

MODEL = "regions-dna"
TASKS = ["CTCF", "REST", "TP53"]
STEP = 25


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_small_dna(tmp_path_factory.mktemp("regions-model"), MODEL)


@pytest.fixture(scope="module")
def genome(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_genome(tmp_path_factory.mktemp("regions-genome"), variants=10)


def predict(model: str, genome: Path, out: Path, *extra: str) -> str:
    rc, stdout, err = run_cli("predict-regions", "--model", model, "--bed", str(genome / "regions.bed"),
                              "--fasta", str(genome / "genome.fa"), "--out", str(out), "--step", str(STEP), *extra)
    assert rc == 0, err
    return stdout


@pytest.fixture(scope="module")
def tracks(model: str, genome: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("tracks")
    stdout = predict(model, genome, out, "--batch-rows", "64")
    return {"dir": out, "stdout": stdout}


def sites(genome: Path) -> list[tuple[str, int, int, str]]:
    rows = [line.split("\t") for line in (genome / "sites.bed").read_text().splitlines()]
    return [(r[0], int(r[1]), int(r[2]), r[3].split(":")[0]) for r in rows]


def test_tracks_read_back_with_pybigwig(tracks: dict, genome: Path, model: str) -> None:
    import pyBigWig

    lengths = Reference(genome / "genome.fa").lengths
    for task in TASKS:
        with pyBigWig.open(str(tracks["dir"] / f"{task}.bw")) as bw:
            assert bw.isBigWig() and bw.chroms() == lengths
            for chrom, size in lengths.items():
                intervals = bw.intervals(chrom)
                assert intervals[0][0] == 0 and intervals[-1][1] == size  # the whole contig, bin by bin
                assert all(b - a == STEP for a, b, _ in intervals[:-1])
                assert all(0.0 <= v <= 1.0 for _, _, v in intervals)
    summary = json.loads((tracks["dir"] / "summary.json").read_text())
    assert summary["model"]["name"] == MODEL and summary["step"] == STEP
    assert summary["windows"] == sum(-(-n // STEP) for n in lengths.values())
    assert [t["task"] for t in summary["tracks"]] == TASKS
    assert "windows of 200 every 25 bases" in tracks["stdout"]


def test_signal_peaks_at_the_planted_motifs(tracks: dict, genome: Path) -> None:
    import pyBigWig

    planted = sites(genome)
    for task in TASKS:
        with pyBigWig.open(str(tracks["dir"] / f"{task}.bw")) as bw:
            at = {s: bw.values(s[0], (s[1] + s[2]) // 2, (s[1] + s[2]) // 2 + 1)[0] for s in planted}
            own = [v for s, v in at.items() if s[3] == task]
            other = [v for s, v in at.items() if s[3] != task]
            assert np.mean(own) > np.mean(other) + 0.1, (task, np.mean(own), np.mean(other))
            near = 0
            for chrom, start, end, name in planted:
                if name != task:
                    continue
                centre = (start + end) // 2
                lo, hi = max(centre - 140, 0), centre + 140  # half-way to the neighbouring sites
                values = np.array(bw.values(chrom, lo, hi))
                near += abs(lo + int(np.nanargmax(values)) - centre) <= 100 + STEP
            assert near / len(own) >= 0.8, (task, near, len(own))


def test_values_equal_predict_dna(tracks: dict, genome: Path, model: str) -> None:
    """A bin's value is /predict_dna's probability for the window centred on the bin (<= 1e-6)."""
    import pyBigWig

    reference = Reference(genome / "genome.fa")
    bins = [("chr1", 0, STEP), ("chr1", 1000, 1025), ("chr2", 2975, 3000), ("chr2", 1500, 1525)]
    windows = [reference.fetch(c, (a + b) // 2 - 100, (a + b) // 2 + 100) for c, a, b in bins]
    for client in inprocess_client({"BIOMED_MODELS": model, "BIOMED_PROVIDERS": "cpu"}):
        r = client.post("/predict_dna", json={"model": model, "sequences": windows})
    assert r.status_code == 200, r.text
    for task in TASKS:
        with pyBigWig.open(str(tracks["dir"] / f"{task}.bw")) as bw:
            for (chrom, a, b), answer in zip(bins, r.json()["predictions"]):
                assert bw.values(chrom, a, b) == pytest.approx([answer["probabilities"][task]] * (b - a), abs=1e-6)


def test_bed_regions_are_sorted_merged_and_clipped(tmp_path: Path) -> None:
    (tmp_path / "r.fa").write_text(">a\n" + "ACGT" * 100 + "\n>b\n" + "ACGT" * 50 + "\n")
    genome = Reference(tmp_path / "r.fa")
    (tmp_path / "x.bed").write_text("track name=x\n# comment\nb\t10\t20\tn1\na\t300\t500\na\t100\t200\na\t150\t250\t.\n")
    found = read_regions(tmp_path / "x.bed", genome)
    assert [(r.chrom, r.start, r.end) for r in found.regions] == [("a", 100, 250), ("a", 300, 400), ("b", 10, 20)]
    assert (found.given, found.merged, found.clipped, found.bases) == (4, 1, 1, 260)
    (tmp_path / "z.bed").write_text("chrZ\t1\t5\nb\t1\t5\n")
    assert read_regions(tmp_path / "z.bed", genome).missing == ((1, "chrZ\t1\t5"),)
    (tmp_path / "bad.bed").write_text("chrZ\t1\t5\n")
    with pytest.raises(GenomeError, match="no regions inside the reference's contigs \\(1 on contigs it lacks"):
        read_regions(tmp_path / "bad.bed", genome)
    (tmp_path / "bad.bed").write_text("a\t5\t5\n")
    with pytest.raises(GenomeError, match="0 <= start < end"):
        read_regions(tmp_path / "bad.bed", genome)


def test_zoom_records_hold_the_exact_means(tracks: dict, genome: Path) -> None:
    """Every zoom record of every track, decoded from the file's bytes: its bases and mean are those of the bins it
    covers (the last record of each block and contig included; pyBigWig's writer left its sum at 0)."""
    import pyBigWig

    lengths = Reference(genome / "genome.fa").lengths
    for task in TASKS:
        path = tracks["dir"] / f"{task}.bw"
        with pyBigWig.open(str(path)) as bw:
            bins = {chrom: np.array(bw.intervals(chrom), dtype=np.float64) for chrom in lengths}
        levels = zoom_levels(path)
        assert levels and all(records for _, records in levels)
        for reduction, records in levels:
            assert {r[0] for r in records} == set(lengths)
            for chrom, start, end, valid, low, high, total, _ in records:
                b = bins[chrom]
                width = np.clip(np.minimum(b[:, 1], end) - np.maximum(b[:, 0], start), 0, None)
                inside = b[width > 0, 2]
                assert valid == width.sum() and end - start <= reduction
                assert abs(total / valid - (b[:, 2] * width).sum() / width.sum()) <= 1e-6, (task, chrom, start, end)
                assert low == pytest.approx(inside.min(), abs=1e-7) and high == pytest.approx(inside.max(), abs=1e-7)


def test_other_contig_names_match_and_missing_ones_are_listed(tracks: dict, model: str, genome: Path,
                                                              tmp_path: Path) -> None:
    """A BED naming ``1``, ``2`` against the FASTA's ``chr1``, ``chr2`` is matched (the tracks keep the BED's names,
    their values the same); a region on a contig the FASTA lacks is counted and listed, not dropped unsaid."""
    import pyBigWig

    (tmp_path / "x.bed").write_text("1\t0\t3000\nchrZ\t0\t100\tlost\n2\t1000\t1100\n")
    rc, stdout, err = run_cli("predict-regions", "--model", model, "--bed", str(tmp_path / "x.bed"), "--fasta",
                              str(genome / "genome.fa"), "--out", str(tmp_path / "t"), "--step", str(STEP))
    assert rc == 0, err
    assert "matched to genome.fa's: 1=chr1, 2=chr2" in stdout and "1 regions of x.bed on contigs genome.fa lacks" in stdout
    assert (tmp_path / "t" / "missing_contigs.bed").read_text() == "chrZ\t0\t100\tlost\n"
    summary = json.loads((tmp_path / "t" / "summary.json").read_text())
    assert summary["contig_names"] == {"1": "chr1", "2": "chr2"} and summary["missing_contigs"] == 1
    assert summary["reference"] == "genome.fa"
    with pyBigWig.open(str(tmp_path / "t" / "CTCF.bw")) as renamed, pyBigWig.open(str(tracks["dir"] / "CTCF.bw")) as bw:
        assert list(renamed.chroms()) == ["1", "2"]
        assert renamed.intervals("1") == bw.intervals("chr1") and renamed.intervals("2") == bw.intervals("chr2", 1000, 1100)


@pytest.fixture(scope="module")
def server(model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from live_server import running

    with running(tmp_path_factory.mktemp("regions-server") / "server.log", BIOMED_MODELS=model,
                 BIOMED_PROVIDERS="cpu", BIOMED_API_TOKEN="s3cret", BIOMED_MAX_SEQUENCES="100") as s:
        yield s


@pytest.mark.slow
def test_server_path_gives_the_same_tracks(tracks: dict, server, model: str, genome: Path, tmp_path: Path) -> None:
    import pyBigWig

    stdout = predict(model, genome, tmp_path, "--server", server.url, "--token", "s3cret", "--request-windows", "128")
    assert "batches split after 413" in stdout
    for task in TASKS:
        with pyBigWig.open(str(tracks["dir"] / f"{task}.bw")) as local, pyBigWig.open(str(tmp_path / f"{task}.bw")) as remote:
            for chrom in local.chroms():
                a, b = local.intervals(chrom), remote.intervals(chrom)
                assert [x[:2] for x in a] == [x[:2] for x in b]
                assert max(abs(x[2] - y[2]) for x, y in zip(a, b)) <= 1e-6
