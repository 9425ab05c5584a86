"""The built-in mask library: the attention patterns of the literature, one function per kind.

Every kind is a function registered in :data:`KINDS` with its parameters (:mod:`maskc.kinds`), which
check its arguments before anything is built; it returns a :class:`MaskSource` whose rows come from
a formula (:mod:`maskc.formulas`) or a combination of such sources (:mod:`maskc.combinations`).
``True`` means the query (row) may attend the key (column). Adding a kind is one decorated
function here: the spec reader and ``maskc mask`` take it from the registry.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

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
from maskc.kinds import MAX_TOKENS, Choice, Flag, Lengths, Parents, Registry, Seed, Size, Sources, Tokens, checked, too_long
from maskc.sources import MaskSource

KINDS = Registry()
"""Every kind of the library, by canonical name."""

# parameters several kinds share
N = Size("n", "sequence length (query and key tokens)", 8192)
WINDOW = Size("window", "keys a query sees on each side, itself included", 256)
CAUSAL = Flag("causal", "a query sees only keys at or before its own position", off="bidirectional")
GLOBAL_TOKENS = Tokens("global_tokens", "indices of the global tokens, which see and are seen by every token", [0, 1])
PARENTS = Parents("parents", "each node's parent: -1 for a root, else an earlier node", [-1, 0, 0, 1])
SOURCES = "the masks to combine (of one [q_len, kv_len]; batch and heads of 1 broadcast)"


@KINDS.kind(N)
def causal(n: int) -> MaskSource:
    """Decoder self-attention: query ``i`` sees keys ``j <= i``."""
    return Causal(f"causal(n={n})", n)


@KINDS.kind(N, Size("kv_len", "key length for cross attention (default n)", 4096))
def full(n: int, kv_len: int | None = None) -> MaskSource:
    """No masking: every query sees every key; ``kv_len`` (default ``n``) allows cross attention."""
    if kv_len is None:
        return Full(f"full(n={n})", n)
    return Full(f"full(n={n}, kv_len={kv_len})", n, kv_len)


@KINDS.kind(N, WINDOW, CAUSAL)
def sliding_window(n: int, window: int, causal: bool = True) -> MaskSource:
    """Local attention. ``window`` counts the keys a query sees on its side, itself included.

    Causal: query ``i`` sees ``i - window < j <= i`` (``window`` keys). Symmetric
    (``causal=False``): ``|i - j| < window`` (``2 * window - 1`` keys). ``window >= n`` is plain
    causal or full attention.
    """
    return SlidingWindow(f"sliding_window(n={n}, window={window}, causal={causal})", n, window, causal)


@KINDS.kind(Lengths("lengths", "lengths of the packed documents", [300, 200, 500]), CAUSAL)
def documents(lengths: Sequence[int], causal: bool = True) -> MaskSource:
    """Packed documents of ``lengths`` tokens (``n = sum(lengths)``); a token sees only its own
    document, causally or bidirectionally, so packing never leaks attention across documents."""
    name = f"documents(n={int(lengths.sum())}, docs={lengths.size}, causal={causal})"
    return Segments(name, lengths, causal)


@KINDS.kind(N, Size("prefix", "length of the bidirectional prefix", 128, minimum=0))
def prefix_lm(n: int, prefix: int) -> MaskSource:
    """Prefix LM: every token sees the prefix ``[0, prefix)`` bidirectionally; after it, causal."""
    if prefix > n:
        raise MaskError(f"prefix_lm: prefix ({prefix}) must not exceed n ({n})")
    return PrefixLM(f"prefix_lm(n={n}, prefix={prefix})", n, prefix)


@KINDS.kind(N, Size("block", "tokens per block (a query sees its own block and every earlier one)", 512))
def causal_blockwise(n: int, block: int) -> MaskSource:
    """Block-causal attention: the sequence is cut into blocks of ``block`` tokens (the last may be
    shorter); a query sees every key of the earlier blocks and of its own block, bidirectionally."""
    return CausalBlockwise(f"causal_blockwise(n={n}, block={block})", n, block)


@KINDS.kind(N, WINDOW, GLOBAL_TOKENS, CAUSAL)
def longformer(n: int, window: int, global_tokens: Sequence[int] = (), causal: bool = False) -> MaskSource:
    """Longformer: a symmetric sliding window (``|i - j| < window``) plus global tokens that see,
    and are seen by, every token. ``causal=True`` then keeps only ``j <= i``."""
    is_global = _global_flags(n, global_tokens, "longformer")
    name = f"longformer(n={n}, window={window}, globals={int(is_global.sum())}, causal={causal})"
    return Longformer(name, n, window, is_global, causal)


MAX_RANDOM_TABLE_BLOCKS = 1 << 16
"""BigBird draws its random table in a Python loop over the key blocks (numpy's draw without
replacement, kept so that a seed always gives the same mask): at most this many blocks."""


@KINDS.kind(
    N,
    WINDOW,
    GLOBAL_TOKENS,
    Size("random_blocks", "random key blocks per query block", 3, minimum=0),
    Size("block", "tokens per random key block", 64),
    Seed(),
)
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
    is_global = _global_flags(n, global_tokens, "bigbird")
    blocks = -(-n // block)
    if blocks > MAX_RANDOM_TABLE_BLOCKS:
        raise MaskError(f"bigbird: n / block gives {blocks} key blocks; at most {MAX_RANDOM_TABLE_BLOCKS} "
                        f"(maskc.library.MAX_RANDOM_TABLE_BLOCKS): raise the block size")
    if random_blocks > blocks:
        raise MaskError(f"bigbird: random_blocks ({random_blocks}) exceeds the {blocks} key blocks of {block} tokens; lower it or the block size")
    rng = np.random.default_rng(seed)
    table = np.array([rng.choice(blocks, size=random_blocks, replace=False) for _ in range(blocks)], dtype=np.int64)
    name = f"bigbird(n={n}, window={window}, globals={int(is_global.sum())}, random_blocks={random_blocks}, block={block}, seed={seed})"
    return BigBird(name, n, window, is_global, table, block)


@KINDS.kind(Size("question", "question length", 512), Lengths("answers", "lengths of the answers", [128, 96, 200]))
def shared_question(question: int, answers: Sequence[int]) -> MaskSource:
    """Shared-prefix packing (DPO, reward models): a causal question of ``question`` tokens, then
    answers of lengths ``answers``; each answer sees the whole question and itself causally, never
    another answer, so one forward pass scores every answer against one copy of the question."""
    lengths = np.concatenate([[question], answers])
    too_long("shared_question", "question + the sum of answers", int(lengths.sum()))
    name = f"shared_question(question={question}, answers={answers.size}, n={int(lengths.sum())})"
    return Segments(name, lengths, causal=True, shared=question)


@KINDS.kind(PARENTS)
def token_tree(parents: Sequence[int]) -> MaskSource:
    """Tree attention (speculative decoding): node ``i`` sees its ancestors and itself.

    ``parents[i]`` is -1 for a root or the index of an earlier node (``parents[i] < i``), so
    ``parents[0] == -1``; several roots make a forest.
    """
    return TokenTree(f"token_tree(n={parents.size})", parents)


@KINDS.kind(Size("prompt", "prompt length", 1024), PARENTS)
def medusa(prompt: int, parents: Sequence[int]) -> MaskSource:
    """Medusa-style verification: a causal prompt of ``prompt`` tokens, then a candidate tree
    (``parents`` relative to the tree, -1 = hangs off the last prompt token). A tree node sees the
    whole prompt plus its ancestors in the tree and itself."""
    too_long("medusa", "prompt + the tree's nodes", prompt + parents.size)
    chain = np.arange(-1, prompt - 1, dtype=np.int64)
    combined = np.concatenate([chain, np.where(parents < 0, prompt - 1, parents + prompt)])
    return TokenTree(f"medusa(prompt={prompt}, nodes={parents.size})", combined)


@KINDS.kind(N, Size("buckets", "number of buckets", 8), CAUSAL, Seed())
def hash_buckets(n: int, buckets: int, causal: bool = True, seed: int = 0) -> MaskSource:
    """Bucketed attention (Reformer-like): each token gets a seeded random bucket and sees the
    tokens of its own bucket (causally). Scattered on purpose: a test case for reordering."""
    bucket = np.random.default_rng(seed).integers(0, buckets, size=n)
    return HashBuckets(f"hash_buckets(n={n}, buckets={buckets}, causal={causal}, seed={seed})", bucket, causal)


@KINDS.kind(Sources("sources", SOURCES, minimum=2))
def union(*sources: MaskSource) -> MaskSource:
    """A pair is visible where it is visible in any of ``sources`` (same ``[q_len, kv_len]``; batch
    and heads of 1 broadcast), e.g. a sliding window plus a few global columns."""
    return Combination("union", sources)


@KINDS.kind(Sources("sources", SOURCES, minimum=2))
def intersection(*sources: MaskSource) -> MaskSource:
    """A pair is visible where it is visible in every one of ``sources`` (shapes as for
    :func:`union`), e.g. packed documents restricted to a sliding window."""
    return Combination("intersection", sources)


@KINDS.kind(Sources("sources", "the single [q_len, kv_len] masks to stack, all of one shape", minimum=1), Choice("dim", "the dimension to stack over", DIMS))
def stack(sources: Sequence[MaskSource], dim: str = "heads") -> MaskSource:
    """Stack single ``[q_len, kv_len]`` masks into one with a mask per head (``dim="heads"``) or
    per batch element (``dim="batch"``), e.g. a different window on every head."""
    return Stack(sources, dim)


def _global_flags(n: int, tokens: np.ndarray, kind: str) -> np.ndarray:
    """A bool flag per token, True at the global token indices (which must lie in ``[0, n)``)."""
    flags = np.zeros(n, dtype=bool)
    bad = tokens[(tokens < 0) | (tokens >= n)]
    if bad.size:
        raise MaskError(f"{kind}: global_tokens holds {bad[0]}, outside the sequence [0, {n})")
    flags[tokens] = True
    return flags


@checked(
    Size("n_nodes", "nodes of the tree", 64),
    Size("depth", "levels of the tree (Medusa heads)", 4),
    Size("top_k", "tokens each head proposes", 10),
    Seed(),
)
def candidate_tree(n_nodes: int, depth: int = 4, top_k: int = 10, seed: int = 0) -> np.ndarray:
    """A realistic Medusa candidate tree of ``n_nodes`` nodes, as a parent array for :func:`medusa`.

    Each of ``depth`` heads proposes ``top_k`` tokens with seeded, sorted acceptance probabilities;
    like Medusa's tree builder, the nodes kept are the ``n_nodes`` paths of highest joint
    probability, which gives wide first levels and thinner deeper ones. Nodes come in order of
    selection, so a parent always precedes its children.
    """
    if depth * top_k > MAX_TOKENS:
        raise MaskError(f"candidate_tree: depth × top_k is {depth * top_k} acceptance probabilities; at most {MAX_TOKENS} (maskc.kinds.MAX_TOKENS)")
    capacity, level = 0, 1
    for _ in range(depth):  # stops once the tree holds n_nodes: top_k ** depth may be astronomically large
        level *= top_k
        capacity += level
        if capacity >= n_nodes:
            break
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


__all__ = ["KINDS", "FormulaSource", "candidate_tree", *KINDS]  # FormulaSource: for masks defined outside the library
