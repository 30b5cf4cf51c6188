"""External tools for tests: skip locally when missing, fail in CI.

A developer without kubectl or promtool still gets a green `make test` with a skip that
says what to install; CI (env CI=true) must have them and fails instead, so a missing
package can never turn a check off silently.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent


def in_ci() -> bool:
    """True when the environment says it is CI (CI=true|1|yes, as GitHub/GitLab set it)."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def _missing(what: str, install: str) -> None:
    message = f"{what} is not available; install it with: {install}"
    if in_ci():
        pytest.fail(f"{message} (CI=true: required tools must be present)", pytrace=False)
    pytest.skip(message)


def require_tool(name: str, install: str, path: str | Path | None = None) -> str:
    """Return the path of executable ``name`` or skip (fail under CI).

    Args:
        name: the executable, looked up on PATH unless ``path`` is given.
        install: how to get it, e.g. "apt-get install prometheus" or "make tools".
        path: an explicit location (e.g. a tool in .venv-tools/bin) instead of PATH.
    """
    if path is not None:
        candidate = Path(path)
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
        _missing(f"{name} ({candidate})", install)
    found = shutil.which(name)
    if found is None:
        _missing(name, install)
    return str(found)


def require_file(path: str | Path, install: str) -> Path:
    """Return ``path`` (a data file a tool needs, e.g. a jar) or skip (fail under CI)."""
    candidate = Path(path)
    if not candidate.is_file():
        _missing(str(candidate), install)
    return candidate


def require_module(name: str, install: str) -> ModuleType:
    """Import and return Python module ``name`` or skip (fail under CI)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing(f"Python module {name}", install)
        raise  # unreachable: _missing raises


def require_system_tool(name: str, install: str) -> str:
    """The absolute path of system executable ``name`` (dcmtk's ``storescu``, say), never one of a Python venv's.

    pynetdicom installs scripts named like dcmtk's (``storescu``, ``echoscu``, ...) into the venv's ``bin``;
    with the venv activated they come first on PATH and take other arguments. This looks on PATH without
    the running interpreter's ``bin`` (and ``$VIRTUAL_ENV/bin``), so the test always runs the real tool.
    """
    venvs = [sys.prefix] if sys.prefix != sys.base_prefix else []
    venvs += [os.environ["VIRTUAL_ENV"]] if os.environ.get("VIRTUAL_ENV") else []
    venv_bins = {(Path(v) / "bin").resolve() for v in venvs}
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if folder and Path(folder).resolve() not in venv_bins:
            candidate = Path(folder) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate.resolve())
    _missing(f"{name} (outside the venv)", install)
    raise AssertionError("unreachable")  # _missing raises


def tools_venv_bin(name: str) -> Path:
    """Path of ``name`` inside the linters' venv (scripts/tools-venv.sh)."""
    venv = Path(os.environ.get("BIOMED_TOOLS_VENV", REPO / ".venv-tools"))
    return venv / "bin" / name
