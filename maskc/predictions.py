"""The predictions record a plan carries (``meta.predictions``): written, read back and shown here only.

The record holds the profile the cost model predicted with, the workload, the objective, the winner
and, per candidate, what it is, the work it takes (:mod:`maskc.work`) and its predicted times, so a
plan can be predicted again for another GPU or call shape (:func:`reevaluate`). A plan compiled
without the model records why (``note``) and no candidates.

A plan file comes from outside: :func:`recorded` reads the candidates strictly (a malformed record
is a PlanError), :func:`shown` reads whatever of it can be shown and never fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maskc.model import Prediction, Ranking, predict
from maskc.profile import Profile, ProfileError, Workload
from maskc.runtime.format import VARIANTS, Plan, PlanError
from maskc.work import Candidate, Work, is_count, plan_candidate, work_of


def _ms(x: float) -> float:
    return float(f"{x:.6g}")


def record(profile: Profile | None, workload: Workload, objective: str, candidates: dict[Candidate, Work], ranking: Ranking | None,
           note: str | None = None) -> dict[str, Any]:
    """The plan's ``meta.predictions``: the profile, the workload, the objective, the winner, and per
    candidate its variant, tiles, reordering, work and predicted times (ms; None if not predicted)."""
    entries = {}
    for candidate in sorted(candidates):
        prediction = ranking.predictions.get(candidate) if ranking is not None else None
        entry: dict[str, Any] = {
            "variant": candidate.variant,
            "block": list(candidate.block),
            "reordered": candidate.reordered,
            "pieces": candidate.pieces,
            "work": candidates[candidate].as_dict(),
            "fwd_ms": _ms(prediction.fwd_ms) if prediction else None,
            "fwd_bwd_ms": _ms(prediction.fwd_bwd_ms) if prediction else None,
        }
        if ranking is not None and candidate in ranking.reasons:
            entry["note"] = ranking.reasons[candidate]
        entries[candidate.name] = entry
    out: dict[str, Any] = {
        "profile": profile.name if profile else None,
        "profile_sha256": profile.sha256 if profile else None,
        "workload": workload.as_dict(),
        "objective": objective,
        "chosen": ranking.chosen.name if ranking is not None and ranking.chosen is not None else None,
        "candidates": entries,
    }
    if note:
        out["note"] = note
    return out


@dataclass(frozen=True)
class Recorded:
    """One candidate as a plan recorded it: what it is and the work it takes."""

    candidate: Candidate
    work: Work


def recorded(plan: Plan) -> list[Recorded]:
    """The candidates a plan's ``predictions`` record, checked (PlanError when malformed)."""
    pred = plan.predictions or {}
    entries = pred.get("candidates", {})
    if not isinstance(entries, dict):
        raise PlanError("plan predictions.candidates must be a map")
    out = []
    for name, e in entries.items():
        if not isinstance(e, dict) or e.get("variant") not in VARIANTS:
            raise PlanError(f"plan prediction {name!r} has no valid variant")
        block = e.get("block")
        if not (isinstance(block, list) and len(block) == 2 and all(is_count(v) for v in block)) or not isinstance(e.get("reordered"), bool):
            raise PlanError(f"plan prediction {name!r} needs a block [m, n] and a reordered flag")
        pieces = e.get("pieces", False)
        if not isinstance(pieces, bool):
            raise PlanError(f"plan prediction {name!r} has a pieces flag that is not a boolean")
        out.append(Recorded(Candidate(e["variant"], tuple(block), e["reordered"], pieces), Work.from_dict(e.get("work"))))
    return out


def reevaluate(plan: Plan, profile: Profile, workload: Workload) -> dict[str, Prediction | str]:
    """Each recorded candidate's prediction for another workload or profile (or why there is none);
    the plan itself when it records none (compiled without the model)."""
    out: dict[str, Prediction | str] = {}
    for r in recorded(plan) or [Recorded(plan_candidate(plan), work_of(plan))]:
        try:
            out[r.candidate.name] = predict(profile, r.candidate, r.work, workload)
        except ProfileError as e:
            out[r.candidate.name] = str(e)
    return out


def recorded_workload(plan: Plan) -> Workload:
    """The workload a plan's predictions were made for (the default one where it records none);
    ProfileError when the recorded one is not a valid workload."""
    pred = plan.predictions or {}
    recorded_as = pred.get("workload")
    if recorded_as is None:
        return Workload()
    if not isinstance(recorded_as, dict):
        raise ProfileError("the plan's recorded workload is not a map")
    return Workload(**{k: v for k, v in recorded_as.items() if k in Workload.__dataclass_fields__})


# --- what can be shown of a record ---------------------------------------------------------------


@dataclass(frozen=True)
class Shown:
    """A predictions record (or a re-evaluation) as far as it can be read: text fields are None where
    the record lacks them or holds something else; per candidate, ``(fwd_ms, fwd_bwd_ms)`` or the
    note saying why it was not predicted."""

    profile: str | None
    workload: dict[str, Any]
    objective: str | None
    chosen: str | None
    note: str | None
    candidates: dict[str, tuple[float, float] | str]

    @property
    def chosen_times(self) -> tuple[float, float] | None:
        times = self.candidates.get(self.chosen) if self.chosen is not None else None
        return times if isinstance(times, tuple) else None


def shown(pred: Any) -> Shown | None:
    """What can be shown of a predictions record (plain data from a plan file, or
    :func:`reevaluation`'s), or None when it is not a map. Never raises."""
    if not isinstance(pred, dict):
        return None
    entries = pred.get("candidates")
    candidates: dict[str, tuple[float, float] | str] = {}
    for name, entry in (entries.items() if isinstance(entries, dict) else ()):
        times = tuple(entry.get(k) for k in ("fwd_ms", "fwd_bwd_ms")) if isinstance(entry, dict) else ()
        if len(times) == 2 and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in times):
            candidates[name] = (float(times[0]), float(times[1]))
        else:
            note = entry.get("note") if isinstance(entry, dict) else None
            candidates[name] = note if isinstance(note, str) else "not predicted"
    workload = pred.get("workload")
    plain = (str, int, float, type(None))
    return Shown(_text(pred, "profile"), {k: v for k, v in workload.items() if isinstance(v, plain)} if isinstance(workload, dict) else {},
                 _text(pred, "objective"), _text(pred, "chosen"), _text(pred, "note"), candidates)


def _text(d: dict, key: str) -> str | None:
    value = d.get(key)
    return value if isinstance(value, str) else None


def reevaluation(profile: Profile, workload: Workload, results: dict[str, Prediction | str]) -> dict[str, Any]:
    """:func:`reevaluate`'s results as plain data (``maskc inspect``'s ``reevaluated``)."""
    return {
        "profile": profile.name,
        "workload": workload.as_dict(),
        "candidates": {name: ({"fwd_ms": r.fwd_ms, "fwd_bwd_ms": r.fwd_bwd_ms} if isinstance(r, Prediction) else {"note": r})
                       for name, r in results.items()},
    }
