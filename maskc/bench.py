"""The benchmark behind ``maskc bench``: maskc against FlexAttention, SDPA and dense causal attention.

For each library mask of the benchmark set and each sequence length ``N``, in one process on one
device, it measures:

* **maskc**: the plan is compiled once before any timing (the compile time is recorded apart),
  loaded with ``load_plan(plan, device)``, and only ``LoadedPlan.attention`` calls are timed. With
  ``--block auto`` (the default) the cost model chooses the plan for the benchmark's batch, heads,
  head dim and dtype; its prediction is shown next to the measured time. With ``--candidates``, every other candidate the model
  compared is compiled explicitly and timed too (``maskc:<candidate>`` rows), so the choice and the
  predictions can be checked against measurements;
* **flex**: ``torch.compile(flex_attention, dynamic=False)`` with a ``BlockMask`` from
  ``create_block_mask``: a closed-form ``mask_mod`` where the mask has one, else a lookup into the
  dense mask tensor (recorded per case); ``create_block_mask`` is timed apart;
* **sdpa-mask**: ``scaled_dot_product_attention`` with the dense boolean mask, under the fastest
  backend that accepts one (cuDNN, then memory-efficient; the one that ran is recorded);
* **dense-causal** (one row per ``N``): SDPA ``is_causal=True`` under cuDNN and under Flash, the
  faster of the two per phase: the fastest dense attention the machine has, as the reference.

Times are medians: ``triton.testing.do_bench(..., return_mode="median")`` on CUDA (CUDA events,
L2 flushed between runs), ``time.perf_counter`` medians on CPU. Forward and forward+backward are
timed as closures over the same inputs (which require grad when the backward is timed, so the
forward is the training forward); the backward closure is ``out = attn(q, k, v);
out.backward(grad)`` with q/k/v grads reset through ``grad_to_none``. Every method's forward output
is checked against a float64 softmax over a slice of evenly spread query rows. A method that fails
(out of memory, unsupported) records its error in ``notes``; the run goes on.

This module imports numpy and the compiler at import time and torch only inside its functions, so
``maskc.cli.bench_cmd`` can read the mask set without paying for torch.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import maskc
from maskc import cost, library
from maskc.errors import MaskError
from maskc.sources import MaskSource

if TYPE_CHECKING:  # pragma: no cover
    import torch

SCHEMA = "maskc-bench/1"

FWD_FLOPS_PER_PAIR = 4
"""Forward FLOPs per visible (query, key) pair, per head dim and head: ``QKᵀ`` and ``PV``, 2 each."""

FWD_BWD_FLOP_FACTOR = 3.5
"""FLOPs of forward+backward over those of the forward: the backward's five matmuls (recomputed
``QKᵀ``, ``dP = dO Vᵀ``, ``dV``, ``dQ``, ``dK``) count 2.5 forwards, the FlashAttention convention."""

DEFAULT_MASKS = (
    "causal",
    "sliding_window",
    "documents",
    "prefix_lm",
    "longformer",
    "bigbird",
    "shared_question",
    "medusa",
    "token_tree",
)
"""The benchmark set (``--masks`` default), in the order BENCHMARKS.md lists it."""

EXTRA_MASKS = ("hash_buckets", "permuted_band")
"""Masks that can be asked for by name but are not in the default set."""

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}

_FLEX_DEVICES = ("cuda",)  # device types FlexAttention is timed on (the tests add "cpu", forward only)


# --- the mask set: every parameter lives here ----------------------------------------------------


@dataclass
class BenchMask:
    """One benchmark mask at one ``N``: the library source, its parameters, and what FlexAttention needs."""

    name: str
    n: int
    source: MaskSource
    params: dict[str, Any]
    description: str
    flex: str  # "causal", "sliding_window", "documents", ... (closed-form) or "dense" (dense lookup)
    tables: dict[str, np.ndarray] = field(default_factory=dict)  # O(N) per-token tables of closed-form mask_mods


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive lengths (fewer parts if ``total < parts``)."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def document_lengths(n: int, low: int = 100, high: int = 700, seed: int = 0) -> list[int]:
    """Instruction-tuning-like packing: seeded lengths uniform in ``[low, high]`` until ``n`` is
    reached, the last one trimmed so the lengths sum to exactly ``n``."""
    rng = np.random.default_rng(seed)
    lengths: list[int] = []
    total = 0
    while total < n:
        length = int(rng.integers(low, high + 1))
        length = min(length, n - total)
        lengths.append(length)
        total += length
    return lengths


def branching_tree(n: int, p_continue: float = 0.9, back: int = 64, seed: int = 0) -> np.ndarray:
    """A seeded random token tree of ``n`` nodes, as a parent array: node ``i`` continues the branch
    of node ``i - 1`` with probability ``p_continue``, else branches off a node drawn uniformly from
    the ``back`` nodes before ``i - 1`` (``i - back .. i - 2``, clipped at the root)."""
    rng = np.random.default_rng(seed)
    cont = rng.random(n) < p_continue
    jump = rng.integers(2, back + 1, size=n)
    parents = np.arange(-1, n - 1, dtype=np.int64)
    branch = ~cont & (np.arange(n) >= 2)
    parents[branch] = np.maximum(0, np.arange(n)[branch] - jump[branch])
    return parents


def build_mask(name: str, n: int, seed: int = 0, window: int | None = None, prefix: int | None = None) -> BenchMask:
    """The benchmark mask ``name`` at ``N = n``. Every parameter that shapes it is in ``params``;
    ``window`` (sliding_window, default 1024) and ``prefix`` (prefix_lm, default N/4) can be set."""
    key = name.replace("-", "_")
    if key == "causal":
        return BenchMask(key, n, library.causal(n), {"n": n}, "decoder self-attention, j <= i", "causal")
    if key == "sliding_window":
        window = 1024 if window is None else window
        return BenchMask(
            key, n, library.sliding_window(n, window, causal=True), {"n": n, "window": window, "causal": True},
            f"causal sliding window of {window} keys (i - {window} < j <= i)", "sliding_window",
            {"window": np.array(window)},
        )
    if key == "documents":
        lengths = document_lengths(n, 100, 700, seed)
        doc = np.repeat(np.arange(len(lengths)), lengths)
        params = {"n": n, "causal": True, "docs": len(lengths), "length_distribution": "uniform 100..700, last trimmed", "seed": seed,
                  "min_length": min(lengths), "max_length": max(lengths), "lengths": lengths}
        return BenchMask(key, n, library.documents(lengths, causal=True), params,
                         f"{len(lengths)} packed causal documents, lengths uniform in 100..700 (seed {seed}), last trimmed to sum to N",
                         "documents", {"doc": doc})
    if key == "prefix_lm":
        what = f"N/4 = {n // 4}" if prefix is None else str(prefix)
        prefix = n // 4 if prefix is None else min(prefix, n)
        return BenchMask(key, n, library.prefix_lm(n, prefix), {"n": n, "prefix": prefix},
                         f"bidirectional prefix of {what} tokens, causal after", "prefix_lm", {"prefix": np.array(prefix)})
    if key == "longformer":
        window, globals_ = 512, min(16, n)
        is_global = np.zeros(n, dtype=bool)
        is_global[:globals_] = True
        params = {"n": n, "window": window, "global_tokens": f"0..{globals_ - 1}", "globals": globals_, "causal": False}
        return BenchMask(key, n, library.longformer(n, window, list(range(globals_)), causal=False), params,
                         f"symmetric window |i - j| < {window}, the first {globals_} tokens global (see and are seen by all)",
                         "longformer", {"window": np.array(window), "is_global": is_global})
    if key == "bigbird":
        block = 64
        blocks = -(-n // block)
        window = 96  # |i - j| < 96: 191 keys, the span of 3 blocks of 64 around the query
        global_tokens = sorted(set(range(min(block, n))) | set(range(max(0, n - block), n)))
        random_blocks = min(3, blocks)
        params = {"n": n, "window": window, "block": block, "global_blocks": "first and last", "globals": len(global_tokens),
                  "random_blocks": random_blocks, "seed": seed}
        source = library.bigbird(n, window, global_tokens, random_blocks=random_blocks, block=block, seed=seed)
        return BenchMask(key, n, source, params,
                         f"BigBird: window |i - j| < {window} (3 blocks of {block}), first and last block global, "
                         f"{random_blocks} random key blocks per query block (seed {seed})", "dense")
    if key == "shared_question":
        question = n // 4
        answers = _split(n - question, 4)
        seg = np.repeat(np.arange(1 + len(answers)), [question, *answers])
        params = {"n": n, "question": question, "answers": answers}
        return BenchMask(key, n, library.shared_question(question, answers), params,
                         f"causal question of N/4 = {question} tokens, then {len(answers)} answers of ~{answers[0]} tokens, each sees the question and itself",
                         "shared_question", {"seg": seg, "question": np.array(question)})
    if key == "medusa":
        nodes = 2048 if n >= 4096 else max(1, n // 2)
        depth, top_k = 4, 10
        parents = library.candidate_tree(nodes, depth=depth, top_k=top_k, seed=seed)
        params = {"n": n, "prompt": n - nodes, "tree_nodes": nodes, "tree": f"candidate_tree(depth={depth}, top_k={top_k}, seed={seed})"}
        return BenchMask(key, n, library.medusa(n - nodes, parents), params,
                         f"causal prompt of N - {nodes} tokens, then a {nodes}-node Medusa candidate tree (depth {depth}, top-{top_k})", "dense")
    if key == "token_tree":
        p_continue, back = 0.9, 64
        params = {"n": n, "tree": f"branching_tree(p_continue={p_continue}, back={back}, seed={seed})"}
        return BenchMask(key, n, library.token_tree(branching_tree(n, p_continue, back, seed)), params,
                         f"a random token tree of N nodes: continue the branch w.p. {p_continue}, else branch off one of the previous {back} nodes", "dense")
    if key == "hash_buckets":
        buckets = max(1, n // 512)
        source = library.hash_buckets(n, buckets, causal=True, seed=seed)
        tables = {"bucket": source.bucket} if hasattr(source, "bucket") else {}
        return BenchMask(key, n, source, {"n": n, "buckets": buckets, "causal": True, "seed": seed},
                         f"{buckets} seeded random buckets (~512 tokens each), causal within a bucket",
                         "hash_buckets" if tables else "dense", tables)
    if key == "permuted_band":
        width = 256
        order = np.random.default_rng(seed).permutation(n)
        return BenchMask(key, n, PermutedBand(n, width, order), {"n": n, "width": width, "seed": seed},
                         f"a band |i - j| < {width} with its tokens in a seeded random order (seed {seed})", "permuted_band",
                         {"order": order, "width": np.array(width)})
    raise MaskError(f"unknown benchmark mask {name!r}; choose from {', '.join(DEFAULT_MASKS + EXTRA_MASKS)}")


class PermutedBand(library.FormulaSource):
    """A band ``|a - b| < width`` over positions ``order[i]``: token ``i`` sits at position
    ``order[i]``, so the band is scattered over the whole mask until the tokens are renumbered."""

    def __init__(self, n: int, width: int, order: np.ndarray):
        super().__init__(f"permuted_band(n={n}, width={width})", n)
        self.width, self.order = width, np.asarray(order, dtype=np.int64)

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.abs(self.order[q] - self.order[k]) < self.width


def parse_masks(spec: str | None) -> list[str]:
    """``"causal,documents"`` as a list of known benchmark mask names (``-`` or ``_`` both accepted)."""
    if not spec:
        return list(DEFAULT_MASKS)
    names = [s.strip().replace("-", "_") for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in DEFAULT_MASKS + EXTRA_MASKS]
    if unknown:
        raise MaskError(f"unknown benchmark mask {unknown[0]!r}; choose from {', '.join(DEFAULT_MASKS + EXTRA_MASKS)}")
    return names


# --- FlexAttention mask_mods ---------------------------------------------------------------------


def flex_mask_mod(case: BenchMask, device, dense=None, tree_mode: str = "dense"):
    """``(mask_mod, kind)`` for FlexAttention: a closed-form mask_mod over O(N) tables where the mask
    has one (``kind = "closed-form"``), else a lookup into ``dense`` (``[N, N]`` bool on ``device``,
    ``kind = "dense lookup"``). With ``tree_mode="interval"``, trees use the preorder-interval test."""
    import torch

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


# --- configuration and results -------------------------------------------------------------------


@dataclass
class BenchConfig:
    masks: list[str] = field(default_factory=lambda: list(DEFAULT_MASKS))
    ns: list[int] = field(default_factory=lambda: [8192, 32768])
    heads: int = 16
    kv_heads: int | None = None  # key/value heads (None: as many as heads; fewer: GQA/MQA)
    head_dim: int = 128
    batch: int = 1
    dtype: str = "bf16"
    block: str = "auto"
    device: str = "cuda"
    backend: str = "auto"  # maskc backend: auto, triton, reference
    flex: bool = True
    sdpa: bool = True
    dense_causal: bool = True
    backward: bool = True
    rows_for_error: int = 256
    warmup_ms: float = 50.0
    rep_ms: float = 200.0
    sdpa_max_mask_gib: float = 8.0
    flex_block: int = 128
    flex_tree: str = "dense"  # dense: trees and medusa through a dense lookup; interval: preorder-interval mask_mod
    seed: int = 0
    window: int | None = None  # sliding_window's window (None: 1024)
    prefix: int | None = None  # prefix_lm's prefix (None: N/4)
    profile: str | None = None  # the cost model's profile (name or path); None: MASKC_PROFILE or the shipped one
    candidates: bool = False  # also time every other candidate the cost model compared


@dataclass
class Row:
    mask: str
    n: int
    method: str
    fwd_ms: float | None = None
    fwd_tflops: float | None = None
    fwd_bwd_ms: float | None = None
    fwd_bwd_tflops: float | None = None
    rel_err: float | None = None
    notes: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["notes"] = "; ".join(self.notes)
        return d


def _short_error(e: BaseException, limit: int = 300) -> str:
    """An exception as one line: its type and the first meaningful lines of its message."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    text = " | ".join(lines[:2]) if lines else ""
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- timing ----------------------------------------------------------------------------------------


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _free(device) -> None:
    import torch

    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


