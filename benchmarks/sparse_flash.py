"""Sparse Flash Attention's masks per training step: hash buckets and query/key dropping, drawn
fresh at every step per head, bound on the GPU and run by maskc, against dense causal attention.

    python benchmarks/sparse_flash.py [--out sparse_flash.json] [--rep-ms 200]
    python benchmarks/sparse_flash.py --device cpu --ns 256 --heads 2 --dim 16 --rep-ms 1   # smoke test

The masks of Pagliardini et al. (2023), "Faster Causal Attention Over Large Sequences Through
Sparse Flash Attention": **hash buckets** (query ``i`` sees key ``j`` iff their bucket ids agree
and ``j <= i``; 16 and 64 buckets, ids uniform per query and key, per head) and **QK-dropping**
(each query and key kept with probability ``--keep``; kept queries see the kept keys at or before
them). Each timed step takes the next of ``--pool`` pre-drawn sets of bucket ids or keep flags, so
every step binds new data; drawing them (the model's hashing) is not timed, sorting and binding are.

Per case it times (median, ``triton.testing.do_bench`` on a GPU) forward and
forward + backward of ``LoadedFamily.attention(q, k, v, q_buckets=..., k_buckets=...)`` (or
``q_keep``/``k_keep``) and of SDPA with ``is_causal=True`` through cuDNN and through the flash
backend (the dense attention the paper's kernels are measured against). Effective TFLOP/s count
each method's own visible pairs (``4 · pairs · D``, summed over batch and heads; forward +
backward 3.5 times that); ``speedup_*`` is the fastest dense causal time over maskc's. A sample
of query rows is checked against a float64 reference of the same mask (``rel_err``).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
from collections.abc import Callable

import numpy as np
import torch
import triton

import maskc
from maskc.measure.reference import rel_err
from maskc.measure.timing import time_ms
from maskc.runtime import load_plan
from maskc.runtime.format import atomic_write

from family_attention import BACKWARD_FACTOR, forward_and_backward

CHECKED_ROWS = 64


def draw(kind: str, buckets: int, keep: float, shape: tuple[int, int, int], device: torch.device, g: torch.Generator) -> dict:
    """One step's data for ``kind``: bucket ids or keep flags ``[B, H, N]`` for queries and keys."""
    if kind == "hash_buckets":
        return {name: torch.randint(0, buckets, shape, device=device, generator=g) for name in ("q_buckets", "k_buckets")}
    return {name: torch.rand(shape, device=device, generator=g) < keep for name in ("q_keep", "k_keep")}


def visible(data: dict, rows: torch.Tensor | None = None) -> torch.Tensor:
    """The mask ``[B, H, rows, N]`` of one step's data (all query rows, or ``rows``)."""
    first = next(iter(data.values()))
    n = first.shape[-1]
    queries = torch.arange(n, device=first.device) if rows is None else rows
    causal = queries[:, None] >= torch.arange(n, device=first.device)[None, :]
    if "q_buckets" in data:
        return (data["q_buckets"][..., queries, None] == data["k_buckets"][..., None, :]) & causal
    return data["q_keep"][..., queries, None] & data["k_keep"][..., None, :] & causal


def visible_pairs(data: dict) -> int:
    """The pairs a step's mask shows, counted without building it: per query, the keys at or
    before it in its bucket (hash buckets) or kept (dropping)."""
    if "q_buckets" in data:
        q_b, k_b = data["q_buckets"], data["k_buckets"]
        buckets = int(max(q_b.max(), k_b.max())) + 1
        seen = torch.nn.functional.one_hot(k_b, buckets).cumsum(dim=-2)  # [B, H, N, buckets]: keys so far per bucket
        return int(seen.gather(-1, q_b[..., None]).sum())
    kept_so_far = data["k_keep"].long().cumsum(dim=-1)
    return int((kept_so_far * data["q_keep"]).sum())


