"""The documentation matches the code: every route of the route table is in docs/api.md and in /openapi.json."""

from __future__ import annotations

import re
from pathlib import Path

from service.openapi import openapi_document
from service.routes import ROUTES

ROOT = Path(__file__).resolve().parents[1]


def test_every_route_is_documented_in_docs_api_md() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^#+ `([A-Z]+ /\S*)`", text, re.M))
    missing = {f"{r.method} {r.path}" for r in ROUTES} - documented
    assert not missing, f"docs/api.md has no section for {sorted(missing)}"


def test_every_route_is_in_the_openapi_document() -> None:
    paths = openapi_document()["paths"]
    missing = [f"{r.method} {r.path}" for r in ROUTES if r.method.lower() not in paths.get(r.path, {})]
    assert not missing, missing


def test_the_readme_links_the_api_reference() -> None:
    assert "(docs/api.md)" in (ROOT / "README.md").read_text()


def test_every_setting_is_documented() -> None:
    names = set(re.findall(r"BIOMED_[A-Z0-9_]+", (ROOT / "service" / "config.py").read_text()))
    text = (ROOT / "docs" / "api.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/api.md does not document {missing}"
