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


def test_the_settings_table_is_the_declarations() -> None:
    """docs/api.md's table of settings is what ``biomed/settings.py`` declares: every variable, its default, its
    meaning (``python -m biomed.settings`` prints it)."""
    from biomed.settings import declared, markdown_table

    text = (ROOT / "docs" / "api.md").read_text()
    assert markdown_table() in text, "regenerate the table: python -m biomed.settings"
    assert len(declared()) > 40 and all(f"| `{d.env}` |" in text for _, d in declared())


def test_every_setting_the_code_names_is_declared() -> None:
    """A ``BIOMED_*`` name in the core, the service, the CLI, the API reference or the server's manifests is a declared
    setting (or the CLI's progress-bar switch): none is read or configured without its declaration."""
    from biomed.settings import declared

    known = {d.env for _, d in declared()} | {"BIOMED_PROGRESS"}
    files = [*ROOT.glob("biomed/**/*.py"), *ROOT.glob("service/**/*.py"), *ROOT.glob("cli/**/*.py"),
             ROOT / "docs" / "api.md", ROOT / "bentofile.yaml", *ROOT.glob("deploy/k8s/base/*.yaml"),
             *ROOT.glob("deploy/k8s/components/**/*.yaml"), *ROOT.glob("deploy/k8s/overlays/**/*.yaml"),
             *ROOT.glob("deploy/kserve/*.yaml")]
    named = {n for f in files for n in re.findall(r"BIOMED_[A-Z0-9_]*[A-Z0-9]", f.read_text())}
    assert len(files) > 80 and named - known == set()


def test_messages_take_a_setting_s_name_from_its_declaration() -> None:
    """No string in the core, the service or the CLI types a declared variable's name by hand (docstrings may):
    each message names it through ``biomed.settings.env``, so a rename is one edit and a typo cannot ship."""
    import ast

    from biomed.settings import declared

    names = {d.env for _, d in declared()}
    typed = []
    for path in [*ROOT.glob("biomed/**/*.py"), *ROOT.glob("service/**/*.py"), *ROOT.glob("cli/**/*.py")]:
        if path.name == "settings.py" and path.parent.name == "biomed":
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        typed += [f"{path.relative_to(ROOT)}:{node.lineno}" for node in ast.walk(tree)
                  if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                  and set(re.findall(r"BIOMED_[A-Z0-9_]*[A-Z0-9]", node.value)) & names]
    assert typed == []


def test_make_help_prints_the_port_it_serves_on() -> None:
    import os
    import subprocess

    out = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, env={**os.environ, "PORT": "8123"},
                         capture_output=True, text=True, timeout=60).stdout
    assert "serve on http://127.0.0.1:8123" in out and "$(PORT)" not in out, out


def test_every_serve_flag_says_what_it_does() -> None:
    import argparse

    from cli.main import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    flags = {a.option_strings[0]: a.help for a in sub.choices["serve"]._actions if a.option_strings}
    assert {"--port", "--host", "--workers", "--models", "--dicom-port"} <= set(flags)
    assert all(flags.values()), [f for f, h in flags.items() if not h]
    assert "0.0.0.0" in flags["--host"] and "127.0.0.1" in flags["--host"]  # who can reach it


def test_commands_other_than_train_start_without_torch() -> None:
    """cli/main.py's promise: ``biomed --help`` and every command but ``train`` parse their arguments without torch."""
    import subprocess
    import sys

    code = ("import sys\nfrom cli.main import main\ntry:\n    main(['models', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'models', 'training.kinds') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout[-500:] + done.stderr[-500:]
