"""DNA analytics on a properly trained demo model: strand symmetry, ISM finds the planted motifs,
motif-destroying variants lower their task, and the `explain` / `score-variants` commands.

One module-scoped model (demo data CTCF, REST, TP53, n=4000, the default arch and TrainConfig),
exported as ``ism-dna`` into the test store; the service runs in process (``Biomed.to_asgi()``).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import inprocess_client

from biomed.jaspar import find_motif

pytestmark = pytest.mark.slow
MODEL = "ism-dna"
WINDOW = 20  # width of the top-importance window that must overlap the planted motif
MIN_ISM_OVERLAP = 0.90
MIN_VARIANT_SIGN = 0.90
ISM_PER_TASK = 60  # held-out planted instances explained per task (one explain: 3 x 200 mutants, both strands)
COMP = str.maketrans("ACGT", "TGCA")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from training.demo.dna_demo import generate_dna
    from models import DEFAULT_ARCH
    from training.config import TrainConfig
    from training.export import export_run
    from training.train import fit

    work = tmp_path_factory.mktemp("ism")
    table = generate_dna(work / "data", n=4000, seed=0)
    run = work / "run"
    summary = fit(TrainConfig(kind="dna", data=str(table), out=str(run), arch=DEFAULT_ARCH["dna"]))
    exported = export_run(run, MODEL, force=True)
    rows = list(csv.DictReader(table.open()))
    planted = list(csv.DictReader(table.with_name("sequences.planted.csv").open()))
    test_rows = set(json.loads((run / "split.json").read_text())["test"])
    return {"tag": exported.tag, "work": work, "run": run, "summary": summary, "sequences": [r["sequence"] for r in rows],
            "heldout": [p for p in planted if int(p["row"]) in test_rows], "length": int(exported.doc["preprocess"]["length"])}


@pytest.fixture(scope="module")
def client(trained: dict) -> Iterator:
    yield from inprocess_client({"BIOMED_MODELS": MODEL, "BIOMED_PROVIDERS": "cpu"})


def rc(seq: str) -> str:
    return seq.translate(COMP)[::-1]


def top_window(importance: list[float], width: int = WINDOW) -> tuple[int, int]:
    """[start, end) of the ``width``-base window with the largest summed importance."""
    sums = np.convolve(np.asarray(importance), np.ones(width), mode="valid")
    start = int(sums.argmax())
    return start, start + width


def destroying_snv(seq: str, p: dict) -> tuple[int, str, str]:
    """(position, ref, alt): the planted instance's most informative column (where the planted base is not
    already the PWM's least likely), substituted with the least likely base; strand-aware."""
    ppm = find_motif(p["motif_id"]).ppm  # (4, W) rows A, C, G, T
    ic = 2 + (ppm * np.log2(ppm)).sum(axis=0)
    start, end = int(p["start"]), int(p["end"])
    for col in np.argsort(-ic):
        pos = start + col if p["strand"] == "+" else end - 1 - col
        worst = "ACGT"[int(ppm[:, col].argmin())]
        alt = worst if p["strand"] == "+" else worst.translate(COMP)
        if seq[pos] != alt:
            return int(pos), seq[pos], alt
    raise AssertionError(f"no destroying SNV for {p}")  # every base the least likely one: impossible


def test_motifs_on_the_demo_run_find_every_planted_motif(trained: dict) -> None:
    """`biomed motifs RUN`: each planted JASPAR matrix is the best hit of some first-layer filter."""
    from cli import main

    assert main(["motifs", str(trained["run"])]) == 0
    best = {line.split("\t")[3] for line in (trained["run"] / "motifs.tsv").read_text().splitlines()[1:]}
    planted = {find_motif(name).id for name in ("CTCF", "REST", "TP53")}
    assert planted <= best, (planted, best)


def test_model_is_trained(trained: dict) -> None:
    assert trained["summary"]["test"]["auroc_macro"] >= 0.9, trained["summary"]["test"]