def checked_error(family, data: dict, q, k, v, g: torch.Generator) -> float:
    """maskc's output on a sample of query rows against float64 attention under the same mask."""
    rows = torch.randperm(q.shape[2], device=q.device, generator=g)[:CHECKED_ROWS]
    with torch.no_grad():
        out = family.attention(q, k, v, **data)[:, :, rows].double()
        scores = (q[:, :, rows].double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5
        mask = visible(data, rows)
        weights = torch.softmax(scores.masked_fill(~mask, -torch.inf), dim=-1).nan_to_num(0.0)
        return rel_err(out, weights @ v.double())


def dense(backend) -> Callable[..., torch.Tensor]:
    def attend(q, k, v):
        with torch.nn.attention.sdpa_kernel(backend):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    return attend


def run_case(kind: str, param: float, n: int, args, device: torch.device) -> dict:
    g = torch.Generator(device=device).manual_seed(0)
    b, h, d = args.batch, args.heads, args.dim
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    spec = {"family": kind, "max_len": n, **({"buckets": int(param)} if kind == "hash_buckets" else {"keep": param})}
    family = load_plan(maskc.compile_family(spec), device)
    pool = [draw(kind, int(param), param, (b, h, n), device, g) for _ in range(args.pool)]
    q, k, v, do = (torch.randn(b, h, n, d, device=device, dtype=dtype, generator=g) for _ in range(4))
    steps = itertools.cycle(pool)

    def ms(fn) -> float:
        return time_ms(fn, device, args.warmup_ms, args.rep_ms)

    def maskc_attend(q, k, v):
        return family.attention(q, k, v, **next(steps))

    pairs = float(np.mean([visible_pairs(data) for data in pool]))
    record = {"kind": kind, **({"buckets": int(param)} if kind == "hash_buckets" else {"keep": param}), "n": n, "batch": b, "heads": h, "head_dim": d,
              "tiles": [family.plan.block_m, family.plan.block_n], "pairs": pairs, "rel_err": checked_error(family, pool[0], q, k, v, g)}
    methods = {"maskc": (maskc_attend, pairs)}
    if device.type == "cuda":
        causal_pairs = b * h * n * (n + 1) / 2
        from torch.nn.attention import SDPBackend
        methods["cudnn_causal"] = (dense(SDPBackend.CUDNN_ATTENTION), causal_pairs)
        methods["flash_causal"] = (dense(SDPBackend.FLASH_ATTENTION), causal_pairs)
    for name, (attend, seen) in methods.items():
        flops = 4 * seen * d
        with torch.no_grad():
            fwd_ms = ms(lambda: attend(q, k, v))
        step_ms = ms(forward_and_backward(attend, q, k, v, do))
        record[name] = {"fwd_ms": round(fwd_ms, 4), "fwd_bwd_ms": round(step_ms, 4),
                        "fwd_tflops": round(flops / fwd_ms / 1e9, 2), "fwd_bwd_tflops": round(BACKWARD_FACTOR * flops / step_ms / 1e9, 2)}
    dense_names = [name for name in methods if name != "maskc"]
    for phase in ("fwd_ms", "fwd_bwd_ms"):
        if dense_names:
            fastest = min(record[name][phase] for name in dense_names)
            record[f"speedup_{phase[:-3]}"] = round(fastest / record["maskc"][phase], 2)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ns", type=int, nargs="+", default=[16384, 32768])
    parser.add_argument("--buckets", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--keep", type=float, nargs="+", default=[0.5])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--warmup-ms", type=float, default=50)
    parser.add_argument("--rep-ms", type=float, default=200)
    parser.add_argument("--pool", type=int, default=8, help="pre-drawn steps of data, cycled through")
    parser.add_argument("--out", default="sparse_flash.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    header = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "triton": triton.__version__, "date": datetime.date.today().isoformat(), "flops": "fwd 4*pairs*D*H; fwd+bwd 3.5x"}
    print(json.dumps(header), flush=True)
    cases = [("hash_buckets", float(nb)) for nb in args.buckets] + [("qk_dropping", keep) for keep in args.keep]
    records = []
    for n in args.ns:
        for kind, param in cases:
            records.append(run_case(kind, param, n, args, device))
            print(json.dumps(records[-1]), flush=True)
    atomic_write(args.out, json.dumps({**header, "cases": records}, indent=1).encode())


if __name__ == "__main__":
    main()
