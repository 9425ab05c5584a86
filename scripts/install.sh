#!/usr/bin/env bash
# Install maskc with the extras named in $1 (e.g. "test,viz"). On a machine without an NVIDIA GPU,
# torch's CPU build comes first, from the PyTorch CPU index, so no CUDA packages are downloaded.
set -euo pipefail
cd "$(dirname "$0")/.."
pip=(python3 -m pip install -q --disable-pip-version-check)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" "torch==2.13.0"
else
    "${pip[@]}" --extra-index-url https://download.pytorch.org/whl/cpu "torch==2.13.0+cpu"
fi
"${pip[@]}" -e ".[$1]"