def test_reverse_complement_gives_identical_probabilities(client, trained: dict) -> None:
    """Any length: even and odd N-padding, and tilings whether or not length - L is a multiple of the stride."""
    seqs, L = trained["sequences"], trained["length"]
    joined = "".join(seqs[:12])
    items = [seqs[0], seqs[1][:150], seqs[2][:60], seqs[3] + seqs[4], seqs[5] + seqs[6] + seqs[7],
             (seqs[8] + seqs[9])[: L + L // 2], seqs[10][: L - 1], seqs[11][:33], joined[:333], joined[:450],
             joined[:551], joined[: 5 * L + 7]]
    fwd = client.post("/predict_dna", json={"sequences": items, "model": MODEL, "reverse_complement": True})
    rev = client.post("/predict_dna", json={"sequences": [rc(s) for s in items], "model": MODEL})  # on by default
    assert fwd.status_code == rev.status_code == 200, fwd.text
    for s, f, r in zip(items, fwd.json()["predictions"], rev.json()["predictions"]):
        assert ("windows" in f) == (len(s) > L)
        for task, p in f["probabilities"].items():
            assert abs(p - r["probabilities"][task]) <= 1e-6, (len(s), task, p, r["probabilities"][task])


def test_ism_top_window_overlaps_planted_motif(client, trained: dict) -> None:
    hits, total, per_task = 0, 0, {}
    for p in trained["heldout"]:
        per_task[p["task"]] = per_task.get(p["task"], 0) + 1
        if per_task[p["task"]] > ISM_PER_TASK:
            continue
        seq = trained["sequences"][int(p["row"])]
        r = client.post("/explain_dna", json={"sequence": seq, "model": MODEL, "task": p["task"]})
        assert r.status_code == 200, r.text
        start, end = top_window(r.json()["importance"])
        hits += start < int(p["end"]) and int(p["start"]) < end
        total += 1
    share = hits / total
    print(f"\nISM: top {WINDOW}-bp window overlaps the planted motif in {hits}/{total} = {share:.1%}")
    assert total == 3 * ISM_PER_TASK and share >= MIN_ISM_OVERLAP


def test_motif_destroying_variants_lower_their_task(client, trained: dict) -> None:
    variants, tasks = [], []
    for i, p in enumerate(trained["heldout"]):
        seq = trained["sequences"][int(p["row"])]
        pos, ref, alt = destroying_snv(seq, p)
        variants.append({"id": f"v{i}", "sequence": seq, "position": pos, "ref": ref, "alt": alt})
        tasks.append(p["task"])
    r = client.post("/score_variants", json={"variants": variants, "model": MODEL})
    assert r.status_code == 200, r.text
    diffs = np.array([v["diff"][t] for v, t in zip(r.json()["variants"], tasks)])
    lods = np.array([v["log_odds_diff"][t] for v, t in zip(r.json()["variants"], tasks)])
    share = float((diffs < 0).mean())
    print(f"\nvariants: the task's probability drops in {int((diffs < 0).sum())}/{len(diffs)} = {share:.1%} "
          f"(median diff {np.median(diffs):.3f}, median log-odds diff {np.median(lods):.2f})")
    assert len(diffs) >= 100 and share >= MIN_VARIANT_SIGN
    assert np.array_equal(diffs < 0, lods < 0)


def test_score_variants_ref_mismatch_is_422(client, trained: dict) -> None:
    seq = trained["sequences"][0]
    wrong = "ACGT".replace(seq[10], "")[0]
    r = client.post("/score_variants", json={"model": MODEL, "variants": [
        {"id": "bad", "sequence": seq, "position": 10, "ref": wrong, "alt": seq[10]}]})
    assert r.status_code == 422 and r.json()["error"] == "ref_mismatch", r.text
    assert "position 10" in r.json()["detail"]


def run_cli(*args: str) -> tuple[int, str, str]:
    import contextlib
    import io

    from cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return rc, out.getvalue(), err.getvalue()


def test_explain_cli_writes_png(trained: dict, tmp_path: Path) -> None:
    p = trained["heldout"][0]
    fasta = tmp_path / "one.fa"
    fasta.write_text(f">row{p['row']}\n{trained['sequences'][int(p['row'])]}\n")
    rc, out, err = run_cli("explain", "--model", MODEL, "--fasta", str(fasta), "--task", p["task"],
                           "--out", str(tmp_path / "ism.png"))
    assert rc == 0, err
    assert (tmp_path / "ism.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"row{p['row']}: {p['task']} p=" in out
    rc, _, err = run_cli("explain", "--model", MODEL, "--sequence", "ACGTX", "--out", str(tmp_path / "x.png"))
    assert rc == 1 and "invalid character 'X' at position 4" in err and err.count("\n") == 1


def genome_with_variants(trained: dict, folder: Path) -> tuple[Path, Path, list[str]]:
    """Contigs of 20 held-out sequences each (ends N-padded when scored), a VCF of motif-destroying SNVs plus
    one REF mismatch and two non-SNVs; returns the paths and each SNV's task (None for the mismatch)."""
    by_row: dict[int, list[dict]] = {}
    for p in trained["heldout"]:
        by_row.setdefault(int(p["row"]), []).append(p)
    rows = sorted(by_row)[:40]
    seqs, length = trained["sequences"], len(trained["sequences"][0])
    contigs = {f"chr{c + 1}": rows[c * 20 : (c + 1) * 20] for c in range(2)}
    fasta = folder / "ref.fa"
    fasta.write_text("".join(f">{name}\n{''.join(seqs[r] for r in rs)}\n" for name, rs in contigs.items()))
    lines, tasks = ["##fileformat=VCFv4.2", "#CHROM\tPOS\tID\tREF\tALT\tQUAL\tFILTER\tINFO"], []
    for name, rs in contigs.items():
        for k, r in enumerate(rs):
            p = by_row[r][0]
            pos, ref, alt = destroying_snv(seqs[r], p)
            lines.append(f"{name}\t{k * length + pos + 1}\t{name}_{r}\t{ref}\t{alt}\t.\t.\t.")
            tasks.append(p["task"])
    first = seqs[contigs["chr1"][0]]
    wrong = "ACGT".replace(first[5], "")[0]
    lines += [f"chr1\t6\tmismatch\t{wrong}\t{first[5]}\t.\t.\t.", f"chr1\t8\tindel\t{first[7]}\t{first[7]}A\t.\t.\t.",
              f"chr1\t9\tsymbolic\t{first[8]}\t<DEL>\t.\t.\t."]
    vcf = folder / "variants.vcf"
    vcf.write_text("\n".join(lines) + "\n")
    return fasta, vcf, tasks + [None]


def test_score_variants_cli_writes_tsv(trained: dict, tmp_path: Path) -> None:
    fasta, vcf, tasks = genome_with_variants(trained, tmp_path)
    out = tmp_path / "scores.tsv"
    rc, stdout, err = run_cli("score-variants", "--model", MODEL, "--vcf", str(vcf), "--fasta", str(fasta),
                              "--out", str(out))
    assert rc == 0, err
    assert "1 ref_mismatch; skipped 2 other alleles (not_snv: 2)" in stdout
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    labels = ["CTCF", "REST", "TP53"]
    assert list(rows[0]) == ["chrom", "pos", "id", "ref", "alt",
                             *[f"{t}_{c}" for t in labels for c in ("p_ref", "p_alt", "diff", "log_odds_diff")], "status"]
    assert len(rows) == len(tasks)
    assert rows[-1]["id"] == "mismatch" and rows[-1]["status"] == "ref_mismatch" and rows[-1]["CTCF_diff"] == "NA"
    scored = [(r, t) for r, t in zip(rows, tasks) if t is not None]
    assert all(r["status"] == "ok" for r, _ in scored)
    for r, t in scored:
        assert float(r[f"{t}_diff"]) == pytest.approx(float(r[f"{t}_p_alt"]) - float(r[f"{t}_p_ref"]), abs=1e-5)
    lowered = np.mean([float(r[f"{t}_diff"]) < 0 for r, t in scored])
    assert lowered >= MIN_VARIANT_SIGN, lowered


def test_score_variants_cli_matches_a_vcf_of_other_contig_names(trained: dict, tmp_path: Path) -> None:
    """A VCF naming ``1`` against a FASTA naming ``chr1`` is matched, the match said, and scored the same."""
    fasta, vcf, _ = genome_with_variants(trained, tmp_path)
    rc, _, err = run_cli("score-variants", "--model", MODEL, "--vcf", str(vcf), "--fasta", str(fasta),
                         "--out", str(tmp_path / "chr.tsv"))
    assert rc == 0, err
    vcf.write_text(vcf.read_text().replace("\nchr1\t", "\n1\t"))
    rc, out, err = run_cli("score-variants", "--model", MODEL, "--vcf", str(vcf), "--fasta", str(fasta),
                           "--out", str(tmp_path / "plain.tsv"))
    assert rc == 0, err
    assert "contig names of" in out and "1" in out and "chr1" in out
    as_given = (tmp_path / "chr.tsv").read_text().replace("\nchr1\t", "\n1\t")
    assert (tmp_path / "plain.tsv").read_text() == as_given
