"""Packed-document attention per training step, binding included: a maskc family plan next to
FlexAttention, torch's varlen attention and SDPA.

    python benchmarks/family_attention.py [--out family_attention.json] [--rep-ms 200]
    python benchmarks/family_attention.py --device cpu --ns 256 --batches 1 2 --heads 2 --dim 16 --rep-ms 1   # smoke test

Each case packs random documents into ``B`` rows of exactly ``N`` tokens (lengths log-normal with a
mean of about 350 tokens, or uniform in 100..700; the last document of a row is cut to fit), causal
within each document, bf16, 16 heads of 128. Per case it times (``maskc.measure.timing.time_ms``:
medians, ``triton.testing.do_bench`` on a GPU) the forward and the forward + backward of:

- ``maskc``: ``LoadedFamily.attention(q, k, v, position_ids=...)``, binding included, of the family
  plan ``{"family": "documents", "max_len": N}`` compiled once;
- ``flex``: ``torch.compile(flex_attention)`` with the closed-form document ``mask_mod``
  (``doc[b, q] == doc[b, kv] and q >= kv``); ``create_block_mask``, which a changing mask needs
  every step, is timed apart (``flex_block_mask_ms``);
- ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` over the batch's documents as one packed
  sequence (where this torch has it; q, k, v in its ``[T, H, D]`` layout beforehand);
- ``sdpa_causal``: SDPA with ``is_causal=True`` over whole rows (more pairs than the documents'; a
  dense yardstick), up to ``--sdpa-max-n``.

The forward outputs of FlexAttention and varlen are compared with maskc's (``rel_err_vs_maskc``).

Effective TFLOP/s count the documents' visible pairs only, for every method: forward
``4 · pairs · D · H / time`` with ``pairs`` summed over the batch's rows, forward + backward 3.5
times that (the backward as 2.5 forwards). On a GPU each case also records, for maskc: the binding
time per step replayed from a CUDA graph (``bind_graph_us``); the Triton compilations during
``--steps`` forward + backward steps on fresh random packings after the warm-up (``compilations``,
which must be 0); and a CUDA graph capturing binding + forward attention, replayed on a new
packing and compared with the eager call (``graph_replay_equal``, ``graph_fwd_ms``). One JSON
object per case is printed and all of them, with a header (GPU, versions, date), written to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import inspect
import json
import math
from collections.abc import Callable

import numpy as np
import torch
import triton

import maskc
from maskc.measure.reference import rel_err
from maskc.measure.timing import time_ms
from maskc.runtime import LoadedFamily, load_plan
from maskc.runtime.format import atomic_write

LOGNORMAL_MEAN, LOGNORMAL_SPREAD = 350, 0.8
UNIFORM = (100, 700)
BACKWARD_FACTOR = 3.5  # forward + backward FLOPs over the forward's


def document_lengths(rng: np.random.Generator, distribution: str, n: int) -> list[int]:
    """Document lengths filling exactly ``n`` tokens (the last one cut)."""
    lengths: list[int] = []
    while sum(lengths) < n:
        if distribution == "lognormal":
            mu = math.log(LOGNORMAL_MEAN) - LOGNORMAL_SPREAD**2 / 2
            lengths.append(max(1, int(rng.lognormal(mu, LOGNORMAL_SPREAD))))
        else:
            lengths.append(int(rng.integers(UNIFORM[0], UNIFORM[1] + 1)))
    lengths[-1] -= sum(lengths) - n
    return lengths


class Packing:
    """One batch of ``rows`` packed rows of ``n`` tokens: per-row document lengths, and the data
    each method takes (position_ids, document ids, varlen's cumulative lengths) on ``device``."""

    def __init__(self, rng: np.random.Generator, distribution: str, rows: int, n: int, device: torch.device):
        self.lengths = [document_lengths(rng, distribution, n) for _ in range(rows)]
        positions = np.concatenate([np.arange(length) for row in self.lengths for length in row]).reshape(rows, n)
        doc_ids = np.concatenate([np.full(length, d) for row in self.lengths for d, length in enumerate(row)]).reshape(rows, n)
        flat = [length for row in self.lengths for length in row]
        self.position_ids = torch.from_numpy(positions).to(device)
        self.doc_ids = torch.from_numpy(doc_ids).to(device)
        self.cu_seqlens = torch.tensor(np.concatenate([[0], np.cumsum(flat)]), dtype=torch.int32, device=device)
        self.longest = max(flat)
        self.pairs = sum(length * (length + 1) // 2 for length in flat)  # causal pairs, all rows


def forward_and_backward(attend: Callable[..., torch.Tensor], q, k, v, do) -> Callable[[], object]:
    """One training step's attention: the forward, then the gradients of q, k and v."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    return lambda: torch.autograd.grad(attend(*leaves), leaves, do)


def methods(family: LoadedFamily, packing: Packing, q, flex, sdpa: bool) -> dict[str, Callable[..., torch.Tensor] | None]:
    """name -> ``attend(q, k, v)`` of each method for this packing (None where unavailable or skipped)."""
    b, h, n, d = q.shape
    return {
        "maskc": lambda q, k, v: family.attention(q, k, v, position_ids=packing.position_ids),
        "flex": flex,
        "varlen": varlen_method(packing) if q.is_cuda else None,
        "sdpa_causal": (lambda q, k, v: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)) if sdpa else None,
    }


def flex_method(packing: Packing, b: int, n: int, device: torch.device):
    """FlexAttention with the document mask_mod, and the ``create_block_mask`` call it needs per
    step; ``(None, None)`` where this torch has none."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None, None
    doc = packing.doc_ids

    def documents(batch, head, q_idx, kv_idx):
        return (doc[batch, q_idx] == doc[batch, kv_idx]) & (q_idx >= kv_idx)

    def block_mask():
        # uncompiled, create_block_mask evaluates the mask_mod densely: B·N² bytes, past memory at 8 × 131072
        return create_block_mask(documents, b, None, n, n, device=device, _compile=n > 32768)

    compiled = compiled_flex(flex_attention)
    mask = block_mask()
    return (lambda q, k, v: compiled(q, k, v, block_mask=mask)), block_mask


@functools.lru_cache(maxsize=None)
def compiled_flex(flex_attention):
    return torch.compile(flex_attention, dynamic=False)


def varlen_method(packing: Packing):
    """torch's varlen attention over the batch's documents as one packed sequence, causal; None if
    this torch has none. Takes ``[B, H, N, D]`` tensors already laid out as ``[T, H, D]`` (see
    :func:`varlen_layout`)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = {"window_size": (-1, 0)} if "window_size" in params else {"is_causal": True}
    cu, longest = packing.cu_seqlens, packing.longest
    return lambda q, k, v: varlen_attn(q, k, v, cu, cu, longest, longest, **causal)


def varlen_layout(t: torch.Tensor) -> torch.Tensor:
    """``[B, H, N, D]`` as varlen's ``[B·N, H, D]`` (a copy, made before timing)."""
    b, h, n, d = t.shape
    return t.transpose(1, 2).reshape(b * n, h, d).contiguous()


def agreement(found: dict, q, k, v) -> dict[str, float]:
    """The forward output of each document-masked baseline that ran against maskc's (relative
    Frobenius error): the same mask, so only rounding differs."""
    with torch.no_grad():
        ours = found["maskc"](q, k, v)
        errors = {}
        for name in ("flex", "varlen"):
            if found[name] is not None:
                theirs = found[name](q, k, v) if name == "flex" else found[name](*(varlen_layout(t) for t in (q, k, v)))
                errors[name] = rel_err(theirs.view(q.shape[0], q.shape[2], *theirs.shape[1:]).transpose(1, 2) if name == "varlen" else theirs, ours)
    return errors


def compiled_kernels(device: torch.device) -> int:
    """Compiled variants in Triton's per-device caches of maskc's attention and binding kernels."""
    from maskc.runtime.family import kernels as bind_kernels
    from maskc.runtime.family import segment_kernels
    from maskc.runtime.kernels import bwd, fwd

    kernels = (fwd._fwd_kernel, bwd._dq_kernel, bwd._dkdv_kernel, bind_kernels._columns_kernel,
               bind_kernels._column_lists_kernel, bind_kernels._row_lists_kernel, segment_kernels._segment_runs_kernel)
    return sum(len(kernel.device_caches[device.index][0]) for kernel in kernels)


def graph_checks(family: LoadedFamily, q, k, v, do, case: tuple[str, int, int], steps: int, ms, rng) -> dict:
    """On a GPU: binding time from a CUDA graph, compilations over ``steps`` fresh packings, and a
    graph of binding + forward attention replayed on a new packing against the eager call."""
    distribution, b, n = case
    device = q.device
    static = Packing(rng, distribution, b, n, device).position_ids

    def captured(fn):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()  # warm-up outside the graph: compiles, allocates the routes
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = fn()
        return graph, out

    out: dict = {}
    bind_graph, _ = captured(lambda: family.bind(position_ids=static))
    out["bind_graph_us"] = round(1000 * ms(bind_graph.replay), 1)

    before = compiled_kernels(device)
    step = forward_and_backward(lambda q, k, v: family.attention(q, k, v, position_ids=static), q, k, v, do)
    for _ in range(steps):
        static.copy_(Packing(rng, distribution, b, n, device).position_ids)
        step()
    torch.cuda.synchronize()
    out["compilations"] = compiled_kernels(device) - before

    with torch.no_grad():
        graph, o_graph = captured(lambda: family.attention(q, k, v, position_ids=static))
        fresh = Packing(rng, distribution, b, n, device).position_ids
        static.copy_(fresh)
        graph.replay()
        out["graph_replay_equal"] = bool(torch.equal(o_graph, family.attention(q, k, v, position_ids=fresh)))
        out["graph_fwd_ms"] = round(ms(graph.replay), 4)
    return out


def run_case(distribution: str, b: int, n: int, args, device: torch.device, rng) -> dict:
    heads, dim = args.heads, args.dim
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    family = load_plan(maskc.compile_family({"family": "documents", "max_len": n, "causal": True}), device)
    packing = Packing(rng, distribution, b, n, device)
    q, k, v, do = (torch.randn(b, heads, n, dim, device=device, dtype=dtype) for _ in range(4))

    def ms(fn) -> float:
        return time_ms(fn, device, args.warmup_ms, args.rep_ms)

    flops = 4 * packing.pairs * dim * heads
    record = {"distribution": distribution, "batch": b, "n": n, "heads": heads, "head_dim": dim, "dtype": str(dtype).split(".")[-1],
              "documents": sum(len(row) for row in packing.lengths), "pairs": packing.pairs, "tiles": [family.plan.block_m, family.plan.block_n]}
    flex, block_mask = flex_method(packing, b, n, device) if device.type == "cuda" else (None, None)
    found = methods(family, packing, q, flex, sdpa=n <= args.sdpa_max_n)
    for name, attend in found.items():
        if attend is None:
            record[name] = None
            continue
        args_in = [varlen_layout(t) for t in (q, k, v, do)] if name == "varlen" else [q, k, v, do]
        try:
            with torch.no_grad():
                fwd_ms = ms(lambda: attend(*args_in[:3]))
            step_ms = ms(forward_and_backward(attend, *args_in))
        except Exception as e:  # a baseline this torch or GPU cannot run is recorded, not fatal; maskc's errors are
            if name == "maskc":
                raise
            record[name] = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
            continue
        record[name] = {"fwd_ms": round(fwd_ms, 4), "fwd_bwd_ms": round(step_ms, 4),
                        "fwd_tflops": round(flops / fwd_ms / 1e9, 2), "fwd_bwd_tflops": round(BACKWARD_FACTOR * flops / step_ms / 1e9, 2)}
    record["flex_block_mask_ms"] = round(ms(block_mask), 4) if block_mask else None
    record["rel_err_vs_maskc"] = agreement(found, q, k, v)
    if device.type == "cuda":
        record["maskc_checks"] = graph_checks(family, q, k, v, do, (distribution, b, n), args.steps, ms, rng)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ns", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--distributions", nargs="+", choices=["lognormal", "uniform"], default=["lognormal", "uniform"])
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--warmup-ms", type=float, default=25.0)
    parser.add_argument("--rep-ms", type=float, default=200.0, help="timing budget per measurement (medians)")
    parser.add_argument("--steps", type=int, default=100, help="fresh packings over which compilations are counted (GPU)")
    parser.add_argument("--sdpa-max-n", type=int, default=32768, help="run SDPA over whole rows up to this N (it is quadratic)")
    parser.add_argument("--out", default="family_attention.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    header = {"gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
              "triton": triton.__version__, "date": datetime.date.today().isoformat(), "flops": "fwd 4*pairs*D*H; fwd+bwd 3.5x"}
    print(json.dumps(header), flush=True)
    rng = np.random.default_rng(0)
    records = []
    for distribution in args.distributions:
        for n in args.ns:
            for b in args.batches:
                records.append(run_case(distribution, b, n, args, device, rng))
                print(json.dumps(records[-1]), flush=True)
    atomic_write(args.out, json.dumps({**header, "cases": records}, indent=1).encode())


if __name__ == "__main__":
    main()