def time_ms(fn: Callable[[], Any], device, warmup_ms: float, rep_ms: float, grad_to_none=None) -> float:
    """Median time of ``fn`` in ms: ``triton.testing.do_bench`` on CUDA, ``perf_counter`` on CPU."""
    import torch

    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=int(max(1, warmup_ms)), rep=int(max(1, rep_ms)), grad_to_none=grad_to_none, return_mode="median"))

    def once() -> float:
        if grad_to_none is not None:
            for x in grad_to_none:
                x.grad = None
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1e3

    estimate = max(once(), 1e-3)
    for _ in range(min(10, int(warmup_ms / estimate))):
        once()
    repeats = max(3, min(50, int(rep_ms / estimate)))
    return statistics.median(once() for _ in range(repeats))


# --- the float64 reference on a slice of rows ----------------------------------------------------


def error_rows(n: int, count: int) -> np.ndarray:
    """``count`` query rows evenly spread over ``[0, n)`` (all rows when ``count >= n``)."""
    if count >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))


def mask_rows(source: MaskSource, rows: np.ndarray) -> np.ndarray:
    """The mask rows ``rows`` of a single ``[N, N]`` source, ``[len(rows), N]`` bool."""
    return np.stack([source.rows(0, 0, int(r), int(r) + 1)[0] for r in rows])


