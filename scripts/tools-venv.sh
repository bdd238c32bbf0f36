#!/usr/bin/env bash
# Install the command-line tools that cannot share the project's virtual environment.
#
# checkov pins old versions of packaging, networkx, cachetools and importlib-metadata that would
# downgrade what torch, mlflow and kfp use, so it lives in its own virtual environment:
# .tools/checkov/bin/checkov (git-ignored). Idempotent: does nothing when the pinned version is there.
# Usage: scripts/tools-venv.sh
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
VENV=.tools/checkov

if [ -x "$VENV/bin/checkov" ] && [ "$("$VENV/bin/checkov" --version 2>/dev/null)" = "$CHECKOV_VERSION" ]; then
  echo "tools-venv: checkov $CHECKOV_VERSION is already in $VENV" >&2
  exit 0
fi
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check "checkov==${CHECKOV_VERSION}"
echo "tools-venv: installed checkov $("$VENV/bin/checkov" --version) in $VENV" >&2
