"""The methods maskc is compared with: FlexAttention and SDPA, as the benchmark calls them.

* **flex**: ``torch.compile(flex_attention, dynamic=False)`` with a ``BlockMask`` from
  ``create_block_mask``: a closed-form ``mask_mod`` over the mask's O(N) tables where it has one,
  else a lookup into the dense mask tensor (recorded per case); ``create_block_mask`` is timed apart.
* **SDPA**: ``scaled_dot_product_attention`` under the named backends (cuDNN, Flash, memory-efficient)
  on CUDA, torch's default choice on CPU.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

from maskc.measure.masks import BenchMask
from maskc.measure.timing import Inputs, Row, measure, sync

if TYPE_CHECKING:  # pragma: no cover
    from maskc.measure.bench import BenchConfig

FLEX_DEVICES = ("cuda",)
"""Device types FlexAttention is timed on (torch.compile'd Triton kernels; the tests add "cpu", forward only)."""

SDPA_LABELS = {"CUDNN_ATTENTION": "cudnn", "FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient", "MATH": "math"}


def gqa(cfg: BenchConfig) -> bool:
    """Whether k and v have fewer heads than q (SDPA and FlexAttention take ``enable_gqa``)."""
    return cfg.kv_heads not in (None, cfg.heads)


def flex_mask_mod(case: BenchMask, device, dense=None, tree_mode: str = "dense"):
    """``(mask_mod, kind)`` for FlexAttention: a closed-form mask_mod over O(N) tables where the mask
    has one (``kind = "closed-form"``), else a lookup into ``dense`` (``[N, N]`` bool on ``device``,
    ``kind = "dense lookup"``). With ``tree_mode="interval"``, trees use the preorder-interval test."""
    t = {k: torch.as_tensor(np.asarray(v)).to(device) for k, v in case.tables.items()}
    kind = case.flex
    if kind == "dense" and tree_mode == "interval" and case.name in ("token_tree", "medusa") and hasattr(case.source, "tin"):
        tin = torch.as_tensor(case.source.tin).to(device)
        tout = torch.as_tensor(case.source.tout).to(device)
        return (lambda b, h, q, kv: (tin[kv] <= tin[q]) & (tin[q] < tout[kv])), "closed-form (preorder intervals)"
    if kind == "causal":
        return (lambda b, h, q, kv: kv <= q), "closed-form"
    if kind == "sliding_window":
        w = int(case.tables["window"])
        return (lambda b, h, q, kv: (kv <= q) & (q - kv < w)), "closed-form"
    if kind == "documents":
        doc = t["doc"]
        return (lambda b, h, q, kv: (doc[q] == doc[kv]) & (kv <= q)), "closed-form"
    if kind == "prefix_lm":
        p = int(case.tables["prefix"])
        return (lambda b, h, q, kv: (kv <= q) | (kv < p)), "closed-form"
    if kind == "longformer":
        w, g = int(case.tables["window"]), t["is_global"]
        return (lambda b, h, q, kv: ((kv > q - w) & (kv < q + w)) | g[q] | g[kv]), "closed-form"
    if kind == "shared_question":
        seg, qlen = t["seg"], int(case.tables["question"])
        return (lambda b, h, q, kv: (kv <= q) & ((seg[q] == seg[kv]) | (kv < qlen))), "closed-form"
    if kind == "hash_buckets":
        bucket = t["bucket"]
        return (lambda b, h, q, kv: (bucket[q] == bucket[kv]) & (kv <= q)), "closed-form"
    if kind == "permuted_band":
        order, w = t["order"], int(case.tables["width"])
        return (lambda b, h, q, kv: (order[q] - order[kv]).abs() < w), "closed-form"
    if kind == "dense":
        if dense is None:
            raise ValueError(f"{case.name}: a dense-lookup mask_mod needs the dense mask")
        return (lambda b, h, q, kv: dense[q, kv]), "dense lookup"
    raise ValueError(f"no FlexAttention mask_mod for {kind!r}")


def flex_needs_dense(case: BenchMask, cfg: BenchConfig) -> bool:
    """Whether FlexAttention's mask_mod for ``case`` looks up the dense mask."""
    return case.flex == "dense" and not (cfg.flex_tree == "interval" and case.name in ("token_tree", "medusa"))


def run_flex(row: Row, case: BenchMask, inputs: Inputs, cfg: BenchConfig, device, flops, ref, rows,
             get_dense: Callable[[], Any], info: dict[str, Any]) -> None:
    """Build FlexAttention's block mask (timed apart, three times), then time the compiled kernel into ``row``."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no eager fallback
    n = case.n
    mask_mod, kind = flex_mask_mod(case, device, get_dense() if flex_needs_dense(case, cfg) else None, cfg.flex_tree)
    row.detail["flex_mask_mod"] = kind
    info["flex_mask_mod"] = kind
    times = []
    block_mask = None
    for _ in range(3):
        sync(device)
        start = time.perf_counter()
        # compiled on a GPU, as FlexAttention recommends for long sequences (eager materialises N x N)
        block_mask = create_block_mask(mask_mod, 1, 1, n, n, device=device, BLOCK_SIZE=cfg.flex_block, _compile=device.type == "cuda")
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    row.detail["create_block_mask_ms"] = statistics.median(times)
    info["flex_create_block_mask_ms"] = row.detail["create_block_mask_ms"]
    row.notes.append(f"{kind} mask_mod, create_block_mask {row.detail['create_block_mask_ms']:.1f} ms")
    compiled = torch.compile(flex_attention, dynamic=False)
    scale = inputs.scale

    def attn(q, k, v):
        return compiled(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa(cfg))

    measure(row, [("flex", attn)], inputs, cfg, device, flops, ref, rows)
    first = row.detail.get("variants", {}).get("flex", {})
    if "first_call_s" in first:
        row.notes.append(f"compile+first call {first['first_call_s']:.1f} s")


def sdpa_variants(device, names: tuple[str, ...], scale: float, enable_gqa: bool, **mask: Any) -> list[tuple[str, Callable]]:
    """``(label, attention)`` for SDPA under each named backend on CUDA (torch's default choice on
    CPU), with ``mask`` (``attn_mask=...`` or ``is_causal=True``)."""
    variants = []
    for label, backend in _sdpa_backends(device, names):
        def attn(q, k, v, backend=backend):
            with _sdpa_context(backend):
                return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=enable_gqa, **mask)
        variants.append((label, attn))
    return variants


def _sdpa_backends(device, names: tuple[str, ...]):
    """``(label, SDPBackend or None)`` to try: the named backends on CUDA, torch's default choice on CPU."""
    if torch.device(device).type != "cuda":
        return [("cpu default", None)]
    from torch.nn.attention import SDPBackend

    return [(SDPA_LABELS[name], getattr(SDPBackend, name)) for name in names]


def _sdpa_context(backend):
    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backend)
