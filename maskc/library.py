"""The built-in mask library: the attention patterns of the literature, one function per kind.

Every kind is a function that validates its arguments and returns a :class:`MaskSource` whose rows
come from a formula (:mod:`maskc.formulas`), or a combination of such sources
(:mod:`maskc.combinations`). ``True`` means the query (row) may attend the key (column).
"""

from __future__ import annotations

import heapq
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from maskc.combinations import DIMS, Combination, Stack
from maskc.errors import MaskError
from maskc.formulas import (
    BigBird,
    Causal,
    CausalBlockwise,
    FormulaSource,
    Full,
    HashBuckets,
    Longformer,
    PrefixLM,
    Segments,
    SlidingWindow,
    TokenTree,
)
from maskc.sources import MaskSource

__all__ = [
    "FormulaSource",  # the base of every formula kind, for masks defined outside the library
    "bigbird", "candidate_tree", "causal", "causal_blockwise", "documents", "full", "hash_buckets", "intersection",
    "longformer", "medusa", "prefix_lm", "shared_question", "sliding_window", "stack", "token_tree", "union",
]  # fmt: skip

# --- argument checks -----------------------------------------------------------------------------


def _int(value: Any, param: str, kind: str, minimum: int) -> int:
    """``value`` as an int ``>= minimum``, or a MaskError naming the parameter."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise MaskError(f"{kind}: {param} must be an integer, got {value!r}")
    if value < minimum:
        what = "positive" if minimum == 1 else f">= {minimum}"
        raise MaskError(f"{kind}: {param} must be {what}, got {value}")
    return int(value)


def _int_array(values: Any, param: str, kind: str) -> np.ndarray:
    """A non-empty 1-D sequence of integers as an int64 array, or a MaskError naming the parameter."""
    array = np.asarray(values)
    if array.ndim != 1 or array.size == 0:
        raise MaskError(f"{kind}: {param} must be a non-empty list of integers, got {values!r}")
    if array.dtype.kind not in "iu":
        raise MaskError(f"{kind}: {param} must hold integers only, got dtype {array.dtype}")
    return array.astype(np.int64)


def _lengths(values: Any, param: str, kind: str) -> np.ndarray:
    """Segment lengths: a non-empty list of positive integers."""
    lengths = _int_array(values, param, kind)
    bad = np.flatnonzero(lengths <= 0)
    if bad.size:
        i = int(bad[0])
        raise MaskError(f"{kind}: {param}[{i}] = {lengths[i]}; every length must be positive")
    return lengths


def _global_flags(n: int, tokens: Sequence[int], kind: str) -> np.ndarray:
    """A bool flag per token, True at the global token indices (which must lie in ``[0, n)``)."""
    flags = np.zeros(n, dtype=bool)
    if len(tokens) == 0:
        return flags
    indices = _int_array(tokens, "global_tokens", kind)
    bad = indices[(indices < 0) | (indices >= n)]
    if bad.size:
        raise MaskError(f"{kind}: global_tokens holds {bad[0]}, outside the sequence [0, {n})")
    flags[indices] = True
    return flags


def _parents(values: Any, kind: str) -> np.ndarray:
    """A parent array: entry ``i`` is -1 (a root) or the index of an earlier node."""
    parents = _int_array(values, "parents", kind)
    bad = np.flatnonzero((parents < -1) | (parents >= np.arange(parents.size)))
    if bad.size:
        i = int(bad[0])
        allowed = f"-1 (a root) or the index of an earlier node (0..{i - 1})" if i else "-1: the first node is a root"
        raise MaskError(f"{kind}: parents[{i}] = {parents[i]}; it must be {allowed}")
    return parents


# --- the kinds -----------------------------------------------------------------------------------


def causal(n: int) -> MaskSource:
    """Decoder self-attention: query ``i`` sees keys ``j <= i``."""
    n = _int(n, "n", "causal", 1)
    return Causal(f"causal(n={n})", n)


def full(n: int, kv_len: int | None = None) -> MaskSource:
    """No masking: every query sees every key; ``kv_len`` (default ``n``) allows cross attention."""
    n = _int(n, "n", "full", 1)
    if kv_len is None:
        return Full(f"full(n={n})", n)
    kv_len = _int(kv_len, "kv_len", "full", 1)
    return Full(f"full(n={n}, kv_len={kv_len})", n, kv_len)


def sliding_window(n: int, window: int, causal: bool = True) -> MaskSource:
    """Local attention. ``window`` counts the keys a query sees on its side, itself included.

    Causal: query ``i`` sees ``i - window < j <= i`` (``window`` keys). Symmetric
    (``causal=False``): ``|i - j| < window`` (``2 * window - 1`` keys). ``window >= n`` is plain
    causal or full attention.
    """
    n = _int(n, "n", "sliding_window", 1)
    window = _int(window, "window", "sliding_window", 1)
    return SlidingWindow(f"sliding_window(n={n}, window={window}, causal={bool(causal)})", n, window, bool(causal))


def documents(lengths: Sequence[int], causal: bool = True) -> MaskSource:
    """Packed documents of ``lengths`` tokens (``n = sum(lengths)``); a token sees only its own
    document, causally or bidirectionally, so packing never leaks attention across documents."""
    lengths = _lengths(lengths, "lengths", "documents")
    name = f"documents(n={int(lengths.sum())}, docs={lengths.size}, causal={bool(causal)})"
    return Segments(name, lengths, bool(causal))


def prefix_lm(n: int, prefix: int) -> MaskSource:
    """Prefix LM: every token sees the prefix ``[0, prefix)`` bidirectionally; after it, causal."""
    n = _int(n, "n", "prefix_lm", 1)
    prefix = _int(prefix, "prefix", "prefix_lm", 0)
    if prefix > n:
        raise MaskError(f"prefix_lm: prefix ({prefix}) must not exceed n ({n})")
    return PrefixLM(f"prefix_lm(n={n}, prefix={prefix})", n, prefix)


def causal_blockwise(n: int, block: int) -> MaskSource:
    """Block-causal attention: the sequence is cut into blocks of ``block`` tokens (the last may be
    shorter); a query sees every key of the earlier blocks and of its own block, bidirectionally."""
    n = _int(n, "n", "causal_blockwise", 1)
    block = _int(block, "block", "causal_blockwise", 1)
    return CausalBlockwise(f"causal_blockwise(n={n}, block={block})", n, block)


def longformer(n: int, window: int, global_tokens: Sequence[int] = (), causal: bool = False) -> MaskSource:
    """Longformer: a symmetric sliding window (``|i - j| < window``) plus global tokens that see,
    and are seen by, every token. ``causal=True`` then keeps only ``j <= i``."""
    n = _int(n, "n", "longformer", 1)
    window = _int(window, "window", "longformer", 1)
    is_global = _global_flags(n, global_tokens, "longformer")
    name = f"longformer(n={n}, window={window}, globals={int(is_global.sum())}, causal={bool(causal)})"
    return Longformer(name, n, window, is_global, bool(causal))


def bigbird(
    n: int,
    window: int,
    global_tokens: Sequence[int] = (),
    random_blocks: int = 3,
    block: int = 64,
    seed: int = 0,
) -> MaskSource:
    """BigBird: Longformer's symmetric window and globals, plus for each query block of ``block``
    rows, ``random_blocks`` distinct key blocks drawn at random (seeded, so deterministic)."""
    n = _int(n, "n", "bigbird", 1)
    window = _int(window, "window", "bigbird", 1)
    is_global = _global_flags(n, global_tokens, "bigbird")
    random_blocks = _int(random_blocks, "random_blocks", "bigbird", 0)
    block = _int(block, "block", "bigbird", 1)
    seed = _int(seed, "seed", "bigbird", 0)
    blocks = -(-n // block)
    if random_blocks > blocks:
        raise MaskError(f"bigbird: random_blocks ({random_blocks}) exceeds the {blocks} key blocks of {block} tokens; lower it or the block size")
    rng = np.random.default_rng(seed)
    table = np.array([rng.choice(blocks, size=random_blocks, replace=False) for _ in range(blocks)], dtype=np.int64)
    name = f"bigbird(n={n}, window={window}, globals={int(is_global.sum())}, random_blocks={random_blocks}, block={block}, seed={seed})"
    return BigBird(name, n, window, is_global, table, block)


def shared_question(question: int, answers: Sequence[int]) -> MaskSource:
    """Shared-prefix packing (DPO, reward models): a causal question of ``question`` tokens, then
    answers of lengths ``answers``; each answer sees the whole question and itself causally, never
    another answer, so one forward pass scores every answer against one copy of the question."""
    question = _int(question, "question", "shared_question", 1)
    answers = _lengths(answers, "answers", "shared_question")
    lengths = np.concatenate([[question], answers])
    name = f"shared_question(question={question}, answers={answers.size}, n={int(lengths.sum())})"
    return Segments(name, lengths, causal=True, shared=question)


def token_tree(parents: Sequence[int]) -> MaskSource:
    """Tree attention (speculative decoding): node ``i`` sees its ancestors and itself.

    ``parents[i]`` is -1 for a root or the index of an earlier node (``parents[i] < i``), so
    ``parents[0] == -1``; several roots make a forest.
    """
    parents = _parents(parents, "token_tree")
    return TokenTree(f"token_tree(n={parents.size})", parents)


def medusa(prompt: int, parents: Sequence[int]) -> MaskSource:
    """Medusa-style verification: a causal prompt of ``prompt`` tokens, then a candidate tree
    (``parents`` relative to the tree, -1 = hangs off the last prompt token). A tree node sees the
    whole prompt plus its ancestors in the tree and itself."""
    prompt = _int(prompt, "prompt", "medusa", 1)
    tree = _parents(parents, "medusa")
    chain = np.arange(-1, prompt - 1, dtype=np.int64)
    combined = np.concatenate([chain, np.where(tree < 0, prompt - 1, tree + prompt)])
    return TokenTree(f"medusa(prompt={prompt}, nodes={tree.size})", combined)


def candidate_tree(n_nodes: int, depth: int = 4, top_k: int = 10, seed: int = 0) -> np.ndarray:
    """A realistic Medusa candidate tree of ``n_nodes`` nodes, as a parent array for :func:`medusa`.

    Each of ``depth`` heads proposes ``top_k`` tokens with seeded, sorted acceptance probabilities;
    like Medusa's tree builder, the nodes kept are the ``n_nodes`` paths of highest joint
    probability, which gives wide first levels and thinner deeper ones. Nodes come in order of
    selection, so a parent always precedes its children.
    """
    n_nodes = _int(n_nodes, "n_nodes", "candidate_tree", 1)
    depth = _int(depth, "depth", "candidate_tree", 1)
    top_k = _int(top_k, "top_k", "candidate_tree", 1)
    seed = _int(seed, "seed", "candidate_tree", 0)
    capacity = sum(top_k**d for d in range(1, depth + 1))
    if n_nodes > capacity:
        raise MaskError(f"candidate_tree: n_nodes ({n_nodes}) exceeds the {capacity} nodes of a depth-{depth}, top-{top_k} tree")
    rng = np.random.default_rng(seed)
    accept = -np.sort(-rng.dirichlet(np.full(top_k, 0.5), size=depth), axis=1)
    parents: list[int] = []
    # (-path probability, tie-break, parent, parent's path probability, level, rank): best first
    heap = [(-accept[0, 0], 0, -1, 1.0, 0, 0)]
    while len(parents) < n_nodes:
        neg_p, _, parent, parent_p, level, rank = heapq.heappop(heap)
        node = len(parents)
        parents.append(parent)
        if rank + 1 < top_k:
            heapq.heappush(heap, (-parent_p * accept[level, rank + 1], 2 * node + 1, parent, parent_p, level, rank + 1))
        if level + 1 < depth:
            heapq.heappush(heap, (neg_p * accept[level + 1, 0], 2 * node + 2, node, -neg_p, level + 1, 0))
    return np.asarray(parents, dtype=np.int64)


def hash_buckets(n: int, buckets: int, causal: bool = True, seed: int = 0) -> MaskSource:
    """Bucketed attention (Reformer-like): each token gets a seeded random bucket and sees the
    tokens of its own bucket (causally). Scattered on purpose: a test case for reordering."""
    n = _int(n, "n", "hash_buckets", 1)
    buckets = _int(buckets, "buckets", "hash_buckets", 1)
    seed = _int(seed, "seed", "hash_buckets", 0)
    bucket = np.random.default_rng(seed).integers(0, buckets, size=n)
    return HashBuckets(f"hash_buckets(n={n}, buckets={buckets}, causal={bool(causal)}, seed={seed})", bucket, bool(causal))


def stack(sources: Sequence[MaskSource], dim: str = "heads") -> MaskSource:
    """Stack single ``[q_len, kv_len]`` masks into one with a mask per head (``dim="heads"``) or
    per batch element (``dim="batch"``), e.g. a different window on every head."""
    if dim not in DIMS:
        raise MaskError(f"stack: dim must be 'heads' or 'batch', got {dim!r}")
    sources = list(sources)
    if not sources:
        raise MaskError("stack: sources is empty; give at least one mask source")
    for i, source in enumerate(sources):
        if not isinstance(source, MaskSource):
            raise MaskError(f"stack: sources[{i}] is a {type(source).__name__}, not a MaskSource")
    return Stack(sources, dim)


def _combine(op: str, sources: Sequence[MaskSource]) -> MaskSource:
    sources = list(sources)
    if len(sources) < 2:
        raise MaskError(f"{op}: give at least two mask sources, got {len(sources)}")
    for i, source in enumerate(sources):
        if not isinstance(source, MaskSource):
            raise MaskError(f"{op}: sources[{i}] is a {type(source).__name__}, not a MaskSource")
    return Combination(op, sources)


def union(*sources: MaskSource) -> MaskSource:
    """A pair is visible where it is visible in any of ``sources`` (same ``[q_len, kv_len]``; batch
    and heads of 1 broadcast), e.g. a sliding window plus a few global columns."""
    return _combine("union", sources)


def intersection(*sources: MaskSource) -> MaskSource:
    """A pair is visible where it is visible in every one of ``sources`` (shapes as for
    :func:`union`), e.g. packed documents restricted to a sliding window."""
    return _combine("intersection", sources)


KINDS: dict[str, Callable[..., MaskSource]] = {
    "causal": causal,
    "full": full,
    "sliding-window": sliding_window,
    "documents": documents,
    "prefix-lm": prefix_lm,
    "longformer": longformer,
    "bigbird": bigbird,
    "shared-question": shared_question,
    "token-tree": token_tree,
    "medusa": medusa,
    "hash-buckets": hash_buckets,
}
"""The library's kinds by their CLI name (``maskc mask KIND``)."""
