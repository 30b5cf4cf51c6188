"""The README's "Try it" block runs as written, line by line, against a real server started with ``biomed serve``."""

from __future__ import annotations

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
