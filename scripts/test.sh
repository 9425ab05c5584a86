#!/usr/bin/env bash
# Install maskc with its test extras (CPU torch first, so no CUDA packages are pulled) and run the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check torch==2.13.0
python3 -m pip install -q --disable-pip-version-check -e '.[test,viz]'
python3 -m pytest "$@"
