"""The README's "Try it" block runs as written, line by line, against a real server started with ``biomed serve``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]


def try_it_block() -> str:
    """The bash block of README.md's "## Try it" section."""
    section = (ROOT / "README.md").read_text().split("\n## Try it\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```bash\n(.*?)```", section, re.S)
    if found is None:
        raise LookupError("README.md's '## Try it' section has no ```bash block")
    return found.group(1)


def test_the_block_talks_to_port_3000_with_curl() -> None:
    block = try_it_block()
    assert "localhost:3000" in block and "curl " in block


@pytest.mark.slow
def test_try_it_runs_as_written(shared_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    port = urlsplit(shared_server.url).port
    script = try_it_block().replace("localhost:3000", f"localhost:{port}")
    script = script.replace("curl ", "curl --fail --silent --show-error ")
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the README runs from a checkout with `make install`'s .venv
    done = subprocess.run(["bash", "-c", "set -euo pipefail\ntrap 'echo \"failed: $BASH_COMMAND\" >&2' ERR\n" + script],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stderr[-3000:], shared_server.output()[-3000:])
    assert '"s2"' in done.stdout and "biomed_model_info" in done.stdout  # the FASTA's second record; /metrics
    assert (tmp_path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "map.dcm").read_bytes()[128:132] == b"DICM"


NEWCOMER = r"""
set -euo pipefail
trap 'echo "failed: $BASH_COMMAND" >&2' ERR
source "$CLONE/.venv/bin/activate"   # README, Setup: activate .venv, then `biomed` works from any directory
cd "$ELSEWHERE"
[[ "$(command -v biomed)" == "$VIRTUAL_ENV/bin/biomed" ]]
biomed --help > /dev/null
biomed demo-data genome --out genome --contigs 1 --length 3000 --variants 20
biomed motifs "$RUN" --top 2 > /dev/null      # a run trained elsewhere (the session's demo run), read from here
biomed export "$RUN" --name newcomer-dna --force   # the session's tiny run is below its baseline
biomed models
biomed models promote demo-dna:latest
biomed score-variants --vcf genome/variants.vcf.gz --fasta genome/genome.fa --out scored.vcf.gz
biomed score-variants --vcf genome/variants.vcf.gz --fasta genome/genome.fa --out served.tsv --server "$SERVER"
biomed predict-regions --bed genome/regions.bed --fasta genome/genome.fa --out tracks --step 100 > /dev/null
biomed explain --sequence ACGTTTCCGCGCCCCCTGGTGGCCAGCAATT --out ism.png > /dev/null
biomed explain-image "$CT" --model demo-image --out map.png --json map.json > /dev/null
biomed serve --help > /dev/null
pip install --quiet --no-index 'tritonclient[http]'  # the README's install line, before its example
python triton_example.py
"""


@pytest.mark.slow
def test_a_newcomer_follows_the_readme_from_a_fresh_clone(shared_server, demo_models: dict[str, str],  # type: ignore[no-untyped-def]
                                                          tmp_path: Path) -> None:
    """A fresh clone, its ``.venv`` as ``make install`` leaves it (this session's, not reinstalled), activated; the
    command-line table's commands from another directory, on a copy of the session's model store; the tritonclient
    example after its documented install, against a server started with ``biomed serve``. (``train`` and ``--resume``
    from elsewhere, with relative paths: tests/test_training.py.)"""
    import os

    from pydicom.data import get_testdata_file

    from model_store import own_store

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    (clone / ".venv").symlink_to(sys.prefix)  # `make install`'s venv (this one: editable from the checkout)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = own_store(tmp_path / "home", demo_models["image"], demo_models["dna"])
    readme = (clone / "README.md").read_text()
    assert "source .venv/bin/activate" in readme and "pip install 'tritonclient[http]'" in readme
    example = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "tritonclient" in b)
    (elsewhere / "triton_example.py").write_text(example.replace("localhost:3000",
                                                                 shared_server.url.removeprefix("http://")))
    env = {**os.environ, "CLONE": str(clone), "ELSEWHERE": str(elsewhere), "SERVER": shared_server.url,
           "RUN": str(Path(demo_models["workdir"]) / "runs" / "dna"),
           "CT": get_testdata_file("CT_small.dcm"), "BENTOML_HOME": str(store.parent), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    env["PATH"] = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if Path(p).resolve() != Path(sys.prefix, "bin"))
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(["bash", "-c", NEWCOMER], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    out = done.stdout
    assert re.search(r"^newcomer-dna:\S+$", out, re.M) and "newcomer-dna" in out.split("ROLLOUT", 1)[1]
    assert (elsewhere / "scored.vcf.gz").stat().st_size > 0 and (elsewhere / "served.tsv").read_text().count("\n") > 1
    assert list((elsewhere / "tracks").glob("*.bw")) and (elsewhere / "ism.png").stat().st_size > 0
    assert json.loads((elsewhere / "map.json").read_text())["model"] == "demo-image"
    assert re.search(r"^\['CTCF', 'REST', 'TP53'\] \[\[", out, re.M), out[-500:]  # the example's labels, probabilities
