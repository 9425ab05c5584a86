#!/usr/bin/env bash
# The maskc demo: make a packed-documents mask, compile it, inspect it, verify it, run attention through it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh viz
out=${MASKC_DEMO_DIR:-demo-output}
mkdir -p "$out"
set -x
maskc mask documents --lengths 300,120,700,200,500,228 -o "$out/docs.npy"
maskc compile "$out/docs.npy" -o "$out/docs.plan" --block 64x64
maskc inspect "$out/docs.plan" --png "$out/docs.png"
maskc verify "$out/docs.plan" "$out/docs.npy"
python3 examples/attention_check.py "$out/docs.plan" "$out/docs.npy"
