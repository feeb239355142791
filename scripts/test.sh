#!/usr/bin/env bash
# Set up with test extras, then run lint and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
ruff check src tests bench
lint-imports
# pytest-xdist: one worker per core (each pinned to its core by tests/conftest.py), tests handed
# out as workers free up; add -n 0 to run everything in one process
python -m pytest -q -n auto --dist worksteal "$@"
