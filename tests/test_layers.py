"""The layering is checked, not hoped for: import-linter's contracts (pyproject.toml) and what they cover."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_are_kept() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "3 kept, 0 broken" in done.stdout


def test_nothing_refers_outside_the_repository() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix in {".png", ".jpg", ".onnx", ".dcm", ".gz"} or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if name != "tests/test_layers.py" and ("../shared" in text or "CONTRACT.md" in text):
            offenders.append(name)
    assert not offenders, offenders
