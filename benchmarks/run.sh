#!/usr/bin/env bash
# The maskc benchmark, as anyone can run it on their own GPU.
#
#   benchmarks/run.sh OUT.json [maskc bench options...]
#
# Installs this checkout in editable mode (no dependencies are fetched: torch, triton, numpy, scipy,
# msgpack and click must already be installed), then runs `maskc bench` on GPU 0 and
# writes every result, with the GPU, versions, date and command line, to OUT.json, and the table to
# OUT.txt next to it. Without options it runs the default mask set at N = 8192 and 32768 with 16
# heads of dimension 128, batch 1, bf16; any option given replaces that default N list only if it
# includes -n, e.g.
#
#   benchmarks/run.sh results/bench-8192.json -n 8192
#   benchmarks/run.sh results/docs.json -n 32768 --masks documents,causal
set -euo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
    echo "usage: $0 OUT.json [maskc bench options...]" >&2
    exit 2
fi
out="$1"
shift
mkdir -p "$(dirname "$out")"
out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"

cd "$(dirname "$0")/.."
python -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null

sizes=(-n 8192 -n 32768)
for arg in "$@"; do
    case "$arg" in
        -n|-n*) sizes=() ;;
    esac
done

python -m maskc.cli.bench_cmd "${sizes[@]}" --heads 16 --head-dim 128 --batch 1 --dtype bf16 \
    --json "$out" "$@" | tee "${out%.json}.txt"
