#!/usr/bin/env bash
# Sets up .venv and runs the built-in demo (synthesise, train both stages, predict, evaluate).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/kidneyseg demo "$@"
