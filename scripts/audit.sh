#!/usr/bin/env bash
# Audit the serving dependencies ([project].dependencies and everything they pull in, at the
# versions installed in .venv) with pip-audit, run from .venv-tools.
#
# Findings listed in deploy/audit-accepted.txt ("<vuln id> <package> <reason>") are reported but
# accepted; any other finding fails. Exit codes: 0 clean or all accepted, 1 unaccepted findings,
# 2 the vulnerability database could not be reached (no package could be looked up: no network to it),
# 3 the audit could not be done for another reason (pip-audit could not be installed or failed, or only
#   some packages could be looked up). Only 2 is "offline"; 3 is a broken audit and must be fixed.
#
# Usage: scripts/audit.sh            (PIP_AUDIT_VERSION, BIOMED_TOOLS_VENV, VENV override)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-.venv}"
TOOLS="${BIOMED_TOOLS_VENV:-.venv-tools}"
PYTHON="${PYTHON:-python3}"
PIP_AUDIT_VERSION="${PIP_AUDIT_VERSION:-2.9.0}"
ACCEPTED="deploy/audit-accepted.txt"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

if [[ ! -x "$TOOLS/bin/pip-audit" ]] || ! "$TOOLS/bin/pip-audit" --version | grep -q "$PIP_AUDIT_VERSION"; then
    [[ -x "$TOOLS/bin/python" ]] || "$PYTHON" -m venv "$TOOLS"
    "$TOOLS/bin/python" -m pip install --quiet "pip-audit==$PIP_AUDIT_VERSION" || { echo "cannot install pip-audit $PIP_AUDIT_VERSION into $TOOLS" >&2; exit 3; }
fi

# The serving closure, pinned to what .venv has installed (what the bento ships).
"$VENV/bin/python" - "$WORK/serving.txt" <<'PY'
import re, sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from importlib import metadata
from packaging.requirements import Requirement

deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
todo, pins = [Requirement(d) for d in deps], {}
while todo:
    req = todo.pop()
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue
    name = re.sub(r"[-_.]+", "-", req.name).lower()
    if name in pins:
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        sys.exit(f"{name} is a serving dependency but is not installed in the venv")
    pins[name] = dist.version
    todo += [Requirement(r) for r in dist.requires or []]
open(sys.argv[1], "w").write("".join(f"{n}=={v}\n" for n, v in sorted(pins.items())))
print(f"auditing {len(pins)} serving distributions")
PY

set +e
"$TOOLS/bin/pip-audit" --requirement "$WORK/serving.txt" --no-deps --disable-pip --progress-spinner off \
    --format json --output "$WORK/audit.json" 2> "$WORK/stderr"
code=$?
set -e
if [[ ! -s "$WORK/audit.json" ]]; then
    cat "$WORK/stderr" >&2
    if grep -qiE "ConnectionError|Max retries exceeded|Failed to establish a new connection|Name or service not known|Temporary failure in name resolution|Network is unreachable|timed out" "$WORK/stderr"; then
        echo "pip-audit could not reach the vulnerability database (exit $code)" >&2
        exit 2
    fi
    echo "pip-audit failed (exit $code)" >&2
    exit 3
fi

"$VENV/bin/python" - "$WORK/audit.json" "$ACCEPTED" <<'PY'
import json, sys
from pathlib import Path

report = json.load(open(sys.argv[1]))
accepted = {}
path = Path(sys.argv[2])
for line in (path.read_text().splitlines() if path.exists() else []):
    parts = line.split(None, 2)
    if parts and not line.lstrip().startswith("#"):
        if len(parts) < 3:
            sys.exit(f"{path}: '{line}' needs '<vuln id> <package> <reason>'")
        accepted[(parts[0], parts[1].lower())] = parts[2]
bad = 0
for dep in report.get("dependencies", []):
    for vuln in dep.get("vulns", []):
        ids = [vuln["id"], *vuln.get("aliases", [])]
        reason = next((accepted[(i, dep["name"].lower())] for i in ids if (i, dep["name"].lower()) in accepted), None)
        fix = ", ".join(vuln.get("fix_versions", [])) or "none"
        status = f"accepted: {reason}" if reason else "NOT ACCEPTED"
        print(f"{dep['name']} {dep['version']}: {vuln['id']} (fixed in {fix}) - {status}")
        bad += reason is None
skipped = [d for d in report.get("dependencies", []) if d.get("skip_reason")]
for dep in skipped[:5]:
    print(f"not audited: {dep['skip_reason']}")
audited = len(report.get("dependencies", [])) - len(skipped)
print(f"{audited} distributions audited, {len(skipped)} could not be, {bad} unaccepted finding(s)")
if bad:
    sys.exit(1)
if skipped and not audited:
    print("the vulnerability database answered for no package: it is not reachable from here")
    sys.exit(2)
if skipped:
    print("some packages could not be looked up: the audit is incomplete")
    sys.exit(3)
PY
