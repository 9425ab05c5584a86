"""The benchmark's mask set: every mask ``maskc bench`` times, and every parameter that shapes it.

Each mask is a mask spec of the library (:func:`maskc.spec.from_spec`), except the permuted band,
which is a scattered mask on purpose and no library kind. Next to its source a mask keeps the
parameters the benchmark records, a description, and what FlexAttention needs for a closed-form
``mask_mod`` (its O(N) tables; :mod:`maskc.measure.adapters`). BENCHMARKS.md documents the set.
Only numpy and the compiler's mask side are imported here, so the CLI can check ``--masks``
without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskc import library
from maskc.errors import MaskError
from maskc.sources import MaskSource
from maskc.spec import from_spec

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


def parse_masks(spec: str | None) -> list[str]:
    """``"causal,documents"`` as a list of known benchmark mask names (``-`` or ``_`` both accepted);
    empty or None: the default set."""
    if not spec:
        return list(DEFAULT_MASKS)
    names = [s.strip().replace("-", "_") for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in DEFAULT_MASKS + EXTRA_MASKS]
    if unknown:
        raise MaskError(_unknown(unknown[0]))
    return names


def build_mask(name: str, n: int, seed: int = 0, window: int | None = None, prefix: int | None = None) -> BenchMask:
    """The benchmark mask ``name`` at ``N = n``. Every parameter that shapes it is in ``params``;
    ``window`` (sliding_window, default 1024) and ``prefix`` (prefix_lm, default N/4) can be set."""
    key = name.replace("-", "_")
    if key == "causal":
        return _case(key, n, {"kind": "causal", "n": n}, {"n": n}, "decoder self-attention, j <= i", "causal")
    if key == "sliding_window":
        window = 1024 if window is None else window
        return _case(key, n, {"kind": "sliding_window", "n": n, "window": window, "causal": True}, {"n": n, "window": window, "causal": True},
                     f"causal sliding window of {window} keys (i - {window} < j <= i)", "sliding_window", {"window": np.array(window)})
    if key == "documents":
        lengths = document_lengths(n, 100, 700, seed)
        params = {"n": n, "causal": True, "docs": len(lengths), "length_distribution": "uniform 100..700, last trimmed", "seed": seed,
                  "min_length": min(lengths), "max_length": max(lengths), "lengths": lengths}
        return _case(key, n, {"kind": "documents", "lengths": lengths, "causal": True}, params,
                     f"{len(lengths)} packed causal documents, lengths uniform in 100..700 (seed {seed}), last trimmed to sum to N",
                     "documents", {"doc": np.repeat(np.arange(len(lengths)), lengths)})
    if key == "prefix_lm":
        what = f"N/4 = {n // 4}" if prefix is None else str(prefix)
        prefix = n // 4 if prefix is None else min(prefix, n)
        return _case(key, n, {"kind": "prefix_lm", "n": n, "prefix": prefix}, {"n": n, "prefix": prefix},
                     f"bidirectional prefix of {what} tokens, causal after", "prefix_lm", {"prefix": np.array(prefix)})
    if key == "longformer":
        window, globals_ = 512, min(16, n)
        is_global = np.arange(n) < globals_
        params = {"n": n, "window": window, "global_tokens": f"0..{globals_ - 1}", "globals": globals_, "causal": False}
        return _case(key, n, {"kind": "longformer", "n": n, "window": window, "global_tokens": list(range(globals_)), "causal": False}, params,
                     f"symmetric window |i - j| < {window}, the first {globals_} tokens global (see and are seen by all)",
                     "longformer", {"window": np.array(window), "is_global": is_global})
    if key == "bigbird":
        block = 64
        window = 96  # |i - j| < 96: 191 keys, the span of 3 blocks of 64 around the query
        global_tokens = sorted(set(range(min(block, n))) | set(range(max(0, n - block), n)))
        random_blocks = min(3, -(-n // block))
        params = {"n": n, "window": window, "block": block, "global_blocks": "first and last", "globals": len(global_tokens),
                  "random_blocks": random_blocks, "seed": seed}
        spec = {"kind": "bigbird", "n": n, "window": window, "global_tokens": global_tokens, "random_blocks": random_blocks, "block": block, "seed": seed}
        return _case(key, n, spec, params, f"BigBird: window |i - j| < {window} (3 blocks of {block}), first and last block global, "
                                           f"{random_blocks} random key blocks per query block (seed {seed})", "dense")
    if key == "shared_question":
        question = n // 4
        answers = _split(n - question, 4)
        return _case(key, n, {"kind": "shared_question", "question": question, "answers": answers}, {"n": n, "question": question, "answers": answers},
                     f"causal question of N/4 = {question} tokens, then {len(answers)} answers of ~{answers[0]} tokens, each sees the question and itself",
                     "shared_question", {"seg": np.repeat(np.arange(1 + len(answers)), [question, *answers]), "question": np.array(question)})
    if key == "medusa":
        nodes = 2048 if n >= 4096 else max(1, n // 2)
        depth, top_k = 4, 10
        parents = library.candidate_tree(nodes, depth=depth, top_k=top_k, seed=seed)
        params = {"n": n, "prompt": n - nodes, "tree_nodes": nodes, "tree": f"candidate_tree(depth={depth}, top_k={top_k}, seed={seed})"}
        return _case(key, n, {"kind": "medusa", "prompt": n - nodes, "parents": parents.tolist()}, params,
                     f"causal prompt of N - {nodes} tokens, then a {nodes}-node Medusa candidate tree (depth {depth}, top-{top_k})", "dense")
    if key == "token_tree":
        p_continue, back = 0.9, 64
        params = {"n": n, "tree": f"branching_tree(p_continue={p_continue}, back={back}, seed={seed})"}
        return _case(key, n, {"kind": "token_tree", "parents": branching_tree(n, p_continue, back, seed).tolist()}, params,
                     f"a random token tree of N nodes: continue the branch w.p. {p_continue}, else branch off one of the previous {back} nodes", "dense")
    if key == "hash_buckets":
        buckets = max(1, n // 512)
        case = _case(key, n, {"kind": "hash_buckets", "n": n, "buckets": buckets, "causal": True, "seed": seed},
                     {"n": n, "buckets": buckets, "causal": True, "seed": seed},
                     f"{buckets} seeded random buckets (~512 tokens each), causal within a bucket", "hash_buckets")
        case.tables["bucket"] = case.source.bucket
        return case
    if key == "permuted_band":
        width = 256
        order = np.random.default_rng(seed).permutation(n)
        return BenchMask(key, n, PermutedBand(n, width, order), {"n": n, "width": width, "seed": seed},
                         f"a band |i - j| < {width} with its tokens in a seeded random order (seed {seed})", "permuted_band",
                         {"order": order, "width": np.array(width)})
    raise MaskError(_unknown(name))


class PermutedBand(library.FormulaSource):
    """A band ``|a - b| < width`` over positions ``order[i]``: token ``i`` sits at position
    ``order[i]``, so the band is scattered over the whole mask until the tokens are renumbered."""

    def __init__(self, n: int, width: int, order: np.ndarray):
        super().__init__(f"permuted_band(n={n}, width={width})", n)
        self.width, self.order = width, np.asarray(order, dtype=np.int64)

    def formula(self, q: np.ndarray, k: np.ndarray) -> np.ndarray:
        return np.abs(self.order[q] - self.order[k]) < self.width


def _case(name: str, n: int, spec: dict[str, Any], params: dict[str, Any], description: str, flex: str,
          tables: dict[str, np.ndarray] | None = None) -> BenchMask:
    """A benchmark mask whose source is the library mask ``spec`` names."""
    return BenchMask(name, n, from_spec(spec, where=f"benchmark mask {name}"), params, description, flex, tables or {})


def _split(total: int, parts: int) -> list[int]:
    """``total`` as ``parts`` near-equal positive lengths (fewer parts if ``total < parts``)."""
    parts = max(1, min(parts, total))
    base, extra = divmod(total, parts)
    return [base + (i < extra) for i in range(parts)]


def _unknown(name: str) -> str:
    return f"unknown benchmark mask {name!r}; choose from {', '.join(DEFAULT_MASKS + EXTRA_MASKS)}"
