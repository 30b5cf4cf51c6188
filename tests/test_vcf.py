"""`biomed score-variants`: the annotated VCF (bcftools, vcf-validator, pysam), its values against /score_variants
(float32's precision, no noise digits), motif-breaking signs, REF mismatches, multi-allelic records and indels, contig
names of the other convention and contigs the FASTA lacks, resuming, shards + bcftools concat, TSV, and --server.

One small model trained here (seconds) on the demo motifs; a few-kb demo genome (`biomed demo-data genome`) with
about 170 variants; the service in process for /score_variants, and a real `bentoml serve` for --server (slow).
"""

from __future__ import annotations

import hashlib
import asyncio
import gzip
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from conftest import inprocess_client
from genomics import demo_genome, run_cli, train_small_dna, truth
from tools import require_tool

from biomed import dna_ops
from biomed.genome import Reference
from biomed.preprocess import dna
from biomed.preprocess.dna import DnaSpec
from biomed.variant_stream import ContextReader, build_chunk, parse_record

MODEL = "vcf-dna"
PREFIX = "KV_biomed_vcf_dna"
TAGS = {"REF": "ref", "ALT": "alt", "DIFF": "diff", "LOGIT_DIFF": "log_odds_diff"}
TASKS = ["CTCF", "REST", "TP53"]
F32 = 2.0**-24  # float32's relative rounding: the written values carry what float32 does, no more


# ---------------------------------------------------------------- the core, without a model


