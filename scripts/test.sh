#!/usr/bin/env bash
# Sets up .venv with the test tools, lints, and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
.venv/bin/ruff check src tests benchmarks
exec .venv/bin/python -m pytest -q "$@"
