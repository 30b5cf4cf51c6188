#!/usr/bin/env bash
# Create .venv-tools/: deployment linters kept out of the project venv.
#
# checkov pins many libraries (boto3, networkx, jsonschema, ...) that conflict with the
# serving and training stacks, so it lives in its own virtualenv. tests/test_deploy.py
# calls .venv-tools/bin/checkov; override the location with BIOMED_TOOLS_VENV.
#
# Usage: scripts/tools-venv.sh            (idempotent; reinstalls only when the pins change)
set -euo pipefail

VENV="${BIOMED_TOOLS_VENV:-.venv-tools}"
PYTHON="${PYTHON:-python3}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
STAMP="$VENV/.biomed-tools-$CHECKOV_VERSION"

if [[ -f "$STAMP" && -x "$VENV/bin/checkov" ]]; then
    echo "tools venv up to date: $VENV (checkov $CHECKOV_VERSION)"
    exit 0
fi

"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "checkov==$CHECKOV_VERSION"
"$VENV/bin/checkov" --version
touch "$STAMP"
echo "tools venv ready: $VENV"
