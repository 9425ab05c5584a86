"""Check that two checkouts of maskc compute bit for bit the same attention on a GPU.

Run ``save`` under each checkout (with that checkout importable as ``maskc``), then ``compare``::

    python benchmarks/same_results.py save before.pt     # in the older checkout
    python benchmarks/same_results.py save after.pt      # in the newer one
    python benchmarks/same_results.py compare before.pt after.pt

``save`` compiles six small plans (bitmap and interval variants, 64- and 128-wide tiles, a
reordered plan) and runs each through the Triton backend's forward and backward on
seeded inputs, in bf16 and fp16, with and without grouped key/value heads; ``compare`` reports
every output or gradient that differs in any bit.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

N = 2048


def plans() -> dict:
    import maskc
    from maskc import library

    rng = np.random.default_rng(0)
    lengths = []
    while sum(lengths) < N:
        lengths.append(int(rng.integers(60, 400)))
    lengths[-1] -= sum(lengths) - N
    order, i = rng.permutation(N), np.arange(N)
    permuted_band = (np.abs(i[:, None] - i[None, :]) < 128)[np.ix_(order, order)]
    cases = {
        "documents 64x64 bitmaps": (library.documents(lengths, causal=True), dict(block=64, variant="block_sparse")),
        "documents 128x128 intervals": (library.documents(lengths, causal=True), dict(block=128, variant="intervals")),
        "window 64x64 intervals": (library.sliding_window(N, 256), dict(block=64, variant="intervals")),
        "prefix-LM 128x128 bitmaps": (library.prefix_lm(N, N // 4), dict(block=128, variant="block_sparse")),
        "BigBird 64x64 bitmaps": (library.bigbird(N, 64, seed=1), dict(block=64, variant="block_sparse")),
        "permuted band 64x64 RCM": (permuted_band, dict(block=64, variant="block_sparse", reorder="rcm")),
    }
    return {name: maskc.compile(mask, **options) for name, (mask, options) in cases.items()}


def save(path: str) -> None:
    from maskc.runtime import load_plan

    results = {}
    for name, plan in plans().items():
        loaded = load_plan(plan, device="cuda")
        for dtype in (torch.bfloat16, torch.float16):
            for batch, q_heads, kv_heads, head_dim in ((2, 4, 4, 128), (1, 8, 2, 64)):
                g = torch.Generator(device="cuda").manual_seed(1)
                q, k, v = (torch.randn(batch, h, N, head_dim, device="cuda", dtype=dtype, generator=g).requires_grad_()
                           for h in (q_heads, kv_heads, kv_heads))
                do = torch.randn(batch, q_heads, N, head_dim, device="cuda", dtype=dtype, generator=g)
                loaded.attention(q, k, v, backend="triton").backward(do)
                o = loaded.attention(q, k, v, backend="triton").detach()
                key = f"{name}, {dtype}, {batch}x{q_heads}/{kv_heads}x{head_dim}"
                results[key] = {"o": o.cpu(), "dq": q.grad.cpu(), "dk": k.grad.cpu(), "dv": v.grad.cpu()}
    torch.save(results, path)
    print(f"{len(results)} cases saved to {path}")


def compare(before: str, after: str) -> int:
    a, b = torch.load(before), torch.load(after)
    if a.keys() != b.keys():
        print(f"the files hold different cases: {sorted(a.keys() ^ b.keys())}")
        return 1
    differ = [(case, name) for case in a for name in a[case] if not torch.equal(a[case][name], b[case][name])]
    for case, name in differ:
        print(f"differs: {case}: {name}, max |difference| {(a[case][name].float() - b[case][name].float()).abs().max().item():.3g}")
    print(f"{len(a)} cases x 4 tensors: {'all bitwise identical' if not differ else f'{len(differ)} differ'}")
    return 1 if differ else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save").add_argument("path")
    cmp = sub.add_parser("compare")
    cmp.add_argument("before")
    cmp.add_argument("after")
    args = parser.parse_args()
    if args.command == "save":
        save(args.path)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    raise SystemExit(main())
