"""The choice: which candidate to build for an analysed mask, and the predictions record the plan carries.

With the cost model (``block="auto"`` and a profile) the choice is the fastest predicted candidate
(:func:`maskc.model.rank`). Without it — an explicit tile size, no profile, or a profile with no
constants for the workload — the fixed rules decide: the variant asked for, or for ``"auto"`` the
size rule of :func:`auto_variant`; no dense dispatch and no reordering unless asked for; the tile
backward unless the pieces are asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from maskc.analysis import Analysis, dense_mismatch, lists_derivable
from maskc.errors import MaskError
from maskc.model import rank
from maskc.options import AUTO, FALLBACK_BLOCK
from maskc.pieces import MAX_PIECES
from maskc.predictions import record
from maskc.profile import ENV_PROFILE
from maskc.runtime.format import DENSE_VARIANTS
from maskc.work import Candidate

# auto's rule with an explicit block or without a profile (see auto_variant)
AUTO_BITMAP_BYTES = 1 << 20
AUTO_PAIRS = 1 << 32  # 65536²: below it a structured mask's bitmaps build in about a second or less


@dataclass(frozen=True)
class Choice:
    """The candidate to build and the plan's predictions record (None for an explicit tile size)."""

    candidate: Candidate
    predictions: dict[str, Any] | None


def choose(analysis: Analysis) -> Choice:
    """The cost model's choice when it decides, else the fixed rules' (MaskError when the options
    ask for what the mask cannot be)."""
    o = analysis.options
    fallback = f"{FALLBACK_BLOCK[0]}x{FALLBACK_BLOCK[1]} tiles and the fixed variant rule"
    if o.modelled:
        ranking = rank(o.profile, analysis.candidates, o.workload, o.objective)
        if ranking.chosen is not None:
            return Choice(ranking.chosen, record(o.profile, o.workload, o.objective, analysis.candidates, ranking))
        note = f"no candidate could be predicted with profile {o.profile.name!r} for {o.workload.describe()}: {fallback}"
        return Choice(fixed_rules(analysis), record(o.profile, o.workload, o.objective, analysis.candidates, ranking, note))
    candidate = fixed_rules(analysis)
    if o.block != AUTO:
        return Choice(candidate, None)
    note = f"no cost-model profile (set {ENV_PROFILE} or pass a profile; 'maskc calibrate' measures one): {fallback}"
    return Choice(candidate, record(None, o.workload, o.objective, {}, None, note))


def fixed_rules(analysis: Analysis) -> Candidate:
    """The candidate the options ask for at :attr:`CompileOptions.fixed_block` (``reorder="auto"``
    is no reordering; ``backward="auto"`` is the tile backward)."""
    o, source, block = analysis.options, analysis.source, analysis.options.fixed_block
    if o.reorder == "rcm":
        candidate = Candidate("block_sparse", block, reordered=True)
    elif o.variant in DENSE_VARIANTS:
        problem = dense_mismatch(source, analysis.vectors, o.variant)
        if problem:
            raise MaskError(problem)
        candidate = Candidate(o.variant, block)
    elif o.variant == "block_sparse":
        candidate = Candidate("block_sparse", block)
    else:
        if analysis.vectors is None and o.variant == "intervals":
            raise MaskError(f"{source.name} does not fit the interval form: {analysis.failure}; compile it with variant 'block_sparse' or 'auto'")
        fits = analysis.vectors is not None and lists_derivable(source, block)
        intervals = fits and (o.variant == "intervals" or auto_variant(analysis.lists(block), source.shape, block) == "intervals")
        candidate = Candidate("intervals" if intervals else "block_sparse", block)
    if o.backward != "pieces":
        return candidate
    slices = source.batch * source.heads
    if candidate.variant in DENSE_VARIANTS or candidate.reordered or slices != 1:
        kind = candidate.variant if candidate.variant in DENSE_VARIANTS else "reordered" if candidate.reordered else f"{slices}-slice"
        raise MaskError(f"{source.name}: a {kind} plan cannot run its backward through dense pieces; compile it with backward 'tiles' or 'auto'")
    if analysis.pieces is None:
        raise MaskError(f"{source.name} does not split into at most {MAX_PIECES} dense pieces; compile it with backward 'tiles' or 'auto'")
    return replace(candidate, pieces=True)


def auto_variant(lists: dict[str, np.ndarray], shape: tuple[int, int, int, int], block: tuple[int, int]) -> str:
    """The variant the fixed rule picks for a mask that fits the interval form (an explicit block,
    or no profile).

    Intervals when the bitmap plan could store more than ``AUTO_BITMAP_BYTES`` of partial-tile bits
    (one bitmap per partial tile, before sharing identical ones), or when the mask has
    ``AUTO_PAIRS`` pairs or more (65536² and up: bitmaps would cost O(N²) to build from a
    structured source). Otherwise bitmaps, whose kernels measured faster on an H100 (the interval
    dQ kernel is up to 1.5x slower, benchmarks/NOTES.md). It depends only on the mask, so equal masks get the
    same variant from any source; with a profile, ``block="auto"`` replaces it by the cost model.
    """
    partial = int(lists["row_ptr"][-1]) - int(lists["row_full"].sum(dtype=np.int64))
    bitmap_bytes = partial * block[0] * block[1] // 8
    pairs = int(np.prod(shape, dtype=np.int64))
    return "intervals" if bitmap_bytes > AUTO_BITMAP_BYTES or pairs >= AUTO_PAIRS else "block_sparse"