def reference_rows(q, k, v, rows: np.ndarray, keep: np.ndarray, scale: float):
    """Float64 softmax attention of the query rows ``rows`` against every key, under ``keep``
    (``[R, N]`` bool); rows with no visible key give zeros. Chunked over heads (~256 MiB of scores).
    ``k``/``v`` may have fewer heads than ``q`` (GQA): query head ``h`` reads key/value head
    ``h // (Hq / Hkv)``."""
    import torch

    device = q.device
    idx = torch.as_tensor(rows, device=device)
    keep_t = torch.as_tensor(keep, device=device)
    b, h, n, d = q.shape
    kv_head = torch.arange(h, device=device) // (h // k.shape[1])
    out = torch.empty((b, h, len(rows), d), dtype=torch.float64, device=device)
    chunk = max(1, (256 << 20) // max(1, len(rows) * n * 8))
    with torch.no_grad():
        for bi in range(b):
            for h0 in range(0, h, chunk):
                h1 = min(h, h0 + chunk)
                qi = q[bi, h0:h1].index_select(1, idx).double()
                heads = kv_head[h0:h1]
                s = qi @ k[bi, heads].double().transpose(-1, -2) * scale
                s.masked_fill_(~keep_t, -math.inf)
                out[bi, h0:h1] = torch.softmax(s, -1).nan_to_num(0.0) @ v[bi, heads].double()
                del qi, s
    return out


def rel_err(out, ref, rows: np.ndarray) -> float:
    """Relative Frobenius error of ``out``'s rows ``rows`` against ``ref``."""
    import torch

    with torch.no_grad():
        got = out.detach().index_select(2, torch.as_tensor(rows, device=out.device)).double()
        denom = ref.norm().item()
        return (got - ref).norm().item() / (denom if denom > 0 else 1.0)


# --- one method ------------------------------------------------------------------------------------


Attn = Callable[[Any, Any, Any], Any]


class _Inputs:
    """q, k, v and the upstream gradient of one ``N``, shared by every mask and method."""

    def __init__(self, cfg: BenchConfig, n: int, device):
        import torch

        dtype = getattr(torch, DTYPES[cfg.dtype])
        gen = torch.Generator(device=device).manual_seed(cfg.seed + n)
        shape = (cfg.batch, cfg.heads, n, cfg.head_dim)
        kv_shape = (cfg.batch, cfg.kv_heads or cfg.heads, n, cfg.head_dim)
        self.q, self.k, self.v, self.grad = (torch.randn(s, generator=gen, device=device, dtype=dtype)
                                             for s in (shape, kv_shape, kv_shape, shape))
        for t in (self.q, self.k, self.v):
            t.requires_grad_(cfg.backward)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def reset_grads(self) -> None:
        for t in (self.q, self.k, self.v):
            t.grad = None


def measure(
    row: Row,
    variants: list[tuple[str, Attn]],
    inputs: _Inputs,
    cfg: BenchConfig,
    device,
    flops_fwd: float,
    ref=None,
    rows: np.ndarray | None = None,
    pick: str = "first",
) -> None:
    """Time ``variants`` (label, attention callable) into ``row``.

    Each variant is first called once outside the timing (compilation, the error against ``ref``,
    a NaN check, then one backward). ``pick="first"``: the first variant whose forward and backward
    both work is timed (else the first whose forward works, forward only); the failures of the
    others go to the notes. ``pick="fastest"``: every working variant is timed and the row reports
    the fastest per phase, naming it.
    """
    probes: dict[str, dict[str, Any]] = {}
    chosen: list[str] = []
    attns = dict(variants)
    for label, attn in variants:
        probes[label] = r = _probe(attn, inputs, cfg, device, ref, rows)
        if pick == "fastest":
            if "error" not in r:
                chosen.append(label)
        elif "error" not in r and "bwd_error" not in r:
            chosen = [label]
            break
    if pick == "first" and not chosen:
        chosen = [label for label, r in probes.items() if "error" not in r][:1]

    q, k, v, grad = inputs.q, inputs.k, inputs.v, inputs.grad
    for label in chosen:
        r, attn = probes[label], attns[label]

        def fwd(attn=attn):
            return attn(q, k, v)

        def fwd_bwd(attn=attn):
            attn(q, k, v).backward(grad)

        try:
            r["fwd_ms"] = time_ms(fwd, device, cfg.warmup_ms, cfg.rep_ms)
        except Exception as e:  # noqa: BLE001
            r["fwd_time_error"] = _short_error(e)
            _recover(inputs, device)
        if cfg.backward and "bwd_error" not in r:
            try:
                r["fwd_bwd_ms"] = time_ms(fwd_bwd, device, cfg.warmup_ms, cfg.rep_ms, grad_to_none=[q, k, v])
            except Exception as e:  # noqa: BLE001
                r["fwd_bwd_time_error"] = _short_error(e)
                _recover(inputs, device)
        inputs.reset_grads()
        _free(device)

    row.detail["variants"] = probes
    for label, r in probes.items():
        prefix = f"{label} " if len(variants) > 1 else ""
        if "error" in r:
            row.notes.append(f"{prefix}failed: {r['error']}")
        elif label in chosen or pick == "fastest":
            for key, what in (("bwd_error", "backward"), ("fwd_time_error", "fwd timing"), ("fwd_bwd_time_error", "fwd+bwd timing")):
                if key in r:
                    row.notes.append(f"{prefix}{what} failed: {r[key]}")
        elif "bwd_error" in r:
            row.notes.append(f"{prefix}backward failed: {r['bwd_error']}")
    timed = {label: probes[label] for label in chosen}
    fwd_best = min((lbl for lbl in timed if "fwd_ms" in timed[lbl]), key=lambda lbl: timed[lbl]["fwd_ms"], default=None)
    fb_best = min((lbl for lbl in timed if "fwd_bwd_ms" in timed[lbl]), key=lambda lbl: timed[lbl]["fwd_bwd_ms"], default=None)
    if fwd_best is not None:
        row.fwd_ms = timed[fwd_best]["fwd_ms"]
        row.fwd_tflops = flops_fwd / (row.fwd_ms * 1e-3) / 1e12
    if fb_best is not None:
        row.fwd_bwd_ms = timed[fb_best]["fwd_bwd_ms"]
        row.fwd_bwd_tflops = FWD_BWD_FLOP_FACTOR * flops_fwd / (row.fwd_bwd_ms * 1e-3) / 1e12
    err_from = fwd_best or (chosen[0] if chosen else None)
    if err_from is None:
        return
    row.rel_err = timed[err_from].get("rel_err")
    if not timed[err_from].get("finite", True):
        row.notes.append("output has NaN/inf")
    if len(variants) > 1:
        if pick == "fastest" and len(chosen) > 1:
            best = f"fwd: {fwd_best}" + (f", fwd+bwd: {fb_best}" if fb_best else "")
            row.notes.append(f"{best} (fastest of {'/'.join(chosen)})")
        else:
            row.notes.append(f"backend: {err_from}")
    row.detail["backend"] = {"fwd": fwd_best, "fwd_bwd": fb_best}
    row.detail["first_call_s"] = timed[err_from].get("first_call_s")
    row.detail["first_backward_s"] = timed[err_from].get("first_backward_s")


def _probe(attn: Attn, inputs: _Inputs, cfg: BenchConfig, device, ref, rows) -> dict[str, Any]:
    """One untimed forward (error, NaN check, compile time), then one untimed backward."""
    q, k, v = inputs.q, inputs.k, inputs.v
    r: dict[str, Any] = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            out = attn(q, k, v)
            _sync(device)
        r["first_call_s"] = time.perf_counter() - start
        if ref is not None:
            r["rel_err"] = rel_err(out, ref, rows)
        r["finite"] = bool(out.detach().isfinite().all().item())
        del out
    except Exception as e:  # noqa: BLE001  one method failing must not stop the run
        r["error"] = _short_error(e)
        _recover(inputs, device)
        return r
    finally:
        # e.g. SDPA's reasons for refusing a backend; kept in the JSON, not in the table
        seen = list(dict.fromkeys(str(w.message).strip() for w in caught))
        if seen:
            r["warnings"] = [w[:500] for w in seen[:5]]
    if cfg.backward:
        try:
            start = time.perf_counter()
            attn(q, k, v).backward(inputs.grad)
            _sync(device)
            r["first_backward_s"] = time.perf_counter() - start
        except Exception as e:  # noqa: BLE001
            r["bwd_error"] = _short_error(e)
            _recover(inputs, device)
        inputs.reset_grads()
    return r


def _recover(inputs: _Inputs, device) -> None:
    """After a failure: drop grads and cached blocks, and stop the run if the CUDA context is gone."""
    inputs.reset_grads()
    _free(device)
    _check_context(device)


class BenchError(ValueError):
    """A configuration the benchmark cannot run (no CUDA device, an unknown dtype)."""


class ContextLost(RuntimeError):
    """The CUDA context is unusable (e.g. an illegal memory access); nothing more can run in this process."""


def _check_context(device) -> None:
    import torch

    if torch.device(device).type != "cuda":
        return
    try:
        torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001
        raise ContextLost(_short_error(e)) from None


# --- the run ---------------------------------------------------------------------------------------


def environment(device, command: str | None) -> dict[str, Any]:
    """GPU, versions, date and command line, recorded with every result."""
    import torch

    env: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command if command is not None else " ".join(sys.argv),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "numpy": np.__version__,
        "maskc": maskc.__version__,
        "maskc_git": _git_head(),
        "device": str(device),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        env["triton"] = None
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = torch.cuda.get_device_name(device)
        env["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        env["gpu_capability"] = f"{props.major}.{props.minor}"
        env["cudnn"] = torch.backends.cudnn.version()
        env["driver"] = _nvidia_driver()
    else:
        env["gpu"] = None
        env["cpu"] = platform.processor() or platform.machine()
        env["threads"] = torch.get_num_threads()
    return env


def _git_head() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except Exception:  # noqa: BLE001
        return None


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except Exception:  # noqa: BLE001
        return None


def run_bench(
    cfg: BenchConfig,
    progress: Callable[[str], None] | None = None,
    command: str | None = None,
    json_path: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Run the benchmark; return (and, with ``json_path``, write after every case) the result dict."""
    import torch

    from maskc.compiler import parse_block_option

    say = progress or (lambda _msg: None)
    device = torch.device(cfg.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError("--device cuda asked for, but torch sees no CUDA device; use --device cpu for a tiny CPU run")
        if device.index is not None:
            torch.cuda.set_device(device.index)
        device = torch.device("cuda", torch.cuda.current_device())
    if cfg.dtype not in DTYPES:
        raise BenchError(f"dtype must be one of {', '.join(DTYPES)}, got {cfg.dtype!r}")
    if cfg.kv_heads is not None and (cfg.kv_heads < 1 or cfg.heads % cfg.kv_heads):
        raise BenchError(f"--kv-heads must divide --heads={cfg.heads}, got {cfg.kv_heads}")
    block = parse_block_option(cfg.block)
    profile = cost.resolve_profile(cfg.profile)
    masks = parse_masks(",".join(cfg.masks))
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "environment": {**environment(device, command), "profile": profile.name if profile else None,
                        "profile_sha256": profile.sha256 if profile else None},
        "config": {**dataclasses.asdict(cfg), "masks": masks},
        "conventions": {
            "time": "median ms; CUDA: triton.testing.do_bench(return_mode='median'), CPU: time.perf_counter",
            "fwd_flops": f"{FWD_FLOPS_PER_PAIR} * visible_pairs * head_dim * heads * batch",
            "fwd_bwd_flops": f"{FWD_BWD_FLOP_FACTOR} * fwd_flops (backward = 2.5 forwards)",
            "rel_err": "forward, ||out - ref||_F / ||ref||_F over the error rows; ref = float64 softmax of the same inputs",
            "forward_grad_mode": "inputs require grad when backward is timed (as in training)",
            "predicted": "the cost model's fwd and fwd+bwd ms for this run's batch, heads, head dim and dtype (maskc rows, with a profile)",
        },
        "cases": [],
        "results": [],
    }
    total = len(cfg.ns) * ((1 if cfg.dense_causal else 0) + len(masks) * (1 + cfg.flex + cfg.sdpa))
    done = 0
    lost: str | None = None

    def expect(more: int) -> None:
        nonlocal total
        total += more

    def emit(row: Row) -> None:
        nonlocal done
        done += 1
        result["results"].append(row.as_dict())
        say(f"[{done}/{total}] " + _progress_line(row))
        if json_path is not None:
            write_json(result, json_path)

    for n in cfg.ns:
        names = (["causal"] if cfg.dense_causal else []) + masks
        methods = (["dense-causal"] if cfg.dense_causal else []) + ["all"] * len(masks)
        if lost:
            for name, method in zip(names, methods):
                emit(Row(name, n, method, notes=[f"skipped: {lost}"]))
            continue
        try:
            inputs = _Inputs(cfg, n, device)
        except Exception as e:  # noqa: BLE001
            note = f"skipped: q/k/v for N={n} failed: {_short_error(e)}"
            for name, method in zip(names, methods):
                emit(Row(name, n, method, notes=[note]))
            _free(device)
            continue
        rows = error_rows(n, cfg.rows_for_error)
        if cfg.dense_causal:
            row = Row("causal", n, "dense-causal")
            try:
                _dense_causal(row, inputs, cfg, device, rows)
            except ContextLost as e:
                lost = f"CUDA context lost: {e}"
                row.notes.append(lost)
            except Exception as e:  # noqa: BLE001
                row.notes.append(f"failed: {_short_error(e)}")
            emit(row)
            _free(device)
        for name in masks:
            if lost:
                emit(Row(name, n, "all", notes=[f"skipped: {lost}"]))
                continue
            info: dict[str, Any] = {"mask": name, "n": n}
            result["cases"].append(info)
            try:
                _one_mask(name, n, inputs, cfg, device, block, rows, say, emit, info, profile, expect)
            except ContextLost as e:
                lost = f"CUDA context lost: {e}"
                emit(Row(name, n, "all", notes=[lost]))
            except Exception as e:  # noqa: BLE001
                info["error"] = _short_error(e)
                emit(Row(name, n, "all", notes=[f"failed: {info['error']}"]))
            _free(device)
        del inputs
        _free(device)
    if json_path is not None:
        write_json(result, json_path)
    return result


def _dense_causal(row: Row, inputs: _Inputs, cfg: BenchConfig, device, rows: np.ndarray) -> None:
    import torch
    import torch.nn.functional as F

    n = inputs.q.shape[2]
    pairs = n * (n + 1) // 2
    flops = FWD_FLOPS_PER_PAIR * pairs * cfg.head_dim * cfg.heads * cfg.batch
    row.detail.update({"visible_pairs": pairs, "flops_fwd": flops})
    scale = inputs.scale
    ref = reference_rows(inputs.q, inputs.k, inputs.v, rows, mask_rows(library.causal(n), rows), scale)
    variants = []
    for label, backend in _sdpa_backends(device, ("CUDNN_ATTENTION", "FLASH_ATTENTION")):
        def attn(q, k, v, backend=backend):
            with _sdpa_context(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=_gqa(cfg))
        variants.append((label, attn))
    measure(row, variants, inputs, cfg, device, flops, ref, rows, pick="fastest")
    del ref
    _free(device)


def _kv_heads_text(cfg: dict[str, Any]) -> str:
    """`` over N key/value heads`` for a GQA run's header; nothing otherwise (and for older JSON)."""
    kv = cfg.get("kv_heads")
    return f" over {kv} key/value heads" if kv not in (None, cfg["heads"]) else ""


def _gqa(cfg: BenchConfig) -> bool:
    """Whether k and v have fewer heads than q (SDPA and FlexAttention take ``enable_gqa``)."""
    return cfg.kv_heads not in (None, cfg.heads)


def _sdpa_backends(device, names: tuple[str, ...]):
    """``(label, SDPBackend or None)`` to try: the named backends on CUDA, torch's default choice on CPU."""
    import torch

    if torch.device(device).type != "cuda":
        return [("cpu default", None)]
    from torch.nn.attention import SDPBackend

    labels = {"CUDNN_ATTENTION": "cudnn", "FLASH_ATTENTION": "flash", "EFFICIENT_ATTENTION": "efficient", "MATH": "math"}
    return [(labels[name], getattr(SDPBackend, name)) for name in names]


def _sdpa_context(backend):
    import contextlib

    if backend is None:
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel(backend)


def _one_mask(name, n, inputs: _Inputs, cfg: BenchConfig, device, block, rows, say, emit, info: dict[str, Any],
              profile: cost.Profile | None = None, expect: Callable[[int], None] = lambda _more: None) -> None:
    """Every method on one mask at one ``N``, each row emitted as soon as it is done: maskc (and,
    with ``cfg.candidates``, every other candidate of the cost model), flex, sdpa-mask."""
    import torch

    case = build_mask(name, n, cfg.seed, cfg.window, cfg.prefix)
    info.update({"source": case.source.name, "params": case.params, "description": case.description})
    if case.source.shape[:2] != (1, 1):
        raise MaskError(f"{name}: the benchmark takes single [N, N] masks, got shape {list(case.source.shape)}")

    # maskc: compile once, before any timing
    from maskc.compiler import compile as compile_mask

    workload = cost.Workload(batch=cfg.batch, heads=cfg.heads, kv_heads=cfg.kv_heads, head_dim=cfg.head_dim, dtype=cfg.dtype)
    start = time.perf_counter()
    plan = compile_mask(case.source, block=block, profile=profile if profile is not None else cost.NO_PROFILE, workload=workload)
    info["compile_s"] = time.perf_counter() - start
    counts = plan.tile_counts()
    pairs = plan.visible_pairs
    flops = FWD_FLOPS_PER_PAIR * pairs * cfg.head_dim * cfg.heads * cfg.batch
    chosen = cost.plan_candidate(plan).name
    info.update({"visible_pairs": pairs, "density": pairs / (n * n), "tiles": counts, "variant": plan.variant, "candidate": chosen,
                 "reordered": plan.reordered, "plan_bytes": len(plan.to_bytes()), "flops_fwd": flops,
                 "block": [plan.block_m, plan.block_n], "predictions": plan.predictions, "reorder": plan.options.get("reorder")})
    say(f"  {name} N={n}: {case.description}; compiled in {info['compile_s']:.2f} s, density {pairs / (n * n):.2%}, "
        f"{chosen}: {counts['tiles_full']} full + {counts['tiles_partial']} partial of {counts['tiles_total']} tiles")

    keep = mask_rows(case.source, rows)
    ref = reference_rows(inputs.q, inputs.k, inputs.v, rows, keep, inputs.scale)
    base = {"visible_pairs": pairs, "flops_fwd": flops}
    others = [r for r in cost.recorded(plan) if r.candidate.name != chosen] if cfg.candidates else []
    expect(len(others))
    runs = [("maskc", plan, cost.plan_candidate(plan), cost.work_of(plan))]
    for r in others:
        runs.append((f"maskc:{r.candidate.name}", None, r.candidate, r.work))
    for method, this, candidate, work in runs:
        row = Row(name, n, method, detail={**base, "variant": candidate.variant, "candidate": candidate.name, "backend_requested": cfg.backend,
                                           "predicted": _predicted(profile, candidate, work, workload)})
        try:
            if this is None:  # another candidate: compiled as told, no model
                this = compile_mask(case.source, block=candidate.block, variant=candidate.variant, reorder="rcm" if candidate.reordered else "none",
                                    backward="pieces" if candidate.pieces else "tiles")
            _time_plan(row, this, inputs, cfg, device, flops, ref, rows)
        except ContextLost:
            raise
        except Exception as e:  # noqa: BLE001
            row.notes.append(f"failed: {_short_error(e)}")
        emit(row)
        _free(device)

    dense = None
    dense_bytes = n * n
    too_big = dense_bytes > cfg.sdpa_max_mask_gib * 2**30

    def get_dense():
        nonlocal dense
        if dense is None:
            dense = torch.from_numpy(case.source.to_dense()[0, 0]).to(device)
        return dense

    if cfg.flex:
        row = Row(name, n, "flex", detail=dict(base))
        if device.type not in _FLEX_DEVICES:
            row.notes.append("skipped: FlexAttention is benchmarked on CUDA only (torch.compile'd Triton kernels)")
        elif case.flex == "dense" and cfg.flex_tree != "interval" and too_big:
            row.notes.append(f"skipped: dense lookup needs the {dense_bytes / 2**30:.1f} GiB mask (> {cfg.sdpa_max_mask_gib} GiB)")
        else:
            try:
                _flex(row, case, inputs, cfg, device, flops, ref, rows, get_dense, info)
            except ContextLost:
                raise
            except Exception as e:  # noqa: BLE001
                row.notes.append(f"failed: {_short_error(e)}")
            finally:
                torch._dynamo.reset()
        emit(row)
        _free(device)

    if cfg.sdpa:
        row = Row(name, n, "sdpa-mask", detail=dict(base))
        if too_big:
            row.notes.append(f"skipped: dense bool mask is {dense_bytes / 2**30:.1f} GiB (> {cfg.sdpa_max_mask_gib} GiB)")
        else:
            try:
                mask4 = get_dense()[None, None]
                scale = inputs.scale
                variants = []
                for label, backend in _sdpa_backends(device, ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION")):
                    def attn(q, k, v, backend=backend):
                        with _sdpa_context(backend):
                            return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask4, scale=scale,
                                                                                    enable_gqa=_gqa(cfg))
                    variants.append((label, attn))
                measure(row, variants, inputs, cfg, device, flops, ref, rows, pick="first")
                del mask4
            except ContextLost:
                raise
            except Exception as e:  # noqa: BLE001
                row.notes.append(f"failed: {_short_error(e)}")
        emit(row)
    del dense, ref, plan
    _free(device)


def _time_plan(row: Row, plan, inputs: _Inputs, cfg: BenchConfig, device, flops, ref, rows) -> None:
    """Load ``plan`` and time ``LoadedPlan.attention`` into ``row`` (the prediction, if any, in its notes)."""
    from maskc.runtime import load_plan

    loaded = load_plan(plan, device)
    backend, scale = cfg.backend, inputs.scale
    measure(row, [(f"maskc/{backend}", lambda q, k, v: loaded.attention(q, k, v, scale=scale, backend=backend))], inputs, cfg, device, flops, ref, rows)
    counts = plan.tile_counts()
    row.notes.append(f"backend {backend}, plan {row.detail['candidate']}: {counts['tiles_full']} full + {counts['tiles_partial']} partial tiles")
    predicted = row.detail["predicted"]
    if "fwd_ms" in predicted:
        row.notes.append(f"predicted fwd {predicted['fwd_ms']:.3f} ms, fwd+bwd {predicted['fwd_bwd_ms']:.3f} ms")


def _predicted(profile: cost.Profile | None, candidate: cost.Candidate, work: cost.Work, workload: cost.Workload) -> dict[str, Any]:
    """The cost model's prediction for one candidate at the benchmark's shape, or why there is none."""
    if profile is None:
        return {"note": "no profile"}
    try:
        p = cost.predict(profile, candidate, work, workload)
    except cost.ProfileError as e:
        return {"note": str(e)}
    return {"fwd_ms": p.fwd_ms, "fwd_bwd_ms": p.fwd_bwd_ms, "profile": profile.name}


def _flex(row: Row, case: BenchMask, inputs: _Inputs, cfg: BenchConfig, device, flops, ref, rows, get_dense, info) -> None:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch._dynamo.reset()  # a fresh cache per case: no recompile limit, no eager fallback
    n = case.n
    needs_dense = case.flex == "dense" and not (cfg.flex_tree == "interval" and case.name in ("token_tree", "medusa"))
    mask_mod, kind = flex_mask_mod(case, device, get_dense() if needs_dense else None, cfg.flex_tree)
    row.detail["flex_mask_mod"] = kind
    info["flex_mask_mod"] = kind
    times = []
    block_mask = None
    for _ in range(3):
        _sync(device)
        start = time.perf_counter()
        # compiled on a GPU, as FlexAttention recommends for long sequences (eager materialises N x N)
        block_mask = create_block_mask(mask_mod, 1, 1, n, n, device=device, BLOCK_SIZE=cfg.flex_block, _compile=device.type == "cuda")
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    row.detail["create_block_mask_ms"] = statistics.median(times)
    info["flex_create_block_mask_ms"] = row.detail["create_block_mask_ms"]
    row.notes.append(f"{kind} mask_mod, create_block_mask {row.detail['create_block_mask_ms']:.1f} ms")
    compiled = torch.compile(flex_attention, dynamic=False)
    scale = inputs.scale

    def attn(q, k, v):
        return compiled(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=_gqa(cfg))

    measure(row, [("flex", attn)], inputs, cfg, device, flops, ref, rows)
    first = row.detail.get("variants", {}).get("flex", {})
    if "first_call_s" in first:
        row.notes.append(f"compile+first call {first['first_call_s']:.1f} s")
    del block_mask, compiled


# --- output ----------------------------------------------------------------------------------------


def write_json(result: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``result`` to ``path`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=_json_default) + "\n")
    os.replace(tmp, path)


def _json_default(obj):
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _progress_line(row: Row) -> str:
    head = f"{row.mask} N={row.n} {row.method}:"
    parts = []
    if row.fwd_ms is not None:
        parts.append(f"fwd {row.fwd_ms:.3f} ms ({_fmt(row.fwd_tflops, '.1f')} TFLOP/s)")
    if row.fwd_bwd_ms is not None:
        parts.append(f"fwd+bwd {row.fwd_bwd_ms:.3f} ms ({_fmt(row.fwd_bwd_tflops, '.1f')} TFLOP/s)")
    if row.rel_err is not None:
        parts.append(f"err {row.rel_err:.1e}")
    if row.notes:
        parts.append("; ".join(row.notes))
    return " ".join([head, ", ".join(parts)])


COLUMNS = ("mask", "N", "method", "fwd ms", "pred fwd", "fwd TFLOP/s", "fwd+bwd ms", "pred f+b", "fwd+bwd TFLOP/s", "rel err", "notes")


def format_table(result: dict[str, Any]) -> str:
    """The results as a plain-text table, one row per mask x N x method, after the mask parameters."""
    lines = []
    env = result["environment"]
    cfg = result["config"]
    lines.append(
        f"maskc bench  {env.get('gpu') or env.get('cpu') or env['device']}  torch {env['torch']}  triton {env.get('triton')}  "
        f"CUDA {env.get('cuda')}  {env['date']}"
    )
    lines.append(
        f"batch {cfg['batch']}, heads {cfg['heads']}{_kv_heads_text(cfg)}, head dim {cfg['head_dim']}, {cfg['dtype']}, block {cfg['block']}, "
        f"profile {env.get('profile')}, "
        f"maskc backend {cfg['backend']}, rel err over up to {cfg['rows_for_error']} query rows; fwd+bwd FLOPs = {FWD_BWD_FLOP_FACTOR} x fwd"
    )
    for case in result["cases"]:
        if "params" in case:
            params = {k: v for k, v in case["params"].items() if k != "lengths"}
            lines.append(f"  {case['mask']} N={case['n']}: {case.get('description', '')}  {json.dumps(params, default=_json_default)}")
    lines.append("")
    table = [COLUMNS]
    for r in result["results"]:
        predicted = r["detail"].get("predicted") or {}
        table.append((
            r["mask"], str(r["n"]), r["method"],
            _fmt(r["fwd_ms"], ".3f"), _fmt(predicted.get("fwd_ms"), ".3f"), _fmt(r["fwd_tflops"], ".1f"),
            _fmt(r["fwd_bwd_ms"], ".3f"), _fmt(predicted.get("fwd_bwd_ms"), ".3f"), _fmt(r["fwd_bwd_tflops"], ".1f"),
            _fmt(r["rel_err"], ".1e"), r["notes"],
        ))
    widths = [max(len(t[i]) for t in table) for i in range(len(COLUMNS) - 1)]
    numeric = {3, 4, 5, 6, 7, 8, 9}
    for j, t in enumerate(table):
        cells = [t[i].rjust(widths[i]) if i in numeric else t[i].ljust(widths[i]) for i in range(len(widths))]
        lines.append("  ".join(cells + [t[-1]]).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths) + "  -----")
    return "\n".join(lines)
