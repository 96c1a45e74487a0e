#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs kidneyseg into it with the pinned constraints.
# Usage: bash scripts/setup.sh [extra]   e.g. "test" installs the test tools too.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
spec="."
[ -n "${1:-}" ] && spec=".[$1]"
.venv/bin/python -m pip install --quiet -c constraints.txt -e "$spec"
