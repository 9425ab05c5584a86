"""Sweep the kernels' launch configurations on a GPU and print the fastest per mask and tile size.

    python benchmarks/tune.py --json tune.json [--n 8192] [--masks causal,documents,sliding_window]

For each mask and plan tile size it times the forward under every forward configuration, then
forward+backward under every backward configuration (forward at its best), with
``triton.testing.do_bench`` medians. The output is the evidence behind ``runtime/kernels/config.py``'s
table: copy the winners there, and record the run in ``benchmarks/NOTES.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time

import torch
import triton

import maskc
from maskc.measure.masks import build_mask
from maskc.runtime import load_plan
from maskc.runtime.kernels import config

FWD_SPACE = {
    (128, 128): dict(fwd_warps=[4, 8], fwd_stages=[2, 3, 4], fwd_sub_n=[64, 128]),
    (128, 64): dict(fwd_warps=[4, 8], fwd_stages=[2, 3, 4], fwd_sub_n=[64]),
    (64, 64): dict(fwd_warps=[4], fwd_stages=[2, 3, 4], fwd_sub_n=[32, 64]),
}
BWD_SPACE = {
    (128, 128): dict(dq_sub_n=[32, 64], dkdv_sub_m=[32, 64], dq_warps=[4, 8], dkdv_warps=[8], dq_stages=[2, 3], dkdv_stages=[2, 3]),
    (128, 64): dict(dq_sub_n=[32, 64], dkdv_sub_m=[32, 64], dq_warps=[8], dkdv_warps=[4, 8], dq_stages=[2, 3], dkdv_stages=[2, 3]),
    (64, 64): dict(dq_sub_n=[32, 64], dkdv_sub_m=[32, 64], dq_warps=[4], dkdv_warps=[4], dq_stages=[2, 3], dkdv_stages=[2, 3]),
}


def grid(space: dict) -> list[dict]:
    keys = sorted(space)
    return [dict(zip(keys, values)) for values in itertools.product(*(space[k] for k in keys))]


def timed(fn) -> float:
    return triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")


def tune_one(source, block, heads, dim, dtype) -> dict:
    plan = load_plan(maskc.compile(source, block=block, variant="block_sparse"), device="cuda")
    n = source.q_len
    q, k, v = (torch.randn(1, heads, n, dim, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    fwd = []
    for cfg in grid(FWD_SPACE[block]):
        with config.override(**cfg):
            try:
                with torch.no_grad():
                    ms = timed(lambda: plan.attention(q, k, v))
            except Exception as e:  # a configuration that does not compile (shared memory, registers)
                ms = None
                cfg = {**cfg, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        fwd.append({**cfg, "ms": ms})
    best_fwd = min((r for r in fwd if r["ms"] is not None), key=lambda r: r["ms"])
    fwd_cfg = {k: best_fwd[k] for k in FWD_SPACE[block]}
    bwd = []
    for cfg in grid(BWD_SPACE[block]):
        with config.override(**fwd_cfg, **cfg):
            try:
                ms = timed(lambda: plan.attention(q, k, v).backward(grad))
            except Exception as e:
                ms = None
                cfg = {**cfg, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"}
        bwd.append({**cfg, "ms": ms})
    best_bwd = min((r for r in bwd if r["ms"] is not None), key=lambda r: r["ms"])
    return {"block": list(block), "fwd": fwd, "bwd": bwd, "best_fwd": best_fwd, "best_fwd_bwd": best_bwd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--masks", default="causal,documents,sliding_window")
    parser.add_argument("--blocks", default="128x128,128x64,64x64")
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    blocks = [tuple(int(x) for x in b.split("x")) for b in args.blocks.split(",")]
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "n": args.n, "heads": args.heads, "head_dim": args.head_dim, "cases": []}
    for name in args.masks.split(","):
        source = build_mask(name, args.n).source
        for block in blocks:
            t0 = time.time()
            r = tune_one(source, block, args.heads, args.head_dim, torch.bfloat16)
            r["mask"] = name
            results["cases"].append(r)
            f, b = r["best_fwd"], r["best_fwd_bwd"]
            print(f"{name:16s} {block[0]}x{block[1]:<4d} fwd {f['ms']:.3f} ms {f}  fwd+bwd {b['ms']:.3f} ms {b}  ({time.time() - t0:.0f} s)",
                  file=sys.stderr, flush=True)
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
