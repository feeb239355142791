#!/usr/bin/env bash
# Create .venv and install deepstep. torch is pinned first so that nothing pulls a CUDA build;
# on a machine with a GPU, install the torch build you want before running this.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-}"
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q -e ".${extra:+[$extra]}"
# Optional offline data from Debian (Fashion-MNIST IDX files); harmless when not on Debian or not root.
if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
    || echo "note: could not install dataset-fashion-mnist; Fashion-MNIST will be downloaded when first used"
fi
# Optional offline text data from Debian (fortune files, /usr/share/games/fortunes) for the fortunes-* recipes.
if [ ! -d /usr/share/games/fortunes ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq fortunes) >/dev/null 2>&1 \
    || echo "note: could not install the Debian package fortunes; the fortunes-* recipes need it (or data.path)"
fi
# Optional headless browser (Debian chromium) for the render test of report.html (tests/test_report.py).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null 2>&1 \
    || echo "note: could not install the Debian package chromium; the report's render test will be skipped"
fi
