#!/usr/bin/env bash
# Install maskc with its test, viz and hf extras (torch's CPU build on a CPU-only machine) and run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh test,viz,hf
python3 -m pytest "$@"
