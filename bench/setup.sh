#!/usr/bin/env bash
# Prepare the benchmark (idempotent): bench/.venv with the pinned peers of
# requirements.txt, and the Node load client's dependencies (bench/client).
# Usage: bash bench/setup.sh        (PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-python3}"

command -v node >/dev/null || { echo "setup.sh: node (>=18) is required" >&2; exit 1; }
command -v npm >/dev/null || { echo "setup.sh: npm is required" >&2; exit 1; }

if [ ! -x "$here/.venv/bin/python" ]; then
    "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$here/requirements.txt"

cd "$here/client"
npm ci --no-audit --no-fund --loglevel=error

echo "bench setup OK: $("$here/.venv/bin/uwsgi" --version | sed 's/^/uWSGI /'), node $(node --version)"
