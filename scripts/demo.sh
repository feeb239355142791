#!/usr/bin/env bash
# Set up, then run the main job: train the digits MLP (no download needed) and print its results.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
deepstep train digits-mlp "$@"
