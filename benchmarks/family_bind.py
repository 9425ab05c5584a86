"""GPU time of binding mask families, per step, as a training loop would pay it.

Each case binds fresh random data of a fixed shape: the family binder (runs) then :func:`bind`
(interval vectors and ELL lists), captured once in a CUDA graph and replayed, so the time is the
GPU's alone (no Python or launch overhead); the eager time (launches from Python, measured on the
GPU's timeline with events) is printed beside it. Prints one JSON line per case and a header with
the GPU, versions and date. Needs a CUDA GPU.

    python benchmarks/family_bind.py [--iters 200]
"""

from __future__ import annotations

import argparse
import datetime
import json
from collections.abc import Callable

import torch
import triton

from maskc.runtime import family


def gpu_ms(fn: Callable[[], object], iters: int, graph: bool) -> float:
    """Mean GPU milliseconds of one call of ``fn``: replays of a captured graph, or eager calls."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    run = fn
    if graph:
        captured = torch.cuda.CUDAGraph()
        with torch.cuda.graph(captured):
            fn()
        run = captured.replay
    run()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        run()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def us(fn: Callable[[], object], iters: int, graph: bool) -> float:
    return round(1000 * gpu_ms(fn, iters, graph), 1)


def packed_ids(batch: int, n: int, docs: int) -> torch.Tensor:
    """Document ids ``[batch, n]``: about ``docs`` documents per row, the last eighth of each row padding."""
    ids = torch.cumsum(torch.rand(batch, n, device="cuda") < docs / n, dim=1)
    return ids.masked_fill(torch.arange(n, device="cuda") >= n - n // 8, -1)


def cases() -> dict[str, tuple[dict, Callable[[str], family.Runs]]]:
    """name -> (shape description, a binder call on fixed input buffers, taking the backend; the
    tree and bucket binders are torch operations on every backend)."""
    ids = packed_ids(8, 16384, 12)
    j = torch.arange(16384, device="cuda")
    positions = (j - torch.cummax(torch.where(torch.cat([torch.ones_like(ids[:, :1], dtype=torch.bool), ids[:, 1:] != ids[:, :-1]], 1), j, 0), 1).values).masked_fill(ids < 0, -1)
    cu = torch.cat([torch.zeros(1, dtype=torch.int32, device="cuda"), torch.cumsum(torch.full((32,), 4096, dtype=torch.int32, device="cuda"), 0)])
    segments = torch.randint(0, 3, ids.shape, device="cuda")
    parents = torch.stack([torch.randint(0, max(i, 1), (8,), device="cuda") - int(i == 0) for i in range(1024)], 1)
    shape = (8, 16, 4096)
    q_buckets, k_buckets = (torch.randint(0, 32, shape, device="cuda") for _ in range(2))
    q_keep, k_keep = (torch.rand(shape, device="cuda") < 0.75 for _ in range(2))
    return {
        "documents doc_ids causal": ({"batch": 8, "n": 16384}, lambda b: family.documents(ids, backend=b)),
        "documents doc_ids bidirectional window 2048": ({"batch": 8, "n": 16384}, lambda b: family.documents(ids, causal=False, window=2048, backend=b)),
        "documents position_ids causal": ({"batch": 8, "n": 16384}, lambda b: family.documents_from_position_ids(positions, backend=b)),
        "documents cu_seqlens causal": ({"batch": 1, "n": 131072}, lambda b: family.documents_from_cu_seqlens(cu, 131072, backend=b)),
        "shared_prefix": ({"batch": 8, "n": 16384}, lambda b: family.shared_prefix(ids, segments, backend=b)),
        "token_tree breadth-first, max_depth 32": ({"batch": 8, "n": 1024}, lambda b: family.token_tree(parents, 32)),
        "hash_buckets + dropping": ({"batch": 8, "heads": 16, "n": 4096}, lambda b: family.hash_buckets(q_buckets, k_buckets, q_keep, k_keep)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                      "date": datetime.date.today().isoformat()}))
    for block in ((64, 64), (128, 128)):
        for name, (shape, runs) in cases().items():
            bound = runs("triton")
            record = {"case": name, **shape, "block": list(block)}
            for graph in (True, False):
                kind = "graph" if graph else "eager"
                record[f"runs_{kind}_us"] = us(lambda: runs("triton"), args.iters, graph)
                record[f"bind_{kind}_us"] = us(lambda: family.bind(bound, *block, "triton"), args.iters, graph)
                record[f"total_{kind}_us"] = us(lambda: family.bind(runs("triton"), *block, "triton"), args.iters, graph)
            record["runs_torch_graph_us"] = us(lambda: runs("reference"), args.iters, True)
            record["bind_torch_graph_us"] = us(lambda: family.bind(bound, *block, "reference"), args.iters, True)
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
