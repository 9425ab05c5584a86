"""The cost model: predict how long each way of running a mask takes, and rank the candidates.

A plan holds one tiling for both passes, so the forward and backward are predicted apart (both are
recorded) and one candidate is chosen for their sum (``objective="fwd_bwd"``) or for the forward
alone (``objective="fwd"``, inference). What a candidate is and the work it takes is
:mod:`maskc.work`; the constants come from a profile (:mod:`maskc.profile`).

One tile kernel launch takes

    launch + max(mult · Σ_lists (program + full·f + partial·p),  concurrency · max_list (program + full·f + partial·p))

``mult`` is how many (batch, head) pairs read each mask slice. The first term is the total work
spread over the whole GPU (the constants are per-tile *throughput* costs, all SMs busy); the second
is the critical path: the heaviest list runs on one SM, ``concurrency`` times slower than the
throughput rate (``concurrency`` ≈ programs resident at once). The forward is one such launch over
the row lists; the backward (timed alone) two, over the row lists (dQ) and the column lists
(dK/dV), each with its own program and tile constants (the two kernels do different work per
tile) and one launch cost and concurrency for the pass. A reordered plan runs the same kernels
reading and writing every row through its permutation; that costs each pass a measured factor
(per tile size), by which its time is multiplied. Dense SDPA takes ``launch + pair·pairs``, per
pass, causal and full apart; a backward through dense pieces takes a cost per piece and per
visible pair. Every constant is measured (``maskc calibrate``); nothing here is a guess.
Grouped-query attention is modelled as its query heads.
"""

from __future__ import annotations

from dataclasses import dataclass

from maskc.profile import PASSES, Profile, ProfileError, Workload
from maskc.runtime.format import pieces_take
from maskc.work import Candidate, Work

OBJECTIVES = ("fwd_bwd", "fwd")


@dataclass(frozen=True)
class Prediction:
    """A candidate's predicted forward and backward times (ms)."""

    fwd_ms: float
    bwd_ms: float

    @property
    def fwd_bwd_ms(self) -> float:
        return self.fwd_ms + self.bwd_ms

    def objective(self, objective: str) -> float:
        return self.fwd_ms if objective == "fwd" else self.fwd_bwd_ms


def _mult(work: Work, workload: Workload) -> float:
    """How many (batch, head) pairs of the call read each mask slice (the mask's own batch and
    heads where it does not broadcast). Grouped-query attention is modelled as its query heads."""
    batch = work.batch if work.batch > 1 else workload.batch
    heads = work.heads if work.heads > 1 else workload.heads
    return batch * heads / (work.batch * work.heads)


def predict(profile: Profile, candidate: Candidate, work: Work, workload: Workload) -> Prediction:
    """The predicted forward and backward time (ms) of ``candidate`` for ``workload``; ProfileError
    when the profile lacks a constant it needs."""
    mult = _mult(work, workload)
    if candidate.kernel is None:
        mask = "causal" if candidate.variant == "dense_causal" else "full"
        pairs = work.pairs * mult
        return Prediction(*(profile.sdpa_cost(mask, p, workload).time(pairs) for p in PASSES))
    if work.rows is None:
        raise ProfileError(f"candidate {candidate.name} has no tile work recorded")
    if candidate.pieces:
        if work.pieces is None:
            raise ProfileError(f"candidate {candidate.name} has no pieces recorded")
        if not pieces_take(workload.dtype, workload.head_dim):
            raise ProfileError(f"a {workload.describe()} call runs the tile backward, not the dense pieces' (they need bf16 or fp16 "
                               "and a head dim that is a multiple of 8 up to 128)")
    fwd = profile.kernel(candidate.kernel, "fwd", candidate.block, workload).time([work.rows], mult)
    if candidate.pieces:
        return Prediction(fwd, profile.pieces_cost(workload).time(work.pieces, mult))
    bwd = profile.kernel(candidate.kernel, "bwd", candidate.block, workload).time([work.rows, work.cols], mult)
    if candidate.reordered:
        factors = profile.reorder_cost(candidate.block, workload)
        fwd, bwd = fwd * factors.fwd_factor, bwd * factors.bwd_factor
    return Prediction(fwd, bwd)


@dataclass(frozen=True)
class Ranking:
    """What the model decided: the winner (None when nothing could be predicted) and every
    candidate's prediction (None where the profile lacks constants, with the reason)."""

    chosen: Candidate | None
    predictions: dict[Candidate, Prediction | None]
    reasons: dict[Candidate, str]


def rank(profile: Profile, candidates: dict[Candidate, Work], workload: Workload, objective: str = "fwd_bwd") -> Ranking:
    """Predict every candidate and pick the fastest under ``objective`` (ties: the first in sorted order)."""
    if objective not in OBJECTIVES:
        raise ProfileError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    predictions: dict[Candidate, Prediction | None] = {}
    reasons: dict[Candidate, str] = {}
    for candidate in sorted(candidates):
        try:
            predictions[candidate] = predict(profile, candidate, candidates[candidate], workload)
        except ProfileError as e:
            predictions[candidate], reasons[candidate] = None, str(e)
    timed = [c for c in sorted(candidates) if predictions[c] is not None]
    chosen = min(timed, key=lambda c: predictions[c].objective(objective)) if timed else None
    return Ranking(chosen, predictions, reasons)
