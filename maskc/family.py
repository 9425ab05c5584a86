"""Compiling a mask family: the decisions made once for masks that change every step.

A family spec names a family and its bound, e.g. ``{"family": "documents", "max_len": 16384,
"causal": true}``. The compiler makes the family's decisions ahead of time — the tile size (the
cost model's choice, over the interval kernel: the only one a bound step runs) and the traits of its
lists from which the kernels choose their launch grid — from one **representative** mask of the
family, built from the spec's hints (``typical_length`` of a document, ``buckets``, the ``keep``
fraction, ...), and records its predictions. The result is a :class:`FamilyPlan`; each step the
runtime binds it to that step's data (``maskc.runtime.family``), in microseconds, on the device.

Every family has, per key column, one run of query rows that see the key (after sorting queries
and keys, for the bucket and dropping families), so a representative mask is a run per key: its
interval vectors are made here directly, in O(max_len), and compiled like any interval mask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from maskc.errors import MaskError
from maskc.runtime.format import FAMILY_KINDS, LTE, LTS, TRAITS, UTE, UTS, FamilyPlan, PlanError, list_traits, validate_family

HINTS: dict[str, dict[str, Any]] = {
    "documents": {"typical_length": 512},
    "shared_prefix": {"typical_question": 512, "typical_answer": 256, "answers": 2},
    "token_tree": {},
    "hash_buckets": {"buckets": 16},
    "qk_dropping": {"keep": 0.5},
}
"""Per kind, the representative mask's hints and their defaults (the spec may set them)."""

DEFAULTS: dict[str, dict[str, Any]] = {
    "documents": {"causal": True, "window": None, "prefix": False},
    "shared_prefix": {},
    "token_tree": {"max_depth": 32, "preorder": False},
    "hash_buckets": {"causal": True},
    "qk_dropping": {"causal": True},
}
"""Per kind, the defaults of its parameters (:data:`maskc.runtime.format.FAMILY_KINDS`)."""

SPREAD = 0.8  # the log-normal spread of a representative document's length (a real SFT set: about 0.8)


def is_family_spec(spec: Any) -> bool:
    """Whether ``spec`` is a family spec (a map with a ``"family"`` key) rather than a mask."""
    return isinstance(spec, Mapping) and "family" in spec


def compile_family(spec: Mapping[str, Any], profile: Any = None, workload: Any = None) -> FamilyPlan:
    """The :class:`FamilyPlan` of a family spec (``{"family": kind, "max_len": N, ...parameters,
    ...hints}``), its tile size chosen by the cost model for a representative mask of the family
    (``profile``/``workload`` as :func:`maskc.compile` takes them; without a profile, 128×128 tiles
    and the fixed rules, as for any mask)."""
    import maskc

    kind, params, hints, max_len = _parse(spec)
    runs = _representative_runs(kind, params, hints, max_len)
    plan = maskc.compile(_interval_source(runs, max_len, kind), variant="intervals", reorder="none", schedule="none",
                         backward="tiles", profile=profile, workload=workload)
    traits = dict(zip(TRAITS, (*list_traits(plan.arrays["row_ptr"], plan.tiles_n), *list_traits(plan.arrays["col_ptr"], plan.tiles_m))))
    family = FamilyPlan(kind, params, max_len, plan.block_m, plan.block_n, traits,
                        options={"representative": hints}, predictions=plan.predictions)
    try:
        validate_family(family)
    except PlanError as e:
        raise MaskError(f"family spec: {e}") from None
    return family


def _parse(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any], int]:
    """The kind, parameters (defaults filled in), hints and bound of a family spec, checked."""
    if not is_family_spec(spec):
        raise MaskError('a family spec must be a JSON object with a "family" key')
    kind = spec["family"]
    if kind not in FAMILY_KINDS:
        raise MaskError(f"family spec: unknown family {kind!r}; one of {', '.join(FAMILY_KINDS)}")
    known = {"family", "max_len", *FAMILY_KINDS[kind], *HINTS[kind]}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise MaskError(f"family spec: unknown field {unknown[0]!r} for {kind}; it takes {', '.join(sorted(known - {'family'}))}")
    max_len = spec.get("max_len")
    if isinstance(max_len, bool) or not isinstance(max_len, int) or not 1 <= max_len <= 1 << 24:
        raise MaskError(f"family spec: max_len must be an integer in [1, {1 << 24}], got {max_len!r}")
    params = {**DEFAULTS[kind], **{k: spec[k] for k in FAMILY_KINDS[kind] if k in spec}}
    hints = {**HINTS[kind], **{k: spec[k] for k in HINTS[kind] if k in spec}}
    for name, value in hints.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or value <= 0 or (name == "keep" and value > 1) or (name != "keep" and not isinstance(value, int)):
            raise MaskError(f"family spec: {name} must be a positive {'fraction' if name == 'keep' else 'integer'}, got {value!r}")
    return kind, params, hints, max_len


