"""Long context from a spec: a mask described by its structure, compiled and run where its dense form
would not fit on the GPU.

    python examples/long_context.py [--n 262144] [--kind documents|sliding_window|prefix_lm] [--heads 16]

Compiles the spec (no ``N × N`` array anywhere), loads the plan on the GPU, runs forward and
backward in bf16 on ``[1, heads, N, 128]`` tensors, checks the output on a few query rows against a
float64 softmax, and prints the plan's size, the compile time, the step times and the GPU memory
the step used. At N = 262144 the dense boolean mask alone would be 64 GiB.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import maskc
from maskc.measure.masks import document_lengths
from maskc.measure.reference import error_rows, reference_rows, rel_err
from maskc.runtime import load_plan


def spec_for(kind: str, n: int) -> dict:
    if kind == "documents":
        return {"kind": "documents", "lengths": document_lengths(n, 100, 700, seed=0), "causal": True}
    if kind == "sliding_window":
        return {"kind": "sliding_window", "n": n, "window": 4096, "causal": True}
    return {"kind": "prefix_lm", "n": n, "prefix": 40000}


def cuda_ms(fn, reps: int) -> float:
    """Median of ``reps`` timed calls (CUDA events), after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=262144)
    parser.add_argument("--kind", choices=["documents", "sliding_window", "prefix_lm"], default="documents")
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this example needs a CUDA GPU")
    n, heads, dim = args.n, args.heads, 128

    spec = spec_for(args.kind, n)
    source = maskc.open_mask(spec)
    start = time.perf_counter()
    plan = maskc.compile(source)
    compile_s = time.perf_counter() - start
    plan_bytes = len(plan.to_bytes())
    pieces = plan.arrays["pieces"].shape[0]
    backward = f", backward through {pieces} dense pieces" if pieces else ""
    print(f"{args.kind} N={n}: {plan.variant} plan, {plan.block_m}x{plan.block_n} tiles{backward}, {plan_bytes / 2**20:.2f} MiB, "
          f"compiled in {compile_s:.2f} s (the dense boolean mask would be {n * n / 2**30:.0f} GiB)")

    torch.cuda.reset_peak_memory_stats()
    loaded = load_plan(plan, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, grad = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(4))
    for t in (q, k, v):
        t.requires_grad_(True)
    inputs = torch.cuda.memory_allocated()

    with torch.no_grad():
        fwd_ms = cuda_ms(lambda: loaded.attention(q, k, v), args.reps)

    def step() -> None:
        for t in (q, k, v):
            t.grad = None
        loaded.attention(q, k, v).backward(grad)

    fwd_bwd_ms = cuda_ms(step, args.reps)
    peak = torch.cuda.max_memory_allocated()

    with torch.no_grad():
        out = loaded.attention(q, k, v)
    rows = error_rows(n, 16)
    ref = reference_rows(q, k, v, source, rows, dim**-0.5)
    err = rel_err(out.index_select(2, torch.as_tensor(rows, device=out.device)), ref)

    pairs = plan.visible_pairs * heads
    print(f"  B=1 H={heads} D={dim} bf16 on {torch.cuda.get_device_name()}: forward {fwd_ms:.2f} ms "
          f"({4 * pairs * dim / fwd_ms / 1e9:.0f} TFLOP/s), forward+backward {fwd_bwd_ms:.2f} ms")
    print(f"  GPU memory: q, k, v, dO {inputs / 2**30:.2f} GiB, peak during the step {peak / 2**30:.2f} GiB; "
          f"relative error on {len(rows)} rows vs float64: {err:.1e}")


if __name__ == "__main__":
    main()
