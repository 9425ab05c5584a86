"""Per-call host overhead of a static plan's forward: what a call costs the host beyond its kernels.

A loop of small forward calls (causal-with-a-hole mask, 1 x 1 x N x 64, bf16) is timed two ways:
by the host clock around the loop (what the Python around each launch costs, when it exceeds the
GPU time) and by CUDA events (the GPU time of the same loop). Per call it prints host µs, GPU µs
and their difference, for: the Triton forward launched directly (the kernels' own launches, the
floor), ``LoadedPlan.attention`` in eager mode, the registered operator called directly, and
``torch.compile(fullgraph=True)`` around ``LoadedPlan.attention`` (default and
``mode="reduce-overhead"``, CUDA graphs). The bar: eager at most 15 µs above the direct launch.

GPU: ``python benchmarks/host_overhead.py``. CPU smoke run (reference backend, host clock only):
``python benchmarks/host_overhead.py --device cpu --n 64 --calls 20``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import maskc
from maskc.runtime import load_plan, ops


def timed(fn, calls: int, cuda: bool) -> tuple[float, float]:
    """Host µs and GPU µs (0 off CUDA) per call of ``fn``, after a warm-up."""
    for _ in range(3):
        fn()
    if cuda:
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t0) / calls * 1e6
    if cuda:
        end.record()
        torch.cuda.synchronize()
        return host, start.elapsed_time(end) * 1e3 / calls
    return host, 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    mask = np.tri(args.n, dtype=bool)
    mask[:, 3] = False  # not exactly causal: the tile kernels run, not a dense library kernel
    plan = load_plan(maskc.compile(mask, block=64, variant="block_sparse"), device=args.device)
    dtype = torch.bfloat16 if cuda else torch.float32
    q, k, v = (torch.randn(1, 1, args.n, 64, device=args.device, dtype=dtype) for _ in range(3))
    backend = "triton" if cuda else "reference"
    dplan = plan.on(q.device)
    operators = ops.operators(backend)
    operator_args = (dplan.row_lists, dplan.col_lists, *dplan.scalars, ops.flat_pieces(dplan), 0.125)
    cases = {"LoadedPlan.attention, eager": lambda: plan.attention(q, k, v, backend=backend),
             "operator, eager": lambda: operators.forward(q, k, v, *operator_args)}
    if cuda:
        from maskc.runtime.call import check_call
        from maskc.runtime.kernels.fwd import launch_forward
        from maskc.runtime.kernels.run import prepare

        tiles = prepare(dplan, check_call(dplan, q, k, v))
        cases = {"kernel launch (floor)": lambda: launch_forward(q, k, v, dplan.row_lists, 0.125, tiles.launches.fwd), **cases}
    with torch.no_grad():
        for mode in (None, "reduce-overhead") if cuda else (None,):
            compiled = torch.compile(lambda q, k, v: plan.attention(q, k, v, backend=backend), fullgraph=True, mode=mode)
            cases[f"torch.compile(fullgraph=True{', mode=' + repr(mode) if mode else ''})"] = lambda c=compiled: c(q, k, v)
        print(f"{torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}, N={args.n}, D=64, {dtype}")
        for name, fn in cases.items():
            host, gpu = timed(fn, args.calls, cuda)
            print(f"{name:55s} host {host:8.1f} µs/call   GPU {gpu:8.1f} µs/call   host - GPU {host - gpu:8.1f}")


if __name__ == "__main__":
    main()