def _representative_runs(kind: str, params: dict[str, Any], hints: dict[str, Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per key, the run of query rows ``[start, end)`` that sees it, in a representative mask of
    the family (seeded, so a spec always compiles to the same plan)."""
    rng = np.random.default_rng(0)
    j = np.arange(n, dtype=np.int64)
    if kind == "documents":
        doc_start, doc_end = _segments(_lengths(rng, n, hints["typical_length"]))
        start = j if params["causal"] and not params["prefix"] else doc_start
        end = doc_end
        if params["window"] is not None:
            end = np.minimum(end, j + params["window"])
            if not params["causal"]:
                start = np.maximum(start, j - params["window"] + 1)
        return start, end
    if kind == "shared_prefix":
        group = [hints["typical_question"]] + [hints["typical_answer"]] * hints["answers"]
        lengths = (group * (n // sum(group) + 1))
        seg_start, seg_end = _segments(_fit(lengths, n))
        group_end = np.minimum(np.repeat(np.cumsum(lengths)[len(group) - 1::len(group)], sum(group))[:n], n)
        is_question = (j % sum(group)) < group[0]
        return j, np.where(is_question, group_end, seg_end)
    if kind == "token_tree":
        return j, j + _subtree_sizes(rng, n)
    if kind == "hash_buckets":  # in sorted order: a causal block per bucket
        size = -(-n // hints["buckets"])
        return j, np.minimum((j // size + 1) * size, n)
    kept = max(1, int(round(hints["keep"] * n)))  # qk_dropping: the kept tokens first, causal among them
    return np.where(j < kept, j, n), np.where(j < kept, kept, n)


def _lengths(rng: np.random.Generator, n: int, mean: int) -> list[int]:
    """Document lengths drawn log-normal around ``mean`` until they fill ``n`` tokens."""
    mu = np.log(mean) - SPREAD**2 / 2
    lengths = np.maximum(1, rng.lognormal(mu, SPREAD, size=2 * (n // max(1, mean)) + 8).astype(np.int64))
    return _fit(lengths.tolist(), n)


def _fit(lengths: list[int], n: int) -> list[int]:
    """The leading ``lengths`` that fill exactly ``n`` tokens (the last one cut, or extended)."""
    out, total = [], 0
    for length in lengths:
        take = min(length, n - total)
        out.append(take)
        total += take
        if total == n:
            return out
    return out + [n - total]


def _segments(lengths: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each token's segment start and end for consecutive segments of ``lengths``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.repeat(ends - lengths, lengths), np.repeat(ends, lengths)


def _subtree_sizes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Subtree sizes of a random tree numbered in depth-first preorder: each new node hangs below
    the last node or one of its few nearest ancestors, as in a speculative-decoding tree."""
    parents = np.empty(n, dtype=np.int64)
    path = [0]
    parents[0] = -1
    for node in range(1, n):
        del path[max(1, len(path) - int(rng.integers(0, 3))):]
        parents[node] = path[-1]
        path.append(node)
    size = np.ones(n, dtype=np.int64)
    for node in range(n - 1, 0, -1):
        size[parents[node]] += size[node]
    return size


def _interval_source(runs: tuple[np.ndarray, np.ndarray], n: int, kind: str):
    """A mask source of one slice whose key ``j`` is seen by query rows ``[start_j, end_j)``."""
    from maskc.sources import IntervalSource

    start, end = (np.clip(r, 0, n) for r in runs)
    vectors = np.empty((1, 4, n), dtype=np.int64)
    vectors[0, UTS], vectors[0, UTE] = 0, np.where(start < end, start, n)
    vectors[0, LTS], vectors[0, LTE] = np.where(start < end, end, n), n
    return IntervalSource(vectors, (1, 1, n, n), f"representative {kind} mask")
