#!/usr/bin/env bash
# Set up with test extras, then run lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
ruff check src tests bench
lint-imports
python -m pytest -q "$@"
