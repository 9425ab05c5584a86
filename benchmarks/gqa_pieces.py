"""Grouped key/value heads through a plan's dense pieces: accuracy against float64, and forward+backward
time against the tile backward, on a GPU.

    python benchmarks/gqa_pieces.py [--json gqa.json]

Accuracy: prefix-LM of 4096 tokens (prefix 1024), 8 query heads over 2 key/value heads, head dim
128, bf16, every row, output and all three gradients, for the plan with pieces and the same plan
with the tile backward. Speed: prefix-LM (prefix N/4) at N = 8192 and 32768, 16 query heads over
4 key/value heads, ``triton.testing.do_bench`` medians of one training step through each plan,
and the plan the cost model chooses for that call.
"""

from __future__ import annotations

import argparse
import json

import torch
from triton.testing import do_bench

import maskc
from maskc import library
from maskc.measure.reference import attention, rel_err
from maskc.runtime import load_plan

HEAD_DIM = 128


def randn(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(*shape, device="cuda", dtype=torch.bfloat16, generator=gen)


def accuracy(n: int = 4096, heads: int = 8, kv_heads: int = 2) -> list[dict]:
    source = library.prefix_lm(n, n // 4)
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, do = randn(1, heads, n, HEAD_DIM, gen=gen), randn(1, heads, n, HEAD_DIM, gen=gen)
    k, v = randn(1, kv_heads, n, HEAD_DIM, gen=gen), randn(1, kv_heads, n, HEAD_DIM, gen=gen)
    ref = attention(q, k, v, source.to_dense()[0, 0], HEAD_DIM**-0.5, do)
    want = (ref.out, ref.dq, ref.dk, ref.dv)
    rows = []
    for backward in ("pieces", "tiles"):
        loaded = load_plan(maskc.compile(source, block=128, variant="block_sparse", backward=backward), "cuda")
        qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))
        out = loaded.attention(qs, ks, vs)
        out.backward(do)
        errors = [rel_err(g, w) for g, w in zip((out, qs.grad, ks.grad, vs.grad), want)]
        rows.append({"n": n, "heads": heads, "kv_heads": kv_heads, "backward": backward, "rel_err_o_dq_dk_dv": errors})
    return rows


def speed(n: int, heads: int = 16, kv_heads: int = 4) -> dict:
    source = library.prefix_lm(n, n // 4)
    gen = torch.Generator(device="cuda").manual_seed(1)
    q, do = randn(1, heads, n, HEAD_DIM, gen=gen), randn(1, heads, n, HEAD_DIM, gen=gen)
    k, v = randn(1, kv_heads, n, HEAD_DIM, gen=gen), randn(1, kv_heads, n, HEAD_DIM, gen=gen)
    row: dict = {"n": n, "heads": heads, "kv_heads": kv_heads}
    for backward in ("pieces", "tiles"):
        loaded = load_plan(maskc.compile(source, block=128, variant="block_sparse", backward=backward), "cuda")
        qs, ks, vs = (t.clone().requires_grad_() for t in (q, k, v))

        def step() -> None:
            for t in (qs, ks, vs):
                t.grad = None
            loaded.attention(qs, ks, vs).backward(do)

        row[f"fwd_bwd_ms_{backward}"] = do_bench(step, warmup=25, rep=100, return_mode="median")
    workload = maskc.cost.Workload(batch=1, heads=heads, kv_heads=kv_heads, head_dim=HEAD_DIM, dtype="bf16")
    row["chosen"] = maskc.compile(source, workload=workload).predictions["chosen"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("this benchmark needs a CUDA GPU")
    rows = accuracy()
    for row in rows:
        print(json.dumps(row), flush=True)
    for n in (8192, 32768):
        rows.append(speed(n))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