def test_context_reader_matches_fetch_across_blocks_and_contig_ends(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    seqs = {"c1": "".join(rng.choice(list("ACGT"), 5000)), "c2": "".join(rng.choice(list("ACGT"), 300))}
    (tmp_path / "r.fa").write_text("".join(f">{k}\n{v}\n" for k, v in seqs.items()))
    genome = Reference(tmp_path / "r.fa")
    reader = ContextReader(genome, half=50, block=700)  # small blocks: many reloads, unsorted positions
    for chrom, positions in (("c1", [0, 4999, 2500, 10, 699, 700, 3000, 1]), ("c2", [0, 150, 299]),
                             ("c1", [4000, 20])):
        got = reader.contexts(chrom, np.array(positions))
        want = np.stack([dna.encode(genome.fetch(chrom, p - 50, p + 51)) for p in positions])
        assert np.array_equal(got, want)
    assert reader.reads > 3


@pytest.mark.parametrize("length", [200, 201, 8])
def test_context_windows_are_the_windows_of_score_variants(length: int) -> None:
    """The streaming path's rows equal /score_variants' rows for {sequence: context, position: L // 2}."""
    rng = np.random.default_rng(length)
    half = length // 2
    contexts = rng.integers(0, 5, size=(7, 2 * half + 1)).astype(np.uint8)
    contexts[:, half] = rng.integers(0, 4, 7)
    alts = ((contexts[:, half] + 1 + rng.integers(0, 3, 7)) % 4).astype(np.uint8)
    seen: list[np.ndarray] = []

    async def record(rows: np.ndarray) -> np.ndarray:
        seen.append(rows.copy())
        return rng.random((len(rows), 2)).astype(np.float32)

    spec = DnaSpec(length, max(1, half))
    items = [{"id": str(i), "sequence": dna.decode(c), "position": half, "ref": "ACGT"[c[half]], "alt": "ACGT"[a]}
             for i, (c, a) in enumerate(zip(contexts, alts))]
    asyncio.run(dna_ops.score_variants(record, ["a", "b"], spec, items, True))
    ref_rows, alt_rows = dna_ops.context_windows(contexts, alts, length)
    asyncio.run(dna_ops.variant_effects(record, ref_rows, alt_rows, len(dna_ops.variant_offsets(length)), True))
    assert np.array_equal(seen[0], seen[1])


def test_chunk_classifies_alleles_and_flags_mismatches(tmp_path: Path) -> None:
    (tmp_path / "r.fa").write_text(">chr1\nACGTACGTAC\n")
    genome = Reference(tmp_path / "r.fa")
    lines = ["chr1\t2\trs1\tC\tA,T,CT,<DEL>,N\t.\t.\t.", "chr1\t3\trs2\tT\tA\t.\t.\t.", "chr1\t4\t.\tT\tTA\t.\t.\t."]
    chunk = build_chunk(0, [parse_record(x, i) for i, x in enumerate(lines, 1)], ContextReader(genome, 3))
    assert chunk.status == [("snv", "snv", "not_snv", "not_snv", "not_acgt"), ("ref_mismatch",), ("not_snv",)]
    assert chunk.mismatch.tolist() == [False, True, False]
    assert chunk.record.tolist() == [0, 0] and chunk.alt_index.tolist() == [0, 1]
    assert dna.decode(chunk.contexts[0]) == "NNACGTA"


def test_demo_data_genome_writes_a_valid_genome_vcf_and_beds(tmp_path: Path) -> None:
    bcftools = require_tool("bcftools", "apt-get install bcftools")
    rc, stdout, err = run_cli("demo-data", "genome", "--out", str(tmp_path), "--length", "1200", "--variants", "5",
                              "--contigs", "3", "--seed", "2")
    assert rc == 0, err
    genome = Reference(tmp_path / "genome.fa")
    assert genome.lengths == {"chr1": 1200, "chr2": 1200, "chr3": 1200}
    view = subprocess.run([bcftools, "view", "-H", str(tmp_path / "variants.vcf.gz")], capture_output=True, text=True)
    assert view.returncode == 0 and view.stderr == ""
    kinds = [t["kind"] for t in truth(tmp_path)]
    assert len(view.stdout.splitlines()) == len(kinds) and kinds.count("neutral") == 5
    assert {"break", "ref_mismatch", "multiallelic", "indel"} <= set(kinds)
    for t in truth(tmp_path):
        base = genome.fetch(t["chrom"], int(t["pos"]) - 1, int(t["pos"]))
        assert (base != t["ref"]) == (t["kind"] == "ref_mismatch")
    sites = [line.split("\t") for line in (tmp_path / "sites.bed").read_text().splitlines()]
    assert len(sites) >= 6 and {s[3].split(":")[0] for s in sites} == {"CTCF", "REST", "TP53"}
    assert (tmp_path / "regions.bed").read_text().splitlines()[0] == "chr1\t0\t1200\tchr1"
    assert Path(f"{tmp_path / 'variants.vcf.gz'}.tbi").is_file()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return train_small_dna(tmp_path_factory.mktemp("vcf-model"), MODEL)


@pytest.fixture(scope="module")
def genome(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo_genome(tmp_path_factory.mktemp("vcf-genome"))


def score(model: str, genome: Path, out: Path, *extra: str) -> str:
    rc, stdout, err = run_cli("score-variants", "--model", model, "--vcf", str(genome / "variants.vcf.gz"),
                              "--fasta", str(genome / "genome.fa"), "--out", str(out), *extra)
    assert rc == 0, err
    return stdout


@pytest.fixture(scope="module")
def annotated(model: str, genome: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("vcf-out") / "scored.vcf.gz"
    stdout = score(model, genome, out, "--chunk-size", "16")
    return {"path": out, "stdout": stdout, "records": records(out)}


def body(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return [line.rstrip("\n") for line in f if not line.startswith("#")]


def records(path: Path) -> dict[str, dict]:
    """ID -> {line, info: {key: value}}."""
    out = {}
    for line in body(path):
        fields = line.split("\t")
        info = dict(p.split("=", 1) if "=" in p else (p, True) for p in fields[7].split(";"))
        out[fields[2]] = {"line": line, "chrom": fields[0], "pos": int(fields[1]), "ref": fields[3],
                          "alts": fields[4].split(","), "info": info}
    return out


def values(info: dict, tag: str) -> list[list[float] | None]:
    """Per ALT: the task values of ``tag``, None for '.'."""
    return [None if v == "." else [float(x) for x in v.split("|")] for v in info[f"{PREFIX}_{tag}"].split(",")]


# ---------------------------------------------------------------- the annotated VCF


def test_bcftools_validates_and_queries_the_annotated_vcf(annotated: dict, genome: Path) -> None:
    bcftools = require_tool("bcftools", "apt-get install bcftools")
    out = annotated["path"]
    view = subprocess.run([bcftools, "view", str(out)], capture_output=True, text=True)
    assert view.returncode == 0 and view.stderr == "", view.stderr
    given = subprocess.run([bcftools, "view", "-H", str(genome / "variants.vcf.gz")], capture_output=True, text=True)
    assert view.stdout.count("\n#CHROM") == 1
    assert len([x for x in view.stdout.splitlines() if not x.startswith("#")]) == len(given.stdout.splitlines())
    query = subprocess.run([bcftools, "query", "-f", f"%ID\\t%INFO/{PREFIX}_DIFF\\t%INFO/{PREFIX}_REF_MISMATCH\\n",
                            str(out)], capture_output=True, text=True, check=True).stdout.splitlines()
    by_id = {x.split("\t")[0]: x.split("\t")[1:] for x in query}
    assert by_id["mismatch1"] == [".", "1"] and by_id["indel1"] == [".", "."]  # bcftools prints an absent flag as "."
    assert len(by_id["neutral1"][0].split("|")) == 3
    assert Path(f"{out}.tbi").is_file()
    region = subprocess.run([bcftools, "view", "-H", "-r", "chr2:1-1500", str(out)], capture_output=True, text=True,
                            check=True).stdout.splitlines()
    assert region and all(x.startswith("chr2\t") and int(x.split("\t")[1]) <= 1500 for x in region)


def test_pysam_reads_the_header_and_records(annotated: dict, genome: Path, model: str) -> None:
    import pysam

    from biomed.store import onnx_path, resolve

    with pysam.VariantFile(str(annotated["path"])) as vcf:
        info = vcf.header.info
        for tag in TAGS:
            assert info[f"{PREFIX}_{tag}"].number == "A" and info[f"{PREFIX}_{tag}"].type == "String"
            assert "CTCF|REST|TP53" in info[f"{PREFIX}_{tag}"].description
        assert info[f"{PREFIX}_REF_MISMATCH"].type == "Flag"
        [record] = [r for r in vcf.header.records if r.key == "biomed_model"]
        meta = {k: v.strip('"') for k, v in record.items()}  # pysam keeps the quotes of quoted values
        name, version = model.split(":")
        assert meta["Model"] == name and meta["Version"] == version and meta["Tasks"] == "CTCF|REST|TP53"
        assert meta["ONNX_sha256"] == hashlib.sha256(onnx_path(resolve(model)).read_bytes()).hexdigest()
        assert meta["Reference"] == "genome.fa"  # the file's name, never a local path
        assert [r.value for r in vcf.header.records if r.key == "reference"] == ["genome.fa"]
        rows = list(vcf)
    assert len(rows) == len(truth(genome)) == len(annotated["records"])
    multi = next(r for r in rows if r.id == "multi1")
    assert len(multi.info[f"{PREFIX}_DIFF"]) == 2 and multi.info["DEMO"] == "multiallelic"  # the input's INFO is kept


def test_values_equal_score_variants(annotated: dict, genome: Path, model: str) -> None:
    """Every scored allele, every tag and task, against /score_variants on the same windows (<= 1e-6)."""
    reference = Reference(genome / "genome.fa")
    scored, items = [], []
    for vid, rec in annotated["records"].items():
        for a, alt in enumerate(rec["alts"]):
            if f"{PREFIX}_DIFF" in rec["info"] and values(rec["info"], "DIFF")[a] is not None:
                context = reference.fetch(rec["chrom"], rec["pos"] - 1 - 100, rec["pos"] + 100)
                items.append({"id": f"{vid}/{alt}", "sequence": context, "position": 100, "ref": rec["ref"], "alt": alt})
                scored.append((rec, a))
    assert len(items) >= 150
    env = {"BIOMED_MODELS": model, "BIOMED_PROVIDERS": "cpu"}
    for client in inprocess_client(env):
        r = client.post("/score_variants", json={"model": model, "variants": items})
    assert r.status_code == 200, r.text
    worst = 0.0
    for (rec, a), answer in zip(scored, r.json()["variants"]):
        for tag, key in TAGS.items():
            got = values(rec["info"], tag)[a]
            worst = max(worst, max(abs(g - answer[key][t]) - F32 * abs(answer[key][t]) for g, t in zip(got, TASKS)))
    assert worst <= 1e-6, worst


def test_motif_breaking_variants_lower_their_task(annotated: dict, genome: Path) -> None:
    rows = annotated["records"]
    breaking = [(rows[t["id"]], TASKS.index(t["task"])) for t in truth(genome) if t["kind"] == "break"]
    neutral = [rows[t["id"]] for t in truth(genome) if t["kind"] == "neutral"]
    diffs = np.array([values(rec["info"], "DIFF")[0][task] for rec, task in breaking])
    assert len(diffs) >= 15
    assert (diffs < 0).mean() >= 0.9, diffs
    lod = np.array([values(rec["info"], "LOGIT_DIFF")[0][task] for rec, task in breaking])
    quiet = np.array([np.abs(values(rec["info"], "LOGIT_DIFF")[0]).max() for rec in neutral])
    assert np.median(lod) < -0.2 and np.median(quiet) < 0.3 * abs(np.median(lod)), (np.median(lod), np.median(quiet))


def test_ref_mismatch_is_flagged_and_kept(annotated: dict, genome: Path) -> None:
    rec = annotated["records"]["mismatch1"]
    assert rec["info"][f"{PREFIX}_REF_MISMATCH"] is True and rec["info"]["DEMO"] == "ref_mismatch"
    assert not any(k.startswith(PREFIX) and k != f"{PREFIX}_REF_MISMATCH" for k in rec["info"])
    assert "1 ref_mismatch" in annotated["stdout"] and "1 flagged" in annotated["stdout"]


def test_multiallelic_is_annotated_per_alt_and_indels_are_skipped(annotated: dict, genome: Path) -> None:
    multi = annotated["records"]["multi1"]
    both = values(multi["info"], "DIFF")
    assert len(both) == 2 and all(v is not None and len(v) == 3 for v in both)
    assert values(multi["info"], "REF")[0] == values(multi["info"], "REF")[1]  # one reference window
    indel = annotated["records"]["indel1"]
    assert not any(k.startswith(PREFIX) for k in indel["info"])
    assert "skipped 1 other alleles (not_snv: 1)" in annotated["stdout"]


def test_bcftools_norm_splits_the_per_alt_values(annotated: dict) -> None:
    bcftools = require_tool("bcftools", "apt-get install bcftools")
    split = subprocess.run([bcftools, "norm", "-m-", str(annotated["path"])], capture_output=True, text=True, check=True)
    rows = [x.split("\t") for x in split.stdout.splitlines() if x.startswith("chr") and "\tmulti1\t" in x]
    diffs = values(annotated["records"]["multi1"]["info"], "DIFF")
    assert [r[4] for r in rows] == annotated["records"]["multi1"]["alts"]
    for row, want in zip(rows, diffs):
        info = dict(p.split("=", 1) for p in row[7].split(";") if "=" in p)
        assert [float(x) for x in info[f"{PREFIX}_DIFF"].split("|")] == want


# ---------------------------------------------------------------- resuming, shards, TSV


def test_resumed_run_equals_an_uninterrupted_one(annotated: dict, model: str, genome: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed.vcf.gz"
    score(model, genome, out, "--chunk-size", "16", "--keep-parts")
    parts = out.with_name(out.name + ".parts")
    chunks = sorted(parts.glob("chunk-*.part"))
    assert len(chunks) >= 8
    # An interrupted run: some chunks finished, one half-written, no output yet.
    for p in chunks[3:]:
        p.unlink()
    (parts / "chunk-0000004.tmp").write_text("half a chunk")
    out.unlink()
    stdout = score(model, genome, out, "--chunk-size", "16")
    assert "resumed: 3 chunks were already done" in stdout
    assert body(out) == body(annotated["path"])
    assert gzip.open(out).read() == gzip.open(annotated["path"]).read()
    assert not parts.exists()


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_same_output(model: str, tmp_path: Path) -> None:
    """SIGKILL in the middle of a real run (a subprocess), then the same command again."""
    import os
    import signal
    import sys
    import time

    from live_server import server_env

    data = demo_genome(tmp_path / "genome", length=20_000, variants=6000, seed=5)
    args = ["score-variants", "--model", model, "--vcf", str(data / "variants.vcf.gz"), "--fasta",
            str(data / "genome.fa"), "--chunk-size", "128"]
    whole = tmp_path / "whole.vcf.gz"
    score(model, data, whole, "--chunk-size", "128")
    out = tmp_path / "killed.vcf.gz"
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args, "--out", str(out)], env=server_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    parts = out.with_name(out.name + ".parts")
    deadline = time.monotonic() + 120
    while len(list(parts.glob("chunk-*.part"))) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    done = len(list(parts.glob("chunk-*.part")))
    assert 3 <= done and not out.exists(), "the run ended before it could be interrupted"
    rc, stdout, err = run_cli(*args, "--out", str(out))
    assert rc == 0, err
    assert f"resumed: {done} chunks were already done" in stdout
    assert gzip.open(out).read() == gzip.open(whole).read()


def test_other_settings_start_afresh(model: str, genome: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.vcf.gz"
    score(model, genome, out, "--chunk-size", "64", "--keep-parts")
    rc, stdout, err = run_cli("score-variants", "--model", model, "--vcf", str(genome / "variants.vcf.gz"),
                              "--fasta", str(genome / "genome.fa"), "--out", str(out), "--chunk-size", "32")
    assert rc == 0 and "starting afresh" in err and "resumed" not in stdout


def test_shards_concatenate_to_the_whole(annotated: dict, model: str, genome: Path, tmp_path: Path) -> None:
    """The Indexed Job's path: shard i of n by tabix region, then `bcftools concat --naive`."""
    bcftools = require_tool("bcftools", "apt-get install bcftools")
    shards = []
    for i in range(3):
        shards.append(tmp_path / f"shard-{i:05d}.vcf.gz")
        score(model, genome, shards[-1], "--shard", f"{i}/3", "--chunk-size", "16")
    whole = tmp_path / "all.vcf.gz"
    subprocess.run([bcftools, "concat", "--naive", "-Oz", "-o", str(whole), *map(str, shards)], check=True)
    assert body(whole) == body(annotated["path"])
    assert all(body(s) for s in shards)  # each shard got some records


def test_annotating_again_replaces_the_tags(annotated: dict, model: str, genome: Path, tmp_path: Path) -> None:
    out = tmp_path / "twice.vcf.gz"
    rc, _, err = run_cli("score-variants", "--model", model, "--vcf", str(annotated["path"]), "--fasta",
                         str(genome / "genome.fa"), "--out", str(out))
    assert rc == 0, err
    assert body(out) == body(annotated["path"])
    head = [h for h in gzip.open(out, "rt") if h.startswith("##")]
    assert head == [h for h in gzip.open(annotated["path"], "rt") if h.startswith("##")]


def test_tsv_output_matches_the_vcf(annotated: dict, model: str, genome: Path, tmp_path: Path) -> None:
    import csv

    out = tmp_path / "scores.tsv"
    stdout = score(model, genome, out)
    assert "1 ref_mismatch; skipped 1 other alleles (not_snv: 1)" in stdout
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    by = {r["id"]: r for r in rows}
    assert by["mismatch1"]["status"] == "ref_mismatch" and by["mismatch1"]["CTCF_diff"] == "NA"
    assert {"multi1_" + a for a in annotated["records"]["multi1"]["alts"]} <= set(by) and "indel1" not in by
    neutral = annotated["records"]["neutral1"]
    assert [float(by["neutral1"][f"{t}_diff"]) for t in TASKS] == values(neutral["info"], "DIFF")[0]


def test_values_carry_float32_precision_without_noise(annotated: dict) -> None:
    """Each value is the shortest decimal of its float32: ``0.1``, never ``0.100000001``."""
    written = [x for rec in annotated["records"].values() for k, v in rec["info"].items() if k.startswith(PREFIX)
               and v is not True for alt in v.split(",") if alt != "." for x in alt.split("|")]
    assert len(written) > 1000
    assert all(str(np.float32(x)) == x for x in written), [x for x in written if str(np.float32(x)) != x][:5]


def test_vcf_validator_accepts_the_annotated_vcf(annotated: dict) -> None:
    validator = require_tool("vcf-validator", "apt-get install vcftools")
    done = subprocess.run([validator, str(annotated["path"])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def _renamed(genome: Path, tmp_path: Path) -> Path:
    """The demo VCF with ``1``, ``2`` for ``chr1``, ``chr2`` and two records on ``chrZ``, which the FASTA lacks;
    without ``##contig`` and ``##reference`` lines (the output declares them)."""
    lines = gzip.open(genome / "variants.vcf.gz", "rt").read().splitlines()
    head = [x for x in lines if x.startswith("#") and not x.startswith(("##contig", "##reference"))]
    rows = [x[3:] for x in lines if x.startswith("chr")]
    lost = ["chrZ\t5\tlost1\tA\tG\t.\t.\tDEMO=lost", "chrZ\t9\tlost2\tC\tT,G\t.\t.\tDEMO=lost"]
    vcf = tmp_path / "renamed.vcf"
    vcf.write_text("\n".join(head + rows + lost) + "\n")
    return vcf


def test_other_contig_names_match_and_missing_ones_are_listed(annotated: dict, model: str, genome: Path,
                                                              tmp_path: Path) -> None:
    """A VCF naming ``1``, ``2`` against the FASTA's ``chr1``, ``chr2`` is matched (the output keeps its names, the
    scores those of ``chr1``, ``chr2``); records on ``chrZ`` pass through unscored, counted and listed."""
    out = tmp_path / "x.vcf.gz"
    rc, stdout, err = run_cli("score-variants", "--model", model, "--vcf", str(_renamed(genome, tmp_path)),
                              "--fasta", str(genome / "genome.fa"), "--out", str(out))
    assert rc == 0, err
    assert "matched to genome.fa's: 1=chr1, 2=chr2" in stdout
    assert "2 records on contigs genome.fa lacks (chrZ: 2) were passed through unscored" in stdout
    assert "no_contig: 3" in stdout  # alleles
    side = out.with_name(out.name + ".missing_contigs.tsv").read_text().splitlines()
    assert side[0] == "#line\tchrom\tpos\tid\tref\talt" and [r.split("\t")[1:4] for r in side[1:]] == [
        ["chrZ", "5", "lost1"], ["chrZ", "9", "lost2"]]
    got = records(out)
    assert got["lost1"]["info"] == {"DEMO": "lost"} and got["lost2"]["chrom"] == "chrZ"
    for vid, rec in annotated["records"].items():
        assert got[vid]["chrom"] == rec["chrom"][3:] and got[vid]["info"] == rec["info"]
    head = [h.rstrip("\n") for h in gzip.open(out, "rt") if h.startswith(("##contig", "##reference"))]
    assert head == ["##reference=genome.fa", "##contig=<ID=1,length=3000>", "##contig=<ID=2,length=3000>",
                    "##contig=<ID=chrZ>"]
    bcftools = require_tool("bcftools", "apt-get install bcftools")
    view = subprocess.run([bcftools, "view", str(out)], capture_output=True, text=True)
    assert view.returncode == 0 and view.stderr == "", view.stderr
    validator = require_tool("vcf-validator", "apt-get install vcftools")
    done = subprocess.run([validator, str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_unknown_format_is_one_line(genome: Path, tmp_path: Path) -> None:
    rc, _, err = run_cli("score-variants", "--vcf", str(genome / "variants.vcf.gz"), "--fasta",
                         str(genome / "genome.fa"), "--out", str(tmp_path / "x.bcf"))
    assert rc == 1 and "--format vcf|tsv" in err


# ---------------------------------------------------------------- --server


@pytest.fixture(scope="module")
def server(model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator:
    from live_server import running

    # Small caps so the client must split batches (413) and hold back (429) to get through.
    with running(tmp_path_factory.mktemp("vcf-server") / "server.log", BIOMED_MODELS=model, BIOMED_PROVIDERS="cpu",
                 BIOMED_API_TOKEN="s3cret", BIOMED_MAX_VARIANTS="40", BIOMED_MAX_CONCURRENCY="1") as s:
        yield s


@pytest.mark.slow
def test_server_path_gives_the_same_vcf(annotated: dict, server, model: str, genome: Path, tmp_path: Path) -> None:
    out = tmp_path / "remote.vcf.gz"
    stdout = score(model, genome, out, "--server", server.url, "--token", "s3cret", "--request-variants", "48",
                   "--in-flight", "4", "--chunk-size", "128")
    print(stdout)
    assert "batches split after 413" in stdout
    local, remote = annotated["records"], records(out)
    assert list(local) == list(remote)
    worst = 0.0
    for vid, rec in local.items():
        other = remote[vid]
        assert {k for k in rec["info"]} == {k for k in other["info"]}
        if f"{PREFIX}_DIFF" in rec["info"]:
            for tag in TAGS:
                for a, b in zip(values(rec["info"], tag), values(other["info"], tag)):
                    if a is None:
                        assert b is None
                    else:
                        worst = max(worst, max(abs(x - y) - 2 * F32 * abs(x) for x, y in zip(a, b)))
    assert worst <= 1e-6, worst
    head = [h for h in gzip.open(out, "rt") if h.startswith("##")]
    assert head == [h for h in gzip.open(annotated["path"], "rt") if h.startswith("##")]


@pytest.mark.slow
def test_server_without_the_token_is_one_line(server, model: str, genome: Path, tmp_path: Path) -> None:
    rc, _, err = run_cli("score-variants", "--model", model, "--vcf", str(genome / "variants.vcf.gz"),
                         "--fasta", str(genome / "genome.fa"), "--out", str(tmp_path / "x.vcf.gz"),
                         "--server", server.url, "--token", "")
    assert rc == 1 and "401" in err and "--token" in err and err.count("\n") == 1


def test_client_honours_retry_after_backs_off_and_splits_on_413() -> None:
    """The --server client's policy against a scripted HTTP server: 429 + Retry-After, 503, 413, then answers."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cli.remote import Remote, RemoteError

    seen: list[tuple[float, int, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            items = json.loads(self.rfile.read(int(self.headers["content-length"])))["variants"]
            seen.append((time.monotonic(), len(items), self.headers.get("authorization", "")))
            if len(seen) == 1:
                self._send(429, {"error": "too_many_requests", "detail": "busy"}, {"Retry-After": "1"})
            elif len(seen) == 2:
                self._send(503, {"error": "unavailable", "detail": "not ready"})
            elif len(items) > 2:
                self._send(413, {"error": "too_large", "detail": "over BIOMED_MAX_VARIANTS"})
            elif items[0]["id"] == "never":
                self._send(422, {"error": "invalid_alt", "detail": "no"})
            else:
                self._send(200, {"variants": [{"id": v["id"]} for v in items]})

        def _send(self, status: int, body: dict, headers: dict | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", "Content-Length": str(len(data)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with Remote(f"http://127.0.0.1:{httpd.server_port}", token="t0k", in_flight=1) as remote:
            items = [{"id": str(i)} for i in range(5)]
            out = remote.batched("/score_variants", items, 5, lambda b: {"variants": list(b)}, lambda r: r["variants"])
            assert [o["id"] for o in out] == [str(i) for i in range(5)]  # in order, after the splits
            assert seen[1][0] - seen[0][0] >= 1.0  # Retry-After: 1 honoured
            assert all(auth == "Bearer t0k" for _, _, auth in seen)
            assert [n for _, n, _ in seen] == [5, 5, 5, 2, 3, 1, 2] and remote.stats.splits == 2  # 413: halves
            assert remote.stats.retries == {"429": 1, "503": 1}
            with pytest.raises(RemoteError, match="422: invalid_alt: no"):
                remote.batched("/score_variants", [{"id": "never"}], 5, lambda b: {"variants": list(b)},
                               lambda r: r["variants"])
    finally:
        httpd.shutdown()
        httpd.server_close()
