"""Per-call host overhead of a static plan's forward: what a call costs the host beyond its kernels.

A loop of small forward calls (causal-with-a-hole mask, 1 x 1 x N x 64, bf16) is timed by the host
clock (what the Python around each launch costs, when it exceeds the GPU time) and by CUDA events
(the GPU time of the same loop), for: the Triton forward launched directly (the kernel's own
launch, the floor; and inside an ``autograd.Function`` that does nothing else, the floor of a
forward that records an autograd node), ``LoadedPlan.attention`` in eager mode (under ``no_grad``,
and with inputs that require grad: the training forward), the registered operator
called directly, and ``torch.compile(fullgraph=True)`` around ``LoadedPlan.attention`` (default
and ``mode="reduce-overhead"``, CUDA graphs).

A host's speed drifts over seconds, by more than the differences measured here. So the cases are
timed in rounds, every case once per round in turn, ``--calls`` calls each; a case's host time is
its median over the rounds, and its overhead is the median over the rounds of its difference from
the floor in the same round. The bar: eager at most 15 µs above the direct launch.

GPU: ``python benchmarks/host_overhead.py``. CPU smoke run (reference backend, host clock only):
``python benchmarks/host_overhead.py --device cpu --n 64 --calls 20 --rounds 2``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import maskc
from maskc.runtime import load_plan, ops


def timed(fn, calls: int, cuda: bool) -> tuple[float, float]:
    """Host µs and GPU µs (0 off CUDA) per call of ``fn`` over ``calls`` calls."""
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


def cases(plan, q, k, v, backend: str, cuda: bool) -> dict:
    """The calls to time, by name; the first is the floor where there is one (CUDA)."""
    dplan = plan.on(q.device)
    operators = ops.operators(backend)
    operator_args = (dplan.row_lists, dplan.col_lists, *dplan.scalars, ops.flat_pieces(dplan), 0.125)
    q_grad, k_grad, v_grad = (t.detach().clone().requires_grad_() for t in (q, k, v))

    def training_forward():
        with torch.enable_grad():
            return plan.attention(q_grad, k_grad, v_grad, backend=backend)

    found = {}
    if cuda:
        from maskc.runtime.call import check_call
        from maskc.runtime.kernels.fwd import launch_forward
        from maskc.runtime.kernels.run import prepare

        tiles = prepare(dplan, check_call(dplan, q, k, v))

        def launch(q, k, v):
            return launch_forward(q, k, v, dplan.row_lists, 0.125, tiles.launches.fwd)

        class Launch(torch.autograd.Function):  # what any autograd.Function costs around the launch
            @staticmethod
            def forward(ctx, q, k, v):
                o, lse = launch(q, k, v)
                ctx.save_for_backward(q, k, v, o, lse)
                return o

            @staticmethod
            def backward(ctx, do):
                raise NotImplementedError

        def training_floor():
            with torch.enable_grad():
                return Launch.apply(q_grad, k_grad, v_grad)

        found["kernel launch (floor)"] = lambda: launch(q, k, v)
        found["kernel launch in a bare autograd.Function, inputs require grad"] = training_floor
    found["LoadedPlan.attention, eager, no_grad"] = lambda: plan.attention(q, k, v, backend=backend)
    found["LoadedPlan.attention, eager, inputs require grad"] = training_forward
    found["operator, eager"] = lambda: operators.forward(q, k, v, *operator_args)
    for mode in (None, "reduce-overhead") if cuda else (None,):
        compiled = torch.compile(lambda q, k, v: plan.attention(q, k, v, backend=backend), fullgraph=True, mode=mode)
        found[f"torch.compile(fullgraph=True{', mode=' + repr(mode) if mode else ''})"] = lambda c=compiled: c(q, k, v)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--calls", type=int, default=200, help="calls per case and round")
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    mask = np.tri(args.n, dtype=bool)
    mask[:, 3] = False  # not exactly causal: the tile kernels run, not a dense library kernel
    plan = load_plan(maskc.compile(mask, block=64, variant="block_sparse"), device=args.device)
    dtype = torch.bfloat16 if cuda else torch.float32
    q, k, v = (torch.randn(1, 1, args.n, 64, device=args.device, dtype=dtype) for _ in range(3))
    backend = "triton" if cuda else "reference"
    with torch.no_grad():
        found = cases(plan, q, k, v, backend, cuda)
        for fn in found.values():  # compile, and warm up
            for _ in range(5):
                fn()
        host = {name: [] for name in found}
        gpu = {name: [] for name in found}
        for _ in range(args.rounds):
            for name, fn in found.items():
                h, g = timed(fn, args.calls, cuda)
                host[name].append(h)
                gpu[name].append(g)
    floor = host["kernel launch (floor)"] if cuda else None
    print(f"{torch.cuda.get_device_name() if cuda else 'CPU'}, torch {torch.__version__}, N={args.n}, D=64, {dtype}, "
          f"{args.rounds} rounds of {args.calls} calls per case (medians over the rounds)")
    for name in found:
        line = f"{name:55s} host {statistics.median(host[name]):8.1f} µs/call   GPU {statistics.median(gpu[name]):8.1f} µs/call"
        if floor is not None:
            over = statistics.median(h - f for h, f in zip(host[name], floor))
            spread = max(host[name]) - min(host[name])
            line += f"   above the floor {over:8.1f}   (host spread over rounds {spread:.1f})"
        print(line)


if __name__ == "__main__":
    main()
